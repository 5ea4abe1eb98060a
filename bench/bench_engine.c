/* bench-engine: throughput of the base model on random weights in the shapes
 * of xlm-mlm-enfr-1024 and xlm-mlm-en-2048, against a large sgemm measured
 * in the same run with the same threads.
 *
 * Usage: bench-engine [--threads N] [--shape enfr-1024|en-2048|all] [--dir TMPDIR]
 * Each shape ends with one line:
 *   shape=NAME tokens_per_s=... gflops=... sgemm_gflops=... ratio=...  */
#include "shard_engine.h"

#include <cblas.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int64_t emb, layers, heads, vocab;
} bench_shape_t;

static const bench_shape_t shapes[] = {
    {"enfr-1024", 1024, 6, 8, 64139},
    {"en-2048", 2048, 12, 16, 30145},
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

/* Writes config.json and a random model.safetensors into dir. */
static int write_checkpoint(const char *dir, const bench_shape_t *s, bool lm, bool causal)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
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
    if (!f)
        return -1;
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
    return fclose(f) == 0 ? 0 : -1;
}

static double sgemm_gflops(int64_t n)
{
    float *a = malloc((size_t)(n * n) * 4), *b = malloc((size_t)(n * n) * 4), *c = malloc((size_t)(n * n) * 4);
    for (int64_t i = 0; i < n * n; i++) {
        a[i] = random_weight(1.0f);
        b[i] = random_weight(1.0f);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)n, 1.0f,
                a, (blasint)n, b, (blasint)n, 0.0f, c, (blasint)n);
    int reps = 0;
    double start = now(), elapsed;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)n,
                    1.0f, a, (blasint)n, b, (blasint)n, 0.0f, c, (blasint)n);
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

/* The best of 5 rounds of one model, alternating with the same-run sgemm
 * reference: this machine's speed drifts (shared cores, frequency). */
static int measure(const shard_model_t *model, shard_state_t *state, const shard_inputs_t *in,
                   double flops, int64_t real_tokens, measure_t *m)
{
    shard_error_t err = {0};
    shard_outputs_t out;
    shard_outputs_init(&out);
    if (shard_forward(model, state, SHARD_HEAD_BASE, in, &out, &err)) { /* warm-up, pages in */
        fprintf(stderr, "bench-engine: %s\n", err.message);
        return 1;
    }
    shard_outputs_clear(&out);
    *m = (measure_t){0};
    for (int round = 0; round < 5; round++) {
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
        double reference = sgemm_gflops(2048);
        m->sgemm_gflops = reference > m->sgemm_gflops ? reference : m->sgemm_gflops;
    }
    return 0;
}

/* One line per precision: shape=NAME threads=N precision=P tokens_per_s=…
 * gflops=… vs_fp32=… ratio=… weight_bytes=… (vs_fp32: tokens/s over fp32's
 * in this run; ratio: GFLOP/s over the same-run sgemm). */
static int run_shape(const bench_shape_t *s, const char *tmp, int threads)
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
    double fp32_tokens = 0.0;
    int rc = 0;
    for (int p = 0; p < SHARD_PRECISION_COUNT_ && !rc; p++) {
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(
            dir, &(shard_model_options_t){.precision = (shard_precision_t)p}, &err);
        shard_state_t *state = model ? shard_state_new() : NULL;
        measure_t m;
        if (!state) {
            fprintf(stderr, "bench-engine: %s\n", model ? "out of memory" : err.message);
            rc = 1;
        } else if (!(rc = measure(model, state, &in, flops, real_tokens, &m))) {
            if (p == SHARD_PRECISION_FP32)
                fp32_tokens = m.tokens_per_s;
            printf("shape=%s threads=%d precision=%s tokens_per_s=%.0f gflops=%.1f vs_fp32=%.3f "
                   "ratio=%.3f weight_bytes=%zu\n",
                   s->name, threads, shard_precision_name((shard_precision_t)p), m.tokens_per_s,
                   m.gflops, m.tokens_per_s / fp32_tokens, m.gflops / m.sgemm_gflops,
                   shard_model_weight_bytes(model));
            if (p != SHARD_PRECISION_FP32)
                printf("#   %s: %s\n", shard_precision_name((shard_precision_t)p),
                       shard_model_precision_note(model));
            fflush(stdout);
        }
        shard_state_destroy(&state);
        shard_model_destroy(&model);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? rc : 1;
}

int main(int argc, char **argv)
{
    int threads = 2, opt;
    bool lm = false, causal = false;
    const char *which = "all", *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", *write = NULL;
    static const struct option options[] = {{"threads", required_argument, NULL, 't'},
                                            {"shape", required_argument, NULL, 's'},
                                            {"dir", required_argument, NULL, 'd'},
                                            {"write", required_argument, NULL, 'w'},
                                            {"lm", no_argument, NULL, 'l'},
                                            {"causal", no_argument, NULL, 'c'},
                                            {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "t:s:d:", options, NULL)) != -1) {
        if (opt == 'w')
            write = optarg;
        else if (opt == 'l')
            lm = true;
        else if (opt == 'c')
            causal = true;
        else if (opt == 't')
            threads = atoi(optarg);
        else if (opt == 's')
            which = optarg;
        else if (opt == 'd')
            tmp = optarg;
        else {
            fprintf(stderr, "usage: bench-engine [--threads N] [--shape enfr-1024|en-2048|all] [--dir TMPDIR]\n"
                            "       bench-engine --write DIR --shape NAME [--lm] [--causal]   (a random checkpoint)\n");
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
    shard_set_threads(threads);
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strcmp(which, "all") == 0 || strcmp(which, shapes[i].name) == 0)
            rc |= run_shape(&shapes[i], tmp, threads);
    return rc;
}
