/* kernels_int8.c: int8 linear layers. Weights are quantised at load per
 * output channel (symmetric, model.c; to shard_int8_weight_max()); here activations are quantised per
 * row (token) to int8 with the row's own scale, the product accumulates in
 * int32 (oneDNN's s8s8s32 matmul: gemm kernels on AVX2, VNNI where the CPU
 * has it) and is dequantised to fp32 before the bias. Rounding and
 * dequantisation are per element, so a row's result depends on its own
 * values alone, not on what else is in the batch. */
#include "dnnl_matmul.h"
#include "engine_internal.h"

#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>

/* oneDNN's int8 gemm without VNNI (AVX2, AVX512 before VNNI) multiplies
 * with vpmaddubsw, whose int16 sums of two u8 x s8 products saturate: with
 * weights over the full +-127 every product of full-range values came out
 * wrong (bench/int8_saturation.md). Weights of 7 bits (+-63) keep
 * 2 x 255 x 63 < 32767; VNNI (vpdpbusd) accumulates in int32 and takes
 * the full range. */
int shard_int8_weight_max(void)
{
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    const unsigned vnni = (unsigned)dnnl_cpu_isa_avx512_core_vnni;
    return (isa & vnni) == vnni ? 127 : 63;
}

shard_status_t shard_int8_prepare(int64_t k, int64_t n, int64_t ldw, shard_error_t *err)
{
    return shard_matmul_prepare(dnnl_s8, dnnl_s8, dnnl_s32, k, n, ldw, err);
}

/* Work space of the calling thread: quantised rows and int32 products. */
static _Thread_local int8_t *thread_q;
static _Thread_local size_t thread_q_size;
static _Thread_local int32_t *thread_acc;
static _Thread_local size_t thread_acc_size;
static _Thread_local float *thread_scales;
static _Thread_local size_t thread_scales_size;

/* q[i] = round(x[i] / s), s = max|x| / 127 (1 for a zero row); returns s. */
SHARD_AVX512_CLONES
static float quantise_row(const float *x, int64_t count, int8_t *q)
{
    const float amax = shard_max_abs(x, count);
    const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    const float inv = 1.0f / scale;
    for (int64_t i = 0; i < count; i++)
        q[i] = (int8_t)(int32_t)rintf(x[i] * inv); /* |x * inv| <= 127; rintf inlines */
    return scale;
}

/* out[o] = a[o] * (s * ws[o]) + b[o] */
SHARD_AVX512_CLONES
static void dequantise_row(const int32_t *a, int64_t no, float s, const float *ws, const float *b,
                           float *out)
{
    if (b)
        for (int64_t o = 0; o < no; o++)
            out[o] = (float)a[o] * (s * ws[o]) + b[o];
    else
        for (int64_t o = 0; o < no; o++)
            out[o] = (float)a[o] * (s * ws[o]) + 0.0f;
}

static void fill_nan(float *y, int64_t rows, int64_t cols)
{
    for (int64_t i = 0; i < rows * cols; i++)
        y[i] = NAN;
}

/* acc[rows][no] = q[rows][nc] times outputs [o0, o0 + no) over inputs
 * [c0, c0 + nc) of the layer; rows a multiple of SHARD_ROW_TILE, or 1. */
static bool product_s32(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                        int64_t nc, const int8_t *q, int64_t rows, int32_t *acc)
{
    return shard_linear_packed_covers(linear, o0, no, c0, nc)
               ? shard_matmul_packed_rows(linear->packed, o0, no, rows, q, 1, acc, sizeof *acc)
               : linear->i8 && shard_matmul_rows(dnnl_s8, dnnl_s8, dnnl_s32, nc, no, linear->in,
                                                 rows, q, 1, linear->i8 + o0 * linear->in + c0,
                                                 acc, sizeof *acc);
}

/* Rows spread over the engine's threads: each row's quantisation (and
 * dequantisation) depends on that row alone. */
static void quantise_rows(const float *x, int64_t rows, int64_t cols, int8_t *q, float *scales)
{
#pragma omp parallel for schedule(static) if (rows * cols >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        scales[r] = quantise_row(x + r * cols, cols, q + r * cols);
}

void shard_linear_int8(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                       int64_t nc, const float *x, int64_t rows, bool bias, float *y)
{
    int8_t *q = shard_thread_buffer((void **)&thread_q, &thread_q_size, (size_t)(rows * nc));
    int32_t *acc = shard_thread_buffer((void **)&thread_acc, &thread_acc_size,
                                       (size_t)(rows * no) * sizeof *acc);
    float *scales = shard_thread_buffer((void **)&thread_scales, &thread_scales_size,
                                        (size_t)rows * sizeof *scales);
    if (!q || !acc || !scales) {
        fill_nan(y, rows, no); /* out of memory mid-forward: NaN, never a wrong number */
        return;
    }
    quantise_rows(x, rows, nc, q, scales);
    if (!product_s32(linear, o0, no, c0, nc, q, rows, acc)) {
        fill_nan(y, rows, no);
    } else {
        const float *ws = linear->scale + o0;
        const float *b = bias && linear->bias ? linear->bias + o0 : NULL;
#pragma omp parallel for schedule(static) if (rows * no >= SHARD_PARALLEL_MIN_FLOATS)
        for (int64_t r = 0; r < rows; r++)
            dequantise_row(acc + r * no, no, scales[r], ws, b, y + r * no);
    }
}

