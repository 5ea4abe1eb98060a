/* test_score_pieces.c: the scoring pieces that xlm-score in process and the
 * worker share (score.c): windows of an encoded row, masked PLL copies and
 * their gathering, clm gathering, and the sums. Hand-computed values; no
 * model needed (a config with pad and mask ids). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "shard_engine.h"

enum { PAD = 2, MASK = 5 };

static shard_config_t config(void)
{
    shard_config_t c;
    memset(&c, 0, sizeof c);
    c.pad_index = PAD;
    c.mask_index = MASK;
    return c;
}

/* <s> a a a </s> b b </s>: a at [1, 4), b at [5, 7), 8 tokens. */
static const shard_score_layout_t pair = {.offset_a = 1, .length_a = 3, .offset_b = 5,
                                          .length_b = 2, .length = 8};
/* <s> b b </s> (--no-source) */
static const shard_score_layout_t alone = {.offset_a = 1, .length_a = 2, .offset_b = -1,
                                           .length_b = 0, .length = 4};

static void window_of_a_pair_is_the_target(void **state)
{
    (void)state;
    shard_score_window_t clm = shard_score_window(SHARD_SCORE_CLM, &pair);
    shard_score_window_t pll = shard_score_window(SHARD_SCORE_MLM_PLL, &pair);
    assert_int_equal(clm.from, 5); /* target tokens plus the final </s> */
    assert_int_equal(clm.to, 8);
    assert_int_equal(pll.from, 5); /* target tokens only */
    assert_int_equal(pll.to, 7);
}

static void window_without_source_is_the_first_segment(void **state)
{
    (void)state;
    shard_score_window_t clm = shard_score_window(SHARD_SCORE_CLM, &alone);
    shard_score_window_t pll = shard_score_window(SHARD_SCORE_MLM_PLL, &alone);
    assert_int_equal(clm.from, 1);
    assert_int_equal(clm.to, 4);
    assert_int_equal(pll.from, 1);
    assert_int_equal(pll.to, 3);
    /* clm never scores position 0, even of a segment starting there */
    shard_score_layout_t bare = {.offset_a = 0, .length_a = 3, .offset_b = -1, .length = 3};
    assert_int_equal(shard_score_window(SHARD_SCORE_CLM, &bare).from, 1);
    assert_int_equal(shard_score_window(SHARD_SCORE_MLM_PLL, &bare).from, 0);
}

static void window_of_token_row_skips_the_specials(void **state)
{
    (void)state;
    shard_score_layout_t row = shard_score_layout_of_row(6);
    shard_score_window_t clm = shard_score_window(SHARD_SCORE_CLM, &row);
    shard_score_window_t pll = shard_score_window(SHARD_SCORE_MLM_PLL, &row);
    assert_int_equal(clm.from, 1);
    assert_int_equal(clm.to, 6);
    assert_int_equal(pll.from, 1);
    assert_int_equal(pll.to, 5);
}

static void window_fits_checks_the_bounds(void **state)
{
    (void)state;
    assert_true(shard_score_window_fits(SHARD_SCORE_CLM, (shard_score_window_t){1, 4}, 4));
    assert_false(shard_score_window_fits(SHARD_SCORE_CLM, (shard_score_window_t){0, 4}, 4));
    assert_true(shard_score_window_fits(SHARD_SCORE_MLM_PLL, (shard_score_window_t){0, 4}, 4));
    assert_false(shard_score_window_fits(SHARD_SCORE_MLM_PLL, (shard_score_window_t){1, 5}, 4));
    assert_false(shard_score_window_fits(SHARD_SCORE_MLM_PLL, (shard_score_window_t){3, 2}, 4));
    assert_true(shard_score_window_fits(SHARD_SCORE_MLM_PLL, (shard_score_window_t){2, 2}, 4));
}

/* Two rows of 4: [0 10 11 1] and [0 20 1 PAD] (no mask: the default one). */
static const int64_t ids[8] = {0, 10, 11, 1, 0, 20, 1, PAD};
static const int64_t langs[8] = {3, 3, 4, 4, 3, 4, 4, 0};
static const int64_t positions[8] = {0, 1, 2, 3, 0, 1, 2, 3};
static const shard_score_window_t windows[2] = {{1, 3}, {1, 2}};

static void pll_lists_copies_row_by_row(void **state)
{
    (void)state;
    shard_inputs_t rows = {.batch = 2, .seq = 4, .input_ids = ids};
    shard_pll_copy_t copies[3];
    shard_error_t err = {0};
    assert_int_equal(shard_pll_count(windows, 2), 3);
    assert_int_equal(shard_pll_list(&rows, windows, copies, &err), SHARD_OK);
    const shard_pll_copy_t want[3] = {{0, 1, 10}, {0, 2, 11}, {1, 1, 20}};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(copies[i].row, want[i].row);
        assert_int_equal(copies[i].pos, want[i].pos);
        assert_int_equal(copies[i].target, want[i].target);
    }
    const shard_score_window_t past[2] = {{1, 3}, {2, 5}};
    assert_int_equal(shard_pll_list(&rows, past, copies, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "row 1 scores positions [2, 5) of 4"));
}

