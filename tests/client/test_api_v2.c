/* test_api_v2.c: the API of issue 12 against a raw ROUTER peer playing the
 * broker: xlm_client_score_pairs (order, per-pair errors, token scores),
 * versioned structs (an older caller's smaller struct, a newer one's
 * unknown fields), the event-loop hook (the descriptor, process, a poll
 * loop), and the CURVE key files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

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
    t->config.attempt_timeout_ms = 2000;
    t->config.max_attempts = 2;
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
    peer_close(&t->peer);
    free(t);
    return 0;
}

/* ------------------------------------------------------------ a scoring peer */

enum { PAIRS = 5 };

/* The peer's rule: a target of length L scores L tokens of -0.25 * (k + 1)
 * for k = 0..L-1; a target "refuse" gets UNKNOWN_TASK. */
static void answer_scoring(peer_t *peer, const Xlm__Request *rq)
{
    const Xlm__TextRow *row = rq->text->rows[0];
    const char *tgt = row->segments[row->n_segments - 1]->text;
    if (strcmp(tgt, "refuse") == 0) {
        peer_send_status(peer, rq->id, PROTO_STATUS_UNKNOWN_TASK, "no such head here");
        return;
    }
    int64_t n = (int64_t)strlen(tgt);
    float values[64];
    char words[64][2];
    char *texts[64];
    for (int64_t k = 0; k < n; k++) {
        values[k] = -0.25f * (float)(k + 1);
        words[k][0] = tgt[k];
        words[k][1] = '\0';
        texts[k] = words[k];
    }
    int64_t shape[2] = {1, n}, row_lengths[1] = {n};
    Xlm__Tensor scores = XLM__TENSOR__INIT, tokens = XLM__TENSOR__INIT;
    scores.name = "token_logprobs";
    scores.n_shape = 2;
    scores.shape = shape;
    scores.n_f32 = (size_t)n;
    scores.f32 = values;
    scores.n_row_lengths = 1;
    scores.row_lengths = row_lengths;
    tokens = scores;
    tokens.name = "tokens";
    tokens.n_f32 = 0;
    tokens.f32 = NULL;
    tokens.n_text = (size_t)n;
    tokens.text = texts;
    Xlm__Tensor *outputs[2] = {&scores, &tokens};
    Xlm__Response response = XLM__RESPONSE__INIT;
    response.id = rq->id;
    response.n_outputs = rq->return_tokens ? 2 : 1;
    response.outputs = outputs;
    peer_send_response(peer, &response);
}

/* Takes PAIRS requests, then answers them out of order (2, 0, 4, 1, 3):
 * the call must put the results back in the pairs' order. */
static void *scoring_peer(void *arg)
{
    peer_t *peer = arg;
    Xlm__ClientMessage *held[PAIRS] = {0};
    int n = 0;
    while (n < PAIRS) {
        Xlm__ClientMessage *msg = peer_recv(peer, 5000, NULL, NULL);
        if (!msg)
            break;
        if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST)
            held[n++] = msg;
        else
            proto_client_free(&msg);
    }
    static const int order[PAIRS] = {2, 0, 4, 1, 3};
    for (int k = 0; k < PAIRS; k++) {
        int i = order[k];
        if (i < n) {
            answer_scoring(peer, held[i]->request);
            proto_client_free(&held[i]);
        }
    }
    return NULL;
}

static const xlm_pair_t pairs[PAIRS] = {
    {"en", "a cat", "fr", "chat"},
    {"en", "dog", "fr", "refuse"},
    {"en", "b", "fr", "xy"},
    {"en", "c", "fr", "z"},
    {"en", "d", "fr", "abcdef"},
};

