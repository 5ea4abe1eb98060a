/* test_curve.c: libxlmclient's CURVE options (curve_secret, curve_server)
 * against the real xlm-broker with --curve-key and --curve-allow, and a
 * fake worker pipeline with its own key. An allowed key scores; a client
 * without keys, with a key the broker does not allow, with a revoked key or
 * with the wrong server key gets a clear error within its timeout; a key
 * revoked while its client is connected gets PERMISSION_DENIED at once (the
 * library's call and xlm-client infer, which stops with status 3); bad key
 * files are refused when the client is made. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker_testing.h"
#include "curve_keys.h"
#include "xlmclient.h"

typedef struct {
    char dir[128];
    char broker_key[192], broker_pub[192], client_key[192], client_pub[192];
    char worker_key[192], stranger_key[192];
    char front[64];
    pid_t broker;
    fake_worker_t *worker;
} cfx_t;

static void keygen(const char *dir, const char *name, char *key, char *pub)
{
    char base[160];
    snprintf(base, sizeof base, "%s/%s", dir, name);
    proto_curve_cert_t cert;
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_cert_new(&cert, err) || proto_curve_cert_save(base, &cert, false, err))
        fail_msg("keygen %s: %s", base, err);
    snprintf(key, 192, "%s.key", base);
    snprintf(pub, 192, "%s.pub", base);
}

static int setup(void **state)
{
    cfx_t *c = calloc(1, sizeof *c);
    char scratch[192], allow[160];
    snprintf(c->dir, sizeof c->dir, "/tmp/xlm-client-curve-%d", (int)getpid());
    snprintf(allow, sizeof allow, "%s/allowed", c->dir);
    mkdir(c->dir, 0700);
    mkdir(allow, 0700);
    keygen(c->dir, "broker", c->broker_key, c->broker_pub);
    keygen(c->dir, "client", c->client_key, c->client_pub);
    keygen(c->dir, "worker", c->worker_key, scratch);
    char copy[640];
    snprintf(copy, sizeof copy, "cp '%s' '%s' '%s/'", c->client_pub, scratch, allow);
    if (system(copy) != 0)
        return -1;
    keygen(c->dir, "stranger", c->stranger_key, scratch);
    int front = testing_free_port(), back = testing_free_port();
    while (back == front)
        back = testing_free_port();
    snprintf(c->front, sizeof c->front, "tcp://127.0.0.1:%d", front);
    const char *extra[] = {"--curve-key", c->broker_key, "--curve-allow", allow, "--heartbeat-ms", "100",
                           "--log-level", "error", NULL};
    testing_spawn_t how = {NULL, c->client_key, c->broker_pub};
    c->broker = testing_broker_spawn_with(XLM_BIN_DIR "/xlm-broker", front, back, extra, &how);
    if (c->broker < 0)
        return -1;
    char back_ep[64];
    snprintf(back_ep, sizeof back_ep, "tcp://127.0.0.1:%d", back);
    fake_worker_config_t w;
    fake_worker_config_defaults(&w);
    w.endpoint = back_ep;
    w.heartbeat_ms = 100;
    w.curve_secret = c->worker_key;
    w.curve_server = c->broker_pub;
    c->worker = fake_worker_start(&w);
    *state = c;
    return c->worker ? 0 : -1;
}

static int teardown(void **state)
{
    cfx_t *c = *state;
    fake_worker_stop(&c->worker);
    int status = testing_process_stop(c->broker, SIGTERM, 5000);
    char cmd[192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    int rc = system(cmd);
    free(c);
    return status == 0 && rc == 0 ? 0 : -1;
}

static xlm_client_t *client_with(const cfx_t *c, const char *secret, const char *server)
{
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = c->front;
    config.attempt_timeout_ms = 500;
    config.max_attempts = 2;
    config.curve_secret = secret;
    config.curve_server = server;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client)
        fail_msg("xlm_client_new: %s", err.message);
    return client;
}

/* One token request; its result (the caller destroys it). */
static xlm_result_t *call(xlm_client_t *client, const char *id)
{
    int64_t ids[] = {3, 4, 5}, lengths[] = {3};
    xlm_tokens_t tokens = {.rows = 1, .lengths = lengths, .input_ids = ids};
    xlm_request_t rq;
    xlm_request_init(&rq);
    rq.id = id;
    rq.model = "tiny";
    rq.task = XLM_TASK_BASE;
    rq.tokens = &tokens;
    xlm_result_t *result = NULL;
    assert_int_equal(xlm_client_call(client, &rq, 10000, &result), XLM_OK);
    return result;
}

