/* bench-engine: throughput of the base model on random weights in the shapes
 * of xlm-mlm-enfr-1024 and xlm-mlm-en-2048, against a large sgemm measured
 * in the same run with the same threads.
 *
 * Usage: bench-engine [--threads N[,N...]] [--shape enfr-1024|en-2048|all] [--dir TMPDIR]
 *                     [--precision all|fp32|bf16|int8] [--rounds N]
 *                     [--no-extras | --extras-only]
 * Per shape and thread count (--threads 1,2 runs both), a line per precision:
 *   shape=NAME threads=N precision=P tokens_per_s=... gflops=... vs_fp32=... ratio=...
 *   weight_bytes=...
 * (--precision P alone, e.g. for a perf profile, prints vs_fp32=nan: no fp32
 * run to compare with). Rounds: the best of 5 per precision on enfr-1024, of
 * 2 on en-2048, whose one forward pass of the batch takes seconds; the
 * precisions' rounds interleaved (fp32, bf16, int8, fp32, ...).
 * then (unless --no-extras), each against a reference of the same run:
 *   attention=...: the share of a forward pass spent in attention, the
 *     engine's (tiles of queries per row and head) and the per-head BLAS
 *     calls of two versions ago (share_before), and the one-query-at-a-time
 *     loop of the last version (share_query_loop), both re-run here on the
 *     same positions, for 64 rows of 8-64 tokens and for 8 rows of 256;
 *   row_tiles=...: the layers' products with the batch-invariant row tiles
 *     over the same products as plain sgemm calls, for the batch and for a
 *     single 30-token sentence;
 *   generate=...: greedy generation of 32 tokens after a 64-token prompt on
 *     the causal LM of the shape, key/value cache over recomputing. */
#include "dnnl_matmul.h"
#include "engine_internal.h"
#include "shard_engine.h"

#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int64_t emb, layers, heads, vocab;
    int rounds; /* best of, per precision; --rounds overrides */
} bench_shape_t;

static const bench_shape_t shapes[] = {
    {"enfr-1024", 1024, 6, 8, 64139, 5},
    {"en-2048", 2048, 12, 16, 30145, 2},
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float random_weight(float scale)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return scale * ((float)(rng_state >> 40) / (float)(1 << 24) - 0.5f);
}

typedef struct {
    char name[96];
    int64_t rows, cols; /* cols 0: a vector */
    float scale, offset;
} param_t;

static int add_params(param_t *p, int n, const bench_shape_t *s, bool lm)
{
    const int64_t d = s->emb;
    if (lm) { /* an en-fr LM: language embeddings and the projection bias */
        p[n++] = (param_t){"lang_embeddings.weight", 2, d, 0.1f, 0};
        p[n++] = (param_t){"pred_layer.proj.bias", s->vocab, 0, 0.1f, 0};
    }
    p[n++] = (param_t){"embeddings.weight", s->vocab, d, 0.1f, 0};
    p[n++] = (param_t){"position_embeddings.weight", 512, d, 0.1f, 0};
    p[n++] = (param_t){"layer_norm_emb.weight", d, 0, 0.1f, 1};
    p[n++] = (param_t){"layer_norm_emb.bias", d, 0, 0.1f, 0};
    for (int64_t i = 0; i < s->layers; i++) {
        const char *lins[] = {"q_lin", "k_lin", "v_lin", "out_lin"};
        for (int j = 0; j < 4; j++) {
            p[n] = (param_t){"", d, d, 0.06f, 0};
            snprintf(p[n++].name, 96, "attentions.%lld.%s.weight", (long long)i, lins[j]);
            p[n] = (param_t){"", d, 0, 0.02f, 0};
            snprintf(p[n++].name, 96, "attentions.%lld.%s.bias", (long long)i, lins[j]);
        }
        const char *norms[] = {"layer_norm1", "layer_norm2"};
        for (int j = 0; j < 2; j++) {
            p[n] = (param_t){"", d, 0, 0.1f, 1};
            snprintf(p[n++].name, 96, "%s.%lld.weight", norms[j], (long long)i);
            p[n] = (param_t){"", d, 0, 0.1f, 0};
            snprintf(p[n++].name, 96, "%s.%lld.bias", norms[j], (long long)i);
        }
        p[n] = (param_t){"", 4 * d, d, 0.06f, 0};
        snprintf(p[n++].name, 96, "ffns.%lld.lin1.weight", (long long)i);
        p[n] = (param_t){"", 4 * d, 0, 0.02f, 0};
        snprintf(p[n++].name, 96, "ffns.%lld.lin1.bias", (long long)i);
        p[n] = (param_t){"", d, 4 * d, 0.03f, 0};
        snprintf(p[n++].name, 96, "ffns.%lld.lin2.weight", (long long)i);
        p[n] = (param_t){"", d, 0, 0.02f, 0};
        snprintf(p[n++].name, 96, "ffns.%lld.lin2.bias", (long long)i);
    }
    return n;
}

