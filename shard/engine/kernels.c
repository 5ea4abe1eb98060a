/* kernels.c: the numeric building blocks. Matrix products go to BLAS; the
 * rest are simple loops over contiguous rows. The only file that reads
 * weight memory while computing (the linear/embedding seam) and the only
 * BLAS caller. */
#include "dnnl_matmul.h"
#include "engine_internal.h"

#include <cblas.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* fp32 products go to OpenBLAS where it runs an AVX-512 kernel made for
 * this CPU, to oneDNN's fp32 matmul on other AVX-512 CPUs, and to the
 * engine's own ordered kernel (sgemm_ordered.c) on CPUs with AVX2 alone.
 * OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels by CPU model number, and a model newer than it knows
 * gets an older kernel: on the Xeon of bench/row_tiles.md (family 6 model
 * 207) the SSE3 "Prescott" sgemm, 21 GFLOP/s a core against oneDNN's 109;
 * on the AMD EPYC of 2026-12-02 night (family 26, AVX-512) its AVX2
 * "Haswell" sgemm, 646 real tokens/s against oneDNN's 1121 (bench-engine,
 * enfr-1024, 1 thread). The AVX2 kernels also break batch invariance: a
 * row's sum depends on where it sits in the call, whatever the row tile
 * (bench/row_tiles.md), and so do oneDNN's AVX2 ones.
 * XLM_FP32_PRODUCTS=openblas|onednn|ordered overrides the choice
 * (benchmarks, tests of each path). */
static const char *const openblas_avx512_kernels[] = {
    "SkylakeX", "Cooperlake", "SapphireRapids",
};

typedef enum { FP32_OPENBLAS, FP32_ONEDNN, FP32_ORDERED } fp32_products_t;

static struct {
    pthread_once_t once;
    fp32_products_t products;
    char why[160];
} fp32_choice = {PTHREAD_ONCE_INIT, FP32_OPENBLAS, ""};

static bool openblas_kernel_is_avx512(const char *core)
{
    for (size_t i = 0; i < sizeof openblas_avx512_kernels / sizeof *openblas_avx512_kernels; i++)
        if (strcasecmp(core, openblas_avx512_kernels[i]) == 0)
            return true;
    return false;
}

/* On a CPU without AVX-512 neither library's AVX2 kernels are batch
 * invariant: the engine's own ordered kernel (sgemm_ordered.c) runs there.
 * On an AVX-512 CPU: OpenBLAS where it runs an AVX-512 kernel, else
 * oneDNN's brgemm. */
static void choose_fp32_products(void)
{
    const char *forced = getenv("XLM_FP32_PRODUCTS");
    const char *core = openblas_get_corename();
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    const bool onednn_avx2 = (isa & (unsigned)dnnl_cpu_isa_avx2) == (unsigned)dnnl_cpu_isa_avx2;
    const bool cpu_avx512 =
        (isa & (unsigned)dnnl_cpu_isa_avx512_core) == (unsigned)dnnl_cpu_isa_avx512_core;
    const bool ordered = shard_sgemm_ordered_available();
    const bool honoured = forced && (strcmp(forced, "onednn") == 0 ||
                                     strcmp(forced, "openblas") == 0 ||
                                     (strcmp(forced, "ordered") == 0 && ordered));
    if (honoured) {
        fp32_choice.products = strcmp(forced, "onednn") == 0    ? FP32_ONEDNN
                               : strcmp(forced, "ordered") == 0 ? FP32_ORDERED
                                                                : FP32_OPENBLAS;
        snprintf(fp32_choice.why, sizeof fp32_choice.why, "XLM_FP32_PRODUCTS=%s", forced);
        return;
    }
    if (cpu_avx512 && !openblas_kernel_is_avx512(core) && onednn_avx2) {
        fp32_choice.products = FP32_ONEDNN;
        snprintf(fp32_choice.why, sizeof fp32_choice.why,
                 "OpenBLAS runs its %s kernel on this CPU", core);
    } else if (!cpu_avx512 && ordered) {
        fp32_choice.products = FP32_ORDERED;
        snprintf(fp32_choice.why, sizeof fp32_choice.why,
                 "no AVX-512 here; OpenBLAS's %s kernel depends on the batch", core);
    } else {
        snprintf(fp32_choice.why, sizeof fp32_choice.why, "OpenBLAS kernel %s", core);
    }
    if (forced) /* named, so that a run never claims what it could not have */
        snprintf(fp32_choice.why + strlen(fp32_choice.why),
                 sizeof fp32_choice.why - strlen(fp32_choice.why),
                 "; XLM_FP32_PRODUCTS=%.16s is not available", forced);
}

