/* kernels_bf16.c: bf16 linear layers. Weights are held in bf16 (half of
 * fp32's memory). Where the CPU has bf16 instructions (AVX512_BF16, as
 * oneDNN finds at run time) the inputs are rounded to bf16 and oneDNN's
 * bf16 matmul accumulates in fp32. Elsewhere (AVX2) the explicit fallback
 * of shard_model_precision_note: each tile of BF16_TILE output channels is
 * widened to fp32 (exact) for an sgemm, so the weights still take half the
 * memory but the products are fp32. */
#include "dnnl_matmul.h"
#include "engine_internal.h"

#include <cblas.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>

enum { BF16_TILE = 128 };

bool shard_bf16_native(void)
{
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
           (unsigned)dnnl_cpu_isa_avx512_core_bf16;
}

shard_status_t shard_bf16_prepare(int64_t k, int64_t n, int64_t ldw, shard_error_t *err)
{
    if (!shard_bf16_native())
        return SHARD_OK; /* the fallback needs no primitive */
    return shard_matmul_prepare(dnnl_bf16, dnnl_bf16, dnnl_f32, k, n, ldw, err);
}

static _Thread_local void *thread_work;
static _Thread_local size_t thread_work_size;

static void *work(size_t size)
{
    if (size > thread_work_size) {
        void *grown = realloc(thread_work, size);
        if (!grown)
            return NULL;
        thread_work = grown;
        thread_work_size = size;
    }
    return thread_work;
}

static void fill_nan(float *y, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = NAN;
}

SHARD_AVX2_CLONES
static void add_bias_row(const float *b, int64_t no, float *y)
{
    for (int64_t o = 0; o < no; o++)
        y[o] += b[o];
}

static void add_bias(const float *b, int64_t rows, int64_t no, float *y)
{
    if (!b)
        return;
#pragma omp parallel for schedule(static) if (rows * no >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        add_bias_row(b, no, y + r * no);
}

SHARD_AVX2_CLONES
static void round_row_to_bf16(const float *x, int64_t count, uint16_t *xb)
{
    for (int64_t i = 0; i < count; i++)
        xb[i] = shard_float_to_bf16(x[i]);
}

static bool native(const shard_linear_t *l, int64_t o0, int64_t no, int64_t c0, int64_t nc,
                   const float *x, int64_t rows, float *y)
{
    uint16_t *xb = work((size_t)(rows * nc) * sizeof *xb);
    if (!xb)
        return false;
#pragma omp parallel for schedule(static) if (rows * nc >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        round_row_to_bf16(x + r * nc, nc, xb + r * nc);
    if (shard_linear_packed_covers(l, o0, no, c0, nc))
        return shard_matmul_packed_rows(l->packed, o0, no, rows, xb, sizeof *xb, y, sizeof *y);
    return l->bf16 && shard_matmul_rows(dnnl_bf16, dnnl_bf16, dnnl_f32, nc, no, l->in, rows, xb,
                                        sizeof *xb, l->bf16 + o0 * l->in + c0, y, sizeof *y);
}

/* y[rows][no] = x W^T, tile by tile of widened weights. */
static bool widened(const shard_linear_t *l, int64_t o0, int64_t no, int64_t c0, int64_t nc,
                    const float *x, int64_t rows, float *y)
{
    float *tile = work((size_t)(BF16_TILE * nc) * sizeof *tile);
    if (!tile)
        return false;
    for (int64_t t0 = 0; t0 < no; t0 += BF16_TILE) {
        const int64_t tn = no - t0 < BF16_TILE ? no - t0 : BF16_TILE;
        for (int64_t o = 0; o < tn; o++) {
            const uint16_t *w = l->bf16 + (o0 + t0 + o) * l->in + c0;
            for (int64_t i = 0; i < nc; i++)
                tile[o * nc + i] = shard_bf16_to_float(w[i]);
        }
        if (shard_fp32_ordered()) /* batch invariant where the library is not */
            shard_sgemm_ordered(rows, tn, nc, x, nc, tile, nc, NULL, y + t0, no);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)tn,
                        (blasint)nc, 1.0f, x, (blasint)nc, tile, (blasint)nc, 0.0f, y + t0,
                        (blasint)no);
    }
    return true;
}

void shard_linear_bf16(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                       int64_t nc, const float *x, int64_t rows, bool bias, float *y)
{
    const bool ok = shard_bf16_native() ? native(linear, o0, no, c0, nc, x, rows, y)
                                        : widened(linear, o0, no, c0, nc, x, rows, y);
    if (!ok) {
        fill_nan(y, rows * no); /* out of memory mid-forward: NaN, never a wrong number */
        return;
    }
    add_bias(bias ? linear->bias ? linear->bias + o0 : NULL : NULL, rows, no, y);
}
