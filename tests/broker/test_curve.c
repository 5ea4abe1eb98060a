/* test_curve.c: the broker with CURVE on both sides (--curve-key,
 * --curve-allow): an allowed client and worker work end to end; a plain
 * client, a client with a key not allowed and one whose key was removed
 * from the allow directory are refused, each refusal logged once (a live
 * connection of the removed key hears PERMISSION_DENIED at once); the
 * broker refuses to bind a plain side off loopback without --insecure.
 * Keys are real key files written as xlm-keygen writes them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "curve_keys.h"
#include "fixture.h"

typedef struct {
    fx_t fx;
    char dir[128], allow[160];
    char broker_key[320], broker_pub[320], client_key[320], client_pub[320];
    char worker_key[320], stranger_key[320];
} curve_fx_t;

static void keygen(const char *base, char *key_path, char *pub_path)
{
    proto_curve_cert_t cert;
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_cert_new(&cert, err) || proto_curve_cert_save(base, &cert, false, err))
        fail_msg("keygen %s: %s", base, err);
    if (key_path)
        snprintf(key_path, 320, "%s.key", base);
    if (pub_path)
        snprintf(pub_path, 320, "%s.pub", base);
}

static int setup(void **state)
{
    if (!proto_curve_available()) {
        fprintf(stderr, "test_curve: this libzmq has no CURVE\n");
        return -1;
    }
    curve_fx_t *c = calloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/xlm-test-curve-%d", (int)getpid());
    snprintf(c->allow, sizeof c->allow, "%s/allowed", c->dir);
    mkdir(c->dir, 0700);
    mkdir(c->allow, 0700);
    char base[200], worker_pub[320];
    snprintf(base, sizeof base, "%s/broker", c->dir);
    keygen(base, c->broker_key, c->broker_pub);
    snprintf(base, sizeof base, "%s/allowed/client", c->dir); /* its .pub lands in the allow list */
    keygen(base, c->client_key, c->client_pub);
    snprintf(base, sizeof base, "%s/allowed/worker", c->dir);
    keygen(base, c->worker_key, worker_pub);
    snprintf(base, sizeof base, "%s/stranger", c->dir);
    keygen(base, c->stranger_key, NULL);
    /* The allow list holds public keys only: the secret files move out. */
    char moved[320];
    snprintf(moved, sizeof moved, "%s/client.key", c->dir);
    rename(c->client_key, moved);
    snprintf(c->client_key, sizeof c->client_key, "%s", moved);
    snprintf(moved, sizeof moved, "%s/worker.key", c->dir);
    rename(c->worker_key, moved);
    snprintf(c->worker_key, sizeof c->worker_key, "%s", moved);
    snprintf(c->fx.log_path, sizeof c->fx.log_path, "%s/broker.log", c->dir);
    c->fx.curve_secret = c->client_key;
    c->fx.curve_server = c->broker_pub;
    const char *extra[] = {"--curve-key", c->broker_key, "--curve-allow", c->allow, NULL};
    if (fx_start(&c->fx, extra) != 0) {
        fx_teardown(&c->fx);
        free(c);
        return -1;
    }
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    curve_fx_t *c = *state;
    int rc = fx_teardown(&c->fx);
    char cmd[300];
    if (getenv("XLM_TEST_KEEP"))
        fprintf(stderr, "test_curve: kept %s\n", c->dir);
    else
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    if (getenv("XLM_TEST_KEEP"))
        snprintf(cmd, sizeof cmd, "true");
    if (system(cmd) != 0)
        rc = -1;
    free(c);
    return rc;
}


static uint64_t auth_refused(fx_t *fx)
{
    Xlm__ServiceMessage *stats = fx_stats(fx);
    uint64_t n = stats ? stats->stats->auth_refused : 0;
    proto_service_free(&stats);
    return n;
}

/* Handshakes are the broker's business, in its own time: polls its count of
 * refusals until it passes n (a loaded machine may take seconds). */
static uint64_t wait_refused(fx_t *fx, uint64_t n, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    uint64_t seen = auth_refused(fx);
    while (seen < n && testing_now_us() < until) {
        usleep(20000);
        seen = auth_refused(fx);
    }
    return seen;
}

static void curve_worker(curve_fx_t *c, int slot)
{
    fake_worker_config_t w;
    fake_worker_config_defaults(&w);
    w.endpoint = c->fx.back;
    w.pipeline = "curved";
    w.heartbeat_ms = 100;
    w.curve_secret = c->worker_key;
    w.curve_server = c->broker_pub;
    c->fx.workers[slot] = fake_worker_start(&w);
    assert_non_null(c->fx.workers[slot]);
    assert_true(fx_wait_pipelines(&c->fx, "tiny", 1, 5000));
}

/* A request on client answered OK with the right sum. */
static void expect_answer(test_client_t *client, const char *id)
{
    assert_int_equal(test_client_send_tokens(client, id, "tiny", PROTO_TASK_BASE, 1, 6, 2, 0), 0);
    Xlm__ServiceMessage *msg = test_client_recv(client, 10000);
    if (!msg)
        fail_msg("expect_answer: no reply to '%s' within 10 s", id);
    assert_string_equal(msg->response->id, id);
    assert_int_equal(msg->response->status, XLM__STATUS__STATUS_OK);
    assert_int_equal(test_response_output(msg->response, "sum_ids")->i64[0], test_tokens_row_sum(6, 2, 0));
    proto_service_free(&msg);
}

/* No answer: the send fails (no peer: the handshake was refused) or
 * nothing comes back within a second. */
static void expect_silence(test_client_t *client, const char *id)
{
    if (test_client_send_tokens(client, id, "tiny", PROTO_TASK_BASE, 1, 6, 2, 0) != 0)
        return;
    Xlm__ServiceMessage *msg = test_client_recv(client, 1000);
    if (msg)
        fail_msg("expect_silence: '%s' got a reply (status %d)", id, msg->response ? (int)msg->response->status : -1);
}