static int cannot_write(const char *path)
{
    fprintf(stderr, "bench-engine: cannot write %s: %s\n", path, strerror(errno));
    return -1;
}

/* Writes config.json and a random model.safetensors of shape s into the
 * existing folder dir; a line on stderr names a file that cannot be written. */
static int write_checkpoint(const char *dir, const bench_shape_t *s, bool lm, bool causal)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return cannot_write(path);
    fprintf(f, "{\"architectures\": [\"%s\"], \"vocab_size\": %lld, \"emb_dim\": %lld, "
               "\"n_layers\": %lld, \"n_heads\": %lld, \"n_langs\": %d, \"causal\": %s, "
               "\"gelu_activation\": true, \"max_position_embeddings\": 512%s}\n",
            lm ? "XLMWithLMHeadModel" : "XLMModel", (long long)s->vocab, (long long)s->emb,
            (long long)s->layers, (long long)s->heads, lm ? 2 : 1, causal ? "true" : "false",
            lm ? ", \"lang2id\": {\"en\": 0, \"fr\": 1}, \"id2lang\": {\"0\": \"en\", \"1\": \"fr\"}" : "");
    fclose(f);
    param_t *params = calloc(1024, sizeof *params);
    int n = add_params(params, 0, s, lm);
    size_t header_cap = (size_t)n * 160 + 64, used = 0, offset = 0;
    char *header = malloc(header_cap);
    used += (size_t)snprintf(header + used, header_cap - used, "{");
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)params[i].rows * (size_t)(params[i].cols ? params[i].cols : 1) * 4;
        if (params[i].cols)
            used += (size_t)snprintf(header + used, header_cap - used,
                                     "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                                     i ? "," : "", params[i].name, (long long)params[i].rows,
                                     (long long)params[i].cols, offset, offset + bytes);
        else
            used += (size_t)snprintf(header + used, header_cap - used,
                                     "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}",
                                     i ? "," : "", params[i].name, (long long)params[i].rows,
                                     offset, offset + bytes);
        offset += bytes;
    }
    used += (size_t)snprintf(header + used, header_cap - used, "}");
    while (used % 8)
        header[used++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    if (!f) {
        free(header);
        free(params);
        return cannot_write(path);
    }
    uint64_t len = used;
    fwrite(&len, 8, 1, f);
    fwrite(header, 1, used, f);
    float *buffer = malloc(1 << 20);
    for (int i = 0; i < n; i++) {
        size_t count = (size_t)params[i].rows * (size_t)(params[i].cols ? params[i].cols : 1);
        while (count) {
            size_t chunk = count < (1 << 18) ? count : (1 << 18);
            for (size_t j = 0; j < chunk; j++)
                buffer[j] = params[i].offset + random_weight(params[i].scale);
            fwrite(buffer, 4, chunk, f);
            count -= chunk;
        }
    }
    free(buffer);
    free(header);
    free(params);
    const bool written = !ferror(f);
    return fclose(f) == 0 && written ? 0 : cannot_write(path);
}

