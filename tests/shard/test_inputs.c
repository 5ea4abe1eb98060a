/* test_inputs.c: request inputs, bad and good.
 *
 * Bad inputs (ids outside the vocabulary, sequences longer than the
 * position table, languages, masks and positions out of range, ragged or
 * empty batches, multiple-choice shapes, non-finite p_mask) must each give
 * SHARD_ERR_INPUT with a message naming the field, the place and the value,
 * and produce no outputs.
 *
 * Good inputs, checked without golden files: a row's result does not depend
 * on the other rows of its batch, their order or its trailing padding;
 * leaving attention_mask out is the same as giving the default mask (the
 * first k positions, k the non-pad ids: shard_default_mask); a fully masked
 * row is valid and gives zero hidden states, even alone in its batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"

enum { PAD = 2, MAX_SEQ = 64 };

/* ------------------------------------------------------------ helpers */

static shard_model_t *open_model(const char *name)
{
    char path[1024];
    shard_error_t err = {0};
    snprintf(path, sizeof path, "%s/%s", XLM_GOLDEN_DIR, name);
    shard_model_t *model = shard_model_open(path, NULL, &err);
    if (!model)
        fail_msg("%s: %s", name, err.message);
    return model;
}

/* Checks code and that the message holds every NULL-terminated fragment. */
static void expect_error_v(const char *what, shard_status_t status, const shard_error_t *err,
                           shard_status_t code, va_list args)
{
    if (status != code || err->code != code)
        fail_msg("%s: status %s (%s), expected %s", what, shard_status_str(status),
                 err->message, shard_status_str(code));
    for (const char *want = va_arg(args, const char *); want; want = va_arg(args, const char *))
        if (!strstr(err->message, want))
            fail_msg("%s: message \"%s\" does not mention \"%s\"", what, err->message, want);
}

/* shard_forward and shard_inputs_check both refuse in with SHARD_ERR_INPUT
 * and the fragments, and no output is produced. */
static void expect_bad_inputs(const shard_model_t *model, shard_state_t *run_state, shard_head_t head, const shard_inputs_t *in,
                              ...)
{
    shard_error_t err = {0};
    shard_outputs_t outputs;
    va_list args;
    shard_outputs_init(&outputs);
    shard_status_t status = shard_forward(model, run_state, head, in, &outputs, &err);
    va_start(args, in);
    expect_error_v("shard_forward", status, &err, SHARD_ERR_INPUT, args);
    va_end(args);
    assert_int_equal(outputs.count, 0);

    memset(&err, 0, sizeof err);
    status = shard_inputs_check(shard_model_config(model), in, &err);
    va_start(args, in);
    expect_error_v("shard_inputs_check", status, &err, SHARD_ERR_INPUT, args);
    va_end(args);
}

/* A JSON case line must fail to parse or to run with SHARD_ERR_INPUT. */
static void expect_bad_line(const shard_model_t *model, shard_state_t *run_state, const char *line, ...)
{
    case_t c;
    shard_error_t err = {0};
    shard_outputs_t outputs;
    shard_outputs_init(&outputs);
    shard_status_t status = case_parse(line, strlen(line), &c, &err);
    if (!status)
        status = case_run(model, run_state, &c, &outputs, &err);
    va_list args;
    va_start(args, line);
    expect_error_v(line, status, &err, SHARD_ERR_INPUT, args);
    va_end(args);
    assert_int_equal(outputs.count, 0);
    assert_string_equal(c.name, "bad"); /* every line below is named "bad" */
    case_clear(&c);
}

/* Deterministic ids in [14, vocab): no special token, no pad. */
static void fill_ids(int64_t *ids, int64_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1u;
    for (int64_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = 14 + (int64_t)((x >> 8) % 1030u);
    }
}

static bool close_enough(float got, float want)
{
    return fabsf(got - want) <= 1e-5f + 1e-5f * fabsf(want);
}

/* ------------------------------------------------------------ bad values */

typedef struct {
    shard_model_t *mlm; /* mlm_multi-base: 4 languages, not causal */
    shard_model_t *clm; /* clm-lm: causal, LM head */
    shard_state_t *run; /* one run state serving both models */
} fixture_t;

