/* dnnl_matmul.c: a process-wide cache of oneDNN matmul primitives keyed by
 * data types, shape and thread count. oneDNN splits a primitive's work for
 * the threads there are when it is made: one made under 1 thread and run
 * under 2 kept to one core's worth of partitions (bf16 on 2 threads at
 * 1.14x fp32 instead of 2.04x, bench-engine --threads 1,2). Primitives
 * are created under a lock and never freed (a model has a handful of
 * shapes); running them needs no lock: each run brings its own scratchpad,
 * so states on several threads may share one primitive. */
#include "dnnl_matmul.h"
#include "engine_internal.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>

struct shard_matmul {
    dnnl_data_type_t src, wei, dst;
    int64_t rows, k, n, ldw;
    int threads;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t primitive;
    const char *impl;
    struct shard_matmul *next;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shard_matmul *cache;
static dnnl_engine_t engine;

static shard_status_t dnnl_failed(shard_error_t *err, const char *what, dnnl_status_t status,
                                  int64_t k, int64_t n)
{
    return shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                           "shard_matmul_get: oneDNN %s failed (status %d) for a %lld x %lld "
                           "product: expected an implementation for this CPU",
                           what, (int)status, (long long)k, (long long)n);
}

static struct shard_matmul *create(dnnl_data_type_t src, dnnl_data_type_t wei,
                                   dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                   int64_t ldw, shard_error_t *err)
{
    dnnl_status_t s = dnnl_success;
    if (!engine && (s = dnnl_engine_create(&engine, dnnl_cpu, 0)) != dnnl_success) {
        dnnl_failed(err, "engine creation", s, k, n);
        return NULL;
    }
    dnnl_memory_desc_t src_md, wei_md, dst_md;
    const int64_t dim_m = rows > 0 ? rows : DNNL_RUNTIME_DIM_VAL;
    const dnnl_dims_t src_dims = {dim_m, k}, src_strides = {k, 1};
    const dnnl_dims_t wei_dims = {k, n}, wei_strides = {1, ldw};
    const dnnl_dims_t dst_dims = {dim_m, n}, dst_strides = {n, 1};
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    struct shard_matmul *m = calloc(1, sizeof *m);
    if (!m) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_matmul_get: out of memory");
        return NULL;
    }
    *m = (struct shard_matmul){src, wei, dst, rows, k, n, ldw, omp_get_max_threads(),
                               NULL, NULL, "", NULL};
    if ((s = dnnl_memory_desc_init_by_strides(&src_md, 2, src_dims, src, src_strides)) ||
        (s = dnnl_memory_desc_init_by_strides(&wei_md, 2, wei_dims, wei, wei_strides)) ||
        (s = dnnl_memory_desc_init_by_strides(&dst_md, 2, dst_dims, dst, dst_strides)) ||
        (s = dnnl_matmul_desc_init(&desc, &src_md, &wei_md, NULL, &dst_md)) ||
        (s = dnnl_primitive_attr_create(&attr)) ||
        (s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) ||
        (s = dnnl_primitive_desc_create(&m->pd, &desc, attr, engine, NULL)) ||
        (s = dnnl_primitive_create(&m->primitive, m->pd))) {
        dnnl_failed(err, "matmul creation", s, k, n);
        if (m->pd)
            dnnl_primitive_desc_destroy(m->pd);
        dnnl_primitive_attr_destroy(attr);
        free(m);
        return NULL;
    }
    dnnl_primitive_attr_destroy(attr);
    dnnl_primitive_desc_query(m->pd, dnnl_query_impl_info_str, 0, &m->impl);
    return m;
}

const shard_matmul_t *shard_matmul_get(dnnl_data_type_t src, dnnl_data_type_t wei,
                                       dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                       int64_t ldw, shard_error_t *err)
{
    const int threads = omp_get_max_threads();
    pthread_mutex_lock(&cache_lock);
    struct shard_matmul *m = cache;
    while (m && !(m->src == src && m->wei == wei && m->dst == dst && m->rows == rows &&
                  m->k == k && m->n == n && m->ldw == ldw && m->threads == threads))
        m = m->next;
    if (!m && (m = create(src, wei, dst, rows, k, n, ldw, err))) {
        m->next = cache;
        cache = m;
    }
    pthread_mutex_unlock(&cache_lock);
    return m;
}

const char *shard_matmul_impl(const shard_matmul_t *matmul) { return matmul->impl; }

/* One stream per thread: streams are not shared between threads. */
static _Thread_local dnnl_stream_t thread_stream;
static _Thread_local void *thread_scratch;
static _Thread_local size_t thread_scratch_size;