bool shard_fp32_onednn(void)
{
    pthread_once(&fp32_choice.once, choose_fp32_products);
    return fp32_choice.products == FP32_ONEDNN;
}

bool shard_fp32_ordered(void)
{
    pthread_once(&fp32_choice.once, choose_fp32_products);
    return fp32_choice.products == FP32_ORDERED;
}

const char *shard_fp32_products_reason(void)
{
    pthread_once(&fp32_choice.once, choose_fp32_products);
    return fp32_choice.why;
}

/* Batch invariance: a row's result must not depend on what else shares its
 * batch. BLAS picks kernels by shape (gemv for one row, small-matrix kernels
 * for small products, edge kernels for a remainder of rows), and those sum a
 * row's products in other orders. So every product runs with a row count
 * that is a multiple of SHARD_ROW_TILE: the rows up to the last full tile in
 * place, the rest copied into a zero-padded tile of their own. Measured on
 * OpenBLAS 0.3.21 (bench/row_tiles.md): rows padded so come out bit-identical
 * for every row count and thread count tried, where raw row counts differ
 * below about 32 rows. */

/* One product of a sub-matrix of a layer: y[rows][no] = x[rows][nc]
 * W[o0:o0+no, c0:c0+nc]^T (+ b[o0:o0+no] when bias); y's rows are ldy
 * floats apart (0: no, packed). Only fp32 writes strided rows (Q, K and V
 * into one [T][3d] buffer straight from the mapped weights). */
typedef struct {
    const shard_linear_t *linear;
    int64_t o0, no, c0, nc;
    bool bias;
    int64_t ldy;
} product_t;

static int64_t product_ldy(const product_t *p) { return p->ldy ? p->ldy : p->no; }

static _Thread_local float *fp32_out;
static _Thread_local size_t fp32_out_count;

static float *tile_buffer(float **buffer, size_t *have, size_t count);

/* oneDNN writes packed rows: strided ones (Q, K, V) go through a buffer. */
static void product_fp32_onednn(const product_t *p, const float *x, int64_t rows, float *y)
{
    const shard_linear_t *l = p->linear;
    const float *b = p->bias && l->bias ? l->bias + p->o0 : NULL;
    const int64_t ldy = product_ldy(p);
    float *out = ldy == p->no ? y : tile_buffer(&fp32_out, &fp32_out_count,
                                                 (size_t)(rows * p->no));
    const bool ok =
        out && (shard_linear_packed_covers(l, p->o0, p->no, p->c0, p->nc)
                    ? shard_matmul_packed_rows(l->packed, p->o0, p->no, rows, x, sizeof *x, out,
                                               sizeof *out)
                    : l->weight &&
                          shard_matmul_rows(dnnl_f32, dnnl_f32, dnnl_f32, p->nc, p->no, l->in, rows,
                                        x, sizeof *x, l->weight + p->o0 * l->in + p->c0, out,
                                        sizeof *out));
    if (!ok) {
        for (int64_t r = 0; r < rows; r++) /* out of memory: NaN, never a wrong number */
            for (int64_t i = 0; i < p->no; i++)
                y[r * ldy + i] = NAN;
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        float *dst = y + r * ldy;
        const float *src = out + r * p->no;
        for (int64_t i = 0; i < p->no; i++)
            dst[i] = src[i] + (b ? b[i] : 0.0f);
    }
}

static void product_fp32(const product_t *p, const float *x, int64_t rows, float *y)
{
    if (shard_fp32_onednn()) {
        product_fp32_onednn(p, x, rows, y);
        return;
    }
    const shard_linear_t *l = p->linear;
    const float *b = p->bias && l->bias ? l->bias + p->o0 : NULL;
    const int64_t ldy = product_ldy(p);
    if (shard_fp32_ordered()) {
        shard_sgemm_ordered(rows, p->no, p->nc, x, p->nc, l->weight + p->o0 * l->in + p->c0,
                            l->in, b, y, ldy);
        return;
    }
    for (int64_t r = 0; b && r < rows; r++)
        memcpy(y + r * ldy, b, (size_t)p->no * sizeof *y);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)p->no,
                (blasint)p->nc, 1.0f, x, (blasint)p->nc, l->weight + p->o0 * l->in + p->c0,
                (blasint)l->in, b ? 1.0f : 0.0f, y, (blasint)ldy);
}

