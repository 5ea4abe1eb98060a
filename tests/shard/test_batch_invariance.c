/* test_batch_invariance.c: a pair's scores do not depend on its batch.
 *
 * Every pair of the bundled model's pairs.tsv (token ids from
 * pairs_scores.jsonl) is scored alone on one thread, then all 200 in one
 * batch on two threads, then in micro-batches of mixed sizes: the
 * per-token log-probabilities and the sums must be the same bits, in every
 * precision. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard_engine.h"

enum { PAIRS = 200 };

typedef struct {
    int64_t len, from; /* tokens; the first scored target position */
    int64_t *ids, *langs;
} pair_t;

static pair_t pairs[PAIRS];

static int64_t *int_array(const cJSON *list, int64_t *n)
{
    *n = cJSON_GetArraySize(list);
    int64_t *out = calloc((size_t)*n, sizeof *out);
    for (int64_t i = 0; out && i < *n; i++)
        out[i] = (int64_t)cJSON_GetArrayItem(list, (int)i)->valuedouble;
    return out;
}

static int setup(void **state)
{
    (void)state;
    FILE *f = fopen(XLM_MODELS_DIR "/tiny-clm-enfr/examples/pairs_scores.jsonl", "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t capacity = 0;
    int n = 0;
    while (n < PAIRS && getline(&line, &capacity, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        if (!o)
            break;
        int64_t n_langs = 0;
        pair_t *p = &pairs[n++];
        p->ids = int_array(cJSON_GetObjectItem(o, "input_ids"), &p->len);
        p->langs = int_array(cJSON_GetObjectItem(o, "langs"), &n_langs);
        p->from = cJSON_GetArraySize(cJSON_GetObjectItem(o, "src_tokens")) + 2;
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    return n == PAIRS ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < PAIRS; i++) {
        free(pairs[i].ids);
        free(pairs[i].langs);
    }
    return 0;
}

typedef struct {
    float sum[PAIRS];
    float *tokens[PAIRS]; /* the target's log-probs of each pair */
    int64_t n_tokens[PAIRS];
} scores_t;

static void scores_free(scores_t *s)
{
    for (int i = 0; i < PAIRS; i++)
        free(s->tokens[i]);
}

/* Scores pairs [first, first + count) as one batch, padded to the longest
 * (attention mask and pad ids beyond each pair), into s. */
static void score_batch(const shard_model_t *model, shard_state_t *run, int first, int count,
                        scores_t *s)
{
    int64_t seq = 0;
    for (int i = first; i < first + count; i++)
        seq = pairs[i].len > seq ? pairs[i].len : seq;
    int64_t *ids = calloc((size_t)(count * seq), sizeof *ids);
    int64_t *langs = calloc((size_t)(count * seq), sizeof *langs);
    int64_t *mask = calloc((size_t)(count * seq), sizeof *mask);
    int64_t *from = calloc((size_t)count, sizeof *from), *to = calloc((size_t)count, sizeof *to);
    assert_true(ids && langs && mask && from && to);
    for (int r = 0; r < count; r++) {
        const pair_t *p = &pairs[first + r];
        for (int64_t t = 0; t < seq; t++) {
            ids[r * seq + t] = t < p->len ? p->ids[t] : 2; /* pad_index */
            langs[r * seq + t] = t < p->len ? p->langs[t] : p->langs[p->len - 1];
            mask[r * seq + t] = t < p->len;
        }
        from[r] = p->from;
        to[r] = p->len;
    }
    const shard_inputs_t rows = {.batch = count, .seq = seq, .input_ids = ids,
                                 .attention_mask = mask, .langs = langs};
    shard_outputs_t out;
    shard_error_t err = {0};
    shard_outputs_init(&out);
    if (shard_score_rows(model, run, SHARD_SCORE_CLM, &rows, from, to, &out, &err) != SHARD_OK)
        fail_msg("score of pairs [%d, %d): %s", first, first + count, err.message);
    const shard_tensor_t *tokens = shard_outputs_find(&out, "token_logprobs");
    const shard_tensor_t *sums = shard_outputs_find(&out, "sum_logprob");
    const float *at = tokens->f32;
    for (int r = 0; r < count; r++) {
        const int64_t n = tokens->row_lengths[r];
        s->sum[first + r] = sums->f32[r];
        s->n_tokens[first + r] = n;
        s->tokens[first + r] = malloc((size_t)n * sizeof(float));
        memcpy(s->tokens[first + r], at, (size_t)n * sizeof(float));
        at += n;
    }
    shard_outputs_clear(&out);
    free(ids);
    free(langs);
    free(mask);
    free(from);
    free(to);
}

/* Bit comparison of two scorings; names the first pair that differs. */
static void assert_same_bits(const char *what, const char *precision, const scores_t *a,
                             const scores_t *b)
{
    for (int i = 0; i < PAIRS; i++) {
        assert_int_equal(a->n_tokens[i], b->n_tokens[i]);
        if (memcmp(&a->sum[i], &b->sum[i], sizeof(float)) != 0)
            fail_msg("%s, %s: pair %d sums %a alone, %a (difference %.3g)", precision, what,
                     i + 1, (double)a->sum[i], (double)b->sum[i],
                     (double)(b->sum[i] - a->sum[i]));
        for (int t = 0; t < a->n_tokens[i]; t++)
            if (memcmp(&a->tokens[i][t], &b->tokens[i][t], sizeof(float)) != 0)
                fail_msg("%s, %s: pair %d token %d scores %a alone, %a", precision, what, i + 1,
                         t, (double)a->tokens[i][t], (double)b->tokens[i][t]);
    }
}

static void check_precision(shard_precision_t precision)
{
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr",
                                            &(shard_model_options_t){.precision = precision},
                                            &err);
    if (!model)
        fail_msg("open: %s", err.message);
    /* The fp32 path asked for is the one that ran (tests/shard/CMakeLists.txt
     * runs this file again on each path). */
    const char *forced = getenv("XLM_FP32_PRODUCTS");
    const char *note = shard_model_precision_note(model);
    if (precision == SHARD_PRECISION_FP32 && forced) {
        const char *named = strcmp(forced, "ordered") == 0  ? "ordered AVX2 kernel"
                            : strcmp(forced, "onednn") == 0 ? "oneDNN"
                                                            : "OpenBLAS";
        if (!strstr(note, named))
            fail_msg("XLM_FP32_PRODUCTS=%s, but the model says: %s", forced, note);
    }
    print_message("%s\n", note);
    shard_state_t *run = shard_state_new();
    assert_non_null(run);
    scores_t alone = {0}, whole = {0}, mixed = {0};
    shard_set_threads(1);
    for (int i = 0; i < PAIRS; i++)
        score_batch(model, run, i, 1, &alone);
    shard_set_threads(2);
    score_batch(model, run, 0, PAIRS, &whole);
    /* Micro-batches of 1 to 37 pairs, as a worker's batcher might cut them. */
    for (int first = 0, size = 3; first < PAIRS; size = size * 7 % 37 + 1) {
        const int count = PAIRS - first < size ? PAIRS - first : size;
        score_batch(model, run, first, count, &mixed);
        first += count;
    }
    const char *name = shard_precision_name(precision);
    assert_same_bits("the whole file in one batch", name, &alone, &whole);
    assert_same_bits("micro-batches of 1 to 37 pairs", name, &alone, &mixed);
    print_message("%s: 200 pairs alone, in one batch and in micro-batches: the same bits\n", name);
    scores_free(&alone);
    scores_free(&whole);
    scores_free(&mixed);
    shard_state_destroy(&run);
    shard_model_destroy(&model);
}

static void fp32_scores_do_not_depend_on_the_batch(void **state)
{
    (void)state;
    check_precision(SHARD_PRECISION_FP32);
}

static void bf16_scores_do_not_depend_on_the_batch(void **state)
{
    (void)state;
    check_precision(SHARD_PRECISION_BF16);
}

static void int8_scores_do_not_depend_on_the_batch(void **state)
{
    (void)state;
    check_precision(SHARD_PRECISION_INT8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fp32_scores_do_not_depend_on_the_batch),
        cmocka_unit_test(bf16_scores_do_not_depend_on_the_batch),
        cmocka_unit_test(int8_scores_do_not_depend_on_the_batch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