static int setup(void **state)
{
    static fixture_t fixture;
    fixture.mlm = open_model("mlm_multi-base");
    fixture.clm = open_model("clm-lm");
    fixture.run = shard_state_new();
    assert_non_null(fixture.run);
    *state = &fixture;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fixture = *state;
    shard_model_destroy(&fixture->mlm);
    shard_model_destroy(&fixture->clm);
    shard_state_destroy(&fixture->run);
    return 0;
}

static void test_id_at_vocab_size(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[4] = {0, 1044, 35, 1};
    shard_inputs_t in = {.batch = 1, .seq = 4, .input_ids = ids};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "input_ids[0][1] = 1044", "0..1043", NULL);
    expect_bad_inputs(f->clm, f->run, SHARD_HEAD_LM, &in, "input_ids[0][1] = 1044", NULL);
}

static void test_negative_id(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[2][3] = {{0, 35, 1}, {0, 35, -1}};
    shard_inputs_t in = {.batch = 2, .seq = 3, .input_ids = &ids[0][0]};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "input_ids[1][2] = -1", NULL);
}

static void test_sequence_longer_than_position_table(void **state)
{
    fixture_t *f = *state;
    int64_t ids[MAX_SEQ + 1];
    fill_ids(ids, MAX_SEQ + 1, 1);
    shard_inputs_t in = {.batch = 1, .seq = MAX_SEQ + 1, .input_ids = ids};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "sequence length 65",
                      "max_position_embeddings 64", NULL);
    /* The longest allowed sequence runs. */
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    in.seq = MAX_SEQ;
    assert_int_equal(shard_forward(f->mlm, f->run, SHARD_HEAD_BASE, &in, &outputs, &err), SHARD_OK);
    shard_outputs_clear(&outputs);
}

static void test_lang_out_of_range(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[3] = {0, 35, 1}, langs[3] = {0, 3, 4}, negative[3] = {0, -1, 0};
    shard_inputs_t in = {.batch = 1, .seq = 3, .input_ids = ids, .langs = langs};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "langs[0][2] = 4", "0..3", NULL);
    in.langs = negative;
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "langs[0][1] = -1", NULL);
    /* clm has 2 languages: 3 is already too many. */
    const int64_t three[3] = {0, 3, 0};
    in.langs = three;
    expect_bad_inputs(f->clm, f->run, SHARD_HEAD_LM, &in, "langs[0][1] = 3", "0..1", NULL);
}

static void test_attention_mask_value_two(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[2][3] = {{0, 35, 1}, {0, 36, 1}}, mask[2][3] = {{1, 1, 1}, {1, 2, 0}};
    shard_inputs_t in = {.batch = 2, .seq = 3, .input_ids = &ids[0][0],
                         .attention_mask = &mask[0][0]};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "attention_mask[1][1] = 2", "0..1", NULL);
    expect_bad_inputs(f->clm, f->run, SHARD_HEAD_LM, &in, "attention_mask[1][1] = 2", NULL);
}

static void test_position_id_out_of_range(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[3] = {0, 35, 1}, high[3] = {62, 63, 64}, negative[3] = {-1, 0, 1};
    shard_inputs_t in = {.batch = 1, .seq = 3, .input_ids = ids, .position_ids = high};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "position_ids[0][2] = 64", "0..63", NULL);
    in.position_ids = negative;
    expect_bad_inputs(f->clm, f->run, SHARD_HEAD_LM, &in, "position_ids[0][0] = -1", NULL);
}

static void test_token_type_out_of_range(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[3] = {0, 35, 1}, types[3] = {0, 0, 5000};
    shard_inputs_t in = {.batch = 1, .seq = 3, .input_ids = ids, .token_type_ids = types};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &in, "token_type_ids[0][2] = 5000", NULL);
}

static void test_empty_batch(void **state)
{
    fixture_t *f = *state;
    const int64_t ids[1] = {0};
    shard_inputs_t none = {.batch = 0, .seq = 3, .input_ids = ids};
    shard_inputs_t empty_rows = {.batch = 2, .seq = 0, .input_ids = ids};
    shard_inputs_t no_ids = {.batch = 1, .seq = 1, .input_ids = NULL};
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &none, "empty batch", "0 rows", NULL);
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &empty_rows, "empty batch", NULL);
    expect_bad_inputs(f->mlm, f->run, SHARD_HEAD_BASE, &no_ids, "empty batch", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": {\"input_ids\": []}}",
                    "input_ids", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[]]}}",
                    "empty batch", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[], []]}}",
                    "empty batch", NULL);
}