/* The reference is the fp32 product the engine itself runs (OpenBLAS's
 * sgemm, or oneDNN's where OpenBLAS has no kernel for this CPU: see
 * shard_fp32_onednn): C = A B^T, n x n. */
static void reference_product(int64_t n, const float *a, const float *b, float *c)
{
    if (shard_fp32_onednn())
        shard_matmul_rows(dnnl_f32, dnnl_f32, dnnl_f32, n, n, n, n, a, sizeof *a, b, c,
                          sizeof *c);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)n,
                    1.0f, a, (blasint)n, b, (blasint)n, 0.0f, c, (blasint)n);
}

static double sgemm_gflops(int64_t n)
{
    float *a = malloc((size_t)(n * n) * 4), *b = malloc((size_t)(n * n) * 4), *c = malloc((size_t)(n * n) * 4);
    for (int64_t i = 0; i < n * n; i++) {
        a[i] = random_weight(1.0f);
        b[i] = random_weight(1.0f);
    }
    reference_product(n, a, b, c);
    int reps = 0;
    double start = now(), elapsed;
    do {
        reference_product(n, a, b, c);
        reps++;
    } while ((elapsed = now() - start) < 0.5);
    free(a);
    free(b);
    free(c);
    return 2.0 * (double)n * (double)n * (double)n * reps / elapsed / 1e9;
}

typedef struct {
    double tokens_per_s, gflops, sgemm_gflops;
} measure_t;

/* One timed slot (at least a second of forward passes) of one model; the
 * best slot is kept. */
static void measure_slot(const shard_model_t *model, shard_state_t *state,
                         const shard_inputs_t *in, double flops, int64_t real_tokens,
                         measure_t *m)
{
    shard_error_t err = {0};
    shard_outputs_t out;
    shard_outputs_init(&out);
    int reps = 0;
    double start = now(), elapsed;
    do {
        shard_forward(model, state, SHARD_HEAD_BASE, in, &out, &err);
        shard_outputs_clear(&out);
        reps++;
    } while ((elapsed = now() - start) < 1.0);
    double engine = flops * reps / elapsed / 1e9;
    if (engine > m->gflops) {
        m->gflops = engine;
        m->tokens_per_s = (double)real_tokens * reps / elapsed;
    }
}

static int warm_up(const shard_model_t *model, shard_state_t *state, const shard_inputs_t *in)
{
    shard_error_t err = {0};
    shard_outputs_t out;
    shard_outputs_init(&out);
    if (shard_forward(model, state, SHARD_HEAD_BASE, in, &out, &err)) { /* pages in */
        fprintf(stderr, "bench-engine: %s\n", err.message);
        return 1;
    }
    shard_outputs_clear(&out);
    return 0;
}

/* ------------------------------------------------------------ extras */

/* The attention the engine ran before: per row and per head, an sgemm for
 * the scores, a softmax per query, an sgemm for the context. */
static void attention_per_head_blas(const shard_config_t *c, const shard_acts_t *acts,
                                    const float *qkv, float *ctx, float *scores)
{
    const int64_t d = c->emb_dim, ld = 3 * d, dh = d / c->n_heads;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int64_t b = 0; b < acts->batch; b++) {
        const int64_t r0 = acts->row_start[b], n = acts->row_start[b + 1] - r0;
        const float *q = qkv + r0 * ld, *k = q + d, *v = q + 2 * d;
        for (int64_t h = 0; h < c->n_heads; h++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n,
                        (blasint)dh, scale, q + h * dh, (blasint)ld, k + h * dh, (blasint)ld,
                        0.0f, scores, (blasint)n);
            for (int64_t i = 0; i < n; i++) {
                shard_softmax(scores + i * n, c->causal ? i + 1 : n);
                if (c->causal)
                    memset(scores + i * n + i + 1, 0, (size_t)(n - i - 1) * sizeof *scores);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)dh,
                        (blasint)n, 1.0f, scores, (blasint)n, v + h * dh, (blasint)ld, 0.0f,
                        ctx + r0 * d + h * dh, (blasint)d);
        }
    }
}