static void product_any(const product_t *p, const float *x, int64_t rows, float *y)
{
    switch (p->linear->type) {
    case SHARD_PRECISION_INT8:
        shard_linear_int8(p->linear, p->o0, p->no, p->c0, p->nc, x, rows, p->bias, y);
        return;
    case SHARD_PRECISION_BF16:
        shard_linear_bf16(p->linear, p->o0, p->no, p->c0, p->nc, x, rows, p->bias, y);
        return;
    case SHARD_PRECISION_FP32:
    case SHARD_PRECISION_COUNT_: product_fp32(p, x, rows, y); return;
    }
}

/* The padded tile of the calling thread: [SHARD_ROW_TILE][nc] in, [..][no] out. */
static _Thread_local float *tile_x, *tile_y;
static _Thread_local size_t tile_x_count, tile_y_count;

/* Work space of the calling thread, freed when the thread ends: states
 * run on threads that come and go. */
enum { THREAD_BUFFERS_MAX = 32 };
static _Thread_local void **thread_buffers[THREAD_BUFFERS_MAX];
static _Thread_local int thread_buffer_count;
static pthread_key_t thread_buffers_key;
static pthread_once_t thread_buffers_once = PTHREAD_ONCE_INIT;

static void free_thread_buffers(void *unused)
{
    (void)unused;
    for (int i = 0; i < thread_buffer_count; i++) {
        free(*thread_buffers[i]);
        *thread_buffers[i] = NULL;
    }
    thread_buffer_count = 0;
}

static void make_thread_buffers_key(void)
{
    pthread_key_create(&thread_buffers_key, free_thread_buffers);
}

void *shard_thread_buffer(void **buffer, size_t *have, size_t need)
{
    if (need <= *have && *buffer)
        return *buffer;
    if (!*buffer) { /* first use on this thread: freed with it */
        if (thread_buffer_count == THREAD_BUFFERS_MAX)
            return NULL;
        pthread_once(&thread_buffers_once, make_thread_buffers_key);
        pthread_setspecific(thread_buffers_key, (void *)1); /* destructors run for non-NULL */
        thread_buffers[thread_buffer_count++] = buffer;
        *have = 0;
    }
    void *grown = realloc(*buffer, need ? need : 1);
    if (!grown)
        return NULL;
    *buffer = grown;
    *have = need;
    return grown;
}

static float *tile_buffer(float **buffer, size_t *have, size_t count)
{
    size_t bytes = *have * sizeof **buffer;
    float *out = shard_thread_buffer((void **)buffer, &bytes, count * sizeof **buffer);
    *have = bytes / sizeof **buffer;
    return out;
}

static atomic_uint_fast64_t products_finished;

uint64_t shard_work_count(void) { return atomic_load_explicit(&products_finished, memory_order_relaxed); }

static void padded_product(const product_t *p, const float *x, int64_t rows, float *y);

static void product(const product_t *p, const float *x, int64_t rows, float *y)
{
    padded_product(p, x, rows, y);
    atomic_fetch_add_explicit(&products_finished, 1, memory_order_relaxed);
}

/* oneDNN's brgemm sums each output over k in one order whatever the row
 * count of its primitive, so a single row (a cached generation step) runs
 * as itself, a third of the time of a padded tile (1024 x 4096 on 1 thread:
 * 0.63 against 1.83 ms); tests/shard/test_kernels.c checks it gives the
 * padded tile's bits on the machine it runs on. OpenBLAS's one-row path
 * (gemv) sums in another order. */
static bool one_row_as_itself(const product_t *p)
{
    switch (p->linear->type) {
    case SHARD_PRECISION_INT8: return true;
    case SHARD_PRECISION_BF16: return shard_bf16_native();
    case SHARD_PRECISION_FP32:
    case SHARD_PRECISION_COUNT_: return shard_fp32_onednn() || shard_fp32_ordered();
    }
    return false;
}

