/* test_tail.c: the last stage's own beats (Heartbeat.tail), and every
 * stage's heartbeat thread (Heartbeat.stage_beat), on the real broker
 * process, from raw sockets speaking the real protocol. The broker
 * learns the pipeline's tail from them before any Reply, so that a stage 0
 * that hangs (silent) while its pipeline is idle still gets the order to
 * end the job to a rank that reads it; the beats are never stage 0's
 * liveness nor progress; beats of a pipeline not registered (yet), or of
 * another instance under the same id, are counted, not answered, and not
 * logged line by line. A stage that falls silent ends its pipeline; a work
 * count that grows keeps a pipeline busy on one long micro-batch alive. */
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

enum { BEAT_MS = 50, INSTANCE = 7, OTHER_INSTANCE = 9 };

typedef struct {
    fx_t fx;
    void *ctx;
    void *sockets[8]; /* closed at teardown, also after a failed assertion */
    int n_sockets;
} tail_fx_t;

static int setup(void **state)
{
    tail_fx_t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    snprintf(t->fx.log_path, sizeof t->fx.log_path, "/tmp/xlm-test-tail-%d.log", (int)getpid());
    unlink(t->fx.log_path);
    /* Debug: the ignored beats' line is written, so its rate limit shows. */
    static const char *const extra[] = {"--log-window-ms", "300", "--log-level", "debug", NULL};
    t->ctx = zmq_ctx_new();
    if (!t->ctx || fx_start(&t->fx, extra) != 0) {
        fx_teardown(&t->fx);
        if (t->ctx)
            zmq_ctx_term(t->ctx);
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    tail_fx_t *t = *state;
    int rc = fx_teardown(&t->fx);
    for (int i = 0; i < t->n_sockets; i++)
        zmq_close(t->sockets[i]);
    unlink(t->fx.log_path);
    zmq_ctx_term(t->ctx);
    free(t);
    return rc;
}

static int log_count(const fx_t *fx, const char *needle)
{
    return testing_count_lines_with(fx->log_path, needle);
}

static void *raw_socket(tail_fx_t *t)
{
    void *s = zmq_socket(t->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    assert_true(t->n_sockets < 8);
    t->sockets[t->n_sockets++] = s;
    assert_int_equal(zmq_connect(s, t->fx.back), 0);
    return s;
}

static void raw_send(void *s, const char *pipeline, Xlm__WorkerMessage *msg)
{
    uint8_t *data;
    size_t size;
    msg->pipeline = (char *)pipeline;
    assert_int_equal(proto_worker_pack(msg, &data, &size, NULL), 0);
    assert_true(zmq_send(s, data, size, 0) >= 0);
    free(data);
}

/* Stage 0's registration of a 2-stage pipeline beating every 100 ms. */
static void *raw_stage0(tail_fx_t *t, const char *pipeline, uint32_t credit)
{
    void *s = raw_socket(t);
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Ready ready = XLM__READY__INIT;
    Xlm__Task tasks[] = {XLM__TASK__TASK_BASE};
    ready.model = "tiny";
    ready.n_stages = 2;
    ready.credit = credit;
    ready.max_batch_tokens = 4096;
    ready.vocab_size = 1000;
    ready.max_position_embeddings = 64;
    ready.n_tasks = 1;
    ready.tasks = tasks;
    ready.heartbeat_ms = 100;
    ready.instance = INSTANCE;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &ready;
    raw_send(s, pipeline, &msg);
    return s;
}

static void send_beat(void *s, const char *pipeline, Xlm__Heartbeat *beat)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    beat->heartbeat_ms = 100;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = beat;
    raw_send(s, pipeline, &msg);
}

/* tail: the last stage's beat (else stage 0's plain one). */
static void raw_beat(void *s, const char *pipeline, bool tail, uint64_t progress,
                     uint64_t instance)
{
    Xlm__Heartbeat beat = XLM__HEARTBEAT__INIT;
    beat.tail = tail;
    beat.progress = progress;
    beat.instance = instance;
    send_beat(s, pipeline, &beat);
}

/* What reached a socket: messages of any kind, and the stalled order. */
typedef struct {
    int messages, stalled;
    char reason[256];
} heard_t;

static void drain(void *s, heard_t *heard)
{
    for (;;) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 0) <= 0)
            return;
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
        proto_worker_decode(zmq_msg_data(&header), zmq_msg_size(&header), PROTO_DEFAULT_LIMIT,
                            &msg, NULL);
        zmq_msg_close(&header);
        heard->messages++;
        if (msg && msg->body_case == XLM__WORKER_MESSAGE__BODY_DISCONNECT &&
            msg->disconnect->stalled) {
            heard->stalled++;
            snprintf(heard->reason, sizeof heard->reason, "%s", msg->disconnect->reason);
        }
        proto_worker_free(&msg);
    }
}

