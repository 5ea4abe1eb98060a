/* test_score.c: translation scores of the engine.
 * clm against the bundled model's reference scores (HuggingFace's), mlm-pll
 * against an independent computation from full LM logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard_engine.h"

static int64_t *int_array(const cJSON *list, int64_t *n)
{
    *n = cJSON_GetArraySize(list);
    int64_t *out = calloc((size_t)*n, sizeof *out);
    for (int64_t i = 0; i < *n; i++)
        out[i] = (int64_t)cJSON_GetArrayItem(list, (int)i)->valuedouble;
    return out;
}

/* Every reference pair of pairs_scores.jsonl and shuffled_scores.jsonl. */
static void check_reference_file(const shard_model_t *model, shard_state_t *run_state, const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t capacity = 0;
    int pairs = 0;
    double worst = 0.0;
    while (getline(&line, &capacity, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        int64_t n = 0, n_langs = 0;
        int64_t *ids = int_array(cJSON_GetObjectItem(o, "input_ids"), &n);
        int64_t *langs = int_array(cJSON_GetObjectItem(o, "langs"), &n_langs);
        assert_int_equal(n, n_langs);
        const int64_t src = cJSON_GetArraySize(cJSON_GetObjectItem(o, "src_tokens"));
        shard_inputs_t rows = {.batch = 1, .seq = n, .input_ids = ids, .langs = langs};
        int64_t from = src + 2, to = n;
        shard_outputs_t out;
        shard_error_t err = {0};
        shard_outputs_init(&out);
        assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_CLM, &rows, &from, &to, &out, &err), SHARD_OK);
        const shard_tensor_t *t = shard_outputs_find(&out, "token_logprobs");
        assert_int_equal(t->row_lengths[0], (int64_t)cJSON_GetObjectItem(o, "n_target_tokens")->valuedouble);
        double score = 0.0;
        for (int64_t i = 0; i < t->row_lengths[0]; i++)
            score += t->f32[i];
        double expected = cJSON_GetObjectItem(o, "score")->valuedouble;
        worst = fmax(worst, fabs(score - expected));
        if (fabs(score - expected) > 1e-3)
            fail_msg("%s line %d: score %.6f, reference %.6f", path, pairs + 1, score, expected);
        const cJSON *ref = cJSON_GetObjectItem(o, "target_logprobs");
        for (int64_t i = 0; i < t->row_lengths[0]; i++) {
            double e = cJSON_GetArrayItem(ref, (int)i)->valuedouble;
            assert_true(fabs(t->f32[i] - e) <= 1e-4 + 1e-4 * fabs(e));
        }
        shard_outputs_clear(&out);
        free(ids);
        free(langs);
        cJSON_Delete(o);
        pairs++;
    }
    free(line);
    fclose(f);
    assert_int_equal(pairs, 200);
    print_message("%s: 200 pairs, worst score difference %.2e\n", path, worst);
}

static void clm_scores_match_reference(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr", NULL, &err);
    shard_state_t *run_state = shard_state_new();
    assert_non_null(model);
    check_reference_file(model, run_state, XLM_MODELS_DIR "/tiny-clm-enfr/examples/pairs_scores.jsonl");
    check_reference_file(model, run_state, XLM_MODELS_DIR "/tiny-clm-enfr/examples/shuffled_scores.jsonl");
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
}

/* PLL from full LM logits, one masked copy at a time. */
static double pll_by_logits(const shard_model_t *model, shard_state_t *run_state, const int64_t *ids, const int64_t *langs,
                            int64_t n, int64_t from, int64_t to, float *per_token)
{
    const shard_config_t *c = shard_model_config(model);
    double total = 0.0;
    int64_t *copy = malloc((size_t)n * sizeof *copy);
    for (int64_t i = from; i < to; i++) {
        memcpy(copy, ids, (size_t)n * sizeof *copy);
        copy[i] = c->mask_index;
        shard_inputs_t in = {.batch = 1, .seq = n, .input_ids = copy, .langs = langs};
        shard_outputs_t out;
        shard_error_t err = {0};
        shard_outputs_init(&out);
        assert_int_equal(shard_forward(model, run_state, SHARD_HEAD_LM, &in, &out, &err), SHARD_OK);
        const float *logits = out.tensors[0].f32 + i * c->vocab_size;
        double max = logits[0], sum = 0.0;
        for (int64_t v = 1; v < c->vocab_size; v++)
            max = fmax(max, logits[v]);
        for (int64_t v = 0; v < c->vocab_size; v++)
            sum += exp(logits[v] - max);
        double lp = logits[ids[i]] - max - log(sum);
        per_token[i - from] = (float)lp;
        total += lp;
        shard_outputs_clear(&out);
    }
    free(copy);
    return total;
}