/* Freed when the thread ends: states run on threads that come and go. */
static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;

static void free_thread_resources(void *unused)
{
    (void)unused;
    free(thread_scratch);
    thread_scratch = NULL;
    thread_scratch_size = 0;
    if (thread_stream)
        dnnl_stream_destroy(thread_stream);
    thread_stream = NULL;
}

static void make_thread_key(void) { pthread_key_create(&thread_key, free_thread_resources); }

static void *scratch(size_t size)
{
    if (size > thread_scratch_size) {
        pthread_once(&thread_key_once, make_thread_key);
        pthread_setspecific(thread_key, (void *)1); /* the destructor runs only for non-NULL */
        void *grown = realloc(thread_scratch, size);
        if (!grown)
            return NULL;
        thread_scratch = grown;
        thread_scratch_size = size;
    }
    return thread_scratch;
}

static dnnl_memory_t memory(int64_t rows, int64_t cols, const int64_t strides[2],
                            dnnl_data_type_t type, const void *data)
{
    dnnl_memory_desc_t md;
    const dnnl_dims_t dims = {rows, cols}, st = {strides[0], strides[1]};
    dnnl_memory_t mem = NULL;
    if (dnnl_memory_desc_init_by_strides(&md, 2, dims, type, st) ||
        dnnl_memory_create(&mem, &md, engine, (void *)data)) /* oneDNN reads src, weights */
        return NULL;
    return mem;
}

bool shard_matmul_run(const shard_matmul_t *m, int64_t rows, const void *src,
                      const void *weights, void *dst)
{
    if (!thread_stream && dnnl_stream_create(&thread_stream, engine, dnnl_stream_default_flags))
        return false;
    const int64_t src_st[2] = {m->k, 1}, wei_st[2] = {1, m->ldw}, dst_st[2] = {m->n, 1};
    dnnl_memory_t mem[4] = {memory(rows, m->k, src_st, m->src, src),
                            memory(m->k, m->n, wei_st, m->wei, weights),
                            memory(rows, m->n, dst_st, m->dst, dst), NULL};
    const dnnl_memory_desc_t *pad_md = dnnl_primitive_desc_query_md(m->pd, dnnl_query_scratchpad_md, 0);
    const size_t pad_size = pad_md ? dnnl_memory_desc_get_size(pad_md) : 0;
    void *pad = scratch(pad_size ? pad_size : 1);
    bool ok = mem[0] && mem[1] && mem[2] && pad;
    if (ok && pad_size)
        ok = dnnl_memory_create(&mem[3], pad_md, engine, pad) == dnnl_success;
    if (ok) {
        const dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                                         {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_SCRATCHPAD, mem[3]}};
        ok = dnnl_primitive_execute(m->primitive, thread_stream, pad_size ? 4 : 3, args) ==
                 dnnl_success &&
             dnnl_stream_wait(thread_stream) == dnnl_success;
    }
    for (int i = 0; i < 4; i++)
        if (mem[i])
            dnnl_memory_destroy(mem[i]);
    return ok;
}

shard_status_t shard_matmul_prepare(dnnl_data_type_t src, dnnl_data_type_t wei,
                                    dnnl_data_type_t dst, int64_t k, int64_t n, int64_t ldw,
                                    shard_error_t *err)
{
    for (int64_t rows = SHARD_ROW_TILE; rows <= SHARD_MATMUL_ROWS; rows += SHARD_ROW_TILE)
        if (!shard_matmul_get(src, wei, dst, rows, k, n, ldw, err))
            return err->code;
    return SHARD_OK;
}

bool shard_matmul_rows(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                       int64_t k, int64_t n, int64_t ldw, int64_t rows, const void *x,
                       size_t src_size, const void *weights, void *y, size_t dst_size)
{
    for (int64_t r0 = 0; r0 < rows; r0 += SHARD_MATMUL_ROWS) {
        const int64_t m = rows - r0 < SHARD_MATMUL_ROWS ? rows - r0 : SHARD_MATMUL_ROWS;
        shard_error_t err = {0};
        const bool fixed = m % SHARD_ROW_TILE == 0 || m == 1;
        const shard_matmul_t *mm = shard_matmul_get(src, wei, dst, fixed ? m : 0, k, n, ldw, &err);
        if (!mm || !shard_matmul_run(mm, m, (const char *)x + (size_t)(r0 * k) * src_size,
                                     weights, (char *)y + (size_t)(r0 * n) * dst_size))
            return false;
    }
    return true;
}
