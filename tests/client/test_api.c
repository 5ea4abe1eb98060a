/* test_api.c: libxlmclient against a raw ROUTER peer that plays the broker
 * by hand, so that every byte the client sends is seen and every reply is
 * chosen: arguments, encoding, the window, retries with the same id,
 * duplicate and late replies, backoff, deadlines, cancel, stats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "xlmclient.h"

typedef struct {
    peer_t peer;
    xlm_client_config_t config;
    xlm_client_t *client;
} api_t;

static int setup(void **state)
{
    api_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    assert_true(peer_open(&t->peer));
    xlm_client_config_defaults(&t->config);
    t->config.endpoint = t->peer.endpoint;
    t->config.attempt_timeout_ms = 100;
    t->config.max_attempts = 3;
    t->config.backoff_ms = 10;
    t->config.backoff_max_ms = 40;
    xlm_error_t err;
    t->client = xlm_client_new(&t->config, &err);
    assert_non_null(t->client);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    api_t *t = *state;
    xlm_client_destroy(&t->client);
    assert_null(t->client);
    peer_close(&t->peer);
    free(t);
    return 0;
}

/* Rows of ids for the requests of these tests. */
static const int64_t ids[] = {5, 6, 7, 8, 9, 10};
static const int64_t lengths[] = {2, 4};
static const xlm_tokens_t tokens = {.rows = 2, .lengths = lengths, .input_ids = ids};

static void request_init(xlm_request_t *rq, const char *id)
{
    xlm_request_init(rq);
    rq->id = id;
    rq->task = XLM_TASK_SEQ_CLS;
    rq->tokens = &tokens;
}

/* Receives one message, which must be a request; returns it. */
static Xlm__ClientMessage *expect_request(api_t *t, int timeout_ms)
{
    Xlm__ClientMessage *msg = peer_recv(&t->peer, timeout_ms, NULL, NULL);
    assert_non_null(msg);
    assert_int_equal(msg->body_case, XLM__CLIENT_MESSAGE__BODY_REQUEST);
    return msg;
}

/* Checks an echo result of the request above. */
static void check_echo(const xlm_result_t *r)
{
    assert_int_equal(xlm_result_code(r), XLM_CODE_OK);
    assert_string_equal(xlm_result_message(r), "");
    assert_int_equal(xlm_result_count(r), 2);
    const xlm_tensor_t *sums = xlm_result_find(r, "sum_ids");
    assert_non_null(sums);
    assert_int_equal(sums->dtype, XLM_I64);
    assert_int_equal(sums->ndim, 1);
    assert_int_equal(sums->shape[0], 2);
    assert_int_equal(sums->i64[0], 11);
    assert_int_equal(sums->i64[1], 34);
    const xlm_tensor_t *echo = xlm_result_tensor(r, 1);
    assert_string_equal(echo->name, "echo");
    assert_int_equal(echo->dtype, XLM_F32);
    assert_null(echo->i64);
    assert_int_equal(echo->numel, 6);
    assert_non_null(echo->row_lengths);
    assert_int_equal(echo->row_lengths[1], 4);
    assert_true(echo->f32[5] == 10.0f);
    assert_null(xlm_result_tensor(r, 2));
    assert_null(xlm_result_find(r, "nope"));
}

/* ------------------------------------------------------------ construction */

static void test_config_errors(void **state)
{
    (void)state;
    xlm_client_config_t config;
    xlm_error_t err;
    xlm_client_config_defaults(&config);
    assert_null(xlm_client_new(&config, &err));
    assert_int_equal(err.code, XLM_ERR_ARG);
    assert_non_null(strstr(err.message, "endpoint"));
    config.endpoint = "tcp://127.0.0.1:1";
    config.window = 0;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, "window = 0"));
    config.window = 4;
    config.max_attempts = 0;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, "max_attempts = 0"));
    assert_null(xlm_client_new(NULL, NULL));
}