/* The attention of the last version: one query at a time over all heads,
 * an 8-lane dot product per key, the values summed key by key; one task
 * per query on the engine's threads. */
enum { QUERY_LOOP_LANES = 8 };

static inline float query_loop_dot(const float *a, const float *b, int64_t n)
{
    float lanes[QUERY_LOOP_LANES] = {0};
    int64_t i = 0;
    for (; i + QUERY_LOOP_LANES <= n; i += QUERY_LOOP_LANES)
        for (int l = 0; l < QUERY_LOOP_LANES; l++)
            lanes[l] += a[i + l] * b[i + l];
    float sum = 0.0f;
    for (; i < n; i++)
        sum += a[i] * b[i];
    for (int l = 0; l < QUERY_LOOP_LANES; l++)
        sum += lanes[l];
    return sum;
}

__attribute__((target_clones("arch=haswell", "default")))
static void query_loop_one(const float *q, const float *k, const float *v, int64_t ld,
                           int64_t n_keys, int64_t n_heads, int64_t dh, float *scores, float *ctx)
{
    const float scale = 1.0f / sqrtf((float)dh);
    for (int64_t h = 0; h < n_heads; h++) {
        for (int64_t j = 0; j < n_keys; j++)
            scores[j] = query_loop_dot(q + h * dh, k + j * ld + h * dh, dh) * scale;
        shard_softmax(scores, n_keys);
        float *out = ctx + h * dh;
        memset(out, 0, (size_t)dh * sizeof *out);
        for (int64_t j = 0; j < n_keys; j++)
            for (int64_t c = 0; c < dh; c++)
                out[c] += scores[j] * v[j * ld + h * dh + c];
    }
}

static void attention_query_loop(const shard_config_t *c, const shard_acts_t *acts,
                                 const float *qkv, float *ctx, float *scores, int64_t longest)
{
    const int64_t d = c->emb_dim, ld = 3 * d, dh = d / c->n_heads;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t t = 0; t < acts->n_tokens; t++) {
        int64_t b = 0;
        while (acts->row_start[b + 1] <= t)
            b++;
        const int64_t r0 = acts->row_start[b];
        const int64_t n_keys = c->causal ? t - r0 + 1 : acts->row_start[b + 1] - r0;
        const float *row = qkv + r0 * ld;
        query_loop_one(qkv + t * ld, row + d, row + 2 * d, ld, n_keys, c->n_heads, dh,
                       scores + (int64_t)omp_get_thread_num() * longest, ctx + t * d);
    }
}

/* Share of attention in the forward pass of in, now and with the per-head
 * BLAS attention in its place (the rest of the pass measured unchanged). */
