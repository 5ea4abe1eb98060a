/* test_peers.c: hostile or confused peers on the real broker process.
 * A registration with tiny limits does not outlive its peer; one that
 * contradicts the live pipelines is refused and logged once; a reply from
 * a pipeline that does not hold the ticket is ignored; a flood of
 * malformed messages writes a bounded log. Real protobuf bytes on real
 * ZeroMQ sockets throughout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "fixture.h"

static int setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->log_path, sizeof fx->log_path, "/tmp/xlm-test-peers-%d.log", (int)getpid());
    unlink(fx->log_path);
    static const char *const extra[] = {"--log-window-ms", "300", NULL};
    if (fx_start(fx, extra) != 0) {
        fx_teardown(fx);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fx_t *fx = *state;
    char path[sizeof fx->log_path];
    snprintf(path, sizeof path, "%s", fx->log_path);
    int rc = fx_state_teardown(state);
    unlink(path);
    return rc;
}

/* Lines of the broker's log holding needle. */
static int log_count(const fx_t *fx, const char *needle)
{
    return testing_count_lines_with(fx->log_path, needle);
}

static long log_size(const fx_t *fx)
{
    FILE *f = fopen(fx->log_path, "r");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    return size;
}

static uint64_t stat_value(fx_t *fx, size_t offset)
{
    Xlm__ServiceMessage *stats = fx_stats(fx);
    uint64_t v = stats ? *(const uint64_t *)((const char *)stats->stats + offset) : 0;
    proto_service_free(&stats);
    return v;
}

#define STAT(fx, field) stat_value(fx, offsetof(Xlm__Stats, field))

static bool wait_stat(fx_t *fx, size_t offset, uint64_t n, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        if (stat_value(fx, offset) >= n)
            return true;
        usleep(10000);
    }
    return false;
}

/* A 10-token request on "tiny" answers OK with its row's sum. */
static void expect_normal_request(fx_t *fx, const char *id)
{
    assert_int_equal(test_client_send_tokens(fx->client, id, "tiny", PROTO_TASK_BASE, 1, 10, 3, 0), 0);
    Xlm__ServiceMessage *msg = fx_expect(fx, id, PROTO_STATUS_OK, 3000);
    const Xlm__Tensor *sums = test_response_output(msg->response, "sum_ids");
    assert_non_null(sums);
    assert_int_equal(sums->i64[0], test_tokens_row_sum(10, 3, 0));
    proto_service_free(&msg);
}

static void tiny_limits(fake_worker_config_t *c)
{
    c->max_position_embeddings = 4;
    c->credit = 0;
}

/* The poisoning: a peer with the served vocabulary but tiny limits
 * (max positions 4, credit 0) registers and leaves; while it is there the
 * model takes what both take, after it normal requests succeed again. */
static void test_tiny_limits_leave_with_their_pipeline(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "real", NULL);
    expect_normal_request(fx, "before");
    fx_worker(fx, 1, "tiny", "evil", tiny_limits);
    assert_int_equal(test_client_send_tokens(fx->client, "during", "tiny", PROTO_TASK_BASE, 1, 10, 3, 0), 0);
    Xlm__ServiceMessage *refused = fx_expect(fx, "during", PROTO_STATUS_TOO_LARGE, 3000);
    proto_service_free(&refused);
    fake_worker_stop(&fx->workers[1]); /* says Disconnect */
    assert_true(fx_wait_pipelines(fx, "tiny", 1, 3000));
    expect_normal_request(fx, "after");
}

/* The same peer going silent instead: removed after missed heartbeats. */
static void test_tiny_limits_leave_when_silent(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "real", NULL);
    fx_worker(fx, 1, "tiny", "evil", tiny_limits);
    fake_worker_set_mode(fx->workers[1], FAKE_WORKER_SILENT);
    assert_true(fx_wait_pipelines(fx, "tiny", 1, 3000));
    expect_normal_request(fx, "after-silence");
}

static void short_rows(fake_worker_config_t *c) { c->max_position_embeddings = 16; }

/* Accepted while a pipeline took 64 positions, queued, and that pipeline
 * dies: the one left takes 16, so the long request hears why at dispatch
 * (and the short one runs there). */
static void test_request_rechecked_against_the_pipeline_it_goes_to(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *wide = fx_worker(fx, 0, "tiny", "wide", NULL);
    fake_worker_set_mode(wide, FAKE_WORKER_PAUSED); /* holds what it gets (credit 4) */
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof id, "held-%d", i);
        assert_int_equal(test_client_send_tokens(fx->client, id, "tiny", PROTO_TASK_BASE, 1, 8, i, 0), 0);
    }
    assert_int_equal(test_client_send_tokens(fx->client, "long", "tiny", PROTO_TASK_BASE, 1, 40, 1, 0), 0);
    assert_true(fx_wait_received(fx, 5, 3000));
    fx_worker(fx, 1, "tiny", "narrow", short_rows); /* the model now takes 16 */
    fake_worker_set_mode(wide, FAKE_WORKER_SILENT);
    Xlm__ServiceMessage *msg = fx_expect(fx, "long", PROTO_STATUS_TOO_LARGE, 3000);
    assert_non_null(strstr(msg->response->message, "needs 40 positions, the live pipelines of "
                                                   "model 'tiny' take at most 16"));
    proto_service_free(&msg);
    for (int i = 0; i < 4; i++) { /* re-queued from the dead one, run on narrow */
        msg = fx_response(fx, 3000);
        assert_non_null(msg);
        assert_int_equal(msg->response->status, XLM__STATUS__STATUS_OK);
        proto_service_free(&msg);
    }
    assert_int_equal(fake_worker_requests(fx->workers[1]), 4);
}