static void test_score_pairs_in_order(void **state)
{
    api_t *t = *state;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, scoring_peer, &t->peer), 0);
    xlm_score_options_t options;
    xlm_score_options_init(&options);
    options.token_scores = true;
    xlm_pair_score_t scores[PAIRS];
    xlm_status_t status = xlm_client_score_pairs(t->client, pairs, PAIRS, &options, scores);
    pthread_join(thread, NULL);
    assert_int_equal(status, XLM_OK);
    for (int i = 0; i < PAIRS; i++) {
        if (i == 1) {
            assert_int_equal(scores[i].code, XLM_CODE_UNKNOWN_TASK);
            assert_string_equal(scores[i].message, "no such head here");
            continue;
        }
        int64_t n = (int64_t)strlen(pairs[i].tgt);
        assert_int_equal(scores[i].code, XLM_CODE_OK);
        assert_int_equal(scores[i].n_target_tokens, n);
        double want = -0.25 * (double)(n * (n + 1) / 2);
        assert_true(fabs(scores[i].score - want) < 1e-9);
        assert_true(fabs(scores[i].mean - want / (double)n) < 1e-9);
        assert_non_null(scores[i].token_scores);
        assert_true(fabs(scores[i].token_scores[n - 1] + 0.25 * (double)n) < 1e-9);
        assert_non_null(scores[i].tokens);
        char first[2] = {pairs[i].tgt[0], '\0'};
        assert_string_equal(scores[i].tokens[0], first);
    }
    assert_int_equal(xlm_client_outstanding(t->client), 0);
    xlm_pair_scores_clear(scores, PAIRS);
    assert_null(scores[0].tokens);
}

static void test_score_pairs_needs_an_empty_window(void **state)
{
    api_t *t = *state;
    static const int64_t ids[] = {5, 6}, lengths[] = {2};
    xlm_tokens_t tokens = {.rows = 1, .lengths = lengths, .input_ids = ids};
    xlm_request_t rq;
    xlm_request_init(&rq);
    rq.task = XLM_TASK_SEQ_CLS;
    rq.tokens = &tokens;
    assert_int_equal(xlm_client_submit(t->client, &rq, NULL), XLM_OK);
    xlm_score_options_t options;
    xlm_score_options_init(&options);
    xlm_pair_score_t scores[1];
    assert_int_equal(xlm_client_score_pairs(t->client, pairs, 1, &options, scores), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "1 requests are outstanding"));
    options.mode = (xlm_score_mode_t)7;
    assert_int_equal(xlm_client_score_pairs(t->client, pairs, 1, &options, scores), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "mode 7"));
}

/* ------------------------------------------------------------ versioned structs */

/* A caller built against the header before the CURVE fields: its struct
 * ends at max_message_bytes, and what lies after it in memory is not its. */
static void test_older_config_struct(void **state)
{
    api_t *t = *state;
    unsigned char buffer[sizeof(xlm_client_config_t) + 64];
    memset(buffer, 0xab, sizeof buffer);
    size_t old_size = offsetof(xlm_client_config_t, curve_secret);
    xlm_client_config_defaults_sized((xlm_client_config_t *)buffer, old_size);
    assert_int_equal(buffer[old_size], 0xab); /* init wrote nothing past the old struct */
    xlm_client_config_t *old = (xlm_client_config_t *)buffer;
    assert_int_equal(old->struct_size, old_size);
    assert_int_equal(old->window, 64);
    old->endpoint = t->peer.endpoint;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(old, &err);
    assert_non_null(client); /* the garbage where curve_* would be is not read */
    xlm_client_destroy(&client);

    old->struct_size = 0;
    assert_null(xlm_client_new(old, &err));
    assert_non_null(strstr(err.message, "struct_size = 0"));
}

static void test_newer_struct_fields(void **state)
{
    api_t *t = *state;
    struct {
        xlm_request_t known;
        int64_t newer_field;
    } newer;
    memset(&newer, 0, sizeof newer);
    xlm_request_init(&newer.known);
    static const int64_t ids[] = {5, 6}, lengths[] = {2};
    xlm_tokens_t tokens = {.rows = 1, .lengths = lengths, .input_ids = ids};
    newer.known.task = XLM_TASK_SEQ_CLS;
    newer.known.tokens = &tokens;
    newer.known.struct_size = sizeof newer;
    /* Unknown fields left zero: accepted. */
    assert_int_equal(xlm_client_submit(t->client, &newer.known, NULL), XLM_OK);
    newer.newer_field = 3;
    assert_int_equal(xlm_client_submit(t->client, &newer.known, NULL), XLM_ERR_ARG);
    assert_non_null(strstr(xlm_client_error(t->client), "does not know"));
}

