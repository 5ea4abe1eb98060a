/* test_failover.c: pipelines that go silent are declared dead and what they
 * held runs elsewhere (or on the same pipeline when it comes back); a reply
 * that arrives twice is delivered once; retries of one id run once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"

static int setup(void **state)
{
    return fx_state_setup(state, NULL);
}

static int teardown(void **state) { return fx_state_teardown(state); }

/* Receives n responses, all OK, each id of ids[] exactly once, then
 * nothing more for quiet_ms. */
static void expect_each_once(fx_t *fx, const char *const *ids, int n, int timeout_ms, int quiet_ms)
{
    int seen[16] = {0};
    assert_true(n <= 16);
    for (int k = 0; k < n; k++) {
        Xlm__ServiceMessage *msg = fx_response(fx, timeout_ms);
        if (!msg)
            fail_msg("expect_each_once: %d of %d responses", k, n);
        int found = -1;
        for (int i = 0; i < n; i++)
            if (strcmp(msg->response->id, ids[i]) == 0)
                found = i;
        if (found < 0 || seen[found] || msg->response->status != XLM__STATUS__STATUS_OK)
            fail_msg("expect_each_once: unexpected response '%s' (%s), seen before: %d",
                     msg->response->id, proto_status_str((proto_status_t)msg->response->status),
                     found >= 0 ? seen[found] : 0);
        seen[found] = 1;
        proto_service_free(&msg);
    }
    Xlm__ServiceMessage *extra = fx_response(fx, quiet_ms);
    if (extra)
        fail_msg("expect_each_once: one more response, id '%s'", extra->response->id);
}

/* Polls stats until the broker has counted at least n late replies (worker
 * replies for tickets it no longer holds); the count then, or at the
 * deadline. */
static uint64_t wait_late_replies(fx_t *fx, uint64_t n, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    uint64_t late = 0;
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        late = stats ? stats->stats->late_replies : 0;
        proto_service_free(&stats);
        if (late >= n)
            break;
        usleep(5000);
    }
    return late;
}

static void test_dead_pipeline_requeued_elsewhere(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(p0, FAKE_WORKER_SILENT); /* hangs: holds what it gets */
    const char *ids[] = {"f0", "f1", "f2", "f3"};
    for (int i = 0; i < 4; i++)
        test_client_send_tokens(fx->client, ids[i], "tiny", PROTO_TASK_BASE, 1, 4 + 8 * i, i, 0);
    assert_true(fx_wait_received(fx, 4, 2000)); /* all sent to p0 (credit 4) */
    fx_worker(fx, 1, "tiny", "p1", NULL);
    /* p0 misses 3 heartbeats of 100 ms: dead; its requests go to p1. */
    expect_each_once(fx, ids, 4, 3000, 100);
    assert_int_equal(fake_worker_requests(fx->workers[1]), 4);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    const Xlm__ModelStats *ms = fx_model_stats(stats, "tiny");
    assert_int_equal(ms->requests_requeued, 4);
    assert_int_equal(ms->pipelines_alive, 1);
    assert_int_equal(ms->requests_done, 4);
    proto_service_free(&stats);

    /* p0 wakes up: its stale replies are dropped, it is told to register
     * again, and does. */
    fake_worker_set_mode(p0, FAKE_WORKER_NORMAL);
    assert_true(fx_wait_pipelines(fx, "tiny", 2, 3000));
    assert_int_equal(fake_worker_registrations(p0), 2);
    assert_int_equal(wait_late_replies(fx, 4, 2000), 4);
    assert_null(fx_response(fx, 200));
}

static void test_same_pipeline_comes_back(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(p0, FAKE_WORKER_SILENT);
    test_client_send_tokens(fx->client, "back", "tiny", PROTO_TASK_BASE, 1, 4, 7, 5000);
    assert_true(fx_wait_pipelines(fx, "tiny", 0, 3000)); /* declared dead, request queued */
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->queue_depth, 1);
    proto_service_free(&stats);
    fake_worker_set_mode(p0, FAKE_WORKER_NORMAL);
    const char *ids[] = {"back"};
    expect_each_once(fx, ids, 1, 3000, 300);
}

/* A pipeline whose stage 0 keeps beating while the work it holds never
 * comes back (a later stage hung): dead after liveness intervals without
 * progress, its work runs elsewhere. */