static void padded_product(const product_t *p, const float *x, int64_t rows, float *y)
{
    if (rows <= 0)
        return;
    if (rows == 1 && one_row_as_itself(p)) {
        product_any(p, x, 1, y);
        return;
    }
    const int64_t full = rows - rows % SHARD_ROW_TILE, rest = rows - full;
    if (full > 0)
        product_any(p, x, full, y);
    if (rest == 0)
        return;
    float *px = tile_buffer(&tile_x, &tile_x_count, (size_t)(SHARD_ROW_TILE * p->nc));
    float *py = tile_buffer(&tile_y, &tile_y_count, (size_t)(SHARD_ROW_TILE * p->no));
    if (!px || !py) { /* out of memory mid-forward: NaN, never a wrong number */
        for (int64_t r = 0; r < rest; r++)
            for (int64_t i = 0; i < p->no; i++)
                y[(full + r) * product_ldy(p) + i] = NAN;
        return;
    }
    memcpy(px, x + full * p->nc, (size_t)(rest * p->nc) * sizeof *px);
    memset(px + rest * p->nc, 0, (size_t)((SHARD_ROW_TILE - rest) * p->nc) * sizeof *px);
    const product_t packed = {p->linear, p->o0, p->no, p->c0, p->nc, p->bias, 0};
    product_any(&packed, px, SHARD_ROW_TILE, py);
    const int64_t ldy = product_ldy(p);
    for (int64_t r = 0; r < rest; r++)
        memcpy(y + (full + r) * ldy, py + r * p->no, (size_t)p->no * sizeof *y);
}

void shard_linear(const shard_linear_t *linear, const float *x, int64_t rows, float *y)
{
    const product_t p = {linear, 0, linear->out, 0, linear->in, true, 0};
    product(&p, x, rows, y);
}

void shard_linear_qkv(const shard_layer_t *layer, const float *x, int64_t rows, float *qkv)
{
    if (layer->qkv.out) {
        shard_linear(&layer->qkv, x, rows, qkv);
        return;
    }
    const shard_linear_t *parts[3] = {&layer->q, &layer->k, &layer->v};
    for (int j = 0; j < 3; j++) {
        const product_t p = {parts[j], 0, parts[j]->out, 0, parts[j]->in, true,
                             3 * parts[j]->out};
        product(&p, x, rows, qkv + j * parts[j]->out);
    }
}

void shard_linear_single(const shard_linear_t *linear, const float *x, float *y)
{
    if (linear->type != SHARD_PRECISION_FP32 || shard_fp32_onednn() || shard_fp32_ordered()) {
        shard_linear(linear, x, 1, y);
        return;
    }
    shard_linear_zero_input(linear, y);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)linear->out, (blasint)linear->in, 1.0f,
                linear->weight, (blasint)linear->in, x, 1, 1.0f, y, 1);
    atomic_fetch_add_explicit(&products_finished, 1, memory_order_relaxed);
}

void shard_linear_zero_input(const shard_linear_t *linear, float *y)
{
    if (linear->bias)
        memcpy(y, linear->bias, (size_t)linear->out * sizeof *y);
    else
        memset(y, 0, (size_t)linear->out * sizeof *y);
}

void shard_linear_outputs(const shard_linear_t *linear, int64_t first, int64_t count,
                          const float *x, int64_t rows, float *y)
{
    const product_t p = {linear, first, count, 0, linear->in, true, 0};
    product(&p, x, rows, y);
}

void shard_linear_rows_prepare(const shard_linear_t *linear, const float *x, int64_t rows,
                               shard_linear_rows_t *prepared)
{
    *prepared = (shard_linear_rows_t){x, rows, linear->in, NULL, NULL, NULL, rows};
    if (linear->type == SHARD_PRECISION_INT8)
        shard_int8_rows_prepare(x, rows, linear->in, prepared);
    else if (linear->type == SHARD_PRECISION_BF16)
        shard_bf16_rows_prepare(x, rows, linear->in, prepared);
}