static void test_bad_endpoint(void **state)
{
    (void)state;
    static const char *const bad[] = {"nonsense", "tcp://", "carrier-pigeon://127.0.0.1:5"};
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        xlm_error_t err;
        config.endpoint = bad[i];
        assert_null(xlm_client_new(&config, &err));
        assert_int_equal(err.code, XLM_ERR_ZMQ);
        assert_non_null(strstr(err.message, bad[i]));
        assert_non_null(strstr(err.message, "tcp://HOST:PORT"));
    }
    assert_string_equal(xlm_status_str(XLM_ERR_WINDOW_FULL), "window_full");
    assert_string_equal(xlm_status_str((xlm_status_t)-99), "unknown");
    assert_string_equal(xlm_code_str(XLM_CODE_DEADLINE_EXCEEDED), "deadline_exceeded");
    assert_int_equal(xlm_task_from_name("clm_score"), XLM_TASK_CLM_SCORE);
    assert_string_equal(xlm_task_name(XLM_TASK_QA), "qa");
    xlm_client_destroy(NULL);
    xlm_result_destroy(NULL);
}

/* ------------------------------------------------------------ requests */

static void expect_arg(xlm_client_t *client, const xlm_request_t *rq, const char *words)
{
    char id[XLM_ID_SIZE];
    assert_int_equal(xlm_client_submit(client, rq, id), XLM_ERR_ARG);
    if (!strstr(xlm_client_error(client), words))
        fail_msg("error '%s' does not say '%s'", xlm_client_error(client), words);
    assert_int_equal(xlm_client_outstanding(client), 0);
}

static void test_request_errors(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, NULL);
    rq.tokens = NULL;
    expect_arg(t->client, &rq, "no input");
    const xlm_segment_t segments[1] = {{"hello", "en"}};
    const size_t n_segments[1] = {1};
    const xlm_text_t text = {1, n_segments, segments};
    request_init(&rq, NULL);
    rq.text = &text;
    expect_arg(t->client, &rq, "both tokens and text");

    const int64_t zero[] = {2, 0};
    xlm_tokens_t bad = tokens;
    bad.lengths = zero;
    request_init(&rq, NULL);
    rq.tokens = &bad;
    expect_arg(t->client, &rq, "row 1 has length 0");

    request_init(&rq, NULL);
    rq.task = (xlm_task_t)42;
    expect_arg(t->client, &rq, "task 42");

    char long_id[200];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    request_init(&rq, long_id);
    expect_arg(t->client, &rq, "longer than 128");

    request_init(&rq, NULL);
    rq.task = XLM_TASK_GENERATE; /* no steps, and 2 rows */
    expect_arg(t->client, &rq, "generate.steps = 0");

    request_init(&rq, NULL);
    rq.task = XLM_TASK_MULTIPLE_CHOICE;
    rq.n_choices = 3;
    expect_arg(t->client, &rq, "n_choices = 3");

    request_init(&rq, NULL);
    rq.steps = 4; /* generate options on another task */
    expect_arg(t->client, &rq, "generate options for task seq_cls");

    const int64_t negative[] = {5, -6, 7, 8, 9, 10};
    bad = tokens;
    bad.input_ids = negative;
    request_init(&rq, NULL);
    rq.tokens = &bad;
    expect_arg(t->client, &rq, "input_ids[1] = -6");

    assert_int_equal(xlm_client_submit(t->client, NULL, NULL), XLM_ERR_ARG);
    assert_int_equal(xlm_client_submit(NULL, &rq, NULL), XLM_ERR_ARG);
    /* Nothing reached the wire. */
    assert_null(peer_recv(&t->peer, 50, NULL, NULL));
}