static void test_hung_pipeline_without_progress_requeued(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(p0, FAKE_WORKER_PAUSED); /* heartbeats, holds its batches */
    const char *ids[] = {"h0", "h1", "h2", "h3"};
    for (int i = 0; i < 4; i++)
        test_client_send_tokens(fx->client, ids[i], "tiny", PROTO_TASK_BASE, 1, 4 + 8 * i, i, 0);
    assert_true(fx_wait_received(fx, 4, 2000));
    fx_worker(fx, 1, "tiny", "p1", NULL);
    expect_each_once(fx, ids, 4, 3000, 100);
    assert_int_equal(fake_worker_requests(fx->workers[1]), 4);
    assert_int_equal(fake_worker_requests(p0), 0);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->requests_requeued, 4);
    proto_service_free(&stats);
    fake_worker_set_mode(p0, FAKE_WORKER_NORMAL);
}

/* A pipeline that holds its work for many liveness intervals while its last
 * stage reports progress (a long generation) stays alive and answers. */
static void test_progress_keeps_a_busy_pipeline_alive(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(p0, FAKE_WORKER_PROGRESSING);
    const char *ids[] = {"g0", "g1"};
    for (int i = 0; i < 2; i++)
        test_client_send_tokens(fx->client, ids[i], "tiny", PROTO_TASK_BASE, 1, 4, i, 0);
    assert_true(fx_wait_received(fx, 2, 2000));
    usleep(1200 * 1000); /* four times the 300 ms the broker allows without progress */
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->pipelines_alive, 1);
    assert_int_equal(fx_model_stats(stats, "tiny")->requests_requeued, 0);
    assert_int_equal(fx_model_stats(stats, "tiny")->in_flight, 2);
    proto_service_free(&stats);
    fake_worker_set_mode(p0, FAKE_WORKER_NORMAL);
    expect_each_once(fx, ids, 2, 2000, 100);
    assert_int_equal(fake_worker_registrations(p0), 1);
}

static void credit_two(fake_worker_config_t *c)
{
    c->credit = 2;
}

static void test_duplicate_replies_delivered_once(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", credit_two);
    fake_worker_set_mode(p0, FAKE_WORKER_DUPLICATE);
    const char *ids[] = {"u0", "u1", "u2", "u3", "u4", "u5"};
    for (int i = 0; i < 6; i++)
        test_client_send_tokens(fx->client, ids[i], "tiny", PROTO_TASK_BASE, 1, 4, i, 0);
    expect_each_once(fx, ids, 6, 2000, 200);
    assert_int_equal(wait_late_replies(fx, 6, 2000), 6);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(fx_model_stats(stats, "tiny")->requests_done, 6);
    /* Duplicates gave no credit: still 2. */
    assert_int_equal(fx_model_stats(stats, "tiny")->pipelines[0]->credit, 2);
    proto_service_free(&stats);
}

static void test_retries_run_once(void **state)
{
    fx_t *fx = *state;
    fake_worker_t *p0 = fx_worker(fx, 0, "tiny", "p0", NULL);
    fake_worker_set_mode(p0, FAKE_WORKER_PROGRESSING);
    test_client_send_tokens(fx->client, "once", "tiny", PROTO_TASK_BASE, 1, 4, 5, 0);
    test_client_send_tokens(fx->client, "once", "tiny", PROTO_TASK_BASE, 1, 4, 5, 0);
    /* A retry from a new socket (new routing id): the reply goes there. */
    assert_int_equal(test_client_reconnect(fx->client), 0);
    test_client_send_tokens(fx->client, "once", "tiny", PROTO_TASK_BASE, 1, 4, 5, 0);
    assert_true(fx_wait_received(fx, 3, 2000));
    fake_worker_set_mode(p0, FAKE_WORKER_NORMAL);
    const char *ids[] = {"once"};
    expect_each_once(fx, ids, 1, 2000, 200);
    /* Once more after completion: answered from the cache, not run again. */
    test_client_send_tokens(fx->client, "once", "tiny", PROTO_TASK_BASE, 1, 4, 5, 0);
    expect_each_once(fx, ids, 1, 2000, 100);
    assert_int_equal(fake_worker_requests(p0), 1);
    Xlm__ServiceMessage *stats = fx_stats(fx);
    assert_int_equal(stats->stats->duplicates, 3);
    assert_int_equal(stats->stats->cache_entries, 1);
    proto_service_free(&stats);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dead_pipeline_requeued_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_pipeline_comes_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hung_pipeline_without_progress_requeued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_progress_keeps_a_busy_pipeline_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_replies_delivered_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_run_once, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