static void test_ragged_rows_in_case_line(void **state)
{
    fixture_t *f = *state;
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, 35, 1], [0, 1]]}}",
                    "input_ids", "ragged", "has 2 entries, expected 3", NULL);
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, 1], [0, 35, 1]]}}",
                    "input_ids", "ragged", "has 3 entries, expected 2", NULL);
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, 35, 1], [0, 36, 1]], "
                    "\"attention_mask\": [[1, 1, 1], [1, 1]]}}",
                    "attention_mask", NULL);
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, 35, 1]], "
                    "\"langs\": [[0, 0, 0], [0, 0, 0]]}}",
                    "langs", "shape differs from input_ids", NULL);
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, 35.5, 1]]}}",
                    "input_ids", "35.5", "not an integer", NULL);
    expect_bad_line(f->mlm, f->run,
                    "{\"name\": \"bad\", \"inputs\": {\"input_ids\": [[0, \"35\", 1]]}}",
                    "input_ids", "not a number", NULL);
}

static void test_malformed_case_line(void **state)
{
    fixture_t *f = *state;
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": {\"input_idz\": [[0, 1]]}}",
                    "unknown field", "input_idz", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": {\"langs\": [[0, 1]]}}",
                    "input_ids is missing", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"inputs\": [[0, 1]]}", "inputs", NULL);
    expect_bad_line(f->mlm, f->run, "{\"name\": \"bad\", \"kind\": \"beam\", \"inputs\": {}}",
                    "unknown kind", "beam", NULL);
}

static void test_multiple_choice_shapes(void **state)
{
    (void)state;
    shard_model_t *mc = open_model("mlm_multi-multiple_choice");
    shard_state_t *run = shard_state_new();
    const int64_t ids[3][3] = {{0, 35, 1}, {0, 36, 1}, {0, 37, 1}};
    shard_inputs_t in = {.batch = 3, .seq = 3, .n_choices = 2, .input_ids = &ids[0][0]};
    expect_bad_inputs(mc, run, SHARD_HEAD_MULTIPLE_CHOICE, &in, "3 rows",
                      "examples of 2 choices", NULL);
    in.n_choices = -1;
    expect_bad_inputs(mc, run, SHARD_HEAD_MULTIPLE_CHOICE, &in, "choices", NULL);
    /* [batch][choices][seq] for another head, and [batch][seq] for it. */
    expect_bad_line(mc, run,
                    "{\"name\": \"bad\", \"head\": \"seq_cls\", \"inputs\": {\"input_ids\": "
                    "[[[0, 35, 1], [0, 36, 1]]]}}",
                    "only for multiple_choice", "seq_cls", NULL);
    expect_bad_line(mc, run,
                    "{\"name\": \"bad\", \"head\": \"multiple_choice\", \"inputs\": "
                    "{\"input_ids\": [[0, 35, 1], [0, 36, 1]]}}",
                    "multiple_choice takes input_ids of [batch][choices][seq]", NULL);
    /* Ragged choices: the second example has one choice. */
    expect_bad_line(mc, run,
                    "{\"name\": \"bad\", \"head\": \"multiple_choice\", \"inputs\": "
                    "{\"input_ids\": [[[0, 35, 1], [0, 36, 1]], [[0, 37, 1]]]}}",
                    "ragged", "depth 1", NULL);
    /* A mask of [batch][seq] for ids of [batch][choices][seq]. */
    expect_bad_line(mc, run,
                    "{\"name\": \"bad\", \"head\": \"multiple_choice\", \"inputs\": "
                    "{\"input_ids\": [[[0, 35, 1], [0, 36, 1]]], "
                    "\"attention_mask\": [[1, 1, 1], [1, 1, 1]]}}",
                    "attention_mask", "shape differs", NULL);
    shard_state_destroy(&run);
    shard_model_destroy(&mc);
}

