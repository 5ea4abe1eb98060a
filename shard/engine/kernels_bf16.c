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
#include <omp.h>
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
    return shard_thread_buffer(&thread_work, &thread_work_size, size);
}

static void fill_nan(float *y, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = NAN;
}

SHARD_AVX512_CLONES
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

SHARD_AVX512_CLONES
static void round_row_to_bf16(const float *x, int64_t count, uint16_t *xb)
{
    for (int64_t i = 0; i < count; i++)
        xb[i] = shard_float_to_bf16(x[i]);
}

/* y[rows][no] = xb[rows][nc] W[o0:o0+no, c0:c0+nc]^T on the bf16 instructions;
 * rows a multiple of SHARD_ROW_TILE, or 1. */
static bool product_bf16(const shard_linear_t *l, int64_t o0, int64_t no, int64_t c0,
                         int64_t nc, const uint16_t *xb, int64_t rows, float *y)
{
    if (shard_linear_packed_covers(l, o0, no, c0, nc))
        return shard_matmul_packed_rows(l->packed, o0, no, rows, xb, sizeof *xb, y, sizeof *y);
    return l->bf16 && shard_matmul_rows(dnnl_bf16, dnnl_bf16, dnnl_f32, nc, no, l->in, rows, xb,
                                        sizeof *xb, l->bf16 + o0 * l->in + c0, y, sizeof *y);
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
    return product_bf16(l, o0, no, c0, nc, xb, rows, y);
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

/* The prepared rows of the calling thread (shard_linear_rows_prepare) and
 * the products' fp32 outputs: one set at a time, reused by the next. Rows
 * past the real ones are zero up to the row tile. */
static _Thread_local struct {
    uint16_t *rows, *input;
    float *out;
    size_t rows_size, input_size, out_size;
} prepared_work;

/* A product's row made final: its bias added, or NaN where the product
 * failed (out of memory mid-forward: NaN, never a wrong number). */
static void finish_row(bool ok, const float *b, int64_t count, float *row)
{
    if (!ok)
        fill_nan(row, count);
    else if (b)
        add_bias_row(b, count, row);
}

static int64_t padded_rows(int64_t rows)
{
    return rows <= 1 ? rows : (rows + SHARD_ROW_TILE - 1) / SHARD_ROW_TILE * SHARD_ROW_TILE;
}

/* Rows of x rounded to bf16 into xb [padded][cols], the padding zero. */
static void round_rows(const float *x, int64_t rows, int64_t cols, uint16_t *xb)
{
    memset(xb + rows * cols, 0, (size_t)((padded_rows(rows) - rows) * cols) * sizeof *xb);
#pragma omp parallel for schedule(static) if (rows * cols >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        round_row_to_bf16(x + r * cols, cols, xb + r * cols);
}

void shard_bf16_rows_prepare(const float *x, int64_t rows, int64_t cols,
                             shard_linear_rows_t *prepared)
{
    if (!shard_bf16_native() || rows <= 0)
        return;
    const int64_t padded = padded_rows(rows);
    uint16_t *xb = shard_thread_buffer((void **)&prepared_work.rows, &prepared_work.rows_size,
                                       (size_t)(padded * cols) * sizeof *xb);
    if (!xb)
        return; /* left as fp32 rows: each product rounds them itself */
    round_rows(x, rows, cols, xb);
    prepared->bf16 = xb;
    prepared->padded = padded;
}

bool shard_bf16_hidden_rows(const shard_linear_t *ffn_in, shard_activation_t activation,
                            const float *x, int64_t rows, shard_linear_rows_t *prepared)
{
    if (ffn_in->type != SHARD_PRECISION_BF16 || !shard_bf16_native() || rows <= 0)
        return false;
    const int64_t d = ffn_in->in, h = ffn_in->out, padded = padded_rows(rows);
    uint16_t *xb = shard_thread_buffer((void **)&prepared_work.input, &prepared_work.input_size,
                                       (size_t)(padded * d) * sizeof *xb);
    float *out = shard_thread_buffer((void **)&prepared_work.out, &prepared_work.out_size,
                                     (size_t)(padded * h) * sizeof *out);
    uint16_t *hidden = shard_thread_buffer((void **)&prepared_work.rows,
                                           &prepared_work.rows_size,
                                           (size_t)(padded * h) * sizeof *hidden);
    if (!xb || !out || !hidden)
        return false; /* the caller takes the steps apart, which fail with NaN if need be */
    round_rows(x, rows, d, xb);
    const bool ok = product_bf16(ffn_in, 0, h, 0, d, xb, padded, out);
    memset(hidden + rows * h, 0, (size_t)((padded - rows) * h) * sizeof *hidden);
    const float *b = ffn_in->bias;
    /* Each hidden row: its bias, the activation and the rounding to bf16
     * in one thread's cache. */
#pragma omp parallel for schedule(static) if (rows * h >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++) {
        float *row = out + r * h;
        finish_row(ok, b, h, row);
        shard_activate_serial(row, (size_t)h, activation);
        round_row_to_bf16(row, h, hidden + r * h);
    }
    prepared->bf16 = hidden;
    prepared->padded = padded;
    return true;
}

bool shard_bf16_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                             const shard_linear_rows_t *prepared, shard_row_use_fn *use,
                             void *context)
{
    if (linear->type != SHARD_PRECISION_BF16 || !prepared->bf16 || prepared->cols != linear->in)
        return false;
    const int64_t rows = prepared->rows;
    float *out = shard_thread_buffer((void **)&prepared_work.out, &prepared_work.out_size,
                                     (size_t)(prepared->padded * count) * sizeof *out);
    if (!out)
        return false; /* the caller's own product, NaN if memory is short there too */
    const bool ok = product_bf16(linear, first, count, 0, linear->in, prepared->bf16,
                                 prepared->padded, out);
    const float *b = linear->bias ? linear->bias + first : NULL;
#pragma omp parallel for schedule(static) if (rows * count >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++) {
        float *values = out + r * count;
        finish_row(ok, b, count, values);
        use(context, r, values);
    }
    return true;
}