static void test_encoding(void **state)
{
    api_t *t = *state;
    const int64_t mask[] = {1, 1, 1, 1, 1, 0}, langs[] = {0, 0, 1, 1, 1, 1};
    const int64_t score_from[] = {1, 2};
    xlm_tokens_t full = tokens;
    full.attention_mask = mask;
    full.langs = langs;
    xlm_request_t rq;
    request_init(&rq, "enc-1");
    rq.tokens = &full;
    rq.task = XLM_TASK_CLM_SCORE;
    rq.model = "m";
    rq.deadline_ms = 1234;
    rq.score_from = score_from;
    char id[XLM_ID_SIZE];
    assert_int_equal(xlm_client_submit(t->client, &rq, id), XLM_OK);
    assert_string_equal(id, "enc-1");
    Xlm__ClientMessage *msg = expect_request(t, 1000);
    const Xlm__Request *got = msg->request;
    assert_string_equal(got->id, "enc-1");
    assert_string_equal(got->model, "m");
    assert_int_equal(got->task, XLM__TASK__TASK_CLM_SCORE);
    assert_int_equal(got->deadline_ms, 1234);
    assert_int_equal(got->tokens->n_lengths, 2);
    assert_int_equal(got->tokens->n_input_ids, 6);
    assert_int_equal(got->tokens->n_attention_mask, 6);
    assert_int_equal(got->tokens->attention_mask[5], 0);
    assert_int_equal(got->tokens->n_langs, 6);
    assert_int_equal(got->tokens->n_token_type_ids, 0);
    assert_int_equal(got->n_score_from, 2);
    assert_null(got->generate);
    proto_client_free(&msg);

    /* Text rows with segments, and generate with a language code. */
    const xlm_segment_t segments[3] = {{"hello", "en"}, {"bonjour", "fr"}, {"again", NULL}};
    const size_t n_segments[2] = {2, 1};
    const xlm_text_t text = {2, n_segments, segments};
    request_init(&rq, NULL);
    rq.tokens = NULL;
    rq.text = &text;
    assert_int_equal(xlm_client_submit(t->client, &rq, id), XLM_OK);
    assert_int_not_equal(strlen(id), 0);
    msg = expect_request(t, 1000);
    assert_string_equal(msg->request->id, id);
    assert_int_equal(msg->request->input_case, XLM__REQUEST__INPUT_TEXT);
    assert_int_equal(msg->request->text->n_rows, 2);
    assert_int_equal(msg->request->text->rows[0]->n_segments, 2);
    assert_string_equal(msg->request->text->rows[0]->segments[1]->text, "bonjour");
    assert_string_equal(msg->request->text->rows[0]->segments[1]->lang, "fr");
    assert_string_equal(msg->request->text->rows[1]->segments[0]->lang, "");
    proto_client_free(&msg);

    const int64_t one_len[] = {3};
    const xlm_tokens_t one = {.rows = 1, .lengths = one_len, .input_ids = ids};
    request_init(&rq, NULL);
    rq.tokens = &one;
    rq.task = XLM_TASK_GENERATE;
    rq.steps = 5;
    rq.lang_fill_code = "fr";
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    msg = expect_request(t, 1000);
    assert_int_equal(msg->request->generate->steps, 5);
    assert_int_equal(msg->request->generate->lang_fill_case,
                     XLM__GENERATE__LANG_FILL_LANG_FILL_CODE);
    assert_string_equal(msg->request->generate->lang_fill_code, "fr");
    proto_client_free(&msg);
    assert_int_equal(xlm_client_outstanding(t->client), 3);
}

/* Generated ids: unique, with a per-client prefix. */
static void test_generated_ids(void **state)
{
    api_t *t = *state;
    xlm_client_t *other = xlm_client_new(&t->config, NULL);
    assert_non_null(other);
    char a[XLM_ID_SIZE], b[XLM_ID_SIZE], c[XLM_ID_SIZE];
    xlm_request_t rq;
    request_init(&rq, NULL);
    assert_int_equal(xlm_client_submit(t->client, &rq, a), XLM_OK);
    assert_int_equal(xlm_client_submit(t->client, &rq, b), XLM_OK);
    assert_int_equal(xlm_client_submit(other, &rq, c), XLM_OK);
    assert_string_not_equal(a, b);
    assert_string_not_equal(a, c);
    assert_memory_not_equal(a, c, 16); /* the random prefixes differ */
    request_init(&rq, a);
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_ERR_DUPLICATE);
    assert_non_null(strstr(xlm_client_error(t->client), a));
    xlm_client_destroy(&other);
}