void shard_linear_hidden_rows(const shard_linear_t *ffn_in, const shard_linear_t *ffn_out,
                              shard_activation_t activation, const float *x, int64_t rows,
                              float *ffn, shard_linear_rows_t *prepared)
{
    *prepared = (shard_linear_rows_t){NULL, rows, ffn_in->out, NULL, NULL, NULL, rows};
    if ((ffn_out->type == SHARD_PRECISION_INT8 &&
         shard_int8_hidden_rows(ffn_in, activation, x, rows, prepared)) ||
        (ffn_out->type == SHARD_PRECISION_BF16 &&
         shard_bf16_hidden_rows(ffn_in, activation, x, rows, prepared))) {
        atomic_fetch_add_explicit(&products_finished, 1, memory_order_relaxed);
        return;
    }
    shard_linear(ffn_in, x, rows, ffn);
    shard_activate(ffn, (size_t)rows * (size_t)ffn_in->out, activation);
    shard_linear_rows_prepare(ffn_out, ffn, rows, prepared);
}

void shard_linear_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                               const shard_linear_rows_t *prepared, float *scratch,
                               shard_row_use_fn *use, void *context)
{
    const int64_t rows = prepared->rows;
    if (rows <= 0)
        return;
    if (shard_int8_outputs_each(linear, first, count, prepared, scratch, use, context) ||
        shard_bf16_outputs_each(linear, first, count, prepared, use, context)) {
        atomic_fetch_add_explicit(&products_finished, 1, memory_order_relaxed);
        return;
    }
    shard_linear_outputs(linear, first, count, prepared->x, rows, scratch);
#pragma omp parallel for schedule(static) if (rows * count >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        use(context, r, scratch + r * count);
}

void shard_linear_columns(const shard_linear_t *linear, int64_t first, int64_t cols,
                          const float *x, int64_t rows, bool with_bias, float *y)
{
    const product_t p = {linear, 0, linear->out, first, cols, with_bias, 0};
    product(&p, x, rows, y);
}

void shard_embedding_copy(const shard_embedding_t *table, int64_t id, float *out)
{
    memcpy(out, table->weight + id * table->dim, (size_t)table->dim * sizeof *out);
}

void shard_embedding_add(const shard_embedding_t *table, int64_t id, float *out)
{
    shard_add(out, table->weight + id * table->dim, (size_t)table->dim);
}

void shard_set_threads(int threads)
{
    if (threads > 0) {
        openblas_set_num_threads(threads);
        omp_set_num_threads(threads); /* oneDNN's runtime (reduced precisions) */
    }
}

/* exp(x) for x <= 0 in float: Cody-Waite reduction and a degree-6
 * polynomial (about 1 ulp). Branch-free, and rounding by truncation of a
 * non-negative value, so that the loop vectorises even without SSE4.1. */
static inline float exp_nonpositive(float x_in)
{
    /* Below -87 the result would be denormal: 0, as a masked logit needs. */
    const float x = x_in < -87.0f ? -87.0f : x_in;
    const int32_t k = (int32_t)(0.5f - x * 1.44269504088896341f); /* -round(x / ln 2) */
    const float n = (float)-k;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (127 - k) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x_in < -87.0f ? 0.0f : p * scale;
}

/* The exact (erf) GELU, as XLM and torch's default gelu use. erf is the
 * Abramowitz-Stegun 7.1.26 form (|error| < 1.5e-7), the one torch's
 * vectorised CPU kernels use; glibc's scalar erff made GELU a sixth of a
 * layer's time. Built for AVX-512, AVX2 and the baseline, picked at load time
 * (kernels.c is compiled with -fno-trapping-math so that this vectorises). */
SHARD_AVX512_CLONES
static void gelu_run(float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const float v = x[i] * 0.70710678118654752440f;
        const float a = __builtin_fabsf(v);
        const float t = 1.0f / (1.0f + 0.3275911f * a);
        const float poly =
            ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
             0.254829592f) * t;
        const float e = 1.0f - poly * exp_nonpositive(-a * a);
        x[i] = 0.5f * x[i] * (1.0f + __builtin_copysignf(e, v));
    }
}

/* Elementwise and per-row loops share the engine's threads once they are
 * long enough to pay for a parallel region (a few microseconds). Each
 * element or row is computed by the same code whichever thread runs it,
 * so results do not depend on the thread count. The vectorised bodies
 * stay in their own (cloned) functions: GCC does not clone the outlined
 * body of a parallel loop for AVX2. */
enum { PARALLEL_CHUNK_FLOATS = 1 << 12 };

