/* test_restart.c: the broker process killed and restarted during a run
 * (the client's retries with the same ids complete the run, each result
 * delivered once), and the graceful stop on SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"

static int setup(void **state)
{
    return fx_state_setup(state, NULL);
}

static int teardown(void **state) { return fx_state_teardown(state); }

/* ------------------------------------------------------------ restart */

enum { RUN_N = 300, RUN_WINDOW = 16, RUN_RETRY_MS = 1000 };

typedef struct {
    int64_t sent_us;   /* 0: not sent yet */
    int64_t retry_us;  /* when to send again */
    bool done;
    int sends;
} run_req_t;

static void run_send(fx_t *fx, run_req_t *r, int i, int64_t now)
{
    char id[32];
    snprintf(id, sizeof id, "run-%d", i);
    assert_int_equal(test_client_send_tokens(fx->client, id, "tiny", PROTO_TASK_BASE, 1, 4 + i % 40, i, 0), 0);
    r->sent_us = now;
    r->retry_us = now + RUN_RETRY_MS * 1000;
    r->sends++;
}

static void delay_2ms(fake_worker_config_t *c)
{
    c->delay_us = 2000;
}

static void test_restart_during_run(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", delay_2ms);
    run_req_t *reqs = calloc(RUN_N, sizeof *reqs);
    int done = 0, next = 0, duplicates = 0, retried = 0, unavailable = 0;
    bool restarted = false;
    int64_t deadline = testing_now_us() + 25 * 1000000LL;
    while (done < RUN_N && testing_now_us() < deadline) {
        int64_t now = testing_now_us();
        /* Keep RUN_WINDOW requests outstanding; retry those past their time. */
        int outstanding = 0;
        for (int i = 0; i < next; i++)
            if (!reqs[i].done) {
                outstanding++;
                if (now >= reqs[i].retry_us) {
                    run_send(fx, &reqs[i], i, now);
                    retried++;
                }
            }
        while (outstanding < RUN_WINDOW && next < RUN_N) {
            run_send(fx, &reqs[next], next, now);
            next++;
            outstanding++;
        }
        if (!restarted && done >= RUN_N / 3) {
            /* Crash: no goodbye, everything it held is lost. */
            testing_process_stop(fx->broker, SIGKILL, 2000);
            assert_int_equal(fx_start(fx, NULL), 0); /* same ports */
            restarted = true;
        }
        Xlm__ServiceMessage *msg = fx_response(fx, 20);
        if (!msg)
            continue;
        const Xlm__Response *r = msg->response;
        int i = -1;
        sscanf(r->id, "run-%d", &i);
        assert_true(i >= 0 && i < RUN_N);
        if (r->status == XLM__STATUS__STATUS_UNAVAILABLE) {
            /* No worker registered with the new broker yet: retry soon. */
            reqs[i].retry_us = testing_now_us() + 50000;
            unavailable++;
        } else if (reqs[i].done) {
            duplicates++;
        } else {
            assert_int_equal(r->status, XLM__STATUS__STATUS_OK);
            const Xlm__Tensor *sums = test_response_output(r, "sum_ids");
            assert_non_null(sums);
            assert_int_equal(sums->i64[0], test_tokens_row_sum(4 + i % 40, i, 0));
            reqs[i].done = true;
            done++;
        }
        proto_service_free(&msg);
    }
    uint64_t executed = fake_worker_requests(fx->workers[0]);
    printf("restart run: %d/%d done, %d retries, %d unavailable, %d duplicate replies, "
           "%llu executions, %llu registrations\n",
           done, RUN_N, retried, unavailable, duplicates, (unsigned long long)executed,
           (unsigned long long)fake_worker_registrations(fx->workers[0]));
    assert_true(restarted);
    assert_int_equal(done, RUN_N);
    assert_int_equal(duplicates, 0);
    assert_true(retried > 0);
    /* Only what the killed broker held can have run twice. */
    assert_true(executed <= RUN_N + 2 * RUN_WINDOW);
    assert_true(fake_worker_registrations(fx->workers[0]) >= 2);
    free(reqs);
}

