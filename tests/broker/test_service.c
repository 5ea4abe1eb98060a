/* test_service.c: the real xlm-broker with fake pipelines: round trips,
 * routing by model, every kind of bad request answered (and the broker
 * still serving), cancellation, deadlines, stats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"

/* Small decoding limit so that "oversized" is cheap to test. */
static const char *const broker_args[] = {"--max-message-bytes", "65536", NULL};

static int setup(void **state)
{
    return fx_state_setup(state, broker_args);
}

static int teardown(void **state) { return fx_state_teardown(state); }

static void expect_sum(const Xlm__ServiceMessage *msg, int64_t rows, int64_t row_len, int64_t seed)
{
    const Xlm__Tensor *sums = test_response_output(msg->response, "sum_ids");
    assert_non_null(sums);
    assert_int_equal(sums->n_i64, rows);
    for (int64_t r = 0; r < rows; r++)
        assert_int_equal(sums->i64[r], test_tokens_row_sum(row_len, seed, r));
}

static void test_round_trip_and_stats(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", NULL);
    assert_int_equal(test_client_send_tokens(fx->client, "a1", "tiny", PROTO_TASK_SEQ_CLS, 2, 5, 3, 0), 0);
    Xlm__ServiceMessage *msg = fx_expect(fx, "a1", PROTO_STATUS_OK, 2000);
    expect_sum(msg, 2, 5, 3);
    assert_non_null(msg->response->timings);
    assert_int_equal(msg->response->timings->batch_requests, 1);
    proto_service_free(&msg);
    /* No model named: the only one. */
    assert_int_equal(test_client_send_tokens(fx->client, "a2", "", PROTO_TASK_LM, 1, 3, 9, 0), 0);
    msg = fx_expect(fx, "a2", PROTO_STATUS_OK, 2000);
    expect_sum(msg, 1, 3, 9);
    proto_service_free(&msg);

    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_non_null(stats);
    assert_true(stats->stats->accepting);
    const Xlm__ModelStats *ms = fx_model_stats(stats, "tiny");
    assert_non_null(ms);
    assert_int_equal(ms->requests_done, 2);
    assert_int_equal(ms->requests_failed, 0);
    assert_int_equal(ms->pipelines_alive, 1);
    assert_int_equal(ms->queue_depth, 0);
    assert_int_equal(ms->in_flight, 0);
    assert_int_equal(ms->n_stages, 2); /* per-stage timings from the replies */
    assert_int_equal(ms->stages[1]->batches, 2);
    assert_int_equal(ms->n_pipelines, 1);
    assert_string_equal(ms->pipelines[0]->id, "p0");
    assert_int_equal(ms->pipelines[0]->credit, 4);
    assert_int_equal(stats->stats->requests_received, 2);
    proto_service_free(&stats);
}

static void test_routing_by_model(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p-tiny", NULL);
    fx_worker(fx, 1, "other", "p-other", NULL);
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        assert_int_equal(test_client_send_tokens(fx->client, id, i % 2 ? "other" : "tiny",
                                                 PROTO_TASK_BASE, 1, 4, i, 0), 0);
        Xlm__ServiceMessage *msg = fx_expect(fx, id, PROTO_STATUS_OK, 2000);
        proto_service_free(&msg);
    }
    assert_int_equal(fake_worker_requests(fx->workers[0]), 3);
    assert_int_equal(fake_worker_requests(fx->workers[1]), 3);
    /* Two models: a request must name one. */
    assert_int_equal(test_client_send_tokens(fx->client, "noname", "", PROTO_TASK_BASE, 1, 4, 0, 0), 0);
    Xlm__ServiceMessage *msg = fx_expect(fx, "noname", PROTO_STATUS_UNKNOWN_MODEL, 2000);
    assert_non_null(strstr(msg->response->message, "2 models"));
    proto_service_free(&msg);
}