static void poison(fake_worker_config_t *c)
{
    c->vocab_size = 8;
    c->max_position_embeddings = 4;
    c->credit = 0;
}

/* vocab 8 contradicts the live pipeline: refused. The fake registers again
 * on every refusal, as fast as it can; the broker logs it once. */
static void test_contradicting_registration_refused_and_logged_once(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "real", NULL);
    fake_worker_config_t c;
    fake_worker_config_defaults(&c);
    c.endpoint = fx->back;
    c.pipeline = "evil";
    c.heartbeat_ms = 100;
    poison(&c);
    fake_worker_t *evil = fake_worker_start(&c);
    assert_non_null(evil);
    assert_true(wait_stat(fx, offsetof(Xlm__Stats, registrations_refused), 20, 5000));
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->pipelines_alive, 1);
    proto_service_free(&stats);
    expect_normal_request(fx, "while-refused");
    fake_worker_stop(&evil);
    expect_normal_request(fx, "after-refused");
    assert_int_equal(log_count(fx, "refused: its configuration contradicts the model's live "
                                   "pipelines (vocab_size 8, the model's live pipelines have 1000)"), 1);
}

static void other_depth(fake_worker_config_t *c) { c->n_layers = 6; }
static void depth_12(fake_worker_config_t *c) { c->n_layers = 12; }

static void test_other_layer_count_refused(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "real", depth_12);
    fake_worker_config_t c;
    fake_worker_config_defaults(&c);
    c.endpoint = fx->back;
    c.pipeline = "shallow";
    c.heartbeat_ms = 100;
    other_depth(&c);
    fake_worker_t *shallow = fake_worker_start(&c);
    assert_true(wait_stat(fx, offsetof(Xlm__Stats, registrations_refused), 1, 5000));
    fake_worker_stop(&shallow);
    assert_int_equal(log_count(fx, "(n_layers 6, the model's live pipelines have 12)"), 1);
}

/* ------------------------------------------------------------ raw pipelines */

static void *raw_pipeline(void *ctx, const fx_t *fx, const char *id, uint32_t credit)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(s, fx->back), 0);
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Ready ready = XLM__READY__INIT;
    Xlm__Task tasks[] = {XLM__TASK__TASK_BASE};
    ready.model = "tiny";
    ready.n_stages = 1;
    ready.credit = credit;
    ready.max_batch_tokens = 4096;
    ready.vocab_size = 1000;
    ready.max_position_embeddings = 64;
    ready.n_tasks = 1;
    ready.tasks = tasks;
    ready.heartbeat_ms = 10000; /* the broker waits 3 of them: this test never beats */
    msg.pipeline = (char *)id;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &ready;
    uint8_t *data;
    size_t size;
    assert_int_equal(proto_worker_pack(&msg, &data, &size, NULL), 0);
    assert_true(zmq_send(s, data, size, 0) >= 0);
    free(data);
    return s;
}

/* The first Batch that reaches s (heartbeats skipped): its ticket. */
static uint64_t raw_batch_ticket(void *s)
{
    for (int64_t until = testing_now_us() + 3000000; testing_now_us() < until;) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0)
            continue;
        zmq_msg_t header;
        zmq_msg_init(&header);
        assert_true(zmq_msg_recv(&header, s, 0) >= 0);
        for (int more = zmq_msg_more(&header); more;) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            zmq_msg_recv(&part, s, 0);
            more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        Xlm__WorkerMessage *msg = NULL;
        proto_worker_decode(zmq_msg_data(&header), zmq_msg_size(&header), PROTO_DEFAULT_LIMIT, &msg, NULL);
        zmq_msg_close(&header);
        uint64_t ticket = msg && msg->body_case == XLM__WORKER_MESSAGE__BODY_BATCH ? msg->batch->tickets[0] : 0;
        proto_worker_free(&msg);
        if (ticket)
            return ticket;
    }
    fail_msg("raw_batch_ticket: no batch within 3 s");
    return 0;
}

/* A Reply for ticket from pipeline id, its response carrying one i64
 * output called output_name. */
