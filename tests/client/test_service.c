/* test_service.c: libxlmclient and xlm-client against the real xlm-broker
 * (a child process on free 127.0.0.1 ports) and broker/'s fake worker
 * pipeline (real protocol, answers "sum_ids" and "lengths"), with a lossy
 * proxy in between where a test needs a lost request, a lost reply or an
 * OVERLOADED answer. Submit/collect, sync call, many in flight through a
 * small window, retries with the same id answered exactly once, the broker
 * killed and restarted mid-run, cancel, deadlines, refusals, stats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker_testing.h"
#include "fixture.h"
#include "xlmclient.h"

#define XLM_BROKER XLM_BIN_DIR "/xlm-broker"
#define XLM_CLIENT XLM_BIN_DIR "/xlm-client"

static const char *const broker_args[] = {"--heartbeat-ms", "100", "--liveness", "3", "--startup-grace-ms", "0",
                                          "--log-level", "error", NULL};

typedef struct {
    int front_port, back_port;
    char front[64], back[64];
    pid_t broker;
    fake_worker_t *worker;
    proxy_t *proxy;
    xlm_client_config_t config;
    xlm_client_t *client;
} svc_t;

static bool broker_start(svc_t *t)
{
    t->broker = testing_broker_spawn(XLM_BROKER, t->front_port, t->back_port, broker_args);
    return t->broker > 0;
}

static void worker_start(svc_t *t)
{
    fake_worker_config_t wc;
    fake_worker_config_defaults(&wc);
    wc.endpoint = t->back;
    wc.model = "tiny";
    wc.pipeline = "fake-0";
    wc.n_stages = 1;
    wc.heartbeat_ms = 100;
    wc.liveness = 3;
    t->worker = fake_worker_start(&wc);
    assert_non_null(t->worker);
}

/* The client's endpoint: the broker, or the proxy in front of it. */
static void client_start(svc_t *t, bool via_proxy)
{
    xlm_client_destroy(&t->client);
    if (via_proxy && !t->proxy)
        assert_non_null(t->proxy = proxy_start(t->front));
    t->config.endpoint = via_proxy ? proxy_endpoint(t->proxy) : t->front;
    xlm_error_t err;
    t->client = xlm_client_new(&t->config, &err);
    if (!t->client)
        fail_msg("%s", err.message);
}

/* Stats until the model has n pipelines alive. */
static void wait_pipelines(svc_t *t, int n)
{
    int64_t until = fx_now_ms() + 10000;
    while (fx_now_ms() < until) {
        char *json = NULL;
        int alive = -1;
        if (xlm_client_stats_json(t->client, 1000, &json) == XLM_OK) {
            cJSON *root = cJSON_Parse(json);
            cJSON *model = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "models"), 0);
            cJSON *count = cJSON_GetObjectItem(model, "pipelines_alive");
            alive = cJSON_IsNumber(count) ? (int)count->valuedouble : 0;
            cJSON_Delete(root);
        }
        free(json);
        if (alive == n)
            return;
        usleep(20000);
    }
    fail_msg("the broker did not list %d pipelines", n);
}

static int setup_common(void **state, bool worker)
{
    svc_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->front_port = testing_free_port();
    t->back_port = testing_free_port();
    snprintf(t->front, sizeof t->front, "tcp://127.0.0.1:%d", t->front_port);
    snprintf(t->back, sizeof t->back, "tcp://127.0.0.1:%d", t->back_port);
    if (!broker_start(t)) {
        free(t);
        return -1;
    }
    xlm_client_config_defaults(&t->config);
    t->config.attempt_timeout_ms = 1000;
    t->config.backoff_ms = 20;
    t->config.backoff_max_ms = 200;
    client_start(t, false);
    if (worker) {
        worker_start(t);
        wait_pipelines(t, 1);
    }
    *state = t;
    return 0;
}

static int setup(void **state) { return setup_common(state, true); }
static int setup_no_worker(void **state) { return setup_common(state, false); }

static int teardown(void **state)
{
    svc_t *t = *state;
    xlm_client_destroy(&t->client);
    proxy_stop(&t->proxy);
    fake_worker_stop(&t->worker);
    if (t->broker > 0)
        testing_process_stop(t->broker, SIGKILL, 2000);
    free(t);
    return 0;
}

/* ------------------------------------------------------------ requests */

/* One row of len ids: seed, seed + 1, ... (all below the fake's vocab). */
typedef struct {
    int64_t ids[64];
    int64_t lengths[1];
    xlm_tokens_t tokens;
    xlm_request_t rq;
} one_row_t;

