/* test_cli.c: xlm-client against a raw ROUTER peer that plays the broker:
 * the requests each case line becomes, results written in input order
 * although answered out of order, xlm-infer's output format byte for byte
 * (f32, i64, ragged, 3-D), error lines for lines that do not parse or are
 * refused (the other lines go on), the command line itself, and stats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "fixture.h"
#include "cases.h"
#include "errors.h"

#define XLM_CLIENT XLM_BIN_DIR "/xlm-client"

enum {
    ID_FORMAT = 900,     /* first input id: answer with the format tensors */
    ID_REFUSE = 901,     /* answer BAD_REQUEST */
    ID_OVERLOADED = 902  /* answer OVERLOADED, always */
};

typedef struct {
    peer_t peer;
    char in[256], out[256], err[256];
    int requests;        /* requests received */
    int choices_seen;    /* n_choices of the multiple_choice request */
    int64_t gen_steps, gen_fill;
    int mask_zeros;      /* attention_mask zeros of the clm_score request */
    Xlm__Task task_of[1024]; /* by first input id */
} cli_t;

static int setup(void **state)
{
    cli_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    assert_true(peer_open(&t->peer));
    fx_tmp_path(t->in, sizeof t->in, "in.jsonl");
    fx_tmp_path(t->out, sizeof t->out, "out.jsonl");
    fx_tmp_path(t->err, sizeof t->err, "err.txt");
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    cli_t *t = *state;
    peer_close(&t->peer);
    remove(t->in);
    remove(t->out);
    remove(t->err);
    free(t);
    return 0;
}

/* ------------------------------------------------------------ the peer's answers */

static const float fmt_dense[8] = {0.5f, -1.25f, 3.0f, 1e-8f, 123456.789f, -0.0f, 2.5e10f, 7.0f};
static const int64_t fmt_dense_shape[3] = {2, 2, 2};
static const float fmt_ragged[3] = {-0.1f, -2.75f, 0.333333343f};
static const int64_t fmt_ragged_shape[2] = {3, 2}, fmt_ragged_rows[3] = {1, 0, 2};
static const int64_t fmt_ints[3] = {-7, 0, 9007199254740993};
static const int64_t fmt_ints_shape[1] = {3};

static void send_format(peer_t *peer, const char *id)
{
    Xlm__Tensor dense = XLM__TENSOR__INIT, ragged = XLM__TENSOR__INIT, ints = XLM__TENSOR__INIT;
    Xlm__Tensor *outputs[3] = {&dense, &ragged, &ints};
    dense.name = "start_top_log_probs";
    dense.n_shape = 3;
    dense.shape = (int64_t *)fmt_dense_shape;
    dense.n_f32 = 8;
    dense.f32 = (float *)fmt_dense;
    ragged.name = "token_logprobs";
    ragged.n_shape = 2;
    ragged.shape = (int64_t *)fmt_ragged_shape;
    ragged.n_f32 = 3;
    ragged.f32 = (float *)fmt_ragged;
    ragged.n_row_lengths = 3;
    ragged.row_lengths = (int64_t *)fmt_ragged_rows;
    ints.name = "ids";
    ints.n_shape = 1;
    ints.shape = (int64_t *)fmt_ints_shape;
    ints.n_i64 = 3;
    ints.i64 = (int64_t *)fmt_ints;
    Xlm__Response response = XLM__RESPONSE__INIT;
    response.id = (char *)id;
    response.n_outputs = 3;
    response.outputs = outputs;
    peer_send_response(peer, &response);
}