/* The prepared rows of the calling thread (shard_linear_rows_prepare): one
 * set at a time, reused by the next. The matrix products need a whole
 * number of row tiles, so the quantised rows carry zero rows up to the
 * tile (exact in int32: they change no real row). */
static _Thread_local struct {
    int8_t *q;
    float *scales;
    float *rows; /* [threads][hidden]: the feed-forward block's rows in cache */
    size_t q_size, scales_size, rows_size;
} prepared_work;

static int64_t padded_rows(int64_t rows)
{
    return rows <= 1 ? rows : (rows + SHARD_ROW_TILE - 1) / SHARD_ROW_TILE * SHARD_ROW_TILE;
}

/* Room for rows x cols quantised values (zero past rows); false when out of memory. */
static bool prepared_room(int64_t rows, int64_t cols, shard_linear_rows_t *prepared)
{
    const int64_t padded = padded_rows(rows);
    int8_t *q = shard_thread_buffer((void **)&prepared_work.q, &prepared_work.q_size,
                                    (size_t)(padded > 0 ? padded : 1) * (size_t)cols);
    float *scales = shard_thread_buffer((void **)&prepared_work.scales,
                                        &prepared_work.scales_size,
                                        (size_t)(rows > 0 ? rows : 1) * sizeof *scales);
    if (!q || !scales)
        return false;
    memset(q + rows * cols, 0, (size_t)((padded - rows) * cols));
    prepared->q = q;
    prepared->scales = scales;
    prepared->padded = padded;
    return true;
}

void shard_int8_rows_prepare(const float *x, int64_t rows, int64_t cols,
                             shard_linear_rows_t *prepared)
{
    if (!prepared_room(rows, cols, prepared))
        return; /* left as fp32 rows: each product quantises them itself */
    quantise_rows(x, rows, cols, prepared->q, prepared->scales);
}

bool shard_int8_hidden_rows(const shard_linear_t *ffn_in, shard_activation_t activation,
                            const float *x, int64_t rows, shard_linear_rows_t *prepared)
{
    if (ffn_in->type != SHARD_PRECISION_INT8 || rows <= 0)
        return false;
    const int64_t d = ffn_in->in, h = ffn_in->out, padded = padded_rows(rows);
    const int threads = omp_get_max_threads();
    int8_t *q_in = shard_thread_buffer((void **)&thread_q, &thread_q_size, (size_t)(padded * d));
    int32_t *acc = shard_thread_buffer((void **)&thread_acc, &thread_acc_size,
                                       (size_t)(padded * h) * sizeof *acc);
    float *row_work = shard_thread_buffer((void **)&prepared_work.rows, &prepared_work.rows_size,
                                          (size_t)threads * (size_t)h * sizeof *row_work);
    float *in_scales = shard_thread_buffer((void **)&thread_scales, &thread_scales_size,
                                           (size_t)rows * sizeof *in_scales);
    if (!q_in || !acc || !row_work || !in_scales || !prepared_room(rows, h, prepared))
        return false; /* the caller takes the steps apart, which fail with NaN if need be */
    memset(q_in + rows * d, 0, (size_t)((padded - rows) * d));
    quantise_rows(x, rows, d, q_in, in_scales);
    const bool ok = product_s32(ffn_in, 0, h, 0, d, q_in, padded, acc);
    int8_t *q_hidden = prepared->q;
    float *hidden_scales = prepared->scales;
    const float *b = ffn_in->bias;
    /* Each hidden row: dequantised with its bias, activated and quantised
     * again, in one thread's cache. */
#pragma omp parallel for schedule(static) if (rows * h >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++) {
        float *hidden = row_work + (size_t)omp_get_thread_num() * (size_t)h;
        if (ok)
            dequantise_row(acc + r * h, h, in_scales[r], ffn_in->scale, b, hidden);
        else
            fill_nan(hidden, 1, h); /* out of memory mid-forward: NaN, never a wrong number */
        shard_activate_serial(hidden, (size_t)h, activation);
        hidden_scales[r] = quantise_row(hidden, h, q_hidden + r * h);
    }
    return true;
}

bool shard_int8_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                             const shard_linear_rows_t *prepared, float *scratch,
                             shard_row_use_fn *use, void *context)
{
    if (linear->type != SHARD_PRECISION_INT8 || !prepared->q || prepared->cols != linear->in)
        return false;
    const int64_t rows = prepared->rows;
    int32_t *acc = shard_thread_buffer((void **)&thread_acc, &thread_acc_size,
                                       (size_t)(prepared->padded * count) * sizeof *acc);
    const bool ok = acc && product_s32(linear, first, count, 0, linear->in, prepared->q,
                                       prepared->padded, acc);
    const float *ws = linear->scale + first;
    const float *b = linear->bias ? linear->bias + first : NULL;
    /* Each row dequantised and used while it is in this thread's cache. */
#pragma omp parallel for schedule(static) if (rows * count >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++) {
        float *values = scratch + r * count;
        if (ok)
            dequantise_row(acc + r * count, count, prepared->scales[r], ws, b, values);
        else
            fill_nan(values, 1, count); /* out of memory mid-forward: NaN, never a wrong number */
        use(context, r, values);
    }
    return true;
}