/* A final PERMISSION_DENIED under the request's id, within 2 s of sending:
 * the request's deadline (the broker's default, 30 s) is not waited for. */
static void expect_denied(test_client_t *client, const char *id)
{
    int64_t sent_us = testing_now_us();
    assert_int_equal(test_client_send_tokens(client, id, "tiny", PROTO_TASK_BASE, 1, 6, 2, 0), 0);
    Xlm__ServiceMessage *msg = test_client_recv(client, 10000);
    if (!msg)
        fail_msg("expect_denied: no reply to '%s' within 10 s", id);
    int64_t took_ms = (testing_now_us() - sent_us) / 1000;
    assert_non_null(msg->response);
    assert_string_equal(msg->response->id, id);
    assert_int_equal(msg->response->status, XLM__STATUS__STATUS_PERMISSION_DENIED);
    assert_non_null(strstr(msg->response->message, "no longer allows this client's CURVE key"));
    if (took_ms > 2000)
        fail_msg("expect_denied: '%s' answered after %lld ms, expected at once", id, (long long)took_ms);
    proto_service_free(&msg);
}

static void test_allowed_keys_work_end_to_end(void **state)
{
    curve_fx_t *c = *state;
    curve_worker(c, 0);
    expect_answer(c->fx.client, "allowed");
    assert_int_equal(auth_refused(&c->fx), 0);
}

static void test_plain_client_refused(void **state)
{
    curve_fx_t *c = *state;
    curve_worker(c, 0);
    test_client_t *plain = test_client_new(c->fx.front);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "plain-%d", i);
        expect_silence(plain, id); /* it keeps reconnecting, the broker keeps refusing */
    }
    assert_true(wait_refused(&c->fx, 1, 10000) >= 1);
    test_client_destroy(&plain);
    assert_int_equal(testing_count_lines_with(c->fx.log_path, "CURVE: frontend refused a client: its handshake "
                                               "failed ("), 1);
}

static void test_key_not_allowed_refused(void **state)
{
    curve_fx_t *c = *state;
    curve_worker(c, 0);
    test_client_t *stranger = test_client_new_curve(c->fx.front, c->stranger_key, c->broker_pub);
    expect_silence(stranger, "stranger-1");
    expect_silence(stranger, "stranger-2");
    assert_true(wait_refused(&c->fx, 1, 10000) >= 1);
    test_client_destroy(&stranger);
    assert_int_equal(testing_count_lines_with(c->fx.log_path, "its public key is not in the allow directory"), 1);
    /* A client that took the broker's key for another's: no handshake. */
    test_client_t *confused = test_client_new_curve(c->fx.front, c->client_key, c->client_pub);
    expect_silence(confused, "wrong-server-key");
    test_client_destroy(&confused);
}

static void test_removed_key_revoked(void **state)
{
    curve_fx_t *c = *state;
    curve_worker(c, 0);
    test_client_t *live = test_client_new_curve(c->fx.front, c->client_key, c->broker_pub);
    expect_answer(live, "before-revoke");
    /* Stats from here on through the worker's key, which stays allowed. */
    test_client_destroy(&c->fx.admin);
    c->fx.admin = test_client_new_curve(c->fx.front, c->worker_key, c->broker_pub);
    uint64_t refused_before = auth_refused(&c->fx);
    char pub[340];
    snprintf(pub, sizeof pub, "%s/client.pub", c->allow);
    assert_int_equal(unlink(pub), 0);
    /* A new connection with that key is refused... */
    test_client_t *again = test_client_new_curve(c->fx.front, c->client_key, c->broker_pub);
    expect_silence(again, "after-revoke-new");
    assert_true(wait_refused(&c->fx, refused_before + 1, 10000) > refused_before);
    test_client_destroy(&again);
    /* ...and the live connection's traffic is refused too, with an answer
     * it can read rather than silence until its deadline. */
    expect_denied(live, "after-revoke-live");
    expect_denied(live, "after-revoke-live-2");
    test_client_destroy(&live);
    Xlm__ServiceMessage *stats = fx_stats(&c->fx);
    assert_non_null(stats);
    assert_int_equal(fx_model_stats(stats, "tiny")->pipelines_alive, 1);
    assert_int_equal(stats->stats->revoked_messages, 2); /* the two requests after the revoke */
    proto_service_free(&stats);
    const char *dropped = "refused a message of a key no longer allowed";
    for (int i = 0; i < 500 && testing_count_lines_with(c->fx.log_path, dropped) == 0; i++)
        usleep(20000); /* the broker's own time on a loaded machine */
    assert_int_equal(testing_count_lines_with(c->fx.log_path, dropped), 1);
}

/* Off loopback a plain side needs --insecure: the broker exits 1 with a
 * line naming the side and the options, before binding anything (the
 * address is TEST-NET-1, which no interface here has). */
static void test_plain_off_loopback_refused(void **state)
{
    (void)state;
    char log[] = "/tmp/xlm-test-curve-bindXXXXXX";
    int fd = mkstemp(log);
    assert_true(fd >= 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        execl(XLM_BIN_DIR "/xlm-broker", "xlm-broker", "--frontend", "tcp://192.0.2.1:5555",
              "--backend", "tcp://127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    close(fd);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_int_equal(testing_count_lines_with(log, "the frontend 'tcp://192.0.2.1:5555' is not a loopback address and "
                                    "has no CURVE"), 1);
    unlink(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_keys_work_end_to_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_client_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_not_allowed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removed_key_revoked, setup, teardown),
        cmocka_unit_test(test_plain_off_loopback_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