/* The same outputs as the engine would hold them, printed by shard. */
static char *format_expected(const char *name)
{
    shard_outputs_t outputs;
    shard_error_t err;
    shard_outputs_init(&outputs);
    shard_tensor_t *dense = shard_outputs_add(&outputs, "start_top_log_probs", SHARD_F32, 3,
                                              fmt_dense_shape, &err);
    shard_tensor_t *ragged = shard_outputs_add(&outputs, "token_logprobs", SHARD_F32, 2,
                                               fmt_ragged_shape, &err);
    shard_tensor_t *ints = shard_outputs_add(&outputs, "ids", SHARD_I64, 1, fmt_ints_shape, &err);
    assert_non_null(ints);
    memcpy(dense->f32, fmt_dense, sizeof fmt_dense);
    memcpy(ragged->f32, fmt_ragged, sizeof fmt_ragged);
    ragged->row_lengths = malloc(sizeof fmt_ragged_rows);
    memcpy(ragged->row_lengths, fmt_ragged_rows, sizeof fmt_ragged_rows);
    memcpy(ints->i64, fmt_ints, sizeof fmt_ints);
    char *line = case_result_json(name, &outputs);
    shard_outputs_clear(&outputs);
    return line;
}

static void answer(cli_t *t, const Xlm__Request *rq)
{
    const Xlm__TokenInput *in = rq->tokens;
    int64_t first = in && in->n_input_ids ? in->input_ids[0] : -1;
    if (first >= 0 && first < 1024)
        t->task_of[first] = rq->task;
    if (rq->task == XLM__TASK__TASK_MULTIPLE_CHOICE)
        t->choices_seen = (int)rq->n_choices;
    if (rq->task == XLM__TASK__TASK_GENERATE && rq->generate) {
        t->gen_steps = rq->generate->steps;
        t->gen_fill = rq->generate->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_ID
                          ? rq->generate->lang_fill_id : -1;
    }
    if (rq->task == XLM__TASK__TASK_CLM_SCORE)
        for (size_t i = 0; in && i < in->n_attention_mask; i++)
            t->mask_zeros += in->attention_mask[i] == 0;
    if (first == ID_FORMAT)
        send_format(&t->peer, rq->id);
    else if (first == ID_REFUSE)
        peer_send_status(&t->peer, rq->id, PROTO_STATUS_BAD_REQUEST, "nope from peer");
    else if (first == ID_OVERLOADED)
        peer_send_status(&t->peer, rq->id, PROTO_STATUS_OVERLOADED, "peer is busy");
    else
        peer_send_echo(&t->peer, rq);
}

/* One model, "fake", with a live pipeline that serves every task but qa:
 * what xlm-client infer checks before its first line. */
static void send_stats(peer_t *peer)
{
    Xlm__Task tasks[XLM__TASK__TASK_MLM_PLL + 1];
    size_t n = 0;
    for (int task = 0; task <= XLM__TASK__TASK_MLM_PLL; task++)
        if (task != XLM__TASK__TASK_QA)
            tasks[n++] = (Xlm__Task)task;
    Xlm__ModelStats model = XLM__MODEL_STATS__INIT;
    Xlm__ModelStats *models[1] = {&model};
    model.name = "fake";
    model.pipelines_alive = 1;
    model.n_tasks = n;
    model.tasks = tasks;
    Xlm__Stats stats = XLM__STATS__INIT;
    Xlm__ServiceMessage sm = XLM__SERVICE_MESSAGE__INIT;
    stats.uptime_ms = 4242;
    stats.n_models = 1;
    stats.models = models;
    sm.body_case = XLM__SERVICE_MESSAGE__BODY_STATS;
    sm.stats = &stats;
    peer_send_service(peer, &sm);
}

/* Serves requests until the child exits: answers come in batches, in the
 * reverse order of arrival, so that xlm-client has to put them back in
 * order. Returns the child's exit code. */
static int serve(cli_t *t, pid_t pid, int timeout_ms)
{
    enum { BATCH = 3 };
    Xlm__ClientMessage *pending[BATCH];
    int n = 0, code = -1;
    int64_t until = fx_now_ms() + timeout_ms;
    while (!fx_exited(pid, &code)) {
        if (fx_now_ms() > until) {
            fx_wait(pid, 0);
            fail_msg("xlm-client did not finish within %d ms", timeout_ms);
        }
        Xlm__ClientMessage *msg = peer_recv(&t->peer, 20, NULL, NULL);
        bool quiet = !msg;
        if (msg && msg->body_case == XLM__CLIENT_MESSAGE__BODY_STATS)
            send_stats(&t->peer);
        if (msg && msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST) {
            t->requests++;
            pending[n++] = msg;
            msg = NULL;
        }
        proto_client_free(&msg);
        if (n == BATCH || (n > 0 && quiet)) {
            while (n > 0) {
                answer(t, pending[n - 1]->request);
                proto_client_free(&pending[--n]);
            }
        }
    }
    while (n > 0)
        proto_client_free(&pending[--n]);
    return code;
}

