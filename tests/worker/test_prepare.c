/* test_prepare.c: stage 0's preparation of requests (worker/prepare.c) and
 * the batcher's grouping (worker/first.c), on the bundled model's real
 * config and tokenizer: text into rows, langs and windows; bad language,
 * empty text, too long; mlm_pll copies; grouping by token budget. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard_tokenizer.h"
#include "stage.h"

typedef struct {
    shard_model_t *model;
    shard_tokenizer_t *tokenizer;
    worker_options_t options;
    worker_stage_t st;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    shard_error_t err = {0};
    f->model = shard_model_open(XLM_MODELS_DIR "/tiny-clm-enfr", NULL, &err);
    f->tokenizer = f->model ? shard_tokenizer_open(XLM_MODELS_DIR "/tiny-clm-enfr", &err) : NULL;
    if (!f->tokenizer) {
        fprintf(stderr, "setup: %s\n", err.message);
        return -1;
    }
    f->st.options = &f->options;
    f->st.model = f->model;
    f->st.config = shard_model_config(f->model);
    f->st.tokenizer = f->tokenizer;
    f->st.batch_tokens = 4096;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    shard_tokenizer_destroy(&f->tokenizer);
    shard_model_destroy(&f->model);
    free(f);
    return 0;
}

/* A text request of one row: (src, src_lang) then, when tgt is not NULL,
 * (tgt, tgt_lang). The messages live in the caller's frame. */
typedef struct {
    Xlm__TextSegment seg[2];
    Xlm__TextSegment *segs[2];
    Xlm__TextRow row;
    Xlm__TextRow *rows[1];
    Xlm__TextInput text;
    Xlm__Request req;
} text_request_t;

static void text_request(text_request_t *t, Xlm__Task task, const char *src, const char *src_lang,
                         const char *tgt, const char *tgt_lang)
{
    memset(t, 0, sizeof *t);
    t->seg[0] = (Xlm__TextSegment)XLM__TEXT_SEGMENT__INIT;
    t->seg[1] = (Xlm__TextSegment)XLM__TEXT_SEGMENT__INIT;
    t->seg[0].text = (char *)src;
    t->seg[0].lang = (char *)src_lang;
    t->seg[1].text = (char *)tgt;
    t->seg[1].lang = (char *)tgt_lang;
    t->segs[0] = &t->seg[0];
    t->segs[1] = &t->seg[1];
    t->row = (Xlm__TextRow)XLM__TEXT_ROW__INIT;
    t->row.n_segments = tgt ? 2 : 1;
    t->row.segments = t->segs;
    t->rows[0] = &t->row;
    t->text = (Xlm__TextInput)XLM__TEXT_INPUT__INIT;
    t->text.n_rows = 1;
    t->text.rows = t->rows;
    t->req = (Xlm__Request)XLM__REQUEST__INIT;
    t->req.id = (char *)"r1";
    t->req.task = task;
    t->req.input_case = XLM__REQUEST__INPUT_TEXT;
    t->req.text = &t->text;
}

/* The engine's own encoding of the pair, to compare with. */
static void encode(fixture_t *f, const char *src, const char *src_lang, const char *tgt,
                   const char *tgt_lang, shard_encoding_t *enc)
{
    shard_tokenizer_segment_t a = {src, strlen(src), src_lang}, b = {tgt, strlen(tgt), tgt_lang};
    shard_error_t err = {0};
    shard_encoding_init(enc);
    assert_int_equal(shard_tokenizer_encode(f->tokenizer, SHARD_TOKENIZER_MODE_HF, &a, &b, true,
                                            enc, &err), SHARD_OK);
}