static int attention_share(const shard_model_t *model, const shard_inputs_t *in, const char *label,
                           const char *shape, int threads)
{
    shard_error_t err = {0};
    shard_state_t *state = shard_state_new();
    shard_acts_t *acts = shard_acts_new();
    shard_outputs_t out;
    shard_outputs_init(&out);
    if (!state || !acts || shard_embed(model, state, in, acts, &err)) {
        fprintf(stderr, "bench-engine: %s\n", err.message);
        return 1;
    }
    const shard_config_t *c = shard_model_config(model);
    const int64_t T = acts->n_tokens, d = c->emb_dim;
    int64_t longest = 0;
    for (int64_t b = 0; b < acts->batch; b++)
        longest = fmax(longest, acts->row_start[b + 1] - acts->row_start[b]);
    float *qkv = malloc((size_t)(T * 3 * d) * sizeof *qkv), *ctx = malloc((size_t)(T * d) * 4);
    float *scores = malloc((size_t)(longest * longest) * sizeof *scores);
    float *query_scores = malloc((size_t)(omp_get_max_threads() * longest) * sizeof *scores);
    for (int64_t i = 0; i < T * 3 * d; i++)
        qkv[i] = random_weight(1.0f);
    shard_forward(model, state, SHARD_HEAD_BASE, in, &out, &err); /* warm-up */
    shard_outputs_clear(&out);
    double best_forward = 1e30, best_attention = 0.0, best_old = 1e30, best_loop = 1e30;
    for (int round = 0; round < 3; round++) {
        state->attention_seconds = 0.0;
        double start = now();
        shard_forward(model, state, SHARD_HEAD_BASE, in, &out, &err);
        const double forward = now() - start;
        shard_outputs_clear(&out);
        if (forward < best_forward) {
            best_forward = forward;
            best_attention = state->attention_seconds;
        }
        start = now();
        for (int64_t layer = 0; layer < c->n_layers; layer++)
            attention_per_head_blas(c, acts, qkv, ctx, scores);
        best_old = fmin(best_old, now() - start);
        start = now();
        for (int64_t layer = 0; layer < c->n_layers; layer++)
            attention_query_loop(c, acts, qkv, ctx, query_scores, longest);
        best_loop = fmin(best_loop, now() - start);
    }
    const double rest = best_forward - best_attention;
    printf("shape=%s threads=%d attention=%s tokens=%lld share_before=%.3f share_after=%.3f "
           "attention_speedup=%.2f forward_speedup=%.3f share_query_loop=%.3f "
           "vs_query_loop_attention=%.2f vs_query_loop_forward=%.3f\n",
           shape, threads, label, (long long)T, best_old / (rest + best_old),
           best_attention / best_forward, best_old / best_attention,
           (rest + best_old) / best_forward, best_loop / (rest + best_loop),
           best_loop / best_attention, (rest + best_loop) / best_forward);
    free(qkv);
    free(ctx);
    free(scores);
    free(query_scores);
    shard_acts_destroy(&acts);
    shard_state_destroy(&state);
    return 0;
}

/* The layers' products of rows rows through the engine's row tiles, over
 * the same products as plain sgemm calls of rows rows. */
static void row_tiles_cost(const shard_model_t *model, int64_t rows, const char *shape, int threads)
{
    const shard_layer_t *layer = &model->layers[0];
    const shard_linear_t *lins[] = {&layer->qkv, &layer->out, &layer->ffn_in, &layer->ffn_out};
    int64_t widest = 0;
    for (int i = 0; i < 4; i++)
        widest = fmax(widest, fmax(lins[i]->in, lins[i]->out));
    float *x = malloc((size_t)(rows * widest) * sizeof *x), *y = malloc((size_t)(rows * widest) * 4);
    for (int64_t i = 0; i < rows * widest; i++)
        x[i] = random_weight(1.0f);
    double tiles = 1e30, plain = 1e30;
    for (int round = 0; round < 5; round++) {
        double start = now();
        for (int rep = 0; rep < 4; rep++)
            for (int i = 0; i < 4; i++)
                shard_linear(lins[i], x, rows, y);
        tiles = fmin(tiles, now() - start);
        start = now();
        for (int rep = 0; rep < 4; rep++)
            for (int i = 0; i < 4; i++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows,
                            (blasint)lins[i]->out, (blasint)lins[i]->in, 1.0f, x,
                            (blasint)lins[i]->in, lins[i]->weight, (blasint)lins[i]->in, 0.0f, y,
                            (blasint)lins[i]->out);
        plain = fmin(plain, now() - start);
    }
    printf("shape=%s threads=%d row_tiles=fp32 rows=%lld time_vs_plain_sgemm=%.3f\n", shape,
           threads, (long long)rows, tiles / plain);
    free(x);
    free(y);
}

/* Greedy generation of 32 tokens after a 64-token prompt: the cache
 * against recomputing the whole sequence each step (the same tokens). */
