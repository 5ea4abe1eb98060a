/* bench-score: what scoring costs beyond the forward passes it needs.
 *
 *   bench-score --model DIR --pairs FILE [--threads N] [--limit N]
 *               [--precision all|fp32|bf16|int8]
 *
 * For the pairs of a TSV file (src_lang, src, tgt_lang, tgt), tokenised with
 * the model's tokenizer:
 *   clm:     shard_score_rows vs the forward pass of the same rows (no head);
 *   mlm-pll: shard_score_rows vs n_target_tokens x the forward pass of the
 *            pair, and vs the forward pass of all masked copies (no head).
 * Ratios near 1 mean the vocabulary projection is a small share. One line
 * per precision (all by default), each with vs_fp32: its pairs/s over
 * fp32's in this run (nan when fp32 was not run). */
#include "shard_engine.h"
#include "shard_tokenizer.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    int64_t *ids, *langs;
    int64_t len, from, to_clm, to_pll;
} pair_t;

static int load_pairs(const char *path, shard_tokenizer_t *tok, int64_t max_len, int limit,
                      pair_t **out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    pair_t *pairs = calloc((size_t)limit, sizeof *pairs);
    while (n < limit && getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        char *fields[4], *save = NULL;
        int k = 0;
        for (char *p = strtok_r(line, "\t", &save); p && k < 4; p = strtok_r(NULL, "\t", &save))
            fields[k++] = p;
        if (k != 4)
            continue;
        shard_tokenizer_segment_t a = {fields[1], strlen(fields[1]), fields[0]};
        shard_tokenizer_segment_t b = {fields[3], strlen(fields[3]), fields[2]};
        shard_encoding_t enc;
        shard_error_t err = {0};
        shard_encoding_init(&enc);
        if (shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &enc, &err) == 0 &&
            (int64_t)enc.length <= max_len) {
            pair_t *p = &pairs[n++];
            p->len = (int64_t)enc.length;
            p->ids = malloc((size_t)p->len * sizeof *p->ids);
            p->langs = malloc((size_t)p->len * sizeof *p->langs);
            memcpy(p->ids, enc.input_ids, (size_t)p->len * sizeof *p->ids);
            memcpy(p->langs, enc.langs, (size_t)p->len * sizeof *p->langs);
            p->from = (int64_t)enc.offset_b;
            p->to_clm = p->len;
            p->to_pll = (int64_t)(enc.offset_b + enc.length_b);
        }
        shard_encoding_clear(&enc);
    }
    free(line);
    fclose(f);
    *out = pairs;
    return n;
}

/* Embeddings + layers of rows copies of one pair, the last ones masked. */
static double forward_time(const shard_model_t *model, shard_state_t *state, shard_acts_t *acts,
                           const pair_t *p, int64_t rows)
{
    int64_t *ids = malloc((size_t)(rows * p->len) * sizeof *ids);
    int64_t *langs = malloc((size_t)(rows * p->len) * sizeof *langs);
    for (int64_t r = 0; r < rows; r++) {
        memcpy(ids + r * p->len, p->ids, (size_t)p->len * sizeof *ids);
        memcpy(langs + r * p->len, p->langs, (size_t)p->len * sizeof *langs);
    }
    shard_inputs_t in = {.batch = rows, .seq = p->len, .input_ids = ids, .langs = langs};
    shard_error_t err = {0};
    double start = now();
    if (shard_embed(model, state, &in, acts, &err) || shard_run_layers(model, state, acts, &err))
        fprintf(stderr, "bench-score: %s\n", err.message);
    double t = now() - start;
    free(ids);
    free(langs);
    return t;
}

static double score_time(const shard_model_t *model, shard_state_t *state, shard_score_mode_t mode,
                         const pair_t *p)
{
    shard_inputs_t in = {.batch = 1, .seq = p->len, .input_ids = p->ids, .langs = p->langs};
    int64_t from = p->from, to = mode == SHARD_SCORE_CLM ? p->to_clm : p->to_pll;
    shard_outputs_t out;
    shard_error_t err = {0};
    shard_outputs_init(&out);
    double start = now();
    if (shard_score_rows(model, state, mode, &in, &from, &to, &out, &err))
        fprintf(stderr, "bench-score: %s\n", err.message);
    double t = now() - start;
    shard_outputs_clear(&out);
    return t;
}

/* One precision's line over the tokenised pairs; fp32_rate: fp32's pairs/s
 * of this run (NAN before it), set when this is fp32. */