/* Beats for up to ms every BEAT_MS: tail (a last-stage beat of instance
 * tail_instance, progress 0) and stage0 (a plain one) when not NULL,
 * listening on both, until tail hears the stalled order. Returns the ms it
 * took, or -1 when it never came. */
static int beat_until_stalled(void *stage0, void *tail, const char *pipeline,
                              uint64_t tail_instance, int ms, heard_t *heard0, heard_t *heard_tail)
{
    const int64_t start = testing_now_us(), until = start + (int64_t)ms * 1000;
    while (testing_now_us() < until) {
        if (tail)
            raw_beat(tail, pipeline, true, 0, tail_instance);
        if (stage0)
            raw_beat(stage0, pipeline, false, 0, 0);
        usleep(BEAT_MS * 1000);
        if (heard0 && stage0)
            drain(stage0, heard0);
        if (tail)
            drain(tail, heard_tail);
        if (heard_tail->stalled)
            return (int)((testing_now_us() - start) / 1000);
    }
    return -1;
}

/* A stage's heartbeat thread's beat: its process did work products so far. */
static void raw_stage_beat(void *s, const char *pipeline, uint32_t stage, uint64_t work,
                           uint64_t instance)
{
    Xlm__Heartbeat beat = XLM__HEARTBEAT__INIT;
    beat.stage_beat = true;
    beat.stage = stage;
    beat.work = work;
    beat.instance = instance;
    send_beat(s, pipeline, &beat);
}

/* Beats for up to ms every BEAT_MS: stage 0 plainly, and stage 1's thread
 * (when not NULL) with a work count that grows by work_step each beat,
 * until stage 0's socket hears the stalled order. Returns the ms it took,
 * or -1 when it never came; *work is the count last sent. */
static int beat_stages_until_stalled(void *stage0, void *stage1, const char *pipeline, int ms,
                                     uint64_t *work, uint64_t work_step, heard_t *heard0,
                                     heard_t *heard1)
{
    const int64_t start = testing_now_us(), until = start + (int64_t)ms * 1000;
    while (testing_now_us() < until) {
        raw_beat(stage0, pipeline, false, 0, 0);
        if (stage1) {
            *work += work_step;
            raw_stage_beat(stage1, pipeline, 1, *work, INSTANCE);
        }
        usleep(BEAT_MS * 1000);
        drain(stage0, heard0);
        if (stage1)
            drain(stage1, heard1);
        if (heard0->stalled)
            return (int)((testing_now_us() - start) / 1000);
    }
    return -1;
}

static const Xlm__PipelineStats *pipeline_stats(const Xlm__ServiceMessage *stats, const char *id)
{
    const Xlm__ModelStats *ms = stats ? fx_model_stats(stats, "tiny") : NULL;
    for (size_t i = 0; ms && i < ms->n_pipelines; i++)
        if (strcmp(ms->pipelines[i]->id, id) == 0)
            return ms->pipelines[i];
    return NULL;
}

