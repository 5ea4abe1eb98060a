/* test_generate_cache.c: greedy generation with the key/value cache gives
 * what recomputing the whole sequence at every step gives.
 *
 * Every golden greedy case (each checkpoint format of clm-lm) against its
 * golden ids and the recomputing path; long runs on the bundled model (a
 * 9-token prompt to max_position_embeddings, 128, in fp32, to 64 in bf16
 * and int8),
 * token for token; a cached layer range matches the whole-prefix hidden
 * states bit for bit; a non-causal model and a broken continuation are
 * refused with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"
#include "engine_internal.h"

static const char *const golden_models[] = {"clm-lm", "clm-lm-legacy", "clm-lm-tf",
                                            "clm-lm-xlmorig"};

static void assert_same_ids(const char *what, const shard_outputs_t *a, const shard_outputs_t *b)
{
    const shard_tensor_t *x = shard_outputs_find(a, "generated_ids");
    const shard_tensor_t *y = shard_outputs_find(b, "generated_ids");
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(x->shape[1], y->shape[1]);
    for (int64_t i = 0; i < x->shape[1]; i++)
        if (x->i64[i] != y->i64[i])
            fail_msg("%s: token %lld is %lld with the cache, %lld recomputed", what,
                     (long long)i, (long long)x->i64[i], (long long)y->i64[i]);
}

static void golden_greedy_cases_match_recompute(void **state)
{
    (void)state;
    int cases = 0;
    for (size_t m = 0; m < sizeof golden_models / sizeof golden_models[0]; m++) {
        char dir[4200], path[4300];
        snprintf(dir, sizeof dir, "%s/%s", XLM_GOLDEN_DIR, golden_models[m]);
        snprintf(path, sizeof path, "%s/cases.jsonl", dir);
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(dir, NULL, &err);
        if (!model)
            fail_msg("%s: %s", dir, err.message);
        shard_state_t *run = shard_state_new();
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        char *line = NULL;
        size_t capacity = 0;
        ssize_t length;
        while ((length = getline(&line, &capacity, f)) > 0) {
            if (!strstr(line, "\"greedy\""))
                continue;
            case_t c;
            assert_int_equal(case_parse(line, (size_t)length, &c, &err), SHARD_OK);
            assert_int_equal(c.kind, CASE_GREEDY);
            shard_outputs_t cached, recomputed;
            shard_outputs_init(&cached);
            shard_outputs_init(&recomputed);
            assert_int_equal(shard_generate_greedy(model, run, &c.inputs, c.steps, c.langs_fill,
                                                   &cached, &err), SHARD_OK);
            assert_int_equal(shard_generate_greedy_recompute(model, run, &c.inputs, c.steps,
                                                             c.langs_fill, &recomputed, &err),
                             SHARD_OK);
            assert_same_ids(c.name, &cached, &recomputed);
            /* and the golden ids themselves (HuggingFace's) */
            const char *golden = strstr(line, "\"generated_ids\":[[");
            assert_non_null(golden);
            const shard_tensor_t *ids = shard_outputs_find(&cached, "generated_ids");
            char *at = (char *)golden + strlen("\"generated_ids\":[[");
            for (int64_t i = 0; i < ids->shape[1]; i++) {
                const long long want = strtoll(at, &at, 10);
                assert_int_equal(ids->i64[i], want);
                at++; /* , or ] */
            }
            shard_outputs_clear(&cached);
            shard_outputs_clear(&recomputed);
            case_clear(&c);
            cases++;
        }
        free(line);
        fclose(f);
        shard_state_destroy(&run);
        shard_model_destroy(&model);
    }
    assert_int_equal(cases, 4);
}

/* A prompt of the bundled model: <s> and some English ids (the first pair's
 * source of pairs_scores.jsonl would do as well; fixed ids keep it short). */
static const int64_t prompt[] = {0, 71, 437, 165, 58, 170, 364, 31, 1};

static void long_runs_match_recompute_in_every_precision(void **state)
{
    (void)state;
    for (int p = 0; p < SHARD_PRECISION_COUNT_; p++) {
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(
            XLM_MODELS_DIR "/tiny-clm-enfr",
            &(shard_model_options_t){.precision = (shard_precision_t)p}, &err);
        if (!model)
            fail_msg("open: %s", err.message);
        const int64_t n = sizeof prompt / sizeof prompt[0];
        /* fp32 to max_position_embeddings; the others (the same code, other
         * products) to half of it, to keep the test short. */
        const int64_t max_pos = shard_model_config(model)->max_position_embeddings;
        const int64_t steps = (p == SHARD_PRECISION_FP32 ? max_pos : max_pos / 2) - n;
        int64_t langs[sizeof prompt / sizeof prompt[0]] = {0};
        const shard_inputs_t in = {.batch = 1, .seq = n, .input_ids = prompt, .langs = langs};
        shard_state_t *run = shard_state_new();
        shard_outputs_t cached, recomputed;
        shard_outputs_init(&cached);
        shard_outputs_init(&recomputed);
        assert_int_equal(shard_generate_greedy(model, run, &in, steps, 1, &cached, &err), SHARD_OK);
        assert_int_equal(shard_generate_greedy_recompute(model, run, &in, steps, 1, &recomputed,
                                                         &err), SHARD_OK);
        char what[64];
        snprintf(what, sizeof what, "%s, %lld steps", shard_precision_name((shard_precision_t)p),
                 (long long)steps);
        assert_same_ids(what, &cached, &recomputed);
        print_message("%s: the same %lld tokens\n", what, (long long)steps);
        shard_outputs_clear(&cached);
        shard_outputs_clear(&recomputed);
        shard_state_destroy(&run);
        shard_model_destroy(&model);
    }
}