static void pll_batch_masks_one_position_per_copy(void **state)
{
    (void)state;
    const shard_config_t c = config();
    shard_inputs_t rows = {.batch = 2, .seq = 4, .input_ids = ids, .langs = langs,
                           .position_ids = positions};
    const shard_pll_copy_t copies[3] = {{0, 1, 10}, {0, 2, 11}, {1, 1, 20}};
    shard_inputs_t batch;
    shard_error_t err = {0};
    assert_int_equal(shard_pll_batch(&c, &rows, copies, 3, &batch, &err), SHARD_OK);
    assert_int_equal(batch.batch, 3);
    assert_int_equal(batch.seq, 4);
    const int64_t want_ids[12] = {0, MASK, 11, 1, 0, 10, MASK, 1, 0, MASK, 1, PAD};
    const int64_t want_mask[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0}; /* from the row's pads */
    const int64_t want_langs[12] = {3, 3, 4, 4, 3, 3, 4, 4, 3, 4, 4, 0};
    for (int i = 0; i < 12; i++) {
        assert_int_equal(batch.input_ids[i], want_ids[i]);
        assert_int_equal(batch.attention_mask[i], want_mask[i]);
        assert_int_equal(batch.langs[i], want_langs[i]);
        assert_int_equal(batch.position_ids[i], i % 4);
    }
    assert_null(batch.token_type_ids); /* absent from the rows, absent here */
    shard_pll_batch_free(&batch);
    assert_null(batch.input_ids);

    const shard_pll_copy_t stray[1] = {{2, 1, 0}};
    assert_int_equal(shard_pll_batch(&c, &rows, stray, 1, &batch, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "row 2"));
    assert_null(batch.input_ids);
}

static void pll_gather_puts_copies_back_in_their_rows(void **state)
{
    (void)state;
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_tensor_t *tokens = NULL, *sums = NULL;
    shard_error_t err = {0};
    /* row 1 scores from 2: a copy's place counts from its window's start */
    const shard_score_window_t w[2] = {{1, 3}, {2, 3}};
    assert_int_equal(shard_score_outputs_add(&out, w, 2, &tokens, &sums, &err), SHARD_OK);
    assert_int_equal(tokens->ndim, 2);
    assert_int_equal(tokens->shape[0], 2);
    assert_int_equal(tokens->shape[1], 2);
    assert_int_equal(tokens->row_lengths[0], 2);
    assert_int_equal(tokens->row_lengths[1], 1);
    const shard_pll_copy_t copies[3] = {{0, 1, 10}, {0, 2, 11}, {1, 2, 1}};
    /* in two chunks, the second first: places do not depend on the order */
    const float lp[3] = {-1.5f, -0.25f, -3.0f};
    assert_int_equal(shard_pll_gather(copies + 2, 1, lp + 2, w, tokens, &err), SHARD_OK);
    assert_int_equal(shard_pll_gather(copies, 2, lp, w, tokens, &err), SHARD_OK);
    assert_true(tokens->f32[0] == -1.5f && tokens->f32[1] == -0.25f && tokens->f32[2] == -3.0f);
    shard_score_sum_rows(tokens, sums);
    assert_true(sums->f32[0] == -1.75f);
    assert_true(sums->f32[1] == -3.0f);
    const shard_pll_copy_t outside[1] = {{1, 1, 20}};
    assert_int_equal(shard_pll_gather(outside, 1, lp, w, tokens, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "row 1, position 1"));
    shard_outputs_clear(&out);
}

static void clm_gather_keeps_the_windows(void **state)
{
    (void)state;
    /* The head's rows: 3 rows of 3, 2, 4 scores from their score_from. */
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_error_t err = {0};
    int64_t n = 9;
    shard_tensor_t *head = shard_outputs_add(&out, "head", SHARD_F32, 1, &n, &err);
    int64_t head_rows[3] = {3, 2, 4};
    head->row_lengths = head_rows;
    head->shape[0] = 3;
    for (int i = 0; i < 9; i++)
        head->f32[i] = (float)(i + 1);
    /* rows 1 and 2 of the head (row0 = 1): keep 1 of 2, then 3 of 4 */
    const shard_score_window_t w[2] = {{4, 5}, {1, 4}};
    shard_outputs_t scores;
    shard_outputs_init(&scores);
    shard_tensor_t *tokens = NULL, *sums = NULL;
    assert_int_equal(shard_score_outputs_add(&scores, w, 2, &tokens, &sums, &err), SHARD_OK);
    assert_int_equal(shard_clm_gather(head, 1, w, tokens, &err), SHARD_OK);
    const float want[4] = {4, 6, 7, 8};
    for (int i = 0; i < 4; i++)
        assert_true(tokens->f32[i] == want[i]);
    const shard_score_window_t longer[2] = {{4, 5}, {1, 6}}; /* 5 of the head's 4 */
    shard_outputs_clear(&scores);
    shard_outputs_init(&scores);
    assert_int_equal(shard_score_outputs_add(&scores, longer, 2, &tokens, &sums, &err), SHARD_OK);
    assert_int_equal(shard_clm_gather(head, 1, longer, tokens, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "row 1 scores up to position 6 beyond its 5"));
    head->row_lengths = NULL;
    shard_outputs_clear(&scores);
    shard_outputs_clear(&out);
}

static void sums_run_in_double(void **state)
{
    (void)state;
    /* 1 + 2^-24 + 2^-24 in float32 steps stays 1; in double it is 1 + 2^-23. */
    const float x[3] = {1.0f, 0x1p-24f, 0x1p-24f};
    assert_true(shard_score_sum(x, 3) == 1.0 + 0x1p-23);
    assert_true(shard_score_sum(x, 0) == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(window_of_a_pair_is_the_target),
        cmocka_unit_test(window_without_source_is_the_first_segment),
        cmocka_unit_test(window_of_token_row_skips_the_specials),
        cmocka_unit_test(window_fits_checks_the_bounds),
        cmocka_unit_test(pll_lists_copies_row_by_row),
        cmocka_unit_test(pll_batch_masks_one_position_per_copy),
        cmocka_unit_test(pll_gather_puts_copies_back_in_their_rows),
        cmocka_unit_test(clm_gather_keeps_the_windows),
        cmocka_unit_test(sums_run_in_double),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