/* Polls stats until pipeline id's tail is known; false after timeout_ms. */
static bool wait_tail_known(fx_t *fx, const char *id, int timeout_ms)
{
    for (int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000; testing_now_us() < until;) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        const Xlm__PipelineStats *ps = pipeline_stats(stats, id);
        bool known = ps && ps->tail_known;
        proto_service_free(&stats);
        if (known)
            return true;
        usleep(10000);
    }
    return false;
}

static uint64_t tail_beats_ignored(fx_t *fx)
{
    Xlm__ServiceMessage *stats = fx_stats(fx);
    uint64_t n = stats ? stats->stats->tail_beats_ignored : 0;
    proto_service_free(&stats);
    return n;
}

/* Beats sent on other sockets reach the broker in no fixed order against
 * this one's: wait until it has counted `at_least` ignored ones (or 3 s). */
static uint64_t wait_tail_beats_ignored(fx_t *fx, uint64_t at_least)
{
    uint64_t n = 0;
    for (int64_t until = testing_now_us() + 3000000;
         (n = tail_beats_ignored(fx)) < at_least && testing_now_us() < until;)
        usleep(10000);
    return n;
}

/* The gap: stage 0 hangs while its pipeline is idle, before the
 * last stage ever replied. The last stage's beats made its socket known,
 * they do not keep the pipeline alive, and the stalled order reaches it. */
static void test_hung_stage0_of_an_idle_pipeline_reaches_the_tail(void **state)
{
    tail_fx_t *t = *state;
    void *stage0 = raw_stage0(t, "idle", 2);
    void *tail = raw_socket(t);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    heard_t heard0 = {0}, heard_tail = {0};
    /* Both beat a while: the tail is known, nothing is declared. */
    assert_int_equal(beat_until_stalled(stage0, tail, "idle", INSTANCE, 500, &heard0, &heard_tail), -1);
    assert_true(wait_tail_known(&t->fx, "idle", 1000));
    Xlm__ServiceMessage *stats = fx_stats(&t->fx);
    assert_int_equal(pipeline_stats(stats, "idle")->batches, 0); /* it never had work */
    proto_service_free(&stats);
    /* Stage 0 stops (SIGSTOP): only the last stage beats on. The broker
     * allows 3 x 100 ms of silence; the tail's beats must not stretch it. */
    int ms = beat_until_stalled(NULL, tail, "idle", INSTANCE, 3000, NULL, &heard_tail);
    if (ms < 0)
        fail_msg("the last stage never heard the stalled order (messages heard: %d)",
                 heard_tail.messages);
    assert_true(ms <= 1500);
    assert_string_equal(heard_tail.reason, "missed heartbeats");
    assert_int_equal(heard_tail.messages, 1); /* the order, nothing else */
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 0, 1000));
    drain(stage0, &heard0);
    assert_int_equal(heard0.stalled, 1); /* stage 0's socket is told too */
    assert_int_equal(log_count(&t->fx, "pipeline 'idle' of model 'tiny' removed (missed heartbeats)"), 1);
}

/* Stage 0 beats, the pipeline holds work, the last stage beats idle (a
 * stage between them hung): idle beats are no progress, it is declared
 * dead and its work runs elsewhere. */
static void test_idle_tail_beats_are_no_progress(void **state)
{
    tail_fx_t *t = *state;
    void *stage0 = raw_stage0(t, "held", 1);
    void *tail = raw_socket(t);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    assert_int_equal(test_client_send_tokens(t->fx.client, "w1", "tiny", PROTO_TASK_BASE, 1, 6, 2, 0), 0);
    heard_t heard0 = {0}, heard_tail = {0};
    int ms = beat_until_stalled(stage0, tail, "held", INSTANCE, 3000, &heard0, &heard_tail);
    if (ms < 0)
        fail_msg("a pipeline whose last stage beats idle while it holds work was kept alive");
    assert_non_null(strstr(heard_tail.reason, "no progress for"));
    assert_non_null(strstr(heard_tail.reason, "while holding 1 requests"));
    drain(stage0, &heard0);
    assert_int_equal(heard0.stalled, 1);
    /* The held request runs on a healthy pipeline. */
    fx_worker(&t->fx, 0, "tiny", "healthy", NULL);
    Xlm__ServiceMessage *msg = fx_expect(&t->fx, "w1", PROTO_STATUS_OK, 3000);
    proto_service_free(&msg);
    Xlm__ServiceMessage *stats = fx_stats(&t->fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->requests_requeued, 1);
    proto_service_free(&stats);
}

