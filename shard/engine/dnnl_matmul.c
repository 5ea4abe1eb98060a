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
#include <string.h>

struct shard_matmul {
    dnnl_data_type_t src, wei, dst;
    int64_t rows, k, n, ldw, ldd;
    int threads;
    bool packed;              /* weights in packed_md, not the strided W[n][ldw] */
    dnnl_memory_desc_t packed_md;
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

/* packed_md NULL: the weights are W[n][ldw], read transposed; else they
 * are in that layout (format_tag_any's answer, shard_matmul_pack). */
static struct shard_matmul *create(dnnl_data_type_t src, dnnl_data_type_t wei,
                                   dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                   int64_t ldw, int64_t ldd, const dnnl_memory_desc_t *packed_md,
                                   shard_error_t *err)
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
    const dnnl_dims_t dst_dims = {dim_m, n}, dst_strides = {ldd, 1};
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    struct shard_matmul *m = calloc(1, sizeof *m);
    if (!m) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_matmul_get: out of memory");
        return NULL;
    }
    *m = (struct shard_matmul){.src = src, .wei = wei, .dst = dst, .rows = rows, .k = k,
                               .n = n, .ldw = ldw, .ldd = ldd,
                               .threads = omp_get_max_threads(), .packed = packed_md != NULL,
                               .impl = ""};
    if (packed_md)
        m->packed_md = *packed_md;
    if ((s = dnnl_memory_desc_init_by_strides(&src_md, 2, src_dims, src, src_strides)) ||
        (s = packed_md ? (wei_md = *packed_md, dnnl_success)
                       : dnnl_memory_desc_init_by_strides(&wei_md, 2, wei_dims, wei, wei_strides)) ||
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

static const shard_matmul_t *get(dnnl_data_type_t src, dnnl_data_type_t wei,
                                 dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                 int64_t ldw, int64_t ldd, const dnnl_memory_desc_t *packed_md,
                                 shard_error_t *err)
{
    const int threads = omp_get_max_threads();
    pthread_mutex_lock(&cache_lock);
    struct shard_matmul *m = cache;
    while (m && !(m->src == src && m->wei == wei && m->dst == dst && m->rows == rows &&
                  m->k == k && m->n == n && m->ldw == ldw && m->ldd == ldd &&
                  m->threads == threads && m->packed == (packed_md != NULL) &&
                  (!packed_md || dnnl_memory_desc_equal(&m->packed_md, packed_md))))
        m = m->next;
    if (!m && (m = create(src, wei, dst, rows, k, n, ldw, ldd, packed_md, err))) {
        m->next = cache;
        cache = m;
    }
    pthread_mutex_unlock(&cache_lock);
    return m;
}

const shard_matmul_t *shard_matmul_get(dnnl_data_type_t src, dnnl_data_type_t wei,
                                       dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                       int64_t ldw, shard_error_t *err)
{
    return get(src, wei, dst, rows, k, n, ldw, n, NULL, err);
}

const char *shard_matmul_impl(const shard_matmul_t *matmul) { return matmul->impl; }

/* One stream per thread: streams are not shared between threads. */
static _Thread_local dnnl_stream_t thread_stream;
static _Thread_local void *thread_scratch;
static _Thread_local size_t thread_scratch_size;
static _Thread_local void *panel_out; /* shard_matmul_packed_rows */
static _Thread_local size_t panel_out_size;

/* Freed when the thread ends: states run on threads that come and go. */
static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;

static void free_thread_resources(void *unused)
{
    (void)unused;
    free(thread_scratch);
    thread_scratch = NULL;
    thread_scratch_size = 0;
    free(panel_out);
    panel_out = NULL;
    panel_out_size = 0;
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

static dnnl_stream_t stream_of_thread(void)
{
    if (!thread_stream && dnnl_stream_create(&thread_stream, engine, dnnl_stream_default_flags))
        return NULL;
    return thread_stream;
}

bool shard_matmul_run(const shard_matmul_t *m, int64_t rows, const void *src,
                      const void *weights, void *dst)
{
    if (!stream_of_thread())
        return false;
    const int64_t src_st[2] = {m->k, 1}, wei_st[2] = {1, m->ldw}, dst_st[2] = {m->ldd, 1};
    dnnl_memory_t mem[4] = {memory(rows, m->k, src_st, m->src, src), NULL,
                            memory(rows, m->n, dst_st, m->dst, dst), NULL};
    if (m->packed)
        dnnl_memory_create(&mem[1], &m->packed_md, engine, (void *)weights);
    else
        mem[1] = memory(m->k, m->n, wei_st, m->wei, weights);
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

/* ---------------------------------------------------------------- packed weights */

/* oneDNN's brgemm kernels read weights in a blocked layout of their own;
 * given W[n][ldw] they copy it into that layout at every run, for every
 * chunk of rows: 1024 x 4096 on 2 threads ran at 0.25 (1 row) to 0.88
 * (256 rows) of the speed of weights reordered once
 * (bench/row_tiles/dnnl_packed.c, bench/row_tiles.md). The layout is the
 * same for every row count (checked there), so one copy serves the
 * fixed-row primitives of every chunk and the one-row primitive. */
enum { PACK_ALIGN = 64 };

typedef struct {
    dnnl_memory_desc_t md;
    size_t offset; /* of its bytes from the start of the block */
} packed_panel_t;

struct shard_packed {
    dnnl_data_type_t src, wei, dst;
    int64_t k, n, panel, panels;
    packed_panel_t *part; /* [panels], in the same block */
};

static size_t round_up(size_t size) { return (size + PACK_ALIGN - 1) / PACK_ALIGN * PACK_ALIGN; }

/* The layout the fixed-row primitive of k x n wants; false where it is the
 * plain transposed one (nothing to gain) or oneDNN has none. */
static bool packed_layout(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                          int64_t k, int64_t n, int64_t ldw, dnnl_memory_desc_t *packed,
                          dnnl_memory_desc_t *plain)
{
    const dnnl_dims_t src_dims = {SHARD_MATMUL_ROWS, k}, src_strides = {k, 1};
    const dnnl_dims_t wei_dims = {k, n}, wei_strides = {1, ldw};
    const dnnl_dims_t dst_dims = {SHARD_MATMUL_ROWS, n}, dst_strides = {n, 1};
    dnnl_memory_desc_t src_md, any_md, dst_md;
    dnnl_matmul_desc_t desc;
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_memory_desc_init_by_strides(&src_md, 2, src_dims, src, src_strides) ||
        dnnl_memory_desc_init_by_tag(&any_md, 2, wei_dims, wei, dnnl_format_tag_any) ||
        dnnl_memory_desc_init_by_strides(plain, 2, wei_dims, wei, wei_strides) ||
        dnnl_memory_desc_init_by_strides(&dst_md, 2, dst_dims, dst, dst_strides) ||
        dnnl_matmul_desc_init(&desc, &src_md, &any_md, NULL, &dst_md) ||
        dnnl_primitive_desc_create(&pd, &desc, NULL, engine, NULL))
        return false;
    const dnnl_memory_desc_t *chosen = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const bool useful = chosen && !dnnl_memory_desc_equal(chosen, plain);
    if (useful)
        *packed = *chosen;
    dnnl_primitive_desc_destroy(pd);
    return useful;
}

static bool reorder_into(const dnnl_memory_desc_t *from_md, const void *from,
                         const dnnl_memory_desc_t *to_md, void *to)
{
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t a = NULL, b = NULL;
    dnnl_stream_t stream = stream_of_thread();
    bool ok = stream && !dnnl_reorder_primitive_desc_create(&pd, from_md, engine, to_md, engine, NULL) &&
              !dnnl_primitive_create(&reorder, pd) &&
              !dnnl_memory_create(&a, from_md, engine, (void *)from) && /* only read */
              !dnnl_memory_create(&b, to_md, engine, to);
    if (ok) {
        const dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, a}, {DNNL_ARG_TO, b}};
        ok = !dnnl_primitive_execute(reorder, stream, 2, args) && !dnnl_stream_wait(stream);
    }
    if (a)
        dnnl_memory_destroy(a);
    if (b)
        dnnl_memory_destroy(b);
    if (reorder)
        dnnl_primitive_destroy(reorder);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return ok;
}