static xlm_request_t *one_row(one_row_t *r, const char *id, int64_t seed, int64_t len)
{
    for (int64_t i = 0; i < len; i++)
        r->ids[i] = (seed + i) % 1000;
    r->lengths[0] = len;
    r->tokens = (xlm_tokens_t){.rows = 1, .lengths = r->lengths, .input_ids = r->ids};
    xlm_request_init(&r->rq);
    r->rq.id = id;
    r->rq.task = XLM_TASK_BASE;
    r->rq.tokens = &r->tokens;
    return &r->rq;
}

static int64_t row_sum(int64_t seed, int64_t len)
{
    int64_t sum = 0;
    for (int64_t i = 0; i < len; i++)
        sum += (seed + i) % 1000;
    return sum;
}

/* An OK result of the fake for one row. */
static void check_sum(const xlm_result_t *r, int64_t seed, int64_t len)
{
    if (xlm_result_code(r) != XLM_CODE_OK)
        fail_msg("%s: %s: %s", xlm_result_id(r), xlm_code_str(xlm_result_code(r)),
                 xlm_result_message(r));
    const xlm_tensor_t *sums = xlm_result_find(r, "sum_ids");
    const xlm_tensor_t *lengths = xlm_result_find(r, "lengths");
    assert_non_null(sums);
    assert_non_null(lengths);
    assert_int_equal(sums->dtype, XLM_I64);
    assert_int_equal(sums->numel, 1);
    assert_int_equal(sums->i64[0], row_sum(seed, len));
    assert_int_equal(lengths->i64[0], len);
}

/* A number field of a stats object, or -1 when it has none. */
static double stats_number(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItem(object, name);
    return cJSON_IsNumber(item) ? item->valuedouble : -1;
}

/* Requests the fake worker has answered, once the service is quiet: the
 * broker holds nothing (queue and in flight empty) and the fake has counted
 * as many answers as the broker received replies (done, failed, late). The
 * fake counts after sending, so it may lag the broker a moment; every
 * request the broker dispatches stays in flight until its reply arrives, so
 * once nothing is held no other execution is under way. Fails after 5 s. */
static uint64_t worker_requests(svc_t *t)
{
    int64_t until = fx_now_ms() + 5000;
    double held = -1, replies = -1;
    uint64_t answered = 0;
    while (fx_now_ms() < until) {
        char *json = NULL;
        if (xlm_client_stats_json(t->client, 1000, &json) == XLM_OK) {
            cJSON *root = cJSON_Parse(json);
            cJSON *model = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "models"), 0);
            double queued = stats_number(model, "queue_depth"), flying = stats_number(model, "in_flight");
            double done = stats_number(model, "requests_done"), failed = stats_number(model, "requests_failed");
            double late = stats_number(root, "late_replies");
            held = queued < 0 || flying < 0 ? -1 : queued + flying;
            replies = done < 0 || failed < 0 || late < 0 ? -1 : done + failed + late;
            cJSON_Delete(root);
        }
        free(json);
        answered = fake_worker_requests(t->worker);
        if (held == 0 && replies == (double)answered)
            return answered;
        usleep(2000);
    }
    fail_msg("worker_requests: the service did not settle: %.0f requests held, %.0f replies, "
             "%llu answered by the fake", held, replies, (unsigned long long)answered);
    return 0;
}

static xlm_result_t *call(svc_t *t, const char *id, int64_t seed, int64_t len)
{
    one_row_t row;
    xlm_result_t *r = NULL;
    if (xlm_client_call(t->client, one_row(&row, id, seed, len), 15000, &r) != XLM_OK)
        fail_msg("%s", xlm_client_error(t->client));
    return r;
}

/* ------------------------------------------------------------ basics */

static void test_submit_collect(void **state)
{
    svc_t *t = *state;
    char ids[3][XLM_ID_SIZE];
    for (int i = 0; i < 3; i++) {
        one_row_t row;
        assert_int_equal(xlm_client_submit(t->client, one_row(&row, NULL, 10 * i, 3 + i), ids[i]),
                         XLM_OK);
    }
    bool seen[3] = {false};
    for (int k = 0; k < 3; k++) {
        xlm_result_t *r = NULL;
        assert_int_equal(xlm_client_collect(t->client, NULL, 10000, &r), XLM_OK);
        int i = 0;
        while (i < 3 && strcmp(ids[i], xlm_result_id(r)) != 0)
            i++;
        assert_true(i < 3 && !seen[i]);
        seen[i] = true;
        check_sum(r, 10 * i, 3 + i);
        xlm_result_destroy(&r);
    }
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 100, &r), XLM_ERR_EMPTY);
}