static void test_p_mask_not_finite(void **state)
{
    (void)state;
    shard_model_t *qa = open_model("mlm_multi-qa");
    shard_state_t *run = shard_state_new();
    int64_t ids[2][6];
    fill_ids(&ids[0][0], 12, 7);
    float p_mask[2][6] = {{0, 0, 0, 0, 0, 0}, {0, 1, NAN, 0, 0, 0}};
    shard_inputs_t in = {.batch = 2, .seq = 6, .input_ids = &ids[0][0], .p_mask = &p_mask[0][0]};
    expect_bad_inputs(qa, run, SHARD_HEAD_QA, &in, "p_mask[1][2]", "not finite", NULL);
    p_mask[1][2] = 0;
    p_mask[0][5] = -INFINITY;
    expect_bad_inputs(qa, run, SHARD_HEAD_QA, &in, "p_mask[0][5]", "not finite", NULL);
    /* Finite again: it runs. */
    p_mask[0][5] = 1;
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_forward(qa, run, SHARD_HEAD_QA, &in, &outputs, &err), SHARD_OK);
    shard_outputs_clear(&outputs);
    shard_state_destroy(&run);
    shard_model_destroy(&qa);
}

static void test_qa_sequence_shorter_than_top_k(void **state)
{
    (void)state;
    shard_model_t *qa = open_model("mlm_multi-qa"); /* start_n_top 5 */
    shard_state_t *run = shard_state_new();
    const int64_t ids[4] = {0, 35, 36, 1};
    shard_inputs_t in = {.batch = 1, .seq = 4, .input_ids = ids};
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_forward(qa, run, SHARD_HEAD_QA, &in, &outputs, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "sequence length 4"));
    assert_non_null(strstr(err.message, "start_n_top 5"));
    assert_int_equal(outputs.count, 0);
    shard_state_destroy(&run);
    shard_model_destroy(&qa);
}

static void test_greedy_past_position_table(void **state)
{
    fixture_t *f = *state;
    int64_t ids[60];
    fill_ids(ids, 60, 3);
    shard_inputs_t in = {.batch = 1, .seq = 60, .input_ids = ids};
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_generate_greedy(f->clm, f->run, &in, 5, 0, &outputs, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "60 tokens plus 5 steps"));
    assert_non_null(strstr(err.message, "64"));
    assert_int_equal(outputs.count, 0);
    /* Exactly filling the table is fine. */
    assert_int_equal(shard_generate_greedy(f->clm, f->run, &in, 4, 0, &outputs, &err), SHARD_OK);
    assert_int_equal(shard_outputs_find(&outputs, "new_ids")->shape[1], 4);
    shard_outputs_clear(&outputs);
}

/* ------------------------------------------------------------ semantics */

/* Rows of different lengths, padded with PAD and masked. */
enum { ROWS = 3, WIDTH = 12 };
static const int64_t row_length[ROWS] = {7, 12, 3};

typedef struct {
    int64_t ids[ROWS][WIDTH];
    int64_t mask[ROWS][WIDTH];
    int64_t langs[ROWS][WIDTH];
} padded_batch_t;

static void make_batch(padded_batch_t *batch, uint32_t seed)
{
    for (int r = 0; r < ROWS; r++) {
        fill_ids(batch->ids[r], WIDTH, seed + (uint32_t)r);
        for (int s = 0; s < WIDTH; s++) {
            const bool on = s < row_length[r];
            if (!on)
                batch->ids[r][s] = PAD;
            batch->mask[r][s] = on;
            batch->langs[r][s] = (r + s) % 2;
        }
    }
}

/* Output name of a head's per-position tensor. */
static const shard_tensor_t *run_head(const shard_model_t *model, shard_state_t *run_state, shard_head_t head,
                                      const shard_inputs_t *in, shard_outputs_t *outputs)
{
    shard_error_t err = {0};
    shard_outputs_init(outputs);
    if (shard_forward(model, run_state, head, in, outputs, &err))
        fail_msg("shard_forward: %s", err.message);
    return &outputs->tensors[0];
}

/* Row r of a [batch][seq][dim] result against row 0 of a single-row run
 * with seq `alone_seq`: equal over the row's real positions; in the batch,
 * positions past the row are zero (base) or the same for every padded row
 * position (heads: bias only). */