static void pll_matches_independent_computation(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_GOLDEN_DIR "/mlm_multi-lm", NULL, &err);
    shard_state_t *run_state = shard_state_new();
    assert_non_null(model);
    /* <s> src </s> tgt </s> with two languages, ids from the vocabulary. */
    int64_t ids[] = {0, 170, 182, 27, 50, 188, 1, 57, 156, 385, 35, 321, 52, 1};
    int64_t langs[] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
    const int64_t n = 14, from = 7, to = 13;
    float expected[6];
    double expected_sum = pll_by_logits(model, run_state, ids, langs, n, from, to, expected);
    shard_inputs_t rows = {.batch = 1, .seq = n, .input_ids = ids, .langs = langs};
    shard_outputs_t out;
    shard_outputs_init(&out);
    int64_t f = from, t = to;
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_MLM_PLL, &rows, &f, &t, &out, &err), SHARD_OK);
    const shard_tensor_t *tokens = shard_outputs_find(&out, "token_logprobs");
    assert_int_equal(tokens->row_lengths[0], 6);
    double sum = 0.0;
    for (int i = 0; i < 6; i++) {
        assert_true(fabs(tokens->f32[i] - expected[i]) <= 1e-4 + 1e-4 * fabs(expected[i]));
        sum += tokens->f32[i];
    }
    assert_true(fabs(sum - expected_sum) < 1e-3);
    assert_true(sum < 0.0);
    shard_outputs_clear(&out);
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
}

static void pll_rows_batched_equal_rows_alone(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_GOLDEN_DIR "/mlm_multi-lm", NULL, &err);
    shard_state_t *run_state = shard_state_new();
    assert_non_null(model);
    /* Two rows of different lengths, padded, with masks. */
    int64_t ids[2 * 9] = {0, 170, 182, 1, 57, 156, 385, 1, 2, 0, 94, 405, 20, 1, 39, 32, 402, 1};
    int64_t mask[2 * 9] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    int64_t from[2] = {4, 5}, to[2] = {7, 8};
    shard_inputs_t both = {.batch = 2, .seq = 9, .input_ids = ids, .attention_mask = mask};
    shard_outputs_t a, b;
    shard_outputs_init(&a);
    shard_outputs_init(&b);
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_MLM_PLL, &both, from, to, &a, &err), SHARD_OK);
    shard_inputs_t first = {.batch = 1, .seq = 8, .input_ids = ids};
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_MLM_PLL, &first, from, to, &b, &err), SHARD_OK);
    assert_int_equal(a.tensors[0].row_lengths[0], 3);
    assert_int_equal(a.tensors[0].row_lengths[1], 3);
    for (int i = 0; i < 3; i++)
        assert_true(fabsf(a.tensors[0].f32[i] - b.tensors[0].f32[i]) <= 1e-5f);
    shard_outputs_clear(&a);
    shard_outputs_clear(&b);
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
}

static void score_of_a_row_ignores_the_other_rows(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr", NULL, &err);
    shard_state_t *run_state = shard_state_new();
    assert_non_null(model);
    int64_t ids[2 * 8] = {0, 35, 321, 52, 1, 57, 156, 1, 0, 170, 182, 1, 94, 405, 20, 1};
    int64_t from[2] = {5, 4}, to[2] = {8, 8};
    shard_inputs_t both = {.batch = 2, .seq = 8, .input_ids = ids};
    shard_outputs_t a, b;
    shard_outputs_init(&a);
    shard_outputs_init(&b);
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_CLM, &both, from, to, &a, &err), SHARD_OK);
    shard_inputs_t second = {.batch = 1, .seq = 8, .input_ids = ids + 8};
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_CLM, &second, from + 1, to + 1, &b, &err), SHARD_OK);
    /* Equal up to float rounding: BLAS blocks a batch of 16 positions
     * differently from one of 8 (the reference differs by ~1e-6 too). */
    for (int i = 0; i < 4; i++)
        assert_true(fabsf(a.tensors[0].f32[3 + i] - b.tensors[0].f32[i]) <= 1e-5f);
    assert_true(fabsf(a.tensors[1].f32[1] - b.tensors[1].f32[0]) <= 1e-4f);
    shard_outputs_clear(&a);
    shard_outputs_clear(&b);
    /* Out-of-range score windows are refused. */
    int64_t bad_from = 0, bad_to = 9;
    shard_inputs_t one = {.batch = 1, .seq = 8, .input_ids = ids};
    assert_int_equal(shard_score_rows(model, run_state, SHARD_SCORE_CLM, &one, &bad_from, &bad_to, &a, &err),
                     SHARD_ERR_INPUT);
    shard_outputs_clear(&a);
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(clm_scores_match_reference),
        cmocka_unit_test(pll_matches_independent_computation),
        cmocka_unit_test(score_of_a_row_ignores_the_other_rows),
        cmocka_unit_test(pll_rows_batched_equal_rows_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