void shard_gelu(float *x, size_t count)
{
    const int64_t chunks = (int64_t)((count + PARALLEL_CHUNK_FLOATS - 1) / PARALLEL_CHUNK_FLOATS);
#pragma omp parallel for schedule(static) if (count >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t c = 0; c < chunks; c++) {
        const size_t start = (size_t)c * PARALLEL_CHUNK_FLOATS;
        gelu_run(x + start, count - start < PARALLEL_CHUNK_FLOATS ? count - start
                                                                   : PARALLEL_CHUNK_FLOATS);
    }
}

/* Sums of x[i] - shift (square: of its square) in float lanes over short
 * runs, the runs added in double: vectorised, and within ~1e-7 of a double
 * sum for the row sizes of these models. */
enum { SUM_LANES = 8, SUM_RUN = 64 };

static inline double lane_sum(const float *x, int64_t count, float shift, bool square)
{
    double total = 0.0;
    for (int64_t start = 0; start < count; start += SUM_RUN) {
        const int64_t n = count - start < SUM_RUN ? count - start : SUM_RUN;
        const float *v = x + start;
        float lanes[SUM_LANES] = {0};
        int64_t i = 0;
        for (; i + SUM_LANES <= n; i += SUM_LANES)
            for (int l = 0; l < SUM_LANES; l++) {
                const float c = v[i + l] - shift;
                lanes[l] += square ? c * c : c;
            }
        float run = 0.0f;
        for (; i < n; i++) {
            const float c = v[i] - shift;
            run += square ? c * c : c;
        }
        for (int l = 0; l < SUM_LANES; l++)
            run += lanes[l];
        total += run;
    }
    return total;
}

/* Two passes: the mean is subtracted before squaring, so rows with a large
 * offset keep their precision. */
SHARD_AVX2_CLONES
static void layer_norm_row(float *row, const float *residual, int64_t dim,
                           const shard_norm_t *norm, double eps)
{
    for (int64_t i = 0; residual && i < dim; i++)
        row[i] += residual[i];
    const float mean = (float)(lane_sum(row, dim, 0.0f, false) / (double)dim);
    const double var = lane_sum(row, dim, mean, true) / (double)dim;
    const float inv = (float)(1.0 / sqrt(var + eps));
    for (int64_t i = 0; i < dim; i++)
        row[i] = (row[i] - mean) * inv * norm->weight[i] + norm->bias[i];
}

void shard_layer_norm(float *x, int64_t rows, int64_t dim, const shard_norm_t *norm, double eps)
{
    shard_add_layer_norm(x, NULL, rows, dim, norm, eps);
}

void shard_add_layer_norm(float *x, const float *y, int64_t rows, int64_t dim,
                          const shard_norm_t *norm, double eps)
{
#pragma omp parallel for schedule(static) if (rows * dim >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        layer_norm_row(x + r * dim, y ? y + r * dim : NULL, dim, norm, eps);
}

typedef struct {
    float *x;
    int64_t dim;
    const shard_norm_t *norm;
    double eps;
} add_norm_t;

static void add_norm_row(void *context, int64_t row, const float *values)
{
    const add_norm_t *a = context;
    layer_norm_row(a->x + row * a->dim, values, a->dim, a->norm, a->eps);
}

void shard_linear_add_layer_norm(const shard_linear_t *linear,
                                 const shard_linear_rows_t *prepared, float *y, float *x,
                                 const shard_norm_t *norm, double eps)
{
    add_norm_t a = {x, linear->out, norm, eps};
    shard_linear_outputs_each(linear, 0, linear->out, prepared, y, add_norm_row, &a);
}

/* Maxima in vector lanes (GCC vector types: a running scalar max does not
 * vectorise), then over the lanes. Each step is the compare-select of the
 * serial loop, so the result is the serial loop's: a max is exact in any
 * order, NaNs after the first value are skipped by either, a NaN first
 * value stays. */
typedef float lanes_t __attribute__((vector_size(32)));
typedef int32_t lane_mask_t __attribute__((vector_size(32)));
enum { MAX_LANES = (int)(sizeof(lanes_t) / sizeof(float)) };

static inline __attribute__((always_inline)) lanes_t lanes_load(const float *x)
{
    lanes_t v;
    memcpy(&v, x, sizeof v);
    return v;
}

/* a > b ? a : b, lane by lane */
static inline __attribute__((always_inline)) lanes_t lanes_max(lanes_t a, lanes_t b)
{
    const lane_mask_t greater = a > b;
    lane_mask_t ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    const lane_mask_t picked = (greater & ai) | (~greater & bi);
    lanes_t out;
    memcpy(&out, &picked, sizeof out);
    return out;
}