/* Beats of a pipeline that has not registered (a last stage connects
 * before stage 0 registers, or outlives it): no answer (no "register"
 * order, no registration storm), no pipeline, a counted and rate-limited
 * line, not one per beat. */
static void test_beats_before_registration_are_quiet(void **state)
{
    tail_fx_t *t = *state;
    void *tail = raw_socket(t);
    const int beats = 2000;
    for (int i = 0; i < beats; i++)
        raw_beat(tail, "ghost", true, 0, INSTANCE);
    for (int64_t until = testing_now_us() + 3000000;
         testing_now_us() < until && tail_beats_ignored(&t->fx) < (uint64_t)beats;)
        usleep(10000);
    assert_int_equal(tail_beats_ignored(&t->fx), beats);
    heard_t heard = {0};
    usleep(200 * 1000);
    drain(tail, &heard);
    assert_int_equal(heard.messages, 0);
    Xlm__ServiceMessage *stats = fx_stats(&t->fx);
    assert_int_equal(stats->stats->n_models, 0);
    assert_int_equal(stats->stats->registrations_refused, 0);
    proto_service_free(&stats);
    /* A burst of 1 per 300 ms window, the rest summed up. */
    int lines = log_count(&t->fx, "last-stage beat of pipeline 'ghost'");
    assert_true(lines >= 1 && lines <= 12);
    /* Stage 0 registering afterwards takes the next beat as its tail. */
    void *stage0 = raw_stage0(t, "ghost", 2);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    heard_t heard0 = {0};
    beat_until_stalled(stage0, tail, "ghost", INSTANCE, 200, &heard0, &heard);
    assert_true(wait_tail_known(&t->fx, "ghost", 1000));
}

/* A last stage of another instance under the same pipeline id (an older
 * job's, still running) is not taken for the registered one's tail; and
 * stage 0's own socket is never the tail (a one-stage pipeline). */
static void test_tail_of_another_instance_not_taken(void **state)
{
    tail_fx_t *t = *state;
    void *stage0 = raw_stage0(t, "same-id", 2);
    void *tail = raw_socket(t), *stranger = raw_socket(t);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    raw_beat(stage0, "same-id", true, 0, INSTANCE);
    raw_beat(stage0, "same-id", false, 0, 0); /* stage 0 alive meanwhile */
    usleep(BEAT_MS * 1000);
    Xlm__ServiceMessage *stats = fx_stats(&t->fx);
    assert_false(pipeline_stats(stats, "same-id")->tail_known);
    proto_service_free(&stats);
    raw_beat(stage0, "same-id", false, 0, 0);
    raw_beat(tail, "same-id", true, 0, INSTANCE);
    assert_true(wait_tail_known(&t->fx, "same-id", 1000));
    const uint64_t ignored_before = tail_beats_ignored(&t->fx);
    heard_t heard_stranger = {0}, heard_tail = {0};
    /* Stage 0 goes silent; only the stranger beats, the latest beat. */
    assert_int_equal(beat_until_stalled(NULL, stranger, "same-id", OTHER_INSTANCE, 1500, NULL,
                                        &heard_stranger), -1);
    assert_int_equal(heard_stranger.messages, 0);
    assert_true(tail_beats_ignored(&t->fx) > ignored_before);
    drain(tail, &heard_tail);
    assert_int_equal(heard_tail.stalled, 1);
    assert_string_equal(heard_tail.reason, "missed heartbeats");
}

/* One micro-batch computes for far longer than the liveness window (a
 * large model on one thread): no Reply comes, but the computing stage's
 * heartbeat thread shows its work count grow, and the pipeline keeps its
 * work. When the count stops growing while the work is held, the pipeline
 * is dead as before. */