static void test_unavailable_before_any_worker(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(test_client_send_tokens(fx->client, "early", "tiny", PROTO_TASK_BASE, 1, 4, 0, 0), 0);
    Xlm__ServiceMessage *msg = fx_expect(fx, "early", PROTO_STATUS_UNAVAILABLE, 2000);
    proto_service_free(&msg);
}

/* Sends one bad request and expects its error; then a good one still works. */
static void bad_then_good(fx_t *fx, const char *id, proto_status_t want, const char *says)
{
    Xlm__ServiceMessage *msg = fx_expect(fx, id, want, 2000);
    if (says && !strstr(msg->response->message, says))
        fail_msg("'%s': message '%s' does not say '%s'", id, msg->response->message, says);
    proto_service_free(&msg);
    assert_true(fx_broker_alive(fx));
    assert_int_equal(test_client_send_tokens(fx->client, "good", "tiny", PROTO_TASK_BASE, 1, 4, 1, 0), 0);
    msg = fx_expect(fx, "good", PROTO_STATUS_OK, 2000);
    proto_service_free(&msg);
}

static void test_bad_requests(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", NULL);
    /* A second model, so that "unknown model" is not "the only one". */
    fx_worker(fx, 1, "other", "p1", NULL);

    test_client_send_tokens(fx->client, "m1", "nosuch", PROTO_TASK_BASE, 1, 4, 0, 0);
    bad_then_good(fx, "m1", PROTO_STATUS_UNKNOWN_MODEL, "model 'nosuch' is not served");

    test_client_send_tokens(fx->client, "t1", "tiny", (proto_task_t)77, 1, 4, 0, 0);
    bad_then_good(fx, "t1", PROTO_STATUS_UNKNOWN_TASK, "task 77");

    /* Ids out of range: the fake advertises vocab_size 1000. */
    int64_t ids[] = {5, 1000, 7}, lengths[] = {3};
    Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
    tokens.n_input_ids = 3;
    tokens.input_ids = ids;
    tokens.n_lengths = 1;
    tokens.lengths = lengths;
    Xlm__Request rq = XLM__REQUEST__INIT;
    rq.id = "v1";
    rq.model = "tiny";
    rq.input_case = XLM__REQUEST__INPUT_TOKENS;
    rq.tokens = &tokens;
    test_client_send_request(fx->client, &rq);
    bad_then_good(fx, "v1", PROTO_STATUS_BAD_REQUEST, "input_ids[1] = 1000");

    /* Too long: max_position_embeddings 64. */
    test_client_send_tokens(fx->client, "l1", "tiny", PROTO_TASK_BASE, 1, 65, 0, 0);
    bad_then_good(fx, "l1", PROTO_STATUS_TOO_LARGE, "the model takes at most 64");

    /* Empty: no rows. */
    tokens.n_input_ids = 0;
    tokens.n_lengths = 0;
    rq.id = "e1";
    test_client_send_request(fx->client, &rq);
    bad_then_good(fx, "e1", PROTO_STATUS_BAD_REQUEST, "no rows");

    /* Over the padded-token budget of every pipeline (4096): 100 rows x 60. */
    test_client_send_tokens(fx->client, "b1", "tiny", PROTO_TASK_BASE, 100, 60, 0, 0);
    bad_then_good(fx, "b1", PROTO_STATUS_TOO_LARGE, "needs 6000 tokens");

    /* Oversized message: 70 KB of ids past the 64 KiB limit. No id can be
     * read from a message that is not decoded: the reply has none. */
    test_client_send_tokens(fx->client, "o1", "tiny", PROTO_TASK_BASE, 700, 50, 0, 0);
    bad_then_good(fx, "", PROTO_STATUS_TOO_LARGE, "expected at most 65536");

    /* Malformed protobuf, an empty frame, and two frames. */
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    test_client_send_bytes(fx->client, garbage, sizeof garbage);
    bad_then_good(fx, "", PROTO_STATUS_MALFORMED, "not a valid xlm.ClientMessage");
    test_client_send_bytes(fx->client, "", 0);
    bad_then_good(fx, "", PROTO_STATUS_MALFORMED, "empty message");
    const void *parts[] = {"a", "b"};
    const size_t sizes[] = {1, 1};
    test_client_send_frames(fx->client, parts, sizes, 2);
    bad_then_good(fx, "", PROTO_STATUS_MALFORMED, "one frame");

    /* Wrong version. */
    uint8_t versioned[] = {0x08, 0x09};
    test_client_send_bytes(fx->client, versioned, sizeof versioned);
    bad_then_good(fx, "", PROTO_STATUS_BAD_VERSION, "version 9");

    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(stats->stats->malformed, 3);
    proto_service_free(&stats);
}