static void compare_row(const char *what, const shard_tensor_t *batch, int r,
                        const shard_tensor_t *alone, int64_t length)
{
    const int64_t dim = batch->shape[2];
    assert_int_equal(alone->shape[2], dim);
    for (int64_t s = 0; s < length; s++)
        for (int64_t i = 0; i < dim; i++) {
            float got = batch->f32[(r * batch->shape[1] + s) * dim + i];
            float want = alone->f32[s * dim + i];
            if (!close_enough(got, want))
                fail_msg("%s: row %d position %lld [%lld] = %.9g in the batch, %.9g alone", what,
                         r, (long long)s, (long long)i, (double)got, (double)want);
        }
}

/* Each row of a padded batch against the same row run alone (no padding)
 * and alone with the batch's trailing padding. */
static void check_rows_independent(const shard_model_t *model, shard_state_t *run_state, shard_head_t head, bool with_langs,
                                   const char *what)
{
    padded_batch_t b;
    make_batch(&b, 11);
    shard_inputs_t batch_in = {.batch = ROWS, .seq = WIDTH, .input_ids = &b.ids[0][0],
                               .attention_mask = &b.mask[0][0],
                               .langs = with_langs ? &b.langs[0][0] : NULL};
    shard_outputs_t batch_out, alone_out, padded_out;
    const shard_tensor_t *in_batch = run_head(model, run_state, head, &batch_in, &batch_out);
    for (int r = 0; r < ROWS; r++) {
        shard_inputs_t alone = {.batch = 1, .seq = row_length[r], .input_ids = b.ids[r],
                                .langs = with_langs ? b.langs[r] : NULL};
        shard_inputs_t padded = {.batch = 1, .seq = WIDTH, .input_ids = b.ids[r],
                                 .attention_mask = b.mask[r],
                                 .langs = with_langs ? b.langs[r] : NULL};
        const shard_tensor_t *a = run_head(model, run_state, head, &alone, &alone_out);
        const shard_tensor_t *p = run_head(model, run_state, head, &padded, &padded_out);
        compare_row(what, in_batch, r, a, row_length[r]);
        compare_row(what, p, 0, a, row_length[r]);
        /* Padding positions hold what a padded row holds, whichever row. */
        for (int64_t s = row_length[r]; s < WIDTH; s++)
            for (int64_t i = 0; i < in_batch->shape[2]; i++) {
                float got = in_batch->f32[(r * WIDTH + s) * in_batch->shape[2] + i];
                float want = p->f32[s * p->shape[2] + i];
                if (got != want)
                    fail_msg("%s: padded position %lld of row %d differs", what, (long long)s, r);
                if (head == SHARD_HEAD_BASE && got != 0.0f)
                    fail_msg("%s: padded position %lld of row %d is not zero", what,
                             (long long)s, r);
            }
        shard_outputs_clear(&alone_out);
        shard_outputs_clear(&padded_out);
    }
    shard_outputs_clear(&batch_out);
}

static void test_rows_independent_mlm(void **state)
{
    fixture_t *f = *state;
    check_rows_independent(f->mlm, f->run, SHARD_HEAD_BASE, false, "mlm_multi base");
    check_rows_independent(f->mlm, f->run, SHARD_HEAD_BASE, true, "mlm_multi base with langs");
}

static void test_rows_independent_clm(void **state)
{
    fixture_t *f = *state;
    check_rows_independent(f->clm, f->run, SHARD_HEAD_BASE, true, "clm base");
    check_rows_independent(f->clm, f->run, SHARD_HEAD_LM, false, "clm lm logits");
}