static void text_pair_becomes_ids_langs_and_target_window(void **state)
{
    fixture_t *f = *state;
    text_request_t t;
    text_request(&t, XLM__TASK__TASK_CLM_SCORE, "the cat sleeps", "en", "le chat dort", "fr");
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr), PROTO_STATUS_OK);
    shard_encoding_t enc;
    encode(f, "the cat sleeps", "en", "le chat dort", "fr", &enc);
    assert_int_equal(p.item.rows, 1);
    assert_int_equal(p.item.seq, (int64_t)enc.length);
    assert_non_null(p.langs); /* the model embeds languages */
    for (size_t s = 0; s < enc.length; s++) {
        assert_int_equal(p.ids[s], enc.input_ids[s]);
        assert_int_equal(p.langs[s], enc.langs[s]);
        assert_int_equal(p.mask[s], 1);
        assert_int_equal(p.positions[s], (int64_t)s);
    }
    assert_int_equal(p.langs[0], 0);              /* en */
    assert_int_equal(p.langs[enc.length - 1], 1); /* fr */
    /* clm: the target's tokens and the final </s> */
    assert_int_equal(p.item.windows[0].from, (int64_t)enc.offset_b);
    assert_int_equal(p.item.windows[0].to, (int64_t)enc.length);
    assert_int_equal(p.tokens, (int64_t)enc.length);
    shard_encoding_clear(&enc);
    worker_prepared_clear(&p);
}

static void bad_language_is_a_bad_request(void **state)
{
    fixture_t *f = *state;
    text_request_t t;
    text_request(&t, XLM__TASK__TASK_CLM_SCORE, "the cat", "xx", "le chat", "fr");
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(perr.message, "text row 0"));
    assert_non_null(strstr(perr.message, "xx"));
    worker_prepared_clear(&p);
}

static void empty_text_is_a_bad_request(void **state)
{
    fixture_t *f = *state;
    text_request_t t;
    /* The codec refuses an empty segment off the wire (proto_request_check);
     * stage 0's own guard: an empty text leaves mlm_pll nothing to mask. */
    text_request(&t, XLM__TASK__TASK_MLM_PLL, "", "en", NULL, NULL);
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(perr.message, "mlm_pll: no position to score"));
    worker_prepared_clear(&p);
    /* no row at all */
    text_request(&t, XLM__TASK__TASK_CLM_SCORE, "x", "en", NULL, NULL);
    t.text.n_rows = 0;
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(perr.message, "empty input: 0 rows"));
    worker_prepared_clear(&p);
}

static void text_past_max_positions_is_too_large(void **state)
{
    fixture_t *f = *state;
    char *src = malloc(4096);
    src[0] = '\0';
    for (int i = 0; i < 300; i++)
        strcat(src, "cat ");
    text_request_t t;
    text_request(&t, XLM__TASK__TASK_CLM_SCORE, src, "en", "chat", "fr");
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_TOO_LARGE);
    assert_non_null(strstr(perr.message, "exceeds max_position_embeddings 128"));
    worker_prepared_clear(&p);
    free(src);
}

static void window_outside_the_row_is_a_bad_request(void **state)
{
    fixture_t *f = *state;
    text_request_t t;
    text_request(&t, XLM__TASK__TASK_CLM_SCORE, "the cat", "en", "le chat", "fr");
    int64_t from[1] = {0}, to[1] = {3};
    t.req.n_score_from = 1;
    t.req.score_from = from;
    t.req.n_score_to = 1;
    t.req.score_to = to;
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(perr.message, "row 0: scored positions [0, 3)"));
    worker_prepared_clear(&p);
}