static void test_call(void **state)
{
    svc_t *t = *state;
    xlm_result_t *r = call(t, "sync-1", 5, 7);
    check_sum(r, 5, 7);
    assert_string_equal(xlm_result_id(r), "sync-1");
    const xlm_timings_t *timings = xlm_result_timings(r);
    assert_int_equal(timings->attempts, 1);
    assert_true(timings->total_us > 0);
    assert_int_equal(timings->n_stages, 1);
    assert_true(timings->batch_requests >= 1);
    xlm_result_destroy(&r);
}

/* Many requests through a window of 8: each result once, each right. */
static void test_many_in_flight(void **state)
{
    svc_t *t = *state;
    enum { N = 300, WINDOW = 8 };
    xlm_client_destroy(&t->client);
    t->config.window = WINDOW;
    client_start(t, false);
    char (*ids)[XLM_ID_SIZE] = calloc(N, XLM_ID_SIZE);
    bool *seen = calloc(N, sizeof *seen);
    int submitted = 0, collected = 0, window_full = 0;
    while (collected < N) {
        while (submitted < N) {
            one_row_t row;
            xlm_status_t rc = xlm_client_submit(
                t->client, one_row(&row, NULL, submitted, 1 + submitted % 40), ids[submitted]);
            if (rc == XLM_ERR_WINDOW_FULL) {
                window_full++;
                break;
            }
            assert_int_equal(rc, XLM_OK);
            submitted++;
        }
        assert_true(xlm_client_outstanding(t->client) <= WINDOW);
        xlm_result_t *r = NULL;
        assert_int_equal(xlm_client_collect(t->client, NULL, 10000, &r), XLM_OK);
        /* ids are prefix-counter: the counter gives the index */
        const char *dash = strrchr(xlm_result_id(r), '-');
        int i = atoi(dash + 1) - 1;
        assert_true(i >= 0 && i < N);
        assert_string_equal(ids[i], xlm_result_id(r));
        assert_false(seen[i]);
        seen[i] = true;
        check_sum(r, i, 1 + i % 40);
        xlm_result_destroy(&r);
        collected++;
    }
    assert_true(window_full > 0);
    assert_int_equal(worker_requests(t), N);
    free(ids);
    free(seen);
}

/* ------------------------------------------------------------ retries */

static void test_lost_request(void **state)
{
    svc_t *t = *state;
    t->config.attempt_timeout_ms = 300;
    client_start(t, true);
    xlm_result_t *r = call(t, "lose-1", 1, 4);
    check_sum(r, 1, 4);
    assert_int_equal(xlm_result_timings(r)->attempts, 2);
    xlm_result_destroy(&r);
    assert_int_equal(proxy_sends(t->proxy, "lose-1"), 2);
    assert_int_equal(worker_requests(t), 1);
    assert_int_equal(xlm_client_collect(t->client, NULL, 300, &r), XLM_ERR_EMPTY);
}

/* The reply is lost: the retry is answered from the broker's cache, the
 * request computed once, the result delivered once. */
static void test_lost_reply(void **state)
{
    svc_t *t = *state;
    t->config.attempt_timeout_ms = 300;
    client_start(t, true);
    xlm_result_t *r = call(t, "lostreply-1", 2, 5);
    check_sum(r, 2, 5);
    assert_int_equal(xlm_result_timings(r)->attempts, 2);
    xlm_result_destroy(&r);
    assert_int_equal(proxy_sends(t->proxy, "lostreply-1"), 2);
    assert_int_equal(worker_requests(t), 1);
    assert_int_equal(xlm_client_collect(t->client, NULL, 300, &r), XLM_ERR_EMPTY);
}

static void test_overloaded_retried(void **state)
{
    svc_t *t = *state;
    t->config.max_attempts = 3;
    client_start(t, true);
    xlm_result_t *r = call(t, "ovl-1", 3, 6);
    check_sum(r, 3, 6);
    assert_int_equal(xlm_result_timings(r)->attempts, 2);
    xlm_result_destroy(&r);
    assert_int_equal(proxy_sends(t->proxy, "ovl-1"), 2);

    r = call(t, "ovlall-1", 3, 6); /* overloaded every time: final after 3 */
    assert_int_equal(xlm_result_code(r), XLM_CODE_OVERLOADED);
    assert_string_equal(xlm_result_message(r), "proxy: overloaded (test)");
    assert_int_equal(xlm_result_timings(r)->attempts, 3);
    xlm_result_destroy(&r);
    assert_int_equal(proxy_sends(t->proxy, "ovlall-1"), 3);
}

