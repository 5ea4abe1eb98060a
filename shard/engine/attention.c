/* attention.c: the self-attention of one head over many queries, in tiles
 * of queries against blocks of keys, each result with a reduction order of
 * its own (the batch invariance the engine promises). */
#include "engine_internal.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

/* Eight floats, loaded and stored unaligned through memcpy (GCC makes one
 * vmovups of it; the SSE build two). */
typedef float attn_vec_t __attribute__((vector_size(32)));
enum { ATTN_LANES = 8, ATTN_QUERIES = 4, ATTN_KEY_BLOCK = 2 * ATTN_LANES };

static inline attn_vec_t attn_load(const float *p)
{
    attn_vec_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void attn_store(float *p, attn_vec_t v)
{
    memcpy(p, &v, sizeof v);
}
static int64_t attn_padded_keys(int64_t n_keys)
{
    return (n_keys + ATTN_KEY_BLOCK - 1) / ATTN_KEY_BLOCK * ATTN_KEY_BLOCK;
}

size_t shard_attention_work_floats(int64_t n_keys, int64_t dh)
{
    return (size_t)((dh + ATTN_QUERIES) * attn_padded_keys(n_keys));
}

/* Each (query, key) score is one chain over the head's dims in order,
 * s = ((0 + q0 k0) + q1 k1) + ..., in its own lane, so that it has the same
 * bits however many queries share the tile and wherever the key falls in
 * its block. kt is the head's keys transposed, [dh][padded], zero beyond
 * the real keys. always_inline with a constant nq: one copy per tile
 * height, the accumulators in registers. */
static inline __attribute__((always_inline)) void
attn_score_tile(int nq, const float *const *qs, const float *kt, int64_t padded, int64_t dh,
                float scale, int64_t n_blocks, float *scores)
{
    for (int64_t j0 = 0; j0 < n_blocks * ATTN_KEY_BLOCK; j0 += ATTN_KEY_BLOCK) {
        attn_vec_t lo[ATTN_QUERIES] = {0}, hi[ATTN_QUERIES] = {0};
        for (int64_t c = 0; c < dh; c++) {
            const attn_vec_t k_lo = attn_load(kt + c * padded + j0);
            const attn_vec_t k_hi = attn_load(kt + c * padded + j0 + ATTN_LANES);
            for (int i = 0; i < nq; i++) {
                const float qc = qs[i][c]; /* broadcast by the scalar-vector product */
                lo[i] += qc * k_lo;
                hi[i] += qc * k_hi;
            }
        }
        for (int i = 0; i < nq; i++) {
            attn_store(scores + i * padded + j0, lo[i] * scale);
            attn_store(scores + i * padded + j0 + ATTN_LANES, hi[i] * scale);
        }
    }
}

/* ctx[i][c] = sum over keys j in order of p[i][j] v[j][c], one chain per
 * output element whatever the tile (a query's weights are zero past its
 * own keys, and adding +0 or -0 to a sum that started at +0 leaves it). */
static inline __attribute__((always_inline)) void
attn_value_tile(int nq, const float *p, int64_t padded, const float *v, int64_t ld,
                int64_t n_keys, int64_t dh, float *const *outs)
{
    int64_t c0 = 0;
    for (; c0 + 2 * ATTN_LANES <= dh; c0 += 2 * ATTN_LANES) {
        attn_vec_t lo[ATTN_QUERIES] = {0}, hi[ATTN_QUERIES] = {0};
        for (int64_t j = 0; j < n_keys; j++) {
            const attn_vec_t v_lo = attn_load(v + j * ld + c0);
            const attn_vec_t v_hi = attn_load(v + j * ld + c0 + ATTN_LANES);
            for (int i = 0; i < nq; i++) {
                const float pj = p[i * padded + j]; /* broadcast, as above */
                lo[i] += pj * v_lo;
                hi[i] += pj * v_hi;
            }
        }
        for (int i = 0; i < nq; i++) {
            attn_store(outs[i] + c0, lo[i]);
            attn_store(outs[i] + c0 + ATTN_LANES, hi[i]);
        }
    }
    for (; c0 + ATTN_LANES <= dh; c0 += ATTN_LANES) {
        attn_vec_t acc[ATTN_QUERIES] = {0};
        for (int64_t j = 0; j < n_keys; j++) {
            const attn_vec_t vj = attn_load(v + j * ld + c0);
            for (int i = 0; i < nq; i++)
                acc[i] += p[i * padded + j] * vj;
        }
        for (int i = 0; i < nq; i++)
            attn_store(outs[i] + c0, acc[i]);
    }
    for (; c0 < dh; c0++) {
        float acc[ATTN_QUERIES] = {0};
        for (int64_t j = 0; j < n_keys; j++)
            for (int i = 0; i < nq; i++)
                acc[i] += p[i * padded + j] * v[j * ld + c0];
        for (int i = 0; i < nq; i++)
            outs[i][c0] = acc[i];
    }
}

/* Up to ATTN_QUERIES queries of one head: scores, a softmax per query over
 * its own keys, weights zeroed past them, the weighted sum of values. */
static inline __attribute__((always_inline)) void
attn_queries(int nq, const float *const *qs, const int64_t *keys, const float *kt,
             int64_t padded, const float *v, int64_t ld, int64_t dh, float scale, float *p,
             float *const *outs)
{
    const int64_t most = keys[nq - 1] > keys[0] ? keys[nq - 1] : keys[0];
    attn_score_tile(nq, qs, kt, padded, dh, scale, attn_padded_keys(most) / ATTN_KEY_BLOCK, p);
    for (int i = 0; i < nq; i++) {
        float *row = p + i * padded;
        shard_softmax(row, keys[i]);
        for (int64_t j = keys[i]; j < most; j++)
            row[j] = 0.0f;
    }
    attn_value_tile(nq, p, padded, v, ld, most, dh, outs);
}

/* One head of n_queries queries (rows ldq apart) over keys and values rows
 * ld apart: query i attends to keys [0, first_keys + i) when causal, to all
 * n_keys otherwise. A query's context depends on its own q and the keys and
 * values it sees, never on which queries share its tile: scoring a row
 * alone, in a batch, or one step of a generation against a cache give the
 * same bits. Four queries a tile reuse each key and value load four times
 * (the per-query loop ran at 13 GFLOP/s on one thread). */
#if defined(__clang__)
#define ATTN_CLONES
#else
/* By feature: an "arch=haswell" clone is dispatched on the CPU model, and
 * this machine's is not a Haswell (the baseline ran; the last version's
 * loop lost FMA and AVX that way). */
#define ATTN_CLONES __attribute__((target_clones("avx2,fma", "default")))
#endif
ATTN_CLONES
void shard_attention_head(const float *q, int64_t ldq, int64_t n_queries, const float *k,
                          const float *v, int64_t ld, int64_t n_keys, int64_t first_keys,
                          bool causal, int64_t dh, float *work, float *ctx, int64_t ldctx)
{
    const int64_t padded = attn_padded_keys(n_keys);
    float *kt = work, *p = work + dh * padded;
    for (int64_t j = 0; j < n_keys; j++)
        for (int64_t c = 0; c < dh; c++)
            kt[c * padded + j] = k[j * ld + c];
    for (int64_t c = 0; c < dh; c++)
        memset(kt + c * padded + n_keys, 0, (size_t)(padded - n_keys) * sizeof *kt);
    const float scale = 1.0f / sqrtf((float)dh);
    for (int64_t i0 = 0; i0 < n_queries; i0 += ATTN_QUERIES) {
        const int nq = n_queries - i0 < ATTN_QUERIES ? (int)(n_queries - i0) : ATTN_QUERIES;
        const float *qs[ATTN_QUERIES];
        float *outs[ATTN_QUERIES];
        int64_t keys[ATTN_QUERIES];
        for (int i = 0; i < nq; i++) {
            qs[i] = q + (i0 + i) * ldq;
            outs[i] = ctx + (i0 + i) * ldctx;
            keys[i] = causal ? first_keys + i0 + i : n_keys;
        }
        switch (nq) {
        case 4: attn_queries(4, qs, keys, kt, padded, v, ld, dh, scale, p, outs); break;
        case 3: attn_queries(3, qs, keys, kt, padded, v, ld, dh, scale, p, outs); break;
        case 2: attn_queries(2, qs, keys, kt, padded, v, ld, dh, scale, p, outs); break;
        default: attn_queries(1, qs, keys, kt, padded, v, ld, dh, scale, p, outs); break;
        }
    }
}