shard_status_t shard_matmul_pack(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                                 int64_t k, int64_t n, int64_t ldw, const void *weights,
                                 size_t wei_size, int64_t panel, shard_packed_t **packed,
                                 shard_error_t *err)
{
    *packed = NULL;
    shard_error_t ignored = {0};
    if (!shard_matmul_get(src, wei, dst, SHARD_MATMUL_ROWS, 64, 64, 64, &ignored))
        return SHARD_OK; /* no engine, no implementation: the plain path says so when run */
    if (panel <= 0 || panel > n)
        panel = n;
    const int64_t panels = (n + panel - 1) / panel;
    packed_panel_t *part = calloc((size_t)panels, sizeof *part);
    dnnl_memory_desc_t *plain = calloc((size_t)panels, sizeof *plain);
    if (!part || !plain) {
        free(part);
        free(plain);
        return shard_error_set(err, SHARD_ERR_NOMEM, "packing weights: out of memory");
    }
    size_t total = round_up(sizeof(shard_packed_t)) + round_up((size_t)panels * sizeof *part);
    for (int64_t j = 0; j < panels; j++) {
        const int64_t pn = n - j * panel < panel ? n - j * panel : panel;
        if (!packed_layout(src, wei, dst, k, pn, ldw, &part[j].md, &plain[j])) {
            free(part);
            free(plain);
            return SHARD_OK; /* the plain layout is the kernel's own */
        }
        part[j].offset = total;
        total += round_up(dnnl_memory_desc_get_size(&part[j].md));
    }
    void *block = NULL;
    if (posix_memalign(&block, PACK_ALIGN, total)) {
        free(part);
        free(plain);
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "packing weights: out of memory for %zu bytes", total);
    }
    shard_packed_t *p = block;
    *p = (shard_packed_t){src, wei, dst, k, n, panel, panels,
                          (packed_panel_t *)((char *)block + round_up(sizeof *p))};
    memcpy(p->part, part, (size_t)panels * sizeof *part);
    free(part);
    shard_status_t status = SHARD_OK;
    for (int64_t j = 0; j < panels && !status; j++) {
        const int64_t pn = n - j * panel < panel ? n - j * panel : panel;
        const char *from = (const char *)weights + (size_t)(j * panel * ldw) * wei_size;
        if (!reorder_into(&plain[j], from, &p->part[j].md, (char *)block + p->part[j].offset))
            status = shard_error_set(err, SHARD_ERR_NOMEM,
                                     "packing weights: oneDNN's reorder of a %lld x %lld "
                                     "weight failed", (long long)pn, (long long)k);
        /* every primitive the products will run, made now */
        for (int64_t rows = 0; !status && rows <= SHARD_MATMUL_ROWS; rows += SHARD_ROW_TILE)
            if (!get(src, wei, dst, rows ? rows : 1, k, pn, 0, pn, &p->part[j].md, err))
                status = err->code;
    }
    free(plain);
    if (status) {
        free(block);
        return status;
    }
    *packed = p;
    return SHARD_OK;
}