/* Layers [1, 3) of the bundled model over the embedded prefix: the cached
 * path fed one position at a time gives each position the bits the whole
 * prefix gives it. */
static void cached_stage_hidden_states_are_the_same_bits(void **state)
{
    (void)state;
    shard_error_t err = {0};
    const shard_range_t first = {0, 1, true, false}, middle = {1, 3, false, false};
    shard_model_t *embed = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr",
                                            &(shard_model_options_t){.range = &first}, &err);
    shard_model_t *stage = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr",
                                            &(shard_model_options_t){.range = &middle}, &err);
    assert_non_null(embed);
    assert_non_null(stage);
    const int64_t n = sizeof prompt / sizeof prompt[0], d = shard_model_config(stage)->emb_dim;
    const shard_inputs_t in = {.batch = 1, .seq = n, .input_ids = prompt};
    shard_state_t *run = shard_state_new();
    shard_acts_t *whole = shard_acts_new(), *one = shard_acts_new();
    shard_kv_cache_t *cache = shard_kv_cache_new();
    shard_acts_t *input = shard_acts_new();
    assert_int_equal(shard_embed(embed, run, &in, whole, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(embed, run, whole, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(stage, run, whole, &err), SHARD_OK);
    /* The stage's cache fed the same input, a position at a time. */
    assert_int_equal(shard_embed(embed, run, &in, input, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(embed, run, input, &err), SHARD_OK);
    for (int64_t t = 0; t < n; t++) {
        assert_int_equal(shard_acts_reserve(one, 1, t + 1, d, 1, &err), SHARD_OK);
        one->row_start[0] = 0;
        one->row_start[1] = 1;
        one->position[0] = (int32_t)t;
        one->is_real[0] = 1;
        memcpy(one->hidden, input->hidden + t * d, (size_t)d * sizeof(float));
        assert_int_equal(shard_run_layers_cached(stage, run, cache, one, &err), SHARD_OK);
        if (memcmp(one->hidden, whole->hidden + t * d, (size_t)d * sizeof(float)) != 0)
            fail_msg("position %lld: the cached stage's hidden state differs from the whole "
                     "prefix's", (long long)t);
    }
    assert_int_equal(shard_kv_cache_length(cache), n);
    shard_acts_destroy(&input);
    shard_acts_destroy(&whole);
    shard_acts_destroy(&one);
    shard_kv_cache_destroy(&cache);
    shard_state_destroy(&run);
    shard_model_destroy(&embed);
    shard_model_destroy(&stage);
}

static void a_position_that_does_not_continue_the_cache_is_refused(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr", NULL, &err);
    assert_non_null(model);
    shard_state_t *run = shard_state_new();
    shard_acts_t *acts = shard_acts_new();
    shard_kv_cache_t *cache = shard_kv_cache_new();
    const shard_inputs_t in = {.batch = 1, .seq = 4, .input_ids = prompt};
    assert_int_equal(shard_embed_from(model, run, &in, 2, acts, &err), SHARD_OK);
    /* the cache is empty: positions 2 and 3 skip 0 and 1 */
    assert_int_equal(shard_run_layers_cached(model, run, cache, acts, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "expected one row of real positions from 0 on"));
    const int64_t padded[] = {0, 71, 2, 165}; /* a pad id: the default mask stops at 3 */
    const shard_inputs_t with_pad = {.batch = 1, .seq = 4, .input_ids = padded};
    assert_int_equal(shard_embed_from(model, run, &with_pad, 0, acts, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "masked positions"));
    shard_kv_cache_destroy(&cache);
    shard_acts_destroy(&acts);
    shard_state_destroy(&run);
    shard_model_destroy(&model);
}

static void a_non_causal_model_is_refused(void **state)
{
    (void)state;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/mlm_multi-lm", XLM_GOLDEN_DIR);
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    if (!model)
        fail_msg("%s: %s", dir, err.message);
    shard_state_t *run = shard_state_new();
    shard_acts_t *acts = shard_acts_new();
    shard_kv_cache_t *cache = shard_kv_cache_new();
    const int64_t ids[] = {0, 71, 437};
    const shard_inputs_t in = {.batch = 1, .seq = 3, .input_ids = ids};
    assert_int_equal(shard_embed_from(model, run, &in, 0, acts, &err), SHARD_OK);
    assert_int_equal(shard_run_layers_cached(model, run, cache, acts, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "is not causal"));
    shard_kv_cache_destroy(&cache);
    shard_acts_destroy(&acts);
    shard_state_destroy(&run);
    shard_model_destroy(&model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_greedy_cases_match_recompute),
        cmocka_unit_test(long_runs_match_recompute_in_every_precision),
        cmocka_unit_test(cached_stage_hidden_states_are_the_same_bits),
        cmocka_unit_test(a_position_that_does_not_continue_the_cache_is_refused),
        cmocka_unit_test(a_non_causal_model_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