static void test_submit_packed(void **state)
{
    api_t *t = *state;
    Xlm__Request rq = XLM__REQUEST__INIT;
    Xlm__TokenInput in = XLM__TOKEN_INPUT__INIT;
    in.n_input_ids = 6;
    in.input_ids = (int64_t *)ids;
    in.n_lengths = 2;
    in.lengths = (int64_t *)lengths;
    rq.task = XLM__TASK__TASK_LM;
    rq.input_case = XLM__REQUEST__INPUT_TOKENS;
    rq.tokens = &in;
    uint8_t buf[256];
    size_t size = xlm__request__pack(&rq, buf);
    char id[XLM_ID_SIZE];
    /* Without an id: refused, saying so. */
    assert_int_equal(xlm_client_submit_packed(t->client, buf, size, id), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "id is empty"));

    char fresh[XLM_ID_SIZE];
    assert_int_equal(xlm_client_new_id(t->client, fresh), XLM_OK);
    rq.id = fresh;
    size = xlm__request__pack(&rq, buf);
    assert_int_equal(xlm_client_submit_packed(t->client, buf, size, id), XLM_OK);
    assert_string_equal(id, fresh);
    Xlm__ClientMessage *msg = expect_request(t, 1000);
    assert_string_equal(msg->request->id, fresh);
    assert_int_equal(msg->request->task, XLM__TASK__TASK_LM);
    assert_int_equal(msg->request->tokens->n_input_ids, 6);
    assert_int_equal(msg->request->deadline_ms, 0);
    proto_client_free(&msg);

    rq.id = "packed-own";
    rq.deadline_ms = 777;
    size = xlm__request__pack(&rq, buf);
    assert_int_equal(xlm_client_submit_packed(t->client, buf, size, id), XLM_OK);
    assert_string_equal(id, "packed-own");
    msg = expect_request(t, 1000);
    assert_string_equal(msg->request->id, "packed-own");
    assert_int_equal(msg->request->deadline_ms, 777);
    proto_client_free(&msg);
    assert_int_equal(xlm_client_submit_packed(t->client, buf, size, id), XLM_ERR_DUPLICATE);

    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01};
    assert_int_equal(xlm_client_submit_packed(t->client, garbage, sizeof garbage, id), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "malformed"));
    rq.id = "packed-2";
    rq.input_case = XLM__REQUEST__INPUT__NOT_SET; /* no input */
    size = xlm__request__pack(&rq, buf);
    assert_int_equal(xlm_client_submit_packed(t->client, buf, size, id), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "no input"));
    assert_int_equal(xlm_client_outstanding(t->client), 2);
}

/* ------------------------------------------------------------ window, collect */

static void test_window_full(void **state)
{
    api_t *t = *state;
    xlm_client_destroy(&t->client);
    t->config.window = 3;
    t->client = xlm_client_new(&t->config, NULL);
    xlm_request_t rq;
    request_init(&rq, NULL);
    char id[3][XLM_ID_SIZE];
    for (int i = 0; i < 3; i++)
        assert_int_equal(xlm_client_submit(t->client, &rq, id[i]), XLM_OK);
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_ERR_WINDOW_FULL);
    assert_non_null(strstr(xlm_client_error(t->client), "collect first"));
    for (int i = 0; i < 3; i++) {
        Xlm__ClientMessage *msg = expect_request(t, 1000);
        peer_send_echo(&t->peer, msg->request);
        proto_client_free(&msg);
    }
    /* Finished but not collected still counts. */
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, id[2], 1000, &r), XLM_OK);
    assert_string_equal(xlm_result_id(r), id[2]);
    check_echo(r);
    xlm_result_destroy(&r);
    assert_int_equal(xlm_client_outstanding(t->client), 2);
    assert_int_equal(xlm_client_submit(t->client, &rq, id[2]), XLM_OK);
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_ERR_WINDOW_FULL);
}