static int generate_speedup(const char *dir, const char *shape, int threads)
{
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    shard_state_t *state = model ? shard_state_new() : NULL;
    if (!state) {
        fprintf(stderr, "bench-engine: %s\n", model ? "out of memory" : err.message);
        return 1;
    }
    enum { PROMPT = 64, STEPS = 32 };
    int64_t ids[PROMPT], langs[PROMPT] = {0};
    for (int i = 0; i < PROMPT; i++)
        ids[i] = 14 + (int64_t)((random_weight(1.0f) + 0.5f) * 1000);
    const shard_inputs_t in = {.batch = 1, .seq = PROMPT, .input_ids = ids, .langs = langs};
    shard_outputs_t a, b;
    shard_outputs_init(&a);
    shard_outputs_init(&b);
    double cached = 1e30, recompute = 1e30;
    int same = 1;
    for (int round = 0; round < 2; round++) {
        double start = now();
        shard_generate_greedy(model, state, &in, STEPS, 0, &a, &err);
        cached = fmin(cached, now() - start);
        start = now();
        shard_generate_greedy_recompute(model, state, &in, STEPS, 0, &b, &err);
        recompute = fmin(recompute, now() - start);
        const shard_tensor_t *x = shard_outputs_find(&a, "new_ids"), *y = shard_outputs_find(&b, "new_ids");
        same = same && x && y && memcmp(x->i64, y->i64, STEPS * sizeof(int64_t)) == 0;
        shard_outputs_clear(&a);
        shard_outputs_clear(&b);
    }
    printf("shape=%s threads=%d generate=greedy prompt=%d steps=%d cached_tokens_per_s=%.1f "
           "recompute_tokens_per_s=%.1f speedup=%.2f same_tokens=%s\n",
           shape, threads, PROMPT, STEPS, STEPS / cached, STEPS / recompute, recompute / cached,
           same ? "yes" : "NO");
    shard_state_destroy(&state);
    shard_model_destroy(&model);
    return same ? 0 : 1;
}

/* One line per precision of the shape's batch on the current thread count:
 * shape=NAME threads=N precision=P tokens_per_s=… gflops=… vs_fp32=… ratio=…
 * weight_bytes=… (vs_fp32: tokens/s over fp32's in this run; ratio: GFLOP/s
 * over the same-run sgemm). */
static int run_precisions(const bench_shape_t *s, const char *dir, const shard_inputs_t *in,
                          double flops, int64_t real_tokens, int threads, int rounds,
                          int only_precision)
{
    /* Every precision's model open at once and their rounds interleaved
     * (fp32, bf16, int8, the sgemm reference, again): this machine's speed
     * drifts (shared cores, frequency), and a drift then reaches every
     * precision's best round alike instead of one precision's rounds. */
    shard_model_t *models[SHARD_PRECISION_COUNT_] = {0};
    shard_state_t *states[SHARD_PRECISION_COUNT_] = {0};
    measure_t m[SHARD_PRECISION_COUNT_] = {{0}};
    double sgemm = 0.0;
    int rc = 0;
    for (int p = 0; p < SHARD_PRECISION_COUNT_ && !rc; p++) {
        if (only_precision >= 0 && p != only_precision)
            continue;
        shard_error_t err = {0};
        models[p] = shard_model_open(dir, &(shard_model_options_t){.precision = (shard_precision_t)p},
                                     &err);
        states[p] = models[p] ? shard_state_new() : NULL;
        if (!states[p]) {
            fprintf(stderr, "bench-engine: %s\n", models[p] ? "out of memory" : err.message);
            rc = 1;
        } else {
            rc = warm_up(models[p], states[p], in);
        }
    }
    for (int round = 0; round < rounds && !rc; round++) {
        for (int p = 0; p < SHARD_PRECISION_COUNT_; p++)
            if (states[p])
                measure_slot(models[p], states[p], in, flops, real_tokens, &m[p]);
        const double reference = sgemm_gflops(2048);
        sgemm = reference > sgemm ? reference : sgemm;
    }
    const double fp32_tokens = states[SHARD_PRECISION_FP32] ? m[SHARD_PRECISION_FP32].tokens_per_s
                                                            : NAN;
    for (int p = 0; p < SHARD_PRECISION_COUNT_ && !rc; p++) {
        if (!states[p])
            continue;
        printf("shape=%s threads=%d precision=%s tokens_per_s=%.0f gflops=%.1f vs_fp32=%.3f "
               "ratio=%.3f weight_bytes=%zu\n",
               s->name, threads, shard_precision_name((shard_precision_t)p), m[p].tokens_per_s,
               m[p].gflops, m[p].tokens_per_s / fp32_tokens, m[p].gflops / sgemm,
               shard_model_weight_bytes(models[p]));
        printf("#   %s: %s%s\n", shard_precision_name((shard_precision_t)p),
               shard_model_precision_note(models[p]),
               p == SHARD_PRECISION_FP32 ? "; ratio's reference: the same library's 2048^3 "
                                           "product" : "");
    }
    fflush(stdout);
    for (int p = 0; p < SHARD_PRECISION_COUNT_; p++) {
        shard_state_destroy(&states[p]);
        shard_model_destroy(&models[p]);
    }
    return rc;
}