/* No worker yet: the broker answers UNAVAILABLE and the client retries
 * until a pipeline registers. */
static void test_unavailable_until_worker(void **state)
{
    svc_t *t = *state;
    t->config.max_attempts = 20;
    t->config.backoff_ms = 50;
    t->config.backoff_max_ms = 100;
    client_start(t, false);
    one_row_t row;
    assert_int_equal(xlm_client_submit(t->client, one_row(&row, "early-1", 4, 4), NULL), XLM_OK);
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, "early-1", 300, &r), XLM_ERR_TIMEOUT);
    worker_start(t);
    assert_int_equal(xlm_client_collect(t->client, "early-1", 10000, &r), XLM_OK);
    check_sum(r, 4, 4);
    assert_true(xlm_result_timings(r)->attempts >= 2);
    xlm_result_destroy(&r);
}

/* The broker is killed mid-run and started again on the same ports: the
 * retries complete the run, every result delivered exactly once. */
static void test_broker_restart(void **state)
{
    svc_t *t = *state;
    enum { N = 150, WINDOW = 16, KILL_AT = 50 };
    t->config.window = WINDOW;
    t->config.attempt_timeout_ms = 400;
    t->config.max_attempts = 40;
    client_start(t, false);
    bool seen[N] = {false};
    int submitted = 0, collected = 0, retried = 0;
    while (collected < N) {
        while (submitted < N) {
            one_row_t row;
            char id[32];
            snprintf(id, sizeof id, "run-%d", submitted);
            xlm_status_t rc = xlm_client_submit(t->client, one_row(&row, id, submitted, 2 + submitted % 30), NULL);
            if (rc == XLM_ERR_WINDOW_FULL)
                break;
            assert_int_equal(rc, XLM_OK);
            submitted++;
        }
        xlm_result_t *r = NULL;
        assert_int_equal(xlm_client_collect(t->client, NULL, 20000, &r), XLM_OK);
        int i = atoi(xlm_result_id(r) + 4);
        assert_true(i >= 0 && i < N);
        assert_false(seen[i]);
        seen[i] = true;
        check_sum(r, i, 2 + i % 30);
        retried += xlm_result_timings(r)->attempts > 1;
        xlm_result_destroy(&r);
        if (++collected == KILL_AT) {
            assert_true(testing_process_stop(t->broker, SIGKILL, 2000) != -1);
            usleep(200000);
            assert_true(broker_start(t));
        }
    }
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 500, &r), XLM_ERR_EMPTY);
    assert_true(retried > 0);
}

/* ------------------------------------------------------------ cancel, deadline, refusals */

static void test_cancel(void **state)
{
    svc_t *t = *state;
    fake_worker_set_mode(t->worker, FAKE_WORKER_PROGRESSING);
    one_row_t row;
    assert_int_equal(xlm_client_submit(t->client, one_row(&row, "cx-1", 6, 3), NULL), XLM_OK);
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_collect(t->client, "cx-1", 200, &r), XLM_ERR_TIMEOUT);
    assert_int_equal(xlm_client_cancel(t->client, "cx-1"), XLM_OK);
    assert_int_equal(xlm_client_collect(t->client, NULL, 1000, &r), XLM_OK);
    assert_string_equal(xlm_result_id(r), "cx-1");
    assert_int_equal(xlm_result_code(r), XLM_CODE_CANCELLED);
    xlm_result_destroy(&r);
    fake_worker_set_mode(t->worker, FAKE_WORKER_NORMAL);
    r = call(t, "cx-2", 7, 3);
    check_sum(r, 7, 3);
    xlm_result_destroy(&r);
    /* Neither the broker's answer to the cancel nor the worker's late
     * reply comes out. */
    assert_int_equal(xlm_client_collect(t->client, NULL, 300, &r), XLM_ERR_EMPTY);
}