static void pll_expands_into_one_masked_copy_per_target_token(void **state)
{
    fixture_t *f = *state;
    text_request_t t;
    text_request(&t, XLM__TASK__TASK_MLM_PLL, "the cat sleeps", "en", "le chat dort", "fr");
    worker_prepared_t p = {0};
    proto_error_t perr;
    proto_error_clear(&perr);
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr), PROTO_STATUS_OK);
    shard_encoding_t enc;
    encode(f, "the cat sleeps", "en", "le chat dort", "fr", &enc);
    const int64_t seq = (int64_t)enc.length, first = (int64_t)enc.offset_b;
    const int64_t n = (int64_t)enc.length_b;
    assert_int_equal(p.item.orig_rows, 1);
    assert_int_equal(p.item.windows[0].from, first); /* the target's tokens only */
    assert_int_equal(p.item.windows[0].to, first + n);
    assert_int_equal(p.item.rows, n);
    assert_int_equal(p.item.n_copies, n);
    const int64_t mask_index = f->st.config->mask_index;
    for (int64_t c = 0; c < n; c++) {
        assert_int_equal(p.item.copies[c].row, 0);
        assert_int_equal(p.item.copies[c].pos, first + c);
        assert_int_equal(p.item.copies[c].target, enc.input_ids[first + c]);
        for (int64_t s = 0; s < seq; s++) {
            assert_int_equal(p.ids[c * seq + s], s == first + c ? mask_index : enc.input_ids[s]);
            assert_int_equal(p.langs[c * seq + s], enc.langs[s]);
            assert_int_equal(p.mask[c * seq + s], 1);
        }
    }
    assert_int_equal(p.tokens, n * seq);
    shard_encoding_clear(&enc);
    worker_prepared_clear(&p);

    /* copies past the worker's budget are refused before any is made */
    f->st.batch_tokens = (uint64_t)(n * seq - 1);
    text_request(&t, XLM__TASK__TASK_MLM_PLL, "the cat sleeps", "en", "le chat dort", "fr");
    assert_int_equal(worker_prepare(&p, &f->st, &t.req, &perr),
                     PROTO_STATUS_TOO_LARGE);
    assert_non_null(strstr(perr.message, "--max-batch-tokens"));
    f->st.batch_tokens = 4096;
    worker_prepared_clear(&p);
}

/* A prepared request as the batcher sees it. */
static worker_prepared_t prepared(int32_t task, int64_t rows, int64_t seq, int64_t tokens,
                                  bool langs)
{
    static int64_t some_langs[1];
    worker_prepared_t p = {0};
    p.item.task = task;
    p.item.rows = rows;
    p.item.seq = seq;
    p.tokens = tokens;
    p.langs = langs ? some_langs : NULL; /* only its presence counts here */
    return p;
}

static void batcher_groups_while_the_budget_holds(void **state)
{
    (void)state;
    const int32_t clm = PROTO_TASK_CLM_SCORE;
    worker_prepared_t preps[6] = {
        prepared(clm, 1, 10, 10, true), prepared(clm, 2, 20, 30, true),
        prepared(clm, 1, 30, 30, true), /* 70 tokens so far: the budget */
        prepared(clm, 1, 5, 5, true),   /* one more: past it */
        prepared(clm, 1, 5, 5, false),  /* other signature */
        prepared(PROTO_TASK_GENERATE, 1, 5, 5, false),
    };
    assert_int_equal(worker_group_end(preps, 0, 6, 70), 3);
    assert_int_equal(worker_group_end(preps, 3, 6, 70), 4); /* no langs: a group of its own */
    assert_int_equal(worker_group_end(preps, 4, 6, 70), 5); /* generations go alone */
    assert_int_equal(worker_group_end(preps, 0, 6, 1000), 4);
    /* padded positions count too: 2 rows x 100 fit 4 x 50, not 4 x 49 */
    worker_prepared_t wide[2] = {prepared(clm, 1, 10, 1, true), prepared(clm, 1, 100, 1, true)};
    assert_int_equal(worker_group_end(wide, 0, 2, 50), 2);
    assert_int_equal(worker_group_end(wide, 0, 2, 49), 1);
    assert_true(worker_fits_budget(&preps[1], 30));
    assert_false(worker_fits_budget(&preps[1], 29));                              /* tokens */
    assert_false(worker_fits_budget(&(worker_prepared_t){.item = {.rows = 100, .seq = 100},
                                                         .tokens = 1}, 100)); /* padding */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_pair_becomes_ids_langs_and_target_window),
        cmocka_unit_test(bad_language_is_a_bad_request),
        cmocka_unit_test(empty_text_is_a_bad_request),
        cmocka_unit_test(text_past_max_positions_is_too_large),
        cmocka_unit_test(window_outside_the_row_is_a_bad_request),
        cmocka_unit_test(pll_expands_into_one_masked_copy_per_target_token),
        cmocka_unit_test(batcher_groups_while_the_budget_holds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