/* Polls stats until the broker's own uptime is at least ms; false after
 * timeout_ms. */
static bool wait_uptime(fx_t *fx, uint64_t ms, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        bool up = stats && stats->stats->uptime_ms >= ms;
        proto_service_free(&stats);
        if (up)
            return true;
        usleep(10000);
    }
    return false;
}

static void test_unknown_model_in_startup_grace(void **state)
{
    fx_t *fx = *state;
    /* Started again with a grace time: other models may still register. */
    testing_process_stop(fx->broker, SIGKILL, 2000);
    static const char *const args[] = {"--startup-grace-ms", "1500", NULL};
    assert_int_equal(fx_start(fx, args), 0);
    fx_worker(fx, 0, "tiny", "p0", NULL);
    test_client_send_tokens(fx->client, "g1", "later", PROTO_TASK_BASE, 1, 4, 0, 0);
    Xlm__ServiceMessage *msg = fx_expect(fx, "g1", PROTO_STATUS_UNAVAILABLE, 2000);
    assert_non_null(strstr(msg->response->message, "has not registered since the broker started"));
    proto_service_free(&msg);
    /* The grace is over once the broker has been up 1.5 s by its own clock
     * (uptime and grace are measured from the same start). */
    assert_true(wait_uptime(fx, 1500, 5000));
    test_client_send_tokens(fx->client, "g2", "later", PROTO_TASK_BASE, 1, 4, 0, 0);
    msg = fx_expect(fx, "g2", PROTO_STATUS_UNKNOWN_MODEL, 2000);
    proto_service_free(&msg);
}

static void test_cancel(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *w = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(w, FAKE_WORKER_PROGRESSING);
    test_client_send_tokens(fx->client, "c1", "tiny", PROTO_TASK_BASE, 1, 4, 0, 0);
    assert_true(fx_wait_received(fx, 1, 2000)); /* in the pipeline by now */
    test_client_send_cancel(fx->client, "c1");
    Xlm__ServiceMessage *msg = fx_expect(fx, "c1", PROTO_STATUS_CANCELLED, 2000);
    proto_service_free(&msg);
    test_client_send_cancel(fx->client, "never-sent");
    msg = fx_expect(fx, "never-sent", PROTO_STATUS_NOT_FOUND, 2000);
    proto_service_free(&msg);
    /* The worker answers anyway: that late reply is not delivered. */
    fake_worker_set_mode(w, FAKE_WORKER_NORMAL);
    assert_null(fx_response(fx, 300));
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->requests_cancelled, 1);
    assert_int_equal(stats->stats->late_replies, 1);
    proto_service_free(&stats);
}

static void credit_one(fake_worker_config_t *c)
{
    c->credit = 1;
}