/* Runs xlm-client with args (NULL-terminated) and input text; its exit code. */
static int run_cli(cli_t *t, const char *input, const char *const *args, bool with_peer)
{
    char *argv[32] = {XLM_CLIENT};
    int argc = 1;
    for (; args[argc - 1] && argc < 31; argc++)
        argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;
    assert_true(fx_write_file(t->in, input ? input : ""));
    pid_t pid = fx_spawn(argv, t->in, t->out, t->err);
    assert_true(pid > 0);
    return with_peer ? serve(t, pid, 30000) : fx_wait(pid, 30000);
}

/* Splits text into its lines (modified in place). */
static int split_lines(char *text, char **lines, int max)
{
    int n = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && n < max;
         line = strtok_r(NULL, "\n", &save))
        lines[n++] = line;
    return n;
}

static void expect_line(const char *got, const char *want)
{
    if (strcmp(got, want) != 0)
        fail_msg("line differs:\n  got:  %s\n  want: %s", got, want);
}

/* The error line xlm-infer writes for a line that does not parse. */
static char *parse_error_line(const char *line)
{
    case_t c;
    shard_error_t err = {0};
    assert_int_not_equal(case_parse(line, strlen(line), &c, &err), SHARD_OK);
    char *json = case_error_json(c.name, tools_code_of(err.code), err.message);
    case_clear(&c);
    return json;
}

/* ------------------------------------------------------------ infer */