static void test_collect_errors(void **state)
{
    api_t *t = *state;
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 0, &r), XLM_ERR_EMPTY);
    assert_int_equal(xlm_client_collect(t->client, "nope", 0, &r), XLM_ERR_NOT_FOUND);
    assert_non_null(strstr(xlm_client_error(t->client), "nope"));
    assert_int_equal(xlm_client_collect(t->client, NULL, 0, NULL), XLM_ERR_ARG);
    assert_int_equal(xlm_client_cancel(t->client, "nope"), XLM_ERR_NOT_FOUND);
    xlm_request_t rq;
    request_init(&rq, "c-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    int64_t start = fx_now_ms();
    assert_int_equal(xlm_client_collect(t->client, "c-1", 50, &r), XLM_ERR_TIMEOUT);
    assert_null(r);
    assert_true(fx_now_ms() - start >= 50);
    assert_int_equal(xlm_client_collect(t->client, NULL, 0, &r), XLM_ERR_TIMEOUT);
    assert_int_equal(xlm_client_outstanding(t->client), 1);
}

/* collect(NULL) hands results out in finishing order. */
static void test_collect_any_order(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    const char *names[3] = {"o-1", "o-2", "o-3"};
    Xlm__ClientMessage *msgs[3];
    for (int i = 0; i < 3; i++) {
        request_init(&rq, names[i]);
        assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
        msgs[i] = expect_request(t, 1000);
    }
    for (int i = 2; i >= 0; i--) {
        peer_send_echo(&t->peer, msgs[i]->request);
        proto_client_free(&msgs[i]);
    }
    for (int i = 2; i >= 0; i--) {
        xlm_result_t *r = NULL;
        assert_int_equal(xlm_client_collect(t->client, NULL, 1000, &r), XLM_OK);
        assert_string_equal(xlm_result_id(r), names[i]);
        check_echo(r);
        assert_int_equal(xlm_result_timings(r)->attempts, 1);
        xlm_result_destroy(&r);
    }
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 0, &r), XLM_ERR_EMPTY);
}

/* ------------------------------------------------------------ retries */

/* No reply: the same bytes are sent again with the same id; two replies
 * for it (a retry answered twice) give one result. */
static void test_retry_same_id(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, NULL);
    char id[XLM_ID_SIZE];
    assert_int_equal(xlm_client_submit(t->client, &rq, id), XLM_OK);
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, id, 250, &r), XLM_ERR_TIMEOUT);
    uint8_t *first = NULL, *second = NULL;
    size_t first_size = 0, second_size = 0;
    Xlm__ClientMessage *a = peer_recv(&t->peer, 100, &first, &first_size);
    Xlm__ClientMessage *b = peer_recv(&t->peer, 100, &second, &second_size);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a->request->id, id);
    assert_int_equal(first_size, second_size);
    assert_memory_equal(first, second, first_size);
    peer_send_echo(&t->peer, b->request);
    peer_send_echo(&t->peer, a->request);
    assert_int_equal(xlm_client_collect(t->client, NULL, 1000, &r), XLM_OK);
    assert_string_equal(xlm_result_id(r), id);
    check_echo(r);
    assert_true(xlm_result_timings(r)->attempts >= 2);
    assert_true(xlm_result_timings(r)->total_us >= 100000);
    xlm_result_destroy(&r);
    /* The duplicate is dropped. */
    assert_int_equal(xlm_client_collect(t->client, NULL, 100, &r), XLM_ERR_EMPTY);
    proto_client_free(&a);
    proto_client_free(&b);
    free(first);
    free(second);
}

/* max_attempts sends without a reply: UNAVAILABLE, saying so. */
static void test_no_reply_unavailable(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, "silent-1");
    int64_t start = fx_now_ms();
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_call(t->client, &rq, 5000, &r), XLM_OK);
    int64_t took = fx_now_ms() - start;
    assert_int_equal(xlm_result_code(r), XLM_CODE_UNAVAILABLE);
    assert_non_null(strstr(xlm_result_message(r), "after 3 attempts of 100 ms"));
    assert_int_equal(xlm_result_timings(r)->attempts, 3);
    assert_int_equal(xlm_result_count(r), 0);
    assert_true(took >= 300 && took < 2000);
    xlm_result_destroy(&r);
    int sends = 0, cancels = 0;
    Xlm__ClientMessage *msg;
    while ((msg = peer_recv(&t->peer, 50, NULL, NULL))) {
        sends += msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST;
        cancels += msg->body_case == XLM__CLIENT_MESSAGE__BODY_CANCEL;
        proto_client_free(&msg);
    }
    assert_int_equal(sends, 3);
    assert_int_equal(cancels, 1); /* the broker is told to forget it */
}

