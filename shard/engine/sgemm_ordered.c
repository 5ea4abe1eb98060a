/* sgemm_ordered.c: fp32 products whose every output is summed in one order
 * fixed by K alone, for CPUs with AVX2 but no AVX-512.
 *
 * There, the library kernels are not batch invariant: OpenBLAS's AVX2
 * sgemm gives a row other bits at another place in the call, whatever the
 * row tile, and oneDNN limited to AVX2 differs too (bench/row_tiles.md).
 * Here each output y[r][o] is a dot product of x's row r and W's row o,
 * both read along k as stored: eight lanes each take every eighth k in
 * order (one FMA chain per lane, the tail of K masked into the same
 * chains), then the lanes are added in one fixed tree. A tile of 4 rows by
 * 3 outputs shares the loads; rows or outputs missing at an edge are
 * computed as copies of the last real one, so every output goes through
 * exactly the same instructions wherever it sits, whatever the row count
 * and thread count. */
#include "engine_internal.h"

#include <immintrin.h>
#include <stdint.h>

enum { TILE_ROWS = 4, TILE_OUTPUTS = 3, LANES = 8 };
/* Rows of x and outputs of W per block: 64 rows of K floats and 48
 * weight rows stay in L2 while the 4 x 3 tiles sweep them. */
enum { BLOCK_ROWS = 64, BLOCK_OUTPUTS = 48 };

bool shard_sgemm_ordered_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

__attribute__((target("avx2,fma"))) static inline float lanes_total(__m256 v)
{
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

/* y[i][j] = x_i . w_j over k < nc for the tile's 4 rows and 3 outputs. */
__attribute__((target("avx2,fma"))) static void tile(const float *const x[TILE_ROWS],
                                                     const float *const w[TILE_OUTPUTS],
                                                     int64_t nc, __m256i tail_mask,
                                                     float out[TILE_ROWS][TILE_OUTPUTS])
{
    __m256 acc[TILE_ROWS][TILE_OUTPUTS];
    for (int i = 0; i < TILE_ROWS; i++)
        for (int j = 0; j < TILE_OUTPUTS; j++)
            acc[i][j] = _mm256_setzero_ps();
    const int64_t whole = nc - nc % LANES;
    for (int64_t k = 0; k < whole; k += LANES) {
        const __m256 w0 = _mm256_loadu_ps(w[0] + k), w1 = _mm256_loadu_ps(w[1] + k),
                     w2 = _mm256_loadu_ps(w[2] + k);
        for (int i = 0; i < TILE_ROWS; i++) {
            const __m256 xi = _mm256_loadu_ps(x[i] + k);
            acc[i][0] = _mm256_fmadd_ps(xi, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(xi, w1, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(xi, w2, acc[i][2]);
        }
    }
    if (whole < nc) { /* masked lanes read 0 and add x * 0 = 0 to their chain */
        const __m256 w0 = _mm256_maskload_ps(w[0] + whole, tail_mask),
                     w1 = _mm256_maskload_ps(w[1] + whole, tail_mask),
                     w2 = _mm256_maskload_ps(w[2] + whole, tail_mask);
        for (int i = 0; i < TILE_ROWS; i++) {
            const __m256 xi = _mm256_maskload_ps(x[i] + whole, tail_mask);
            acc[i][0] = _mm256_fmadd_ps(xi, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(xi, w1, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(xi, w2, acc[i][2]);
        }
    }
    for (int i = 0; i < TILE_ROWS; i++)
        for (int j = 0; j < TILE_OUTPUTS; j++)
            out[i][j] = lanes_total(acc[i][j]);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__attribute__((target("avx2,fma"))) static void block(int64_t r0, int64_t rows, int64_t o0,
                                                      int64_t no, int64_t nc, const float *x,
                                                      int64_t ldx, const float *w, int64_t ldw,
                                                      const float *bias, float *y, int64_t ldy)
{
    int32_t lanes[LANES];
    for (int l = 0; l < LANES; l++)
        lanes[l] = l < nc % LANES ? -1 : 0;
    const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)lanes);
    for (int64_t o = o0; o < o0 + no; o += TILE_OUTPUTS) {
        const float *wt[TILE_OUTPUTS];
        for (int j = 0; j < TILE_OUTPUTS; j++)
            wt[j] = w + min64(o + j, o0 + no - 1) * ldw;
        for (int64_t r = r0; r < r0 + rows; r += TILE_ROWS) {
            const float *xt[TILE_ROWS];
            for (int i = 0; i < TILE_ROWS; i++)
                xt[i] = x + min64(r + i, r0 + rows - 1) * ldx;
            float out[TILE_ROWS][TILE_OUTPUTS];
            tile(xt, wt, nc, tail_mask, out);
            for (int i = 0; i < TILE_ROWS && r + i < r0 + rows; i++)
                for (int j = 0; j < TILE_OUTPUTS && o + j < o0 + no; j++)
                    y[(r + i) * ldy + o + j] = out[i][j] + (bias ? bias[o + j] : 0.0f);
        }
    }
}

void shard_sgemm_ordered(int64_t rows, int64_t no, int64_t nc, const float *x, int64_t ldx,
                         const float *w, int64_t ldw, const float *bias, float *y, int64_t ldy)
{
    if (rows <= 0 || no <= 0)
        return;
    const int64_t output_blocks = (no + BLOCK_OUTPUTS - 1) / BLOCK_OUTPUTS;
    const int64_t row_blocks = (rows + BLOCK_ROWS - 1) / BLOCK_ROWS;
    /* Threads split the outputs: a block's weights are read by one thread. */
#pragma omp parallel for schedule(static) collapse(2) if (rows * no * nc >= (int64_t)1 << 18)
    for (int64_t ob = 0; ob < output_blocks; ob++)
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            const int64_t o0 = ob * BLOCK_OUTPUTS, r0 = rb * BLOCK_ROWS;
            block(r0, min64(BLOCK_ROWS, rows - r0), o0, min64(BLOCK_OUTPUTS, no - o0), nc, x, ldx,
                  w, ldw, bias, y, ldy);
        }
}