static void test_infer_lines(void **state)
{
    cli_t *t = *state;
    enum { N_PLAIN = 30 };
    char input[8192];
    const char *not_json = "this is not json";
    const char *no_ids = "{\"name\":\"no_ids\",\"head\":\"lm\",\"inputs\":{}}";
    int at = snprintf(input, sizeof input,
        "{\"name\":\"a\",\"head\":\"seq_cls\",\"inputs\":{\"input_ids\":[[1,2,3],[4,5,6]]}}\n"
        "%s\n"
        "\n"
        "{\"name\":\"nohead\",\"inputs\":{\"input_ids\":[[1]]}}\n"
        "{\"name\":\"refused\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[901]]}}\n"
        "{\"name\":\"mc\",\"head\":\"multiple_choice\",\"inputs\":{\"input_ids\":[[[1,2],[3,4]]]}}\n"
        "%s\n"
        "{\"name\":\"gen\",\"head\":\"lm\",\"kind\":\"greedy\",\"inputs\":{\"input_ids\":[[1,2]],"
        "\"steps\":2,\"langs_fill\":1}}\n"
        "{\"name\":\"score\",\"head\":\"lm\",\"kind\":\"clm_score\",\"inputs\":{\"input_ids\":[[1,2,3]],"
        "\"attention_mask\":[[1,1,0]]}}\n"
        "{\"name\":\"busy\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[902]]}}\n"
        "{\"name\":\"fmt\",\"head\":\"qa\",\"inputs\":{\"input_ids\":[[900]]}}\n"
        "{\"name\":\"empty_row\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[]]}}\n",
        not_json, no_ids);
    for (int i = 0; i < N_PLAIN; i++)
        at += snprintf(input + at, sizeof input - (size_t)at,
                       "{\"name\":\"n%d\",\"head\":\"base\",\"inputs\":{\"input_ids\":[[%d,1]]}}\n",
                       i, i);
    const char *args[] = {"infer", "--endpoint", t->peer.endpoint, "--window", "4",
                          "--attempts", "2", "--attempt-timeout-ms", "3000", NULL};
    /* Some lines failed: exit status 1. */
    assert_int_equal(run_cli(t, input, args, true), 1);

    char *out = fx_read_file(t->out);
    assert_non_null(out);
    char *lines[64];
    int n = split_lines(out, lines, 64);
    assert_int_equal(n, 11 + N_PLAIN);
    expect_line(lines[0], "{\"name\":\"a\",\"outputs\":{\"sum_ids\":[6,15],\"echo\":[[1,2,3],[4,5,6]]}}");
    char *want = parse_error_line(not_json);
    expect_line(lines[1], want);
    free(want);
    expect_line(lines[2], "{\"name\":\"nohead\",\"error\":{\"code\":\"bad_request\",\"message\":"
                          "\"the line names no head and --head is not given (the service has no "
                          "default head)\"}}");
    expect_line(lines[3], "{\"name\":\"refused\",\"error\":{\"code\":\"bad_request\",\"message\":"
                          "\"nope from peer\"}}");
    expect_line(lines[4], "{\"name\":\"mc\",\"outputs\":{\"sum_ids\":[3,7],\"echo\":[[1,2],[3,4]]}}");
    want = parse_error_line(no_ids);
    expect_line(lines[5], want);
    free(want);
    expect_line(lines[6], "{\"name\":\"gen\",\"outputs\":{\"sum_ids\":[3],\"echo\":[[1,2]]}}");
    expect_line(lines[7], "{\"name\":\"score\",\"outputs\":{\"sum_ids\":[6],\"echo\":[[1,2,3]]}}");
    expect_line(lines[8], "{\"name\":\"busy\",\"error\":{\"code\":\"overloaded\",\"message\":"
                          "\"peer is busy\"}}");
    want = format_expected("fmt");
    expect_line(lines[9], want);
    free(want);
    if (!strstr(lines[10], "{\"name\":\"empty_row\",\"error\":{\"code\":\"bad_request\",") ||
        !strstr(lines[10], "row 0 has length 0"))
        fail_msg("unexpected line: %s", lines[10]);
    for (int i = 0; i < N_PLAIN; i++) {
        char line[128];
        snprintf(line, sizeof line,
                 "{\"name\":\"n%d\",\"outputs\":{\"sum_ids\":[%d],\"echo\":[[%d,1]]}}", i, i + 1, i);
        expect_line(lines[11 + i], line);
    }
    free(out);
    /* What the lines became on the wire. */
    assert_int_equal(t->choices_seen, 2);
    assert_int_equal(t->gen_steps, 2);
    assert_int_equal(t->gen_fill, 1);
    assert_int_equal(t->mask_zeros, 1);
    /* 7 lines sent, "busy" twice; the 4 other lines never left. */
    assert_int_equal(t->requests, 8 + N_PLAIN);
}

static void test_infer_default_head(void **state)
{
    cli_t *t = *state;
    const char *args[] = {"infer", "--endpoint", t->peer.endpoint, "--head", "token_cls", NULL};
    assert_int_equal(run_cli(t, "{\"name\":\"x\",\"inputs\":{\"input_ids\":[[7]]}}\n"
                                "{\"name\":\"y\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[8]]}}\n",
                             args, true), 0);
    char *out = fx_read_file(t->out);
    assert_string_equal(out, "{\"name\":\"x\",\"outputs\":{\"sum_ids\":[7],\"echo\":[[7]]}}\n"
                             "{\"name\":\"y\",\"outputs\":{\"sum_ids\":[8],\"echo\":[[8]]}}\n");
    free(out);
    assert_int_equal(t->task_of[7], XLM__TASK__TASK_TOKEN_CLS);
    assert_int_equal(t->task_of[8], XLM__TASK__TASK_LM);
    assert_int_equal(t->requests, 2);
}

/* --head names a task the model does not serve: the job is refused before
 * its first line (status 2), not line by line. */
static void test_infer_task_not_served(void **state)
{
    cli_t *t = *state;
    const char *args[] = {"infer", "--endpoint", t->peer.endpoint, "--head", "qa", NULL};
    assert_int_equal(run_cli(t, "{\"name\":\"x\",\"inputs\":{\"input_ids\":[[7]]}}\n", args, true),
                     2);
    char *err = fx_read_file(t->err), *out = fx_read_file(t->out);
    if (!strstr(err, "xlm-client: task qa is not served by model 'fake' (it serves base, lm, "))
        fail_msg("stderr: %s", err);
    assert_string_equal(out, "");
    assert_int_equal(t->requests, 0);
    free(err);
    free(out);
}