/* OVERLOADED and UNAVAILABLE replies are retried after a backoff; the
 * others are final at once. */
static void test_retryable_replies(void **state)
{
    api_t *t = *state;
    xlm_client_destroy(&t->client);
    t->config.attempt_timeout_ms = 5000; /* only the replies drive the retries here */
    t->client = xlm_client_new(&t->config, NULL);
    xlm_request_t rq;
    request_init(&rq, "busy-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    Xlm__ClientMessage *msg = expect_request(t, 1000);
    peer_send_status(&t->peer, "busy-1", PROTO_STATUS_OVERLOADED, "queue full");
    proto_client_free(&msg);
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, "busy-1", 60, &r), XLM_ERR_TIMEOUT);
    msg = expect_request(t, 1000);
    peer_send_status(&t->peer, "busy-1", PROTO_STATUS_UNAVAILABLE, "no worker");
    proto_client_free(&msg);
    assert_int_equal(xlm_client_collect(t->client, "busy-1", 80, &r), XLM_ERR_TIMEOUT);
    msg = expect_request(t, 1000);
    /* Third and last attempt: a retryable status is now final. */
    peer_send_status(&t->peer, "busy-1", PROTO_STATUS_OVERLOADED, "still full");
    proto_client_free(&msg);
    assert_int_equal(xlm_client_collect(t->client, "busy-1", 1000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_OVERLOADED);
    assert_string_equal(xlm_result_message(r), "still full");
    assert_int_equal(xlm_result_timings(r)->attempts, 3);
    xlm_result_destroy(&r);

    request_init(&rq, "bad-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    msg = expect_request(t, 1000);
    peer_send_status(&t->peer, "bad-1", PROTO_STATUS_BAD_REQUEST, "no such thing");
    proto_client_free(&msg);
    assert_int_equal(xlm_client_collect(t->client, "bad-1", 1000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_BAD_REQUEST);
    assert_string_equal(xlm_result_message(r), "no such thing");
    assert_int_equal(xlm_result_timings(r)->attempts, 1);
    xlm_result_destroy(&r);
    assert_null(peer_recv(&t->peer, 150, NULL, NULL)); /* no retry of a final status */
}

/* Replies that do not decode are dropped; one that names a pending id
 * finishes it as MALFORMED. Multi-frame messages are dropped. */
static void test_bad_replies(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, "m-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    Xlm__ClientMessage *msg = expect_request(t, 1000);
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    peer_send_bytes(&t->peer, garbage, sizeof garbage);
    {
        Xlm__Response bad = XLM__RESPONSE__INIT;
        Xlm__Tensor tensor = XLM__TENSOR__INIT;
        Xlm__Tensor *outputs[1] = {&tensor};
        int64_t shape[1] = {3};
        tensor.name = "x";
        tensor.n_shape = 1;
        tensor.shape = shape; /* 3 values promised, none given */
        bad.id = "m-1";
        bad.n_outputs = 1;
        bad.outputs = outputs;
        peer_send_response(&t->peer, &bad);
    }
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, "m-1", 1000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_MALFORMED);
    assert_non_null(strstr(xlm_result_message(r), "does not decode"));
    xlm_result_destroy(&r);
    peer_send_echo(&t->peer, msg->request); /* late: dropped */
    proto_client_free(&msg);
    assert_int_equal(xlm_client_collect(t->client, NULL, 100, &r), XLM_ERR_EMPTY);
}

/* ------------------------------------------------------------ deadline, cancel, call */

static void test_client_deadline(void **state)
{
    api_t *t = *state;
    xlm_client_destroy(&t->client);
    t->config.attempt_timeout_ms = 1000;
    t->config.deadline_ms = 150; /* the default of requests that set none */
    t->client = xlm_client_new(&t->config, NULL);
    xlm_request_t rq;
    request_init(&rq, "late-1");
    int64_t start = fx_now_ms();
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_call(t->client, &rq, 5000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_DEADLINE_EXCEEDED);
    assert_non_null(strstr(xlm_result_message(r), "deadline of 150 ms"));
    int64_t took = fx_now_ms() - start;
    assert_true(took >= 150 && took < 900);
    xlm_result_destroy(&r);
    Xlm__ClientMessage *msg = expect_request(t, 100);
    assert_int_equal(msg->request->deadline_ms, 150); /* the broker is told too */
    proto_client_free(&msg);
    msg = peer_recv(&t->peer, 100, NULL, NULL);
    assert_non_null(msg);
    assert_int_equal(msg->body_case, XLM__CLIENT_MESSAGE__BODY_CANCEL);
    assert_string_equal(msg->cancel->id, "late-1");
    proto_client_free(&msg);
    /* A request's own deadline wins over the default. */
    request_init(&rq, "late-2");
    rq.deadline_ms = 60;
    assert_int_equal(xlm_client_call(t->client, &rq, 5000, &r), XLM_OK);
    assert_non_null(strstr(xlm_result_message(r), "deadline of 60 ms"));
    xlm_result_destroy(&r);
}

static void test_cancel(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, "x-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    Xlm__ClientMessage *req = expect_request(t, 1000);
    assert_int_equal(xlm_client_cancel(t->client, "x-1"), XLM_OK);
    assert_int_equal(xlm_client_cancel(t->client, "x-1"), XLM_ERR_NOT_FOUND);
    assert_non_null(strstr(xlm_client_error(t->client), "finished already"));
    Xlm__ClientMessage *msg = peer_recv(&t->peer, 1000, NULL, NULL);
    assert_non_null(msg);
    assert_int_equal(msg->body_case, XLM__CLIENT_MESSAGE__BODY_CANCEL);
    assert_string_equal(msg->cancel->id, "x-1");
    proto_client_free(&msg);
    peer_send_status(&t->peer, "x-1", PROTO_STATUS_CANCELLED, "cancelled by the client");
    peer_send_echo(&t->peer, req->request); /* a reply that crossed the cancel */
    proto_client_free(&req);
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 1000, &r), XLM_OK);
    assert_string_equal(xlm_result_id(r), "x-1");
    assert_int_equal(xlm_result_code(r), XLM_CODE_CANCELLED);
    xlm_result_destroy(&r);
    assert_int_equal(xlm_client_collect(t->client, NULL, 100, &r), XLM_ERR_EMPTY);
    /* The id can be used again once collected. */
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
}