static inline __attribute__((always_inline)) float lanes_fold(lanes_t lanes, float max)
{
    for (int l = 0; l < MAX_LANES; l++)
        max = lanes[l] > max ? lanes[l] : max;
    return max;
}

SHARD_AVX2_CLONES
float shard_max(const float *x, int64_t count)
{
    lanes_t a = {0}, b;
    for (int l = 0; l < MAX_LANES; l++)
        a[l] = x[0];
    b = a;
    int64_t i = 1;
    for (; i + 2 * MAX_LANES <= count; i += 2 * MAX_LANES) {
        a = lanes_max(lanes_load(x + i), a);
        b = lanes_max(lanes_load(x + i + MAX_LANES), b);
    }
    float max = lanes_fold(b, lanes_fold(a, x[0]));
    for (; i < count; i++)
        max = x[i] > max ? x[i] : max;
    return max;
}

SHARD_AVX2_CLONES
float shard_max_abs(const float *x, int64_t count)
{
    const lane_mask_t magnitude = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                   0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    lanes_t a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 2 * MAX_LANES <= count; i += 2 * MAX_LANES) {
        lane_mask_t u, v;
        const lanes_t xu = lanes_load(x + i), xv = lanes_load(x + i + MAX_LANES);
        memcpy(&u, &xu, sizeof u);
        memcpy(&v, &xv, sizeof v);
        u &= magnitude;
        v &= magnitude;
        lanes_t au, av;
        memcpy(&au, &u, sizeof au);
        memcpy(&av, &v, sizeof av);
        a = lanes_max(au, a);
        b = lanes_max(av, b);
    }
    float max = lanes_fold(b, lanes_fold(a, 0.0f));
    for (; i < count; i++) {
        const float m = __builtin_fabsf(x[i]);
        max = m > max ? m : max;
    }
    return max;
}

SHARD_AVX2_CLONES
void shard_softmax(float *x, int64_t count)
{
    if (count <= 0)
        return;
    const float max = shard_max(x, count);
    for (int64_t i = 0; i < count; i++)
        x[i] = exp_nonpositive(x[i] - max);
    const float inv = (float)(1.0 / lane_sum(x, count, 0.0f, false));
    for (int64_t i = 0; i < count; i++)
        x[i] *= inv;
}

/* sum of exp(x[i] - shift) over x[i] <= shift: lanes of float partial sums
 * over short runs (error ~1e-7 relative), runs added in double. */
SHARD_AVX2_CLONES
double shard_sum_exp(const float *x, int64_t count, float shift)
{
    enum { LANES = 8, RUN = 256 };
    double total = 0.0;
    for (int64_t start = 0; start < count; start += RUN) {
        const int64_t n = count - start < RUN ? count - start : RUN;
        const float *v = x + start;
        float lanes[LANES] = {0};
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES)
            for (int l = 0; l < LANES; l++)
                lanes[l] += exp_nonpositive(v[i + l] - shift);
        float run = 0.0f;
        for (; i < n; i++)
            run += exp_nonpositive(v[i] - shift);
        for (int l = 0; l < LANES; l++)
            run += lanes[l];
        total += run;
    }
    return total;
}

void shard_relu(float *x, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void shard_activate_serial(float *x, size_t count, shard_activation_t activation)
{
    if (activation == SHARD_ACT_GELU)
        gelu_run(x, count);
    else
        shard_activate(x, count, activation);
}

void shard_activate(float *x, size_t count, shard_activation_t activation)
{
    switch (activation) {
    case SHARD_ACT_TANH:
        for (size_t i = 0; i < count; i++)
            x[i] = tanhf(x[i]);
        break;
    case SHARD_ACT_RELU: shard_relu(x, count); break;
    case SHARD_ACT_GELU: shard_gelu(x, count); break;
    case SHARD_ACT_SIGMOID:
        for (size_t i = 0; i < count; i++)
            x[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    case SHARD_ACT_NONE:
    case SHARD_ACT_COUNT_: break;
    }
}

double shard_log_sum_exp(const float *x, int64_t count)
{
    const float max = shard_max(x, count);
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++)
        sum += exp((double)x[i] - (double)max);
    return (double)max + log(sum);
}

void shard_add(float *x, const float *y, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] += y[i];
}