/* Nobody at the endpoint: the job is refused at once, before any line. */
static void test_infer_unreachable(void **state)
{
    cli_t *t = *state;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "%s", t->peer.endpoint);
    peer_close(&t->peer); /* the port is free again */
    const char *args[] = {"infer", "--endpoint", endpoint, "--connect-timeout-ms", "1000", NULL};
    int64_t start = fx_now_ms();
    assert_int_equal(run_cli(t, "{\"name\":\"u1\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[1]]}}\n"
                                "{\"name\":\"u2\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[2]]}}\n",
                             args, false), 2);
    assert_true(fx_now_ms() - start < 5000);
    char *out = fx_read_file(t->out), *err = fx_read_file(t->err);
    assert_string_equal(out, "");
    char want[160];
    snprintf(want, sizeof want, "xlm-client: cannot reach the broker at %s (no reply to a stats "
             "request within 1 s)\n", endpoint);
    assert_string_equal(err, want);
    free(out);
    free(err);
    assert_true(peer_open(&t->peer)); /* for teardown */
}

/* ------------------------------------------------------------ command line, stats */

static void expect_run(cli_t *t, const char *const *args, int code, const char *stream,
                       const char *words)
{
    assert_int_equal(run_cli(t, NULL, args, false), code);
    char *text = fx_read_file(strcmp(stream, "stdout") == 0 ? t->out : t->err);
    assert_non_null(text);
    if (!strstr(text, words))
        fail_msg("%s of xlm-client %s does not say '%s':\n%s", stream, args[0] ? args[0] : "",
                 words, text);
    free(text);
}

static void test_command_line(void **state)
{
    cli_t *t = *state;
    expect_run(t, (const char *[]){"infer", "--help", NULL}, 0, "stdout", "usage: xlm-client infer");
    expect_run(t, (const char *[]){"stats", "--help", NULL}, 0, "stdout", "usage: xlm-client stats");
    expect_run(t, (const char *[]){"--help", NULL}, 0, "stdout", "infer");
    expect_run(t, (const char *[]){NULL}, 2, "stderr", "usage");
    expect_run(t, (const char *[]){"bogus", NULL}, 2, "stderr", "unknown command 'bogus'");
    expect_run(t, (const char *[]){"infer", NULL}, 2, "stderr", "--endpoint E is required");
    expect_run(t, (const char *[]){"stats", NULL}, 2, "stderr", "--endpoint E is required");
    expect_run(t, (const char *[]){"infer", "--endpoint", "x", "--head", "nose", NULL}, 2,
               "stderr", "--head nose");
    expect_run(t, (const char *[]){"infer", "--endpoint", "x", "--window", "0", NULL}, 2,
               "stderr", "--window 0");
    expect_run(t, (const char *[]){"infer", "--endpoint", "nonsense", NULL}, 2, "stderr",
               "cannot connect to 'nonsense'");
    expect_run(t, (const char *[]){"stats", "--endpoint", "tcp://", NULL}, 1, "stderr",
               "cannot connect to 'tcp://'");
}

static void test_stats(void **state)
{
    cli_t *t = *state;
    const char *args[] = {"stats", "--endpoint", t->peer.endpoint, NULL};
    assert_int_equal(run_cli(t, NULL, args, true), 0);
    char *out = fx_read_file(t->out);
    cJSON *root = cJSON_Parse(out);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "uptime_ms")->valuedouble, 4242);
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(root, "models")));
    cJSON_Delete(root);
    free(out);

    /* Nobody answers: a clear error after the timeout. */
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "%s", t->peer.endpoint);
    peer_close(&t->peer);
    expect_run(t, (const char *[]){"stats", "--endpoint", endpoint, "--timeout-ms", "300", NULL},
               1, "stderr", "no stats from");
    assert_true(peer_open(&t->peer));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_infer_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_infer_default_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_infer_task_not_served, setup, teardown),
        cmocka_unit_test_setup_teardown(test_infer_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