/* Refused: the call ends UNAVAILABLE after its 2 attempts of 500 ms (well
 * within the call's own 10 s: call() asserts XLM_OK, not XLM_ERR_TIMEOUT),
 * and the message says why; so does a stats call. */
static void expect_refused(xlm_client_t *client, const char *says)
{
    xlm_result_t *result = call(client, "refused");
    assert_int_equal(xlm_result_code(result), XLM_CODE_UNAVAILABLE);
    if (!strstr(xlm_result_message(result), says))
        fail_msg("message '%s' does not say '%s'", xlm_result_message(result), says);
    xlm_result_destroy(&result);
    char *json = NULL;
    assert_int_equal(xlm_client_stats_json(client, 800, &json), XLM_ERR_TIMEOUT);
    if (!strstr(xlm_client_error(client), says))
        fail_msg("stats error '%s' does not say '%s'", xlm_client_error(client), says);
}

static void test_allowed_key_scores(void **state)
{
    cfx_t *c = *state;
    xlm_client_t *client = client_with(c, c->client_key, c->broker_pub);
    xlm_result_t *result = call(client, "ok");
    assert_int_equal(xlm_result_code(result), XLM_CODE_OK);
    assert_int_equal(xlm_result_find(result, "sum_ids")->i64[0], 12);
    xlm_result_destroy(&result);
    xlm_client_destroy(&client);
}

static void test_without_keys_refused(void **state)
{
    cfx_t *c = *state;
    xlm_client_t *client = client_with(c, NULL, NULL);
    expect_refused(client, "the broker requires CURVE");
    xlm_client_destroy(&client);
}

static void test_key_not_allowed_refused(void **state)
{
    cfx_t *c = *state;
    xlm_client_t *client = client_with(c, c->stranger_key, c->broker_pub);
    expect_refused(client, "the broker refused this client's CURVE key");
    xlm_client_destroy(&client);
}

static void test_wrong_server_key_refused(void **state)
{
    cfx_t *c = *state;
    xlm_client_t *client = client_with(c, c->client_key, c->client_pub);
    expect_refused(client, "a wrong --curve-server key");
    xlm_client_destroy(&client);
}

static void test_revoked_key_refused(void **state)
{
    cfx_t *c = *state;
    char pub[192];
    snprintf(pub, sizeof pub, "%s/allowed/client.pub", c->dir);
    assert_int_equal(unlink(pub), 0);
    xlm_client_t *client = client_with(c, c->client_key, c->broker_pub);
    expect_refused(client, "the broker refused this client's CURVE key");
    xlm_client_destroy(&client);
}

/* Removes the client's key from the allow directory and waits until the
 * broker has read the directory again: a new handshake with that key is
 * refused (the ZAP handler reads a changed directory before it answers). */
static void revoke_client_key(const cfx_t *c)
{
    char pub[192];
    snprintf(pub, sizeof pub, "%s/allowed/client.pub", c->dir);
    assert_int_equal(unlink(pub), 0);
    for (int i = 0; i < 50; i++) {
        xlm_client_t *probe = client_with(c, c->client_key, c->broker_pub);
        char *json = NULL;
        bool refused = xlm_client_stats_json(probe, 300, &json) == XLM_ERR_TIMEOUT &&
                       strstr(xlm_client_error(probe), "the broker refused this client's CURVE key");
        free(json);
        xlm_client_destroy(&probe);
        if (refused)
            return;
    }
    fail_msg("revoke_client_key: new handshakes with the removed key still succeed");
}

/* Connected and answered, then revoked: the next call ends
 * PERMISSION_DENIED within 2 s, where silence would have taken its 3
 * attempts of 3 s. */
static void test_revoked_while_connected(void **state)
{
    cfx_t *c = *state;
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = c->front;
    config.attempt_timeout_ms = 3000;
    config.max_attempts = 3;
    config.curve_secret = c->client_key;
    config.curve_server = c->broker_pub;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    assert_non_null(client);
    xlm_result_t *result = call(client, "before");
    assert_int_equal(xlm_result_code(result), XLM_CODE_OK);
    xlm_result_destroy(&result);
    revoke_client_key(c);
    int64_t started = testing_now_us();
    result = call(client, "after");
    int64_t took_ms = (testing_now_us() - started) / 1000;
    assert_int_equal(xlm_result_code(result), XLM_CODE_PERMISSION_DENIED);
    assert_string_equal(xlm_code_str(xlm_result_code(result)), "permission_denied");
    if (!strstr(xlm_result_message(result), "no longer allows this client's CURVE key"))
        fail_msg("message '%s' does not say the key is no longer allowed", xlm_result_message(result));
    if (took_ms > 2000)
        fail_msg("PERMISSION_DENIED after %lld ms, expected at once", (long long)took_ms);
    xlm_result_destroy(&result);
    xlm_client_destroy(&client);
}