static void test_row_order_does_not_matter(void **state)
{
    fixture_t *f = *state;
    padded_batch_t b, swapped;
    make_batch(&b, 5);
    swapped = b;
    memcpy(swapped.ids[0], b.ids[2], sizeof b.ids[0]);
    memcpy(swapped.ids[2], b.ids[0], sizeof b.ids[0]);
    memcpy(swapped.mask[0], b.mask[2], sizeof b.mask[0]);
    memcpy(swapped.mask[2], b.mask[0], sizeof b.mask[0]);
    shard_model_t *models[2] = {f->mlm, f->clm};
    for (int m = 0; m < 2; m++) {
        shard_inputs_t in = {.batch = ROWS, .seq = WIDTH, .input_ids = &b.ids[0][0],
                             .attention_mask = &b.mask[0][0]};
        shard_inputs_t in_swapped = in;
        in_swapped.input_ids = &swapped.ids[0][0];
        in_swapped.attention_mask = &swapped.mask[0][0];
        shard_outputs_t o1, o2;
        const shard_tensor_t *t1 = run_head(models[m], f->run, SHARD_HEAD_BASE, &in, &o1);
        const shard_tensor_t *t2 = run_head(models[m], f->run, SHARD_HEAD_BASE, &in_swapped, &o2);
        const size_t row = (size_t)(WIDTH * t1->shape[2]);
        for (size_t i = 0; i < row; i++) {
            if (!close_enough(t2->f32[2 * row + i], t1->f32[i]) ||
                !close_enough(t2->f32[i], t1->f32[2 * row + i]) ||
                !close_enough(t2->f32[row + i], t1->f32[row + i]))
                fail_msg("model %d: swapping rows 0 and 2 changed value %zu", m, i);
        }
        shard_outputs_clear(&o1);
        shard_outputs_clear(&o2);
    }
}

/* Without attention_mask, the mask is 1 on the first k positions, k the
 * number of non-pad ids: the same as giving that mask. */
static void check_default_mask(const shard_model_t *model, shard_state_t *run_state, shard_head_t head, const int64_t *ids,
                               const int64_t *mask, int64_t batch, int64_t seq, const char *what)
{
    shard_inputs_t implicit = {.batch = batch, .seq = seq, .input_ids = ids};
    shard_inputs_t explicit_mask = implicit;
    explicit_mask.attention_mask = mask;
    shard_outputs_t o1, o2;
    const shard_tensor_t *t1 = run_head(model, run_state, head, &implicit, &o1);
    const shard_tensor_t *t2 = run_head(model, run_state, head, &explicit_mask, &o2);
    const int64_t n = shard_tensor_numel(t1);
    assert_int_equal(shard_tensor_numel(t2), n);
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&t1->f32[i], &t2->f32[i], sizeof(float)) != 0)
            fail_msg("%s: value %lld is %.9g without a mask, %.9g with the explicit mask", what,
                     (long long)i, (double)t1->f32[i], (double)t2->f32[i]);
    shard_outputs_clear(&o1);
    shard_outputs_clear(&o2);
}

static void test_default_mask_equals_explicit_mask(void **state)
{
    fixture_t *f = *state;
    padded_batch_t b;
    make_batch(&b, 23);
    check_default_mask(f->mlm, f->run, SHARD_HEAD_BASE, &b.ids[0][0], &b.mask[0][0], ROWS, WIDTH,
                       "mlm_multi padded batch");
    check_default_mask(f->clm, f->run, SHARD_HEAD_BASE, &b.ids[0][0], &b.mask[0][0], ROWS, WIDTH,
                       "clm padded batch");
    check_default_mask(f->clm, f->run, SHARD_HEAD_LM, &b.ids[0][0], &b.mask[0][0], ROWS, WIDTH,
                       "clm lm padded batch");
}

static void test_default_mask_counts_pad_ids_anywhere(void **state)
{
    /* A pad id inside the row still shortens the default mask by one, at
     * the end: 4 non-pad ids give the mask 1 1 1 1 0. */
    fixture_t *f = *state;
    const int64_t ids[5] = {0, 35, PAD, 96, 1}, mask[5] = {1, 1, 1, 1, 0};
    check_default_mask(f->mlm, f->run, SHARD_HEAD_BASE, ids, mask, 1, 5, "mlm_multi inner pad");
    check_default_mask(f->clm, f->run, SHARD_HEAD_LM, ids, mask, 1, 5, "clm inner pad");
}