static void test_call(void **state)
{
    api_t *t = *state;
    xlm_request_t rq;
    request_init(&rq, "call-1");
    xlm_result_t *r = NULL;
    /* Nobody answers within the call's timeout: the call gives up and
     * cancels the request, which leaves the window. */
    assert_int_equal(xlm_client_call(t->client, &rq, 50, &r), XLM_ERR_TIMEOUT);
    assert_null(r);
    assert_non_null(strstr(xlm_client_error(t->client), "call-1"));
    assert_int_equal(xlm_client_outstanding(t->client), 0);
    Xlm__ClientMessage *msg;
    while ((msg = peer_recv(&t->peer, 50, NULL, NULL)))
        proto_client_free(&msg);
    assert_int_equal(xlm_client_call(t->client, &rq, 1000, NULL), XLM_ERR_ARG);
}

/* ------------------------------------------------------------ stats */

static void test_stats(void **state)
{
    api_t *t = *state;
    char *json = NULL;
    assert_int_equal(xlm_client_stats_json(t->client, 150, &json), XLM_ERR_TIMEOUT);
    assert_null(json);
    Xlm__ClientMessage *msg = peer_recv(&t->peer, 100, NULL, NULL);
    assert_non_null(msg);
    assert_int_equal(msg->body_case, XLM__CLIENT_MESSAGE__BODY_STATS);
    proto_client_free(&msg);
    while ((msg = peer_recv(&t->peer, 10, NULL, NULL)))
        proto_client_free(&msg);

    /* A stats reply arriving while nobody asks is dropped; one that
     * answers is printed with the schema's names. */
    Xlm__Stats stats = XLM__STATS__INIT;
    Xlm__ModelStats model = XLM__MODEL_STATS__INIT;
    Xlm__ModelStats *models[1] = {&model};
    Xlm__ServiceMessage sm = XLM__SERVICE_MESSAGE__INIT;
    model.name = "tiny";
    model.queue_depth = 3;
    stats.uptime_ms = 99;
    stats.accepting = 1;
    stats.n_models = 1;
    stats.models = models;
    sm.body_case = XLM__SERVICE_MESSAGE__BODY_STATS;
    sm.stats = &stats;
    xlm_request_t rq;
    request_init(&rq, "s-1");
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    msg = expect_request(t, 1000);
    proto_client_free(&msg);
    stats.uptime_ms = 1; /* unasked: dropped */
    peer_send_service(&t->peer, &sm);
    assert_int_equal(xlm_client_collect(t->client, NULL, 50, &(xlm_result_t *){NULL}),
                     XLM_ERR_TIMEOUT);
    stats.uptime_ms = 99;
    peer_send_status(&t->peer, "s-1", PROTO_STATUS_BAD_REQUEST, "meanwhile");
    peer_send_service(&t->peer, &sm);
    assert_int_equal(xlm_client_stats_json(t->client, 1000, &json), XLM_OK);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "uptime_ms")->valuedouble, 99);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(root, "accepting")));
    cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "models"), 0);
    assert_string_equal(cJSON_GetObjectItem(m0, "name")->valuestring, "tiny");
    assert_int_equal(cJSON_GetObjectItem(m0, "queue_depth")->valuedouble, 3);
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(m0, "pipelines")));
    cJSON_Delete(root);
    free(json);
    /* The response that came meanwhile is kept for collect. */
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, "s-1", 0, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_BAD_REQUEST);
    xlm_result_destroy(&r);
}