static int run_precision(const char *model_dir, shard_precision_t precision, const pair_t *pairs,
                         int n, double *fp32_rate)
{
    shard_error_t err = {0};
    shard_model_t *model =
        shard_model_open(model_dir, &(shard_model_options_t){.precision = precision}, &err);
    if (!model) {
        fprintf(stderr, "bench-score: %s\n", err.message);
        return 1;
    }
    shard_acts_t *acts = shard_acts_new();
    shard_state_t *state = shard_state_new();
    const bool causal = shard_model_config(model)->causal;
    const shard_score_mode_t mode = causal ? SHARD_SCORE_CLM : SHARD_SCORE_MLM_PLL;
    double scored = 0, one_forward_each = 0, copies_forward = 0;
    int64_t targets = 0;
    for (int i = 0; i < n && i < 3; i++) /* warm-up: pages in, primitives made */
        score_time(model, state, mode, &pairs[i]);
    for (int i = 0; i < n; i++) {
        const pair_t *p = &pairs[i];
        const int64_t k = (causal ? p->to_clm : p->to_pll) - p->from;
        targets += k;
        scored += score_time(model, state, mode, p);
        double single = forward_time(model, state, acts, p, 1);
        one_forward_each += causal ? single : single * (double)k;
        copies_forward += causal ? single : forward_time(model, state, acts, p, k);
    }
    const double rate = n / scored;
    if (precision == SHARD_PRECISION_FP32)
        *fp32_rate = rate;
    printf("mode=%s precision=%s pairs=%d target_tokens=%lld pairs_per_s=%.1f "
           "target_tokens_per_s=%.0f vs_fp32=%.3f time_per_pair_ms=%.3f vs_forward_passes=%.3f "
           "vs_batched_copies=%.3f\n",
           causal ? "clm" : "mlm-pll", shard_precision_name(precision), n, (long long)targets,
           rate, (double)targets / scored, rate / *fp32_rate, 1e3 * scored / n,
           scored / one_forward_each, scored / copies_forward);
    fflush(stdout);
    shard_acts_destroy(&acts);
    shard_state_destroy(&state);
    shard_model_destroy(&model);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *pairs_path = NULL;
    int threads = 2, limit = 200, only = -1, opt;
    static const struct option options[] = {{"model", required_argument, NULL, 'm'},
                                            {"pairs", required_argument, NULL, 'p'},
                                            {"threads", required_argument, NULL, 't'},
                                            {"limit", required_argument, NULL, 'l'},
                                            {"precision", required_argument, NULL, 'P'},
                                            {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'm') model_dir = optarg;
        else if (opt == 'p') pairs_path = optarg;
        else if (opt == 't') threads = atoi(optarg);
        else if (opt == 'l') limit = atoi(optarg);
        else if (opt == 'P') {
            if (strcmp(optarg, "all") == 0)
                only = -1;
            else if ((only = (int)shard_precision_parse(optarg, NULL)) == SHARD_PRECISION_COUNT_) {
                fprintf(stderr, "bench-score: --precision %s: expected all, fp32, bf16 or int8\n",
                        optarg);
                return 2;
            }
        } else return 2;
    }
    if (!model_dir || !pairs_path || limit < 1 || threads < 1) {
        fprintf(stderr, "usage: bench-score --model DIR --pairs FILE [--threads N] [--limit N] "
                        "[--precision all|fp32|bf16|int8]\n");
        return 2;
    }
    shard_set_threads(threads);
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(model_dir, NULL, &err);
    shard_tokenizer_t *tok = model ? shard_tokenizer_open(model_dir, &err) : NULL;
    if (!tok) {
        fprintf(stderr, "bench-score: %s\n", err.message);
        shard_model_destroy(&model);
        return 1;
    }
    pair_t *pairs = NULL;
    int n = load_pairs(pairs_path, tok, shard_model_config(model)->max_position_embeddings, limit,
                       &pairs);
    shard_model_destroy(&model);
    if (n < 1) {
        fprintf(stderr, "bench-score: %s: no pair read (cannot open it, or no line of src_lang, src, tgt_lang, tgt "
                        "separated by tabs)\n", pairs_path);
        shard_tokenizer_destroy(&tok);
        free(pairs);
        return 1;
    }
    double fp32_rate = NAN;
    int rc = 0;
    for (int p = 0; p < SHARD_PRECISION_COUNT_ && !rc; p++)
        if (only < 0 || p == only)
            rc = run_precision(model_dir, (shard_precision_t)p, pairs, n, &fp32_rate);
    for (int i = 0; i < n; i++) {
        free(pairs[i].ids);
        free(pairs[i].langs);
    }
    free(pairs);
    shard_tokenizer_destroy(&tok);
    return rc;
}