static void raw_reply(void *s, const char *id, uint64_t ticket, const char *request_id,
                      const char *output_name)
{
    int64_t value = 42, shape = 1;
    Xlm__Tensor t = XLM__TENSOR__INIT;
    t.name = (char *)output_name;
    t.n_shape = 1;
    t.shape = &shape;
    t.n_i64 = 1;
    t.i64 = &value;
    Xlm__Tensor *outputs[] = {&t};
    Xlm__Response resp = XLM__RESPONSE__INIT;
    resp.id = (char *)request_id;
    resp.n_outputs = 1;
    resp.outputs = outputs;
    Xlm__ServiceMessage sm = XLM__SERVICE_MESSAGE__INIT;
    sm.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    sm.response = &resp;
    uint8_t *frame, *data;
    size_t frame_size, size;
    assert_int_equal(proto_service_pack(&sm, &frame, &frame_size, NULL), 0);
    Xlm__Status status = XLM__STATUS__STATUS_OK;
    Xlm__Reply reply = XLM__REPLY__INIT;
    reply.n_tickets = reply.n_statuses = 1;
    reply.tickets = &ticket;
    reply.statuses = &status;
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    msg.pipeline = (char *)id;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_REPLY;
    msg.reply = &reply;
    assert_int_equal(proto_worker_pack(&msg, &data, &size, NULL), 0);
    assert_true(zmq_send(s, data, size, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(s, frame, frame_size, 0) >= 0);
    free(data);
    free(frame);
}

static void test_reply_from_another_pipeline_ignored(void **state)
{
    fx_t *fx = *state;
    void *ctx = zmq_ctx_new();
    void *holder = raw_pipeline(ctx, fx, "holder", 1);
    void *thief = raw_pipeline(ctx, fx, "thief", 0); /* no credit: never gets the batch */
    assert_true(fx_wait_pipelines(fx, "tiny", 2, 3000));
    assert_int_equal(test_client_send_tokens(fx->client, "r1", "tiny", PROTO_TASK_BASE, 1, 5, 1, 0), 0);
    uint64_t ticket = raw_batch_ticket(holder);
    raw_reply(thief, "thief", ticket, "r1", "forged");
    assert_true(wait_stat(fx, offsetof(Xlm__Stats, foreign_replies), 1, 3000));
    assert_null(fx_response(fx, 200)); /* the forged answer did not reach the client */
    raw_reply(holder, "holder", ticket, "r1", "real");
    Xlm__ServiceMessage *msg = fx_expect(fx, "r1", PROTO_STATUS_OK, 3000);
    assert_non_null(test_response_output(msg->response, "real"));
    assert_null(test_response_output(msg->response, "forged"));
    proto_service_free(&msg);
    assert_int_equal(STAT(fx, foreign_replies), 1);
    zmq_close(holder);
    zmq_close(thief);
    zmq_ctx_term(ctx);
}

/* ------------------------------------------------------------ log flood */

static void test_million_malformed_messages_bounded_log(void **state)
{
    fx_t *fx = *state;
    enum { FLOOD = 1000000 };
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(s, fx->back), 0);
    int64_t t0 = testing_now_us();
    for (int i = 0; i < FLOOD; i++)
        assert_int_equal(zmq_send(s, "x", 1, 0), 1);
    assert_true(wait_stat(fx, offsetof(Xlm__Stats, malformed), FLOOD, 60000));
    int64_t t1 = testing_now_us();
    usleep(800000); /* past the 300 ms window and a timer tick: the count is written */
    long size = log_size(fx);
    int written = log_count(fx, "worker message refused");
    FILE *f = fopen(fx->log_path, "r");
    char line[2048];
    unsigned long long held = 0, n;
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "[warn] ");
        if (p && sscanf(p, "[warn] %llu more lines of malformed worker messages held back", &n) == 1)
            held += n;
    }
    if (f)
        fclose(f);
    printf("test_peers: %d one-byte messages in %.2f s: log %ld bytes, %d lines written, %llu held "
           "back\n", FLOOD, (double)(t1 - t0) / 1e6, size, written, held);
    assert_true(size < 64 * 1024);
    assert_true(written >= 1);
    assert_int_equal(held + (unsigned long long)written, FLOOD);
    assert_true(STAT(fx, log_suppressed) >= held);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

/* The backend's ZMQ_MAXMSGSIZE (--max-worker-message-bytes): a frame under
 * it is read (and refused as malformed), one past it drops the peer's
 * connection unread. */
static int setup_small_worker_frames(void **state)
{
    static const char *const extra[] = {"--max-worker-message-bytes", "65536", NULL};
    return fx_state_setup(state, extra);
}

static void test_worker_frame_past_socket_limit_dropped(void **state)
{
    fx_t *fx = *state;
    static uint8_t frame[100 * 1024];
    memset(frame, 0xff, sizeof frame);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(s, fx->back), 0);
    assert_true(zmq_send(s, frame, 60 * 1024, 0) >= 0);
    assert_true(wait_stat(fx, offsetof(Xlm__Stats, malformed), 1, 3000));
    assert_true(zmq_send(s, frame, sizeof frame, 0) >= 0);
    usleep(500000);
    assert_int_equal(STAT(fx, malformed), 1);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tiny_limits_leave_with_their_pipeline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tiny_limits_leave_when_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_rechecked_against_the_pipeline_it_goes_to, setup, teardown),
        cmocka_unit_test_setup_teardown(test_contradicting_registration_refused_and_logged_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_layer_count_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_from_another_pipeline_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_million_malformed_messages_bounded_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_frame_past_socket_limit_dropped,
                                        setup_small_worker_frames, fx_state_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