bool shard_packed_covers(const shard_packed_t *packed, int64_t o0, int64_t no)
{
    return o0 >= 0 && no > 0 && o0 % packed->panel == 0 && o0 + no <= packed->n &&
           (no % packed->panel == 0 || o0 + no == packed->n);
}

static void *grow_scratch(void **buffer, size_t *have, size_t need)
{
    if (need > *have) {
        pthread_once(&thread_key_once, make_thread_key);
        pthread_setspecific(thread_key, (void *)1); /* the destructor runs only for non-NULL */
        void *grown = realloc(*buffer, need);
        if (!grown)
            return NULL;
        *buffer = grown;
        *have = need;
    }
    return *buffer;
}

/* A panel's products go to its own rows, [m][pn], and are copied into the
 * wider ones: written straight into rows of stride no, some outputs came
 * out other bits than the same weights unpacked give
 * (tests/shard/test_kernels.c). */

bool shard_matmul_packed_rows(const shard_packed_t *packed, int64_t o0, int64_t no,
                              int64_t rows, const void *x, size_t src_size, void *y,
                              size_t dst_size)
{
    if (!shard_packed_covers(packed, o0, no))
        return false;
    const int64_t k = packed->k;
    for (int64_t j = o0 / packed->panel; j * packed->panel < o0 + no; j++) {
        const int64_t po = j * packed->panel;
        const int64_t pn = packed->n - po < packed->panel ? packed->n - po : packed->panel;
        const bool direct = pn == no;
        const void *w = (const char *)packed + packed->part[j].offset;
        for (int64_t r0 = 0; r0 < rows; r0 += SHARD_MATMUL_ROWS) {
            const int64_t m = rows - r0 < SHARD_MATMUL_ROWS ? rows - r0 : SHARD_MATMUL_ROWS;
            if (m % SHARD_ROW_TILE != 0 && m != 1)
                return false; /* only fixed-row primitives read packed weights */
            shard_error_t err = {0};
            const shard_matmul_t *mm = get(packed->src, packed->wei, packed->dst, m, k, pn, 0,
                                           pn, &packed->part[j].md, &err);
            char *out = direct ? (char *)y + (size_t)(r0 * no) * dst_size
                               : grow_scratch(&panel_out, &panel_out_size,
                                              (size_t)(m * pn) * dst_size);
            if (!mm || !out ||
                !shard_matmul_run(mm, m, (const char *)x + (size_t)(r0 * k) * src_size, w, out))
                return false;
            for (int64_t r = 0; !direct && r < m; r++)
                memcpy((char *)y + (size_t)((r0 + r) * no + po - o0) * dst_size,
                       out + (size_t)(r * pn) * dst_size, (size_t)pn * dst_size);
        }
    }
    return true;
}