static void test_default_mask_function(void **state)
{
    fixture_t *f = *state;
    const shard_config_t *config = shard_model_config(f->mlm);
    const struct {
        int64_t ids[5];
        int64_t want[5];
    } rows[] = {
        {{0, 35, 96, 1, PAD}, {1, 1, 1, 1, 0}},
        {{0, 35, PAD, 96, 1}, {1, 1, 1, 1, 0}}, /* the first k, not the non-pad ones */
        {{PAD, PAD, 0, 35, 1}, {1, 1, 1, 0, 0}},
        {{PAD, PAD, PAD, PAD, PAD}, {0, 0, 0, 0, 0}},
        {{0, 35, 36, 37, 1}, {1, 1, 1, 1, 1}},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        int64_t mask[5] = {7, 7, 7, 7, 7};
        shard_default_mask(config, rows[r].ids, 5, mask);
        for (int s = 0; s < 5; s++)
            if (mask[s] != rows[r].want[s])
                fail_msg("row %zu: default mask[%d] = %lld, expected %lld", r, s,
                         (long long)mask[s], (long long)rows[r].want[s]);
    }
}

/* A row whose attention_mask is all zeros has no position to compute: its
 * hidden states are zero and the other rows are unaffected. */
static void check_fully_masked(const char *name)
{
    shard_model_t *model = open_model(name);
    shard_state_t *run_state = shard_state_new(); /* fresh: nothing cached yet */
    const int64_t ids[2][4] = {{0, 35, 96, 1}, {0, 36, 97, 1}};
    const int64_t none[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const int64_t one[2][4] = {{0, 0, 0, 0}, {1, 1, 1, 1}};
    shard_inputs_t in = {.batch = 2, .seq = 4, .input_ids = &ids[0][0],
                         .attention_mask = &none[0][0]};
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    /* Every row masked: nothing to compute, all zeros. */
    shard_status_t status = shard_forward(model, run_state, SHARD_HEAD_BASE, &in, &outputs, &err);
    if (status)
        fail_msg("%s: a batch of fully masked rows: %s (%s)", name, shard_status_str(status),
                 err.message);
    const shard_tensor_t *t = &outputs.tensors[0];
    for (int64_t i = 0; i < shard_tensor_numel(t); i++)
        assert_true(t->f32[i] == 0.0f);
    shard_outputs_clear(&outputs);
    /* One row masked next to a real one. */
    in.attention_mask = &one[0][0];
    assert_int_equal(shard_forward(model, run_state, SHARD_HEAD_BASE, &in, &outputs, &err), SHARD_OK);
    t = &outputs.tensors[0];
    for (int64_t i = 0; i < t->shape[1] * t->shape[2]; i++)
        assert_true(t->f32[i] == 0.0f);
    shard_outputs_clear(&outputs);
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
}

static void test_fully_masked_rows_mlm(void **state)
{
    (void)state;
    check_fully_masked("mlm_multi-base");
}

static void test_fully_masked_rows_clm(void **state)
{
    (void)state;
    check_fully_masked("clm-base");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_at_vocab_size),
        cmocka_unit_test(test_negative_id),
        cmocka_unit_test(test_sequence_longer_than_position_table),
        cmocka_unit_test(test_lang_out_of_range),
        cmocka_unit_test(test_attention_mask_value_two),
        cmocka_unit_test(test_position_id_out_of_range),
        cmocka_unit_test(test_token_type_out_of_range),
        cmocka_unit_test(test_empty_batch),
        cmocka_unit_test(test_ragged_rows_in_case_line),
        cmocka_unit_test(test_malformed_case_line),
        cmocka_unit_test(test_multiple_choice_shapes),
        cmocka_unit_test(test_p_mask_not_finite),
        cmocka_unit_test(test_qa_sequence_shorter_than_top_k),
        cmocka_unit_test(test_greedy_past_position_table),
        cmocka_unit_test(test_rows_independent_mlm),
        cmocka_unit_test(test_rows_independent_clm),
        cmocka_unit_test(test_row_order_does_not_matter),
        cmocka_unit_test(test_default_mask_equals_explicit_mask),
        cmocka_unit_test(test_default_mask_counts_pad_ids_anywhere),
        cmocka_unit_test(test_default_mask_function),
        cmocka_unit_test(test_fully_masked_rows_mlm),
        cmocka_unit_test(test_fully_masked_rows_clm),
    };
    shard_set_threads(1);
    return cmocka_run_group_tests(tests, setup, teardown);
}
