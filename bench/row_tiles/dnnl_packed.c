/* dnnl_packed.c: oneDNN matmul with the weights as the engine holds them
 * (W[n][k], read as a transposed B) against the same weights reordered once
 * into the layout the primitive asks for (format_tag_any), per data type and
 * row count. Prints GOP/s of both and their ratio, and whether the rows of
 * the two agree bit for bit.
 *   gcc -O2 -fopenmp -o /tmp/dnnl_packed bench/row_tiles/dnnl_packed.c -ldnnl
 *   OMP_NUM_THREADS=2 /tmp/dnnl_packed K N */
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(x)                                                                     \
    do {                                                                             \
        dnnl_status_t s_ = (x);                                                      \
        if (s_ != dnnl_success) {                                                    \
            fprintf(stderr, "dnnl_packed: %s failed (status %d)\n", #x, (int)s_);    \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t type_size(dnnl_data_type_t t)
{
    return t == dnnl_f32 || t == dnnl_s32 ? 4 : t == dnnl_bf16 ? 2 : 1;
}

typedef struct {
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    const char *impl;
} matmul_t;

static matmul_t make(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                     int64_t m, int64_t k, int64_t n, int packed)
{
    dnnl_memory_desc_t src_md, wei_md, dst_md;
    const dnnl_dims_t sd = {m, k}, ss = {k, 1}, wd = {k, n}, ws = {1, k}, dd = {m, n}, ds = {n, 1};
    CHECK(dnnl_memory_desc_init_by_strides(&src_md, 2, sd, src, ss));
    if (packed)
        CHECK(dnnl_memory_desc_init_by_tag(&wei_md, 2, wd, wei, dnnl_format_tag_any));
    else
        CHECK(dnnl_memory_desc_init_by_strides(&wei_md, 2, wd, wei, ws));
    CHECK(dnnl_memory_desc_init_by_strides(&dst_md, 2, dd, dst, ds));
    dnnl_matmul_desc_t desc;
    CHECK(dnnl_matmul_desc_init(&desc, &src_md, &wei_md, NULL, &dst_md));
    matmul_t mm = {0};
    CHECK(dnnl_primitive_desc_create(&mm.pd, &desc, NULL, engine, NULL));
    CHECK(dnnl_primitive_create(&mm.prim, mm.pd));
    dnnl_primitive_desc_query(mm.pd, dnnl_query_impl_info_str, 0, &mm.impl);
    return mm;
}

static dnnl_memory_t plain(int64_t r, int64_t c, const int64_t st[2], dnnl_data_type_t t, void *p)
{
    dnnl_memory_desc_t md;
    const dnnl_dims_t dims = {r, c}, strides = {st[0], st[1]};
    dnnl_memory_t mem;
    CHECK(dnnl_memory_desc_init_by_strides(&md, 2, dims, t, strides));
    CHECK(dnnl_memory_create(&mem, &md, engine, p));
    return mem;
}

static double run(matmul_t *mm, dnnl_memory_t src, dnnl_memory_t wei, dnnl_memory_t dst,
                  int64_t flops)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
    CHECK(dnnl_primitive_execute(mm->prim, stream, 3, args));
    CHECK(dnnl_stream_wait(stream));
    int reps = 0;
    double t0 = now(), t;
    do {
        CHECK(dnnl_primitive_execute(mm->prim, stream, 3, args));
        CHECK(dnnl_stream_wait(stream));
        reps++;
    } while ((t = now() - t0) < 0.4);
    return (double)flops * reps / t * 1e-9;
}

int main(int argc, char **argv)
{
    const int64_t k = argc > 1 ? atoll(argv[1]) : 1024, n = argc > 2 ? atoll(argv[2]) : 4096;
    CHECK(dnnl_engine_create(&engine, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    const dnnl_data_type_t types[3][3] = {{dnnl_f32, dnnl_f32, dnnl_f32},
                                          {dnnl_bf16, dnnl_bf16, dnnl_f32},
                                          {dnnl_s8, dnnl_s8, dnnl_s32}};
    const char *names[3] = {"fp32", "bf16", "int8"};
    const int64_t rows[] = {1, 32, 256};
    srand(7);
    for (int ti = 0; ti < 3; ti++) {
        const dnnl_data_type_t st = types[ti][0], wt = types[ti][1], dt = types[ti][2];
        const size_t ss = type_size(st), ws = type_size(wt), ds = type_size(dt);
        unsigned char *w = malloc((size_t)(k * n) * ws), *x = malloc((size_t)(256 * k) * ss);
        for (size_t i = 0; i < (size_t)(k * n) * ws; i++)
            w[i] = (unsigned char)(rand() & (ti == 0 ? 0x3f : 0x7f)); /* finite floats */
        for (size_t i = 0; i < (size_t)(256 * k) * ss; i++)
            x[i] = (unsigned char)(rand() & (ti == 0 ? 0x3f : 0x7f));
        if (ti == 1)
            for (size_t i = 1; i < (size_t)(k * n) * 2; i += 2)
                w[i] = 0x3f, x[i % ((size_t)(256 * k) * 2)] = 0x3f;
        for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++) {
            const int64_t m = rows[ri];
            matmul_t a = make(st, wt, dt, m, k, n, 0), b = make(st, wt, dt, m, k, n, 1);
            const int64_t xs[2] = {k, 1}, wst[2] = {1, k}, dst_st[2] = {n, 1};
            void *ya = calloc((size_t)(m * n), ds), *yb = calloc((size_t)(m * n), ds);
            dnnl_memory_t src = plain(m, k, xs, st, x), wa = plain(k, n, wst, wt, w);
            dnnl_memory_t da = plain(m, n, dst_st, dt, ya), db = plain(m, n, dst_st, dt, yb);
            const dnnl_memory_desc_t *packed_md = dnnl_primitive_desc_query_md(
                b.pd, dnnl_query_weights_md, 0);
            dnnl_memory_t wb;
            CHECK(dnnl_memory_create(&wb, packed_md, engine, DNNL_MEMORY_ALLOCATE));
            const dnnl_memory_desc_t *plain_md;
            CHECK(dnnl_memory_get_memory_desc(wa, &plain_md));
            dnnl_primitive_desc_t rpd;
            dnnl_primitive_t reorder;
            CHECK(dnnl_reorder_primitive_desc_create(&rpd, plain_md, engine, packed_md, engine,
                                                     NULL));
            CHECK(dnnl_primitive_create(&reorder, rpd));
            dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, wa}, {DNNL_ARG_TO, wb}};
            CHECK(dnnl_primitive_execute(reorder, stream, 2, rargs));
            CHECK(dnnl_stream_wait(stream));
            const int64_t flops = 2 * m * k * n;
            const double ga = run(&a, src, wa, da, flops), gb = run(&b, src, wb, db, flops);
            printf("k=%lld n=%lld precision=%s rows=%lld plain_gops=%.1f (%s) packed_gops=%.1f "
                   "(%s) ratio=%.2f\n",
                   (long long)k, (long long)n, names[ti], (long long)m, ga, a.impl, gb, b.impl,
                   gb / ga);
            printf("  rows equal bit for bit: %s\n",
                   memcmp(ya, yb, (size_t)(m * n) * ds) ? "no" : "yes");
            free(ya);
            free(yb);
        }
        free(w);
        free(x);
    }
    return 0;
}