typedef struct {
    const int *threads; /* the thread counts to run, in order */
    int n_threads;
    int precision;      /* one shard_precision_t, or -1: every precision */
    int rounds;         /* 0: the shape's own */
    bool extras, extras_only;
} bench_plan_t;

/* The shape's checkpoint written once, every thread count's precision lines,
 * then the extras on the last thread count. */
static int run_shape(const bench_shape_t *s, const char *tmp, const bench_plan_t *plan)
{
    char dir[4000];
    snprintf(dir, sizeof dir, "%.3900s/bench-%s-%d", tmp, s->name, (int)getpid());
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0 || write_checkpoint(dir, s, false, false) != 0) {
        fprintf(stderr, "bench-engine: cannot write a checkpoint in %s\n", dir);
        return 1;
    }
    /* 64 sentences of 8..64 tokens, fixed seed, padded to the longest. */
    enum { ROWS = 64, SEQ = 64 };
    static int64_t ids[ROWS * SEQ], mask[ROWS * SEQ];
    int64_t real_tokens = 0;
    double flops = 0.0;
    const double d = (double)s->emb;
    rng_state = 12345;
    for (int r = 0; r < ROWS; r++) {
        int len = 8 + (int)((random_weight(1.0f) + 0.5f) * 56.999f);
        real_tokens += len;
        /* per layer: q,k,v,out (8 d^2) + ffn (16 d^2) flops per token, plus attention 4 n d */
        flops += (double)s->layers * ((double)len * 24.0 * d * d + 4.0 * (double)len * len * d);
        for (int t = 0; t < SEQ; t++) {
            ids[r * SEQ + t] = t < len ? 14 + (int64_t)((random_weight(1.0f) + 0.5f) * 1000) : 2;
            mask[r * SEQ + t] = t < len;
        }
    }
    const shard_inputs_t in = {.batch = ROWS, .seq = SEQ, .input_ids = ids, .attention_mask = mask};
    const int rounds = plan->rounds > 0 ? plan->rounds : s->rounds;
    int rc = 0;
    for (int t = 0; t < plan->n_threads && !rc && !plan->extras_only; t++) {
        const int threads = plan->threads[t];
        shard_set_threads(threads);
        rc = run_precisions(s, dir, &in, flops, real_tokens, threads, rounds, plan->precision);
    }
    const int threads = plan->threads[plan->n_threads - 1];
    shard_set_threads(threads);
    if (!rc && plan->extras) {
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(dir, NULL, &err);
        if (!model) {
            fprintf(stderr, "bench-engine: %s\n", err.message);
            rc = 1;
        } else {
            /* 8 rows of 256 tokens */
            enum { LONG_ROWS = 8, LONG_SEQ = 256 };
            static int64_t long_ids[LONG_ROWS * LONG_SEQ];
            for (int i = 0; i < LONG_ROWS * LONG_SEQ; i++)
                long_ids[i] = 14 + (int64_t)((random_weight(1.0f) + 0.5f) * 1000);
            const shard_inputs_t long_in = {.batch = LONG_ROWS, .seq = LONG_SEQ, .input_ids = long_ids};
            rc |= attention_share(model, &in, "8-64", s->name, threads);
            rc |= attention_share(model, &long_in, "256", s->name, threads);
            row_tiles_cost(model, real_tokens, s->name, threads);
            row_tiles_cost(model, 30, s->name, threads);
            shard_model_destroy(&model);
        }
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
        if (!rc && (system(cmd) != 0 || write_checkpoint(dir, s, true, true) != 0)) {
            fprintf(stderr, "bench-engine: cannot write a checkpoint in %s\n", dir);
            rc = 1;
        }
        if (!rc)
            rc = generate_speedup(dir, s->name, threads);
        fflush(stdout);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? rc : 1;
}