/* ------------------------------------------------------------ SIGTERM */

static void slow_one_credit(fake_worker_config_t *c)
{
    c->credit = 1;
    c->delay_us = 50000;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    int status;
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        usleep(5000);
    }
    return -1;
}

/* Polls stats until the broker no longer accepts requests (it has taken
 * the SIGTERM in); false after timeout_ms. */
static bool wait_stopping(fx_t *fx, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        bool stopping = stats && !stats->stats->accepting;
        proto_service_free(&stats);
        if (stopping)
            return true;
        usleep(1000);
    }
    return false;
}

static void test_sigterm_finishes_queued(void **state)
{
    fx_t *fx = *state;
    fx_worker(fx, 0, "tiny", "p0", slow_one_credit);
    const char *ids[] = {"q0", "q1", "q2", "q3", "q4"};
    for (int i = 0; i < 5; i++) /* lengths in different buckets: one batch each */
        test_client_send_tokens(fx->client, ids[i], "tiny", PROTO_TASK_BASE, 1, 4 << i, i, 0);
    assert_true(fx_wait_received(fx, 5, 2000));
    assert_int_equal(kill(fx->broker, SIGTERM), 0);
    assert_true(wait_stopping(fx, 2000)); /* the 5 are still held: 50 ms each */
    test_client_send_tokens(fx->client, "late", "tiny", PROTO_TASK_BASE, 1, 4, 0, 0);
    int ok = 0, refused = 0;
    for (int k = 0; k < 6; k++) {
        Xlm__ServiceMessage *msg = fx_response(fx, 2000);
        assert_non_null(msg);
        if (strcmp(msg->response->id, "late") == 0) {
            assert_int_equal(msg->response->status, XLM__STATUS__STATUS_UNAVAILABLE);
            assert_non_null(strstr(msg->response->message, "stopping"));
            refused++;
        } else {
            assert_int_equal(msg->response->status, XLM__STATUS__STATUS_OK);
            ok++;
        }
        proto_service_free(&msg);
    }
    assert_int_equal(ok, 5);
    assert_int_equal(refused, 1);
    int status = wait_exit(fx->broker, 3000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    fx->broker = 0;
}

static void test_sigterm_hands_back_after_drain(void **state)
{
    fx_t *fx = *state;
    /* Restart with a short drain time. */
    testing_process_stop(fx->broker, SIGKILL, 2000);
    const char *const args[] = {"--drain-ms", "300", NULL};
    assert_int_equal(fx_start(fx, args), 0);
    fake_worker_t *w = fx_worker(fx, 0, "tiny", "p0", slow_one_credit);
    fake_worker_set_mode(w, FAKE_WORKER_PROGRESSING);
    test_client_send_tokens(fx->client, "h0", "tiny", PROTO_TASK_BASE, 1, 4, 0, 0);  /* in flight */
    test_client_send_tokens(fx->client, "h1", "tiny", PROTO_TASK_BASE, 1, 40, 0, 0); /* queued */
    assert_true(fx_wait_received(fx, 2, 2000));
    int64_t start = testing_now_us();
    assert_int_equal(kill(fx->broker, SIGTERM), 0);
    for (int k = 0; k < 2; k++) {
        Xlm__ServiceMessage *msg = fx_response(fx, 2000);
        assert_non_null(msg);
        assert_int_equal(msg->response->status, XLM__STATUS__STATUS_UNAVAILABLE);
        assert_non_null(strstr(msg->response->message, "retry with the same id"));
        proto_service_free(&msg);
    }
    int64_t waited_ms = (testing_now_us() - start) / 1000;
    assert_true(waited_ms >= 250 && waited_ms < 1500);
    int status = wait_exit(fx->broker, 3000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    fx->broker = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart_during_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_finishes_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_hands_back_after_drain, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