/* ------------------------------------------------------------ event loop */

static void test_event_loop(void **state)
{
    api_t *t = *state;
    int fd = -1;
    assert_int_equal(xlm_client_fd(t->client, &fd), XLM_OK);
    assert_true(fd >= 0);
    static const int64_t ids[] = {5, 6, 7}, lengths[] = {3};
    xlm_tokens_t tokens = {.rows = 1, .lengths = lengths, .input_ids = ids};
    xlm_request_t rq;
    xlm_request_init(&rq);
    rq.task = XLM_TASK_SEQ_CLS;
    rq.tokens = &tokens;
    char id[XLM_ID_SIZE];
    assert_int_equal(xlm_client_submit(t->client, &rq, id), XLM_OK);
    size_t finished = 99;
    int timeout_ms = -2;
    assert_int_equal(xlm_client_process(t->client, &finished, &timeout_ms), XLM_OK);
    assert_int_equal(finished, 0);
    /* The retry timer of the attempt is due within attempt_timeout_ms. */
    assert_true(timeout_ms > 0 && timeout_ms <= t->config.attempt_timeout_ms);
    Xlm__ClientMessage *msg = peer_recv(&t->peer, 2000, NULL, NULL);
    assert_non_null(msg);
    peer_send_echo(&t->peer, msg->request);
    proto_client_free(&msg);
    int64_t until = fx_now_ms() + 3000;
    int wakeups = 0;
    while (finished == 0 && fx_now_ms() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, timeout_ms < 0 || timeout_ms > 500 ? 500 : timeout_ms);
        wakeups += (p.revents & POLLIN) != 0;
        assert_int_equal(xlm_client_process(t->client, &finished, &timeout_ms), XLM_OK);
    }
    assert_int_equal(finished, 1);
    assert_true(wakeups >= 1); /* the descriptor, not the timeout, woke the loop */
    assert_int_equal(timeout_ms, -1); /* nothing pending: no timer */
    xlm_result_t *result = NULL;
    assert_int_equal(xlm_client_collect(t->client, NULL, 0, &result), XLM_OK);
    assert_string_equal(xlm_result_id(result), id);
    assert_int_equal(xlm_result_code(result), XLM_CODE_OK);
    xlm_result_destroy(&result);
}

/* ------------------------------------------------------------ CURVE key files */

static void test_curve_key_files(void **state)
{
    api_t *t = *state;
    char server_public[41], server_secret[41], own_public[41], own_secret[41];
    assert_int_equal(zmq_curve_keypair(server_public, server_secret), 0);
    assert_int_equal(zmq_curve_keypair(own_public, own_secret), 0);
    char server_path[512], secret_path[512], bad_path[512], cert[256];
    fx_tmp_path(server_path, sizeof server_path, "broker.key");
    fx_tmp_path(secret_path, sizeof secret_path, "client.key_secret");
    fx_tmp_path(bad_path, sizeof bad_path, "bad.key");
    snprintf(cert, sizeof cert, "curve\n    public-key = \"%s\"\n", server_public);
    assert_true(fx_write_file(server_path, cert));
    snprintf(cert, sizeof cert, "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
             own_public, own_secret);
    assert_true(fx_write_file(secret_path, cert));
    assert_true(fx_write_file(bad_path, "not a key\n"));

    xlm_client_config_t config = t->config;
    xlm_error_t err;
    config.curve_server = server_path;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, "CURVE needs both key files"));
    config.curve_secret = bad_path;
    assert_null(xlm_client_new(&config, &err));
    assert_non_null(strstr(err.message, bad_path));
    config.curve_secret = secret_path;
    xlm_client_t *client = xlm_client_new(&config, &err);
    assert_non_null(client);
    xlm_client_destroy(&client);
    remove(server_path);
    remove(secret_path);
    remove(bad_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_score_pairs_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_score_pairs_needs_an_empty_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_older_config_struct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_struct_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curve_key_files, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