static void test_deadlines(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *w = fx_worker(fx, 0, "tiny", "p0", credit_one);
    fake_worker_set_mode(w, FAKE_WORKER_PROGRESSING);
    /* d1 goes to the pipeline (credit 1) and d2, d3 stay queued. */
    int64_t start = testing_now_us();
    test_client_send_tokens(fx->client, "d1", "tiny", PROTO_TASK_BASE, 1, 4, 0, 200);
    test_client_send_tokens(fx->client, "d2", "tiny", PROTO_TASK_BASE, 1, 40, 0, 250);
    test_client_send_tokens(fx->client, "d3", "tiny", PROTO_TASK_BASE, 1, 4, 0, 5000);
    const char *expired[] = {"d1", "d2"};
    for (int i = 0; i < 2; i++) {
        Xlm__ServiceMessage *msg = fx_expect(fx, expired[i], PROTO_STATUS_DEADLINE_EXCEEDED, 2000);
        proto_service_free(&msg);
    }
    int64_t waited_ms = (testing_now_us() - start) / 1000;
    assert_true(waited_ms >= 200 && waited_ms < 1000);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    const Xlm__ModelStats *ms = fx_model_stats(stats, "tiny");
    assert_int_equal(ms->requests_expired, 2);
    assert_int_equal(ms->queue_depth, 1); /* d3 waits for credit */
    proto_service_free(&stats);
    fake_worker_set_mode(w, FAKE_WORKER_NORMAL);
    Xlm__ServiceMessage *msg = fx_expect(fx, "d3", PROTO_STATUS_OK, 2000);
    proto_service_free(&msg);
}

static void split_replies(fake_worker_config_t *c)
{
    c->split_reply_socket = true;
}

static void test_replies_from_another_socket(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", split_replies);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", i);
        test_client_send_tokens(fx->client, id, "tiny", PROTO_TASK_BASE, 1, 4, i, 0);
        Xlm__ServiceMessage *msg = fx_expect(fx, id, PROTO_STATUS_OK, 2000);
        expect_sum(msg, 1, 4, i);
        proto_service_free(&msg);
    }
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->pipelines[0]->credit, 4); /* credit came back */
    proto_service_free(&stats);
}

static void test_text_request(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", NULL);
    Xlm__TextSegment seg = XLM__TEXT_SEGMENT__INIT;
    seg.text = "Hello world";
    seg.lang = "en";
    Xlm__TextSegment *segs[] = {&seg};
    Xlm__TextRow row = XLM__TEXT_ROW__INIT;
    row.n_segments = 1;
    row.segments = segs;
    Xlm__TextRow *rows[] = {&row};
    Xlm__TextInput text = XLM__TEXT_INPUT__INIT;
    text.n_rows = 1;
    text.rows = rows;
    Xlm__Request rq = XLM__REQUEST__INIT;
    rq.id = "x1";
    rq.input_case = XLM__REQUEST__INPUT_TEXT;
    rq.text = &text;
    test_client_send_request(fx->client, &rq);
    Xlm__ServiceMessage *msg = fx_expect(fx, "x1", PROTO_STATUS_OK, 2000);
    proto_service_free(&msg);
    seg.lang = "xx"; /* not a language of the model: refused by the broker */
    rq.id = "x2";
    test_client_send_request(fx->client, &rq);
    msg = fx_expect(fx, "x2", PROTO_STATUS_BAD_REQUEST, 2000);
    proto_service_free(&msg);
}

/* ZMQ_MAXMSGSIZE: up to 4x --max-message-bytes a message gets TOO_LARGE
 * (test_bad_requests); past it the connection drops unread: no answer,
 * and the next socket of the client is served. */
static void test_past_socket_limit_connection_dropped(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", NULL);
    static uint8_t big[300 * 1024]; /* past 4 x 65536 */
    memset(big, 0x01, sizeof big);
    assert_int_equal(test_client_send_bytes(fx->client, big, sizeof big), 0);
    Xlm__ServiceMessage *msg = fx_response(fx, 1000);
    if (msg)
        fail_msg("a %zu-byte message got an answer (status %d), expected the connection dropped",
                 sizeof big, (int)msg->response->status);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(stats->stats->malformed, 0); /* never read, so never decoded */
    proto_service_free(&stats);
    assert_int_equal(test_client_reconnect(fx->client), 0);
    assert_int_equal(test_client_send_tokens(fx->client, "after-drop", "tiny", PROTO_TASK_BASE, 1, 4, 1, 0), 0);
    msg = fx_expect(fx, "after-drop", PROTO_STATUS_OK, 3000);
    proto_service_free(&msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_and_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_routing_by_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_before_any_worker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_past_socket_limit_connection_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_model_in_startup_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadlines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replies_from_another_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_request, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