static void test_growing_work_keeps_a_busy_pipeline_alive(void **state)
{
    tail_fx_t *t = *state;
    void *stage0 = raw_stage0(t, "busy", 1);
    void *stage1 = raw_socket(t);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    assert_int_equal(test_client_send_tokens(t->fx.client, "long", "tiny", PROTO_TASK_BASE, 1, 6, 2, 0), 0);
    heard_t heard0 = {0}, heard1 = {0};
    uint64_t work = 0;
    /* Five times the 300 ms the broker allows without progress. */
    assert_int_equal(beat_stages_until_stalled(stage0, stage1, "busy", 1500, &work, 3, &heard0,
                                               &heard1), -1);
    Xlm__ServiceMessage *stats = fx_stats(&t->fx);
    const Xlm__ModelStats *ms = fx_model_stats(stats, "tiny");
    assert_int_equal(ms->pipelines_alive, 1);
    assert_int_equal(ms->in_flight, 1);
    assert_int_equal(ms->requests_requeued, 0);
    proto_service_free(&stats);
    assert_int_equal(heard1.messages, 0); /* a stage's beat is never answered */
    /* The count stands still (the stage's loop is stuck, its thread beats). */
    const int took = beat_stages_until_stalled(stage0, stage1, "busy", 3000, &work, 0, &heard0,
                                               &heard1);
    if (took < 0)
        fail_msg("a pipeline holding work whose work count stands still was kept alive");
    assert_true(took <= 1000);
    assert_non_null(strstr(heard0.reason, "no progress for"));
}

/* A stage in the middle or at the end of a ring stops (SIGSTOP) while its
 * pipeline is idle, and stage 0 beats on: the stage's silence ends the
 * pipeline, naming the stage. A stage heard only before registration, or
 * beating under another instance, changes nothing and hears nothing. */
static void test_silent_stage_ends_its_pipeline(void **state)
{
    tail_fx_t *t = *state;
    void *stage1 = raw_socket(t);
    raw_stage_beat(stage1, "quiet", 1, 0, INSTANCE); /* before stage 0 registered */
    /* counted before stage 0 registers, whatever the sockets' order */
    assert_int_equal(wait_tail_beats_ignored(&t->fx, 1), 1);
    void *stage0 = raw_stage0(t, "quiet", 2);
    void *stranger = raw_socket(t);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 1, 3000));
    heard_t heard0 = {0}, heard1 = {0}, heard_stranger = {0};
    uint64_t work = 0;
    assert_int_equal(beat_stages_until_stalled(stage0, stage1, "quiet", 600, &work, 0, &heard0,
                                               &heard1), -1);
    raw_stage_beat(stranger, "quiet", 1, 100, OTHER_INSTANCE);
    raw_stage_beat(stranger, "quiet", 5, 100, INSTANCE); /* no stage 5 in a 2-stage pipeline */
    const int took = beat_stages_until_stalled(stage0, NULL, "quiet", 3000, &work, 0, &heard0,
                                               &heard1);
    if (took < 0)
        fail_msg("a pipeline whose stage 1 fell silent was kept alive");
    assert_true(took <= 1000);
    assert_non_null(strstr(heard0.reason, "stage 1 missed heartbeats"));
    drain(stage1, &heard1);
    drain(stranger, &heard_stranger);
    assert_int_equal(heard1.messages, 0);
    assert_int_equal(heard_stranger.messages, 0);
    assert_true(wait_tail_beats_ignored(&t->fx, 3) >= 3);
    assert_true(fx_wait_pipelines(&t->fx, "tiny", 0, 1000));
    assert_int_equal(log_count(&t->fx, "pipeline 'quiet' of model 'tiny' removed (stage 1 missed heartbeats"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hung_stage0_of_an_idle_pipeline_reaches_the_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_tail_beats_are_no_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_beats_before_registration_are_quiet, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tail_of_another_instance_not_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_growing_work_keeps_a_busy_pipeline_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_stage_ends_its_pipeline, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