static void test_deadline(void **state)
{
    svc_t *t = *state;
    fake_worker_set_mode(t->worker, FAKE_WORKER_PROGRESSING);
    one_row_t row;
    xlm_request_t *rq = one_row(&row, "dl-1", 8, 3);
    rq->deadline_ms = 300;
    xlm_result_t *r = NULL;
    int64_t start = fx_now_ms();
    assert_int_equal(xlm_client_call(t->client, rq, 5000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_DEADLINE_EXCEEDED);
    assert_true(fx_now_ms() - start < 2000);
    xlm_result_destroy(&r);
    fake_worker_set_mode(t->worker, FAKE_WORKER_NORMAL);
}

static void test_refused(void **state)
{
    svc_t *t = *state;
    one_row_t row;
    xlm_request_t *rq = one_row(&row, "big-1", 1, 2);
    row.ids[0] = 5000; /* past the model's vocabulary */
    xlm_result_t *r = NULL;
    assert_int_equal(xlm_client_call(t->client, rq, 5000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_BAD_REQUEST);
    assert_non_null(strstr(xlm_result_message(r), "input_ids[0] = 5000"));
    assert_int_equal(xlm_result_timings(r)->attempts, 1);
    xlm_result_destroy(&r);
    rq = one_row(&row, "nomodel-1", 1, 2);
    rq->model = "nope";
    assert_int_equal(xlm_client_call(t->client, rq, 5000, &r), XLM_OK);
    assert_int_equal(xlm_result_code(r), XLM_CODE_UNKNOWN_MODEL);
    xlm_result_destroy(&r);
}

static void test_stats(void **state)
{
    svc_t *t = *state;
    xlm_result_t *r = call(t, "st-1", 1, 2);
    xlm_result_destroy(&r);
    char *json = NULL;
    assert_int_equal(xlm_client_stats_json(t->client, 5000, &json), XLM_OK);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    assert_true(cJSON_GetObjectItem(root, "requests_received")->valuedouble >= 1);
    cJSON *model = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "models"), 0);
    assert_string_equal(cJSON_GetObjectItem(model, "name")->valuestring, "tiny");
    assert_true(cJSON_GetObjectItem(model, "requests_done")->valuedouble >= 1);
    cJSON_Delete(root);
    free(json);
}

/* ------------------------------------------------------------ xlm-client */

static void test_cli(void **state)
{
    svc_t *t = *state;
    char in[256], out[256], err[256];
    fx_tmp_path(in, sizeof in, "svc_in.jsonl");
    fx_tmp_path(out, sizeof out, "svc_out.jsonl");
    fx_tmp_path(err, sizeof err, "svc_err.txt");
    assert_true(fx_write_file(in,
        "{\"name\":\"a\",\"head\":\"seq_cls\",\"inputs\":{\"input_ids\":[[1,2,3],[4,5,6]]}}\n"
        "{\"name\":\"broken\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[1,2],[3]]}}\n"
        "{\"name\":\"big\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[5000]]}}\n"
        "{\"name\":\"mc\",\"head\":\"multiple_choice\",\"inputs\":{\"input_ids\":[[[1,2],[3,4]]]}}\n"));
    char *argv[] = {XLM_CLIENT, "infer", "--endpoint", t->front, "--model", "tiny", NULL};
    /* Two lines fail: exit status 1 (some lines failed). */
    assert_int_equal(fx_wait(fx_spawn(argv, in, out, err), 20000), 1);
    char *text = fx_read_file(out);
    assert_non_null(text);
    char *lines[8], *save = NULL;
    int n = 0;
    for (char *line = strtok_r(text, "\n", &save); line && n < 8; line = strtok_r(NULL, "\n", &save))
        lines[n++] = line;
    assert_int_equal(n, 4);
    assert_string_equal(lines[0], "{\"name\":\"a\",\"outputs\":{\"sum_ids\":[6,15],\"lengths\":[3,3]}}");
    assert_non_null(strstr(lines[1], "{\"name\":\"broken\",\"error\":{\"code\":\"bad_request\""));
    assert_non_null(strstr(lines[2], "{\"name\":\"big\",\"error\":{\"code\":\"bad_request\""));
    assert_string_equal(lines[3], "{\"name\":\"mc\",\"outputs\":{\"sum_ids\":[3,7],\"lengths\":[2,2]}}");
    free(text);

    char *stats_argv[] = {XLM_CLIENT, "stats", "--endpoint", t->front, NULL};
    assert_int_equal(fx_wait(fx_spawn(stats_argv, NULL, out, err), 20000), 0);
    text = fx_read_file(out);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    cJSON *model = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "models"), 0);
    assert_string_equal(cJSON_GetObjectItem(model, "name")->valuestring, "tiny");
    cJSON_Delete(root);
    free(text);
    remove(in);
    remove(out);
    remove(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_collect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overloaded_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_until_worker, setup_no_worker, teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