/* "1,2" -> {1, 2}; each count 1..256. */
static int parse_threads(const char *text, int *out, int cap)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 256 || n == cap || (*end && *end != ','))
            return -1;
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static const char usage_text[] =
    "usage: bench-engine [--threads N[,N...]] [--shape enfr-1024|en-2048|all] [--dir TMPDIR]\n"
    "                    [--precision all|fp32|bf16|int8] [--rounds N] [--no-extras | --extras-only]\n"
    "       bench-engine --write DIR --shape NAME [--lm] [--causal]   (a random checkpoint)\n";

int main(int argc, char **argv)
{
    int opt, thread_counts[8] = {2};
    bool lm = false, causal = false;
    bench_plan_t plan = {.threads = thread_counts, .n_threads = 1, .precision = -1, .extras = true};
    const char *which = "all", *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", *write = NULL;
    static const struct option options[] = {{"threads", required_argument, NULL, 't'},
                                            {"shape", required_argument, NULL, 's'},
                                            {"dir", required_argument, NULL, 'd'},
                                            {"write", required_argument, NULL, 'w'},
                                            {"lm", no_argument, NULL, 'l'},
                                            {"causal", no_argument, NULL, 'c'},
                                            {"no-extras", no_argument, NULL, 'x'},
                                            {"extras-only", no_argument, NULL, 'X'},
                                            {"precision", required_argument, NULL, 'p'},
                                            {"rounds", required_argument, NULL, 'r'},
                                            {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "t:s:d:", options, NULL)) != -1) {
        if (opt == 'w')
            write = optarg;
        else if (opt == 'l')
            lm = true;
        else if (opt == 'c')
            causal = true;
        else if (opt == 'x')
            plan.extras = false;
        else if (opt == 'X')
            plan.extras_only = true;
        else if (opt == 't') {
            if ((plan.n_threads = parse_threads(optarg, thread_counts, 8)) < 1) {
                fprintf(stderr, "bench-engine: --threads %s: expected counts 1 to 256, comma-separated (at most 8)\n", optarg);
                return 2;
            }
        } else if (opt == 'p') {
            if (strcmp(optarg, "all") == 0)
                plan.precision = -1;
            else if ((plan.precision = (int)shard_precision_parse(optarg, NULL)) == SHARD_PRECISION_COUNT_) {
                fprintf(stderr, "bench-engine: --precision %s: expected all, fp32, bf16 or int8\n", optarg);
                return 2;
            }
        } else if (opt == 'r') {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000) {
                fprintf(stderr, "bench-engine: --rounds %s: expected 1 to 1000\n", optarg);
                return 2;
            }
            plan.rounds = (int)v;
        } else if (opt == 's')
            which = optarg;
        else if (opt == 'd')
            tmp = optarg;
        else {
            fputs(usage_text, stderr);
            return 2;
        }
    }
    for (size_t i = 0; write && i < sizeof shapes / sizeof shapes[0]; i++)
        if (strcmp(which, shapes[i].name) == 0)
            return write_checkpoint(write, &shapes[i], lm, causal) == 0 ? 0 : 1;
    if (write) {
        fprintf(stderr, "bench-engine: --write needs --shape enfr-1024 or en-2048\n");
        return 2;
    }
    bool known = strcmp(which, "all") == 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        known |= strcmp(which, shapes[i].name) == 0;
    if (!known) {
        fprintf(stderr, "bench-engine: --shape %s: expected enfr-1024, en-2048 or all\n", which);
        return 2;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strcmp(which, "all") == 0 || strcmp(which, shapes[i].name) == 0)
            rc |= run_shape(&shapes[i], tmp, &plan);
    return rc;
}
