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

static void *grow(void **buffer, size_t *have, size_t need)
{
    if (need > *have) {
        void *grown = realloc(*buffer, need);
        if (!grown)
            return NULL;
        *buffer = grown;
        *have = need;
    }
    return *buffer;
}

/* q[i] = round(x[i] / s), s = max|x| / 127 (1 for a zero row); returns s. */
SHARD_AVX2_CLONES
static float quantise_row(const float *x, int64_t count, int8_t *q)
{
    float amax = 0.0f;
    for (int64_t i = 0; i < count; i++) {
        const float a = __builtin_fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    const float inv = 1.0f / scale;
    for (int64_t i = 0; i < count; i++)
        q[i] = (int8_t)(int32_t)rintf(x[i] * inv); /* |x * inv| <= 127; rintf inlines */
    return scale;
}

/* out[o] = a[o] * (s * ws[o]) + b[o] */
SHARD_AVX2_CLONES
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

void shard_linear_int8(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                       int64_t nc, const float *x, int64_t rows, bool bias, float *y)
{
    int8_t *q = grow((void **)&thread_q, &thread_q_size, (size_t)(rows * nc));
    int32_t *acc = grow((void **)&thread_acc, &thread_acc_size,
                        (size_t)(rows * no) * sizeof *acc);
    if (!q || !acc) {
        fill_nan(y, rows, no); /* out of memory mid-forward: NaN, never a wrong number */
        return;
    }
    float scales_stack[256];
    float *scales = rows <= 256 ? scales_stack : malloc((size_t)rows * sizeof *scales);
    if (!scales) {
        fill_nan(y, rows, no);
        return;
    }
    /* Rows spread over the engine's threads: each row's quantisation and
     * dequantisation depend on that row alone. */
#pragma omp parallel for schedule(static) if (rows * nc >= SHARD_PARALLEL_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        scales[r] = quantise_row(x + r * nc, nc, q + r * nc);
    const bool ok =
        shard_linear_packed_covers(linear, o0, no, c0, nc)
            ? shard_matmul_packed_rows(linear->packed, o0, no, rows, q, 1, acc, sizeof *acc)
            : linear->i8 && shard_matmul_rows(dnnl_s8, dnnl_s8, dnnl_s32, nc, no, linear->in,
                                              rows, q, 1, linear->i8 + o0 * linear->in + c0,
                                              acc, sizeof *acc);
    if (!ok) {
        fill_nan(y, rows, no);
    } else {
        const float *ws = linear->scale + o0;
        const float *b = bias && linear->bias ? linear->bias + o0 : NULL;
#pragma omp parallel for schedule(static) if (rows * no >= SHARD_PARALLEL_MIN_FLOATS)
        for (int64_t r = 0; r < rows; r++)
            dequantise_row(acc + r * no, no, scales[r], ws, b, y + r * no);
    }
    if (scales != scales_stack)
        free(scales);
}