/* ------------------------------------------------------------ many ids */

/* Many ids going in and out of the window in a scrambled order: the id
 * index must find every one, once. */
static void test_many_ids(void **state)
{
    api_t *t = *state;
    enum { N = 200 };
    xlm_client_destroy(&t->client);
    t->config.window = N;
    t->config.attempt_timeout_ms = 5000;
    t->client = xlm_client_new(&t->config, NULL);
    char names[N][16];
    xlm_request_t rq;
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "id-%d", i * 7919 % 1000);
        request_init(&rq, names[i]);
        assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    }
    for (int i = 0; i < N; i += 3)
        assert_int_equal(xlm_client_cancel(t->client, names[(i * 37) % N]), XLM_OK);
    int replies = 0;
    Xlm__ClientMessage *msg;
    while ((msg = peer_recv(&t->peer, 200, NULL, NULL))) {
        if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST) {
            peer_send_echo(&t->peer, msg->request);
            replies++;
        }
        proto_client_free(&msg);
    }
    assert_int_equal(replies, N);
    bool seen[N] = {false};
    for (int k = 0; k < N; k++) {
        int i = (k * 53) % N;
        xlm_result_t *r = NULL;
        assert_int_equal(xlm_client_collect(t->client, names[i], 1000, &r), XLM_OK);
        assert_false(seen[i]);
        seen[i] = true;
        assert_string_equal(xlm_result_id(r), names[i]);
        xlm_result_destroy(&r);
    }
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 50, &r), XLM_ERR_EMPTY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_bad_endpoint),
        cmocka_unit_test_setup_teardown(test_request_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generated_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_packed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collect_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collect_any_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_same_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_reply_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retryable_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_ids, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