/* xlm-client infer as a user runs it, fed one line at a time (--window 1):
 * the first line runs; the key is revoked; the second line ends the job
 * within 3 s (its attempts would take 15 s) with status 3, no result line
 * and one line on stderr saying the key is no longer allowed. */
static void test_revoked_tool_stops(void **state)
{
    cfx_t *c = *state;
    char err_path[256];
    snprintf(err_path, sizeof err_path, "%s/xlm-client.err", c->dir);
    int to_child[2], from_child[2];
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(from_child), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int err_fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        dup2(err_fd, 2);
        close(to_child[1]);
        close(from_child[0]);
        execl(XLM_BIN_DIR "/xlm-client", "xlm-client", "infer", "--endpoint", c->front, "--model",
              "tiny", "--head", "base", "--window", "1", "--attempt-timeout-ms", "5000",
              "--attempts", "3", "--curve-secret", c->client_key, "--curve-server", c->broker_pub,
              (char *)NULL);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    FILE *in = fdopen(to_child[1], "w"), *out = fdopen(from_child[0], "r");
    char got[4096];
    fputs("{\"name\": \"one\", \"inputs\": {\"input_ids\": [[3, 4, 5]]}}\n", in);
    fflush(in);
    /* Its output is a pipe (buffered until exit): the worker's count says
     * when the first line was answered. */
    for (int i = 0; i < 500 && fake_worker_requests(c->worker) < 1; i++)
        usleep(20000);
    assert_int_equal(fake_worker_requests(c->worker), 1);
    revoke_client_key(c);
    int64_t started = testing_now_us();
    fputs("{\"name\": \"two\", \"inputs\": {\"input_ids\": [[3, 4, 5]]}}\n", in);
    fflush(in);
    int status = 0;
    pid_t done = 0;
    while ((done = waitpid(pid, &status, WNOHANG)) == 0 && testing_now_us() - started < 20000000)
        usleep(20000);
    int64_t took_ms = (testing_now_us() - started) / 1000;
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("xlm-client still ran 20 s after its key was revoked");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3);
    assert_non_null(fgets(got, sizeof got, out));
    if (!strstr(got, "\"one\"") || !strstr(got, "sum_ids"))
        fail_msg("xlm-client's first line: %s", got);
    assert_null(fgets(got, sizeof got, out)); /* no line for 'two' */
    fclose(in);
    fclose(out);
    const char *says = "xlm-client: stopping at line 'two': the broker no longer allows this "
                       "client's CURVE key";
    if (testing_count_lines_with(err_path, says) != 1 || testing_count_lines_with(err_path, "CURVE key") != 1)
        fail_msg("xlm-client's stderr does not say once '%s'", says);
    if (took_ms > 3000)
        fail_msg("xlm-client stopped %lld ms after the revoked line, expected at once", (long long)took_ms);
}

static void test_bad_key_files(void **state)
{
    cfx_t *c = *state;
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = c->front;
    xlm_error_t err;
    config.curve_secret = c->client_pub; /* a public file where the pair is needed */
    config.curve_server = c->broker_pub;
    assert_null(xlm_client_new(&config, &err));
    assert_int_equal(err.code, XLM_ERR_ARG);
    assert_non_null(strstr(err.message, "has no secret-key: give the NAME.key file"));
    config.curve_secret = c->client_key;
    config.curve_server = NULL;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, "the server's public key (--curve-server) is missing"));
    char garbled[192];
    snprintf(garbled, sizeof garbled, "%s/garbled.pub", c->dir);
    FILE *f = fopen(garbled, "w");
    fputs("curve\n    public-key = \"not z85\"\n", f);
    fclose(f);
    config.curve_server = garbled;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, "garbled.pub' has a public-key that is not 40 characters of Z85"));
}

int main(void)
{
    if (!proto_curve_available()) {
        printf("test_curve: SKIP: this libzmq has no CURVE\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allowed_key_scores, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_keys_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_not_allowed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_server_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked_while_connected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked_tool_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_key_files, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
