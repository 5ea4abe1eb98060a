/* xlm-client: the service's command-line client.
 *
 *   xlm-client infer --endpoint E [--model NAME] [--head HEAD] < cases.jsonl > results.jsonl
 *   xlm-client stats --endpoint E
 *
 * infer reads and writes xlm-infer's formats (cases.h): each
 * case becomes one request, several are in flight at once, and the result
 * lines come out in input order.
 */
#include "cases.h"
#include "cli.h"
#include "errors.h"
#include "service_check.h"
#include "xlmclient.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage_main(FILE *out)
{
    fputs("usage: xlm-client infer --endpoint E [--model NAME] [--head HEAD] [options]\n"
          "                        < cases.jsonl > results.jsonl\n"
          "       xlm-client stats --endpoint E [--timeout-ms MS]\n"
          "       xlm-client COMMAND --help\n"
          "\n"
          "  infer   run cases (xlm-infer's input format) through the service\n"
          "  stats   print the broker's statistics as JSON\n",
          out);
}

static void usage_infer(FILE *out)
{
    fputs("usage: xlm-client infer --endpoint E [--model NAME] [--head HEAD] [options]\n"
          "                        < cases.jsonl > results.jsonl\n"
          "\n"
          "Runs one JSON object per input line through the service at E, with xlm-infer's\n"
          "formats: {\"name\": ..., \"head\": ..., \"inputs\": {\"input_ids\": [[...]], ...},\n"
          "[\"kind\": \"clm_score\" | \"greedy\"]}. Writes one line per input line, in input order:\n"
          "{\"name\": ..., \"outputs\": {...}} exactly as xlm-infer writes it, or\n"
          "{\"name\": ..., \"error\": {\"code\": ..., \"message\": ...}}: code is the service's\n"
          "status name (bad_request, too_large, unknown_task, unknown_model,\n"
          "deadline_exceeded, unavailable, ...), the same as xlm-infer's for the same line.\n"
          "The other lines still run. Blank lines are skipped.\n"
          "\n"
          "Before the first line, one stats request checks the service: reachable, the model\n"
          "served, and --head's task served by it; otherwise the job does not start.\n"
          "\n"
          "Each case is one request: rows of input_ids padded to the case's length; the\n"
          "line's head (or --head) is the task; \"kind\": \"clm_score\" is task clm_score,\n"
          "\"kind\": \"greedy\" task generate with inputs.steps and inputs.langs_fill. The\n"
          "protocol has no default head: a head case needs \"head\" or --head.\n"
          "\n"
          "  --endpoint E           the broker's frontend, e.g. tcp://127.0.0.1:5555 (required)\n"
          "  --curve-secret FILE    CURVE: this client's key pair (NAME.key of xlm-keygen)\n"
          "  --curve-server FILE    CURVE: the broker's public key (NAME.pub)\n"
          "  --model NAME           model to use (default: the service's only one)\n"
          "  --head HEAD            head for lines that name none: base, lm, seq_cls,\n"
          "                         multiple_choice, token_cls, qa_simple, qa\n"
          "  --window N             requests in flight (default 16)\n"
          "  --attempt-timeout-ms MS  wait for a reply before sending again (default 10000)\n"
          "  --attempts N           sends of one request (default 5)\n"
          "  --deadline-ms MS       deadline of each request (default: the broker's)\n"
          "  --connect-timeout-ms MS  the stats request that checks the service (default 5000)\n"
          "  --max-errors N         stop once more than N lines failed (default: no limit)\n"
          "  --version              the program's and the wire protocol's versions\n"
          "  --help                 this text\n"
          "\n"
          "Exit status: 0 every line ran; 1 some lines hold an error (counted by code on\n"
          "stderr); 2 could not run (usage, the service, the model, --head's task): nothing\n"
          "written; 3 stopped early (--max-errors, the service lost, output, this client's\n"
          "CURVE key revoked: permission_denied).\n",
          out);
}

static void usage_stats(FILE *out)
{
    fputs("usage: xlm-client stats --endpoint E [--timeout-ms MS]\n"
          "\n"
          "Asks the broker at E for its statistics and prints them as one JSON object\n"
          "(xlm.proto's Stats field names) on stdout.\n"
          "\n"
          "  --endpoint E       the broker's frontend (required)\n"
          "  --timeout-ms MS    give up after MS (default 5000)\n"
          "  --curve-secret FILE  CURVE: this client's key pair (NAME.key of xlm-keygen)\n"
          "  --curve-server FILE  CURVE: the broker's public key (NAME.pub)\n"
          "  --help             this text\n",
          out);
}

static bool parse_int(const char *option, const char *text, long min, long max, long *out)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < min || value > max) {
        fprintf(stderr, "xlm-client: %s %s: expected an integer %ld..%ld\n", option, text, min,
                max);
        return false;
    }
    *out = value;
    return true;
}

/* ------------------------------------------------------------ output lines */

/* A library's message on stderr, as a user reads it (errors.h). */
static void say_error(const char *message)
{
    char said[1024];
    tools_user_message(message, said, sizeof said);
    fprintf(stderr, "xlm-client: %s\n", said);
}

/* The result's tensors as the engine's outputs, for case_result_json. */
static bool result_outputs(const xlm_result_t *result, shard_outputs_t *outputs, char *why,
                           size_t why_size)
{
    shard_error_t err = {0};
    if (xlm_result_count(result) > SHARD_MAX_OUTPUTS) {
        snprintf(why, why_size, "%zu outputs, xlm-client prints at most %d",
                 xlm_result_count(result), SHARD_MAX_OUTPUTS);
        return false;
    }
    for (size_t i = 0; i < xlm_result_count(result); i++) {
        const xlm_tensor_t *t = xlm_result_tensor(result, i);
        if (t->ndim < 1 || t->ndim > SHARD_MAX_DIMS || strlen(t->name) >= SHARD_OUTPUT_NAME_MAX) {
            snprintf(why, why_size, "output '%s' has %zu dims, xlm-client prints 1 to %d (and "
                     "names shorter than %d bytes)", t->name, t->ndim, SHARD_MAX_DIMS,
                     SHARD_OUTPUT_NAME_MAX);
            return false;
        }
        shard_tensor_t *out = shard_outputs_add(outputs, t->name,
                                                t->dtype == XLM_I64 ? SHARD_I64 : SHARD_F32,
                                                (int)t->ndim, t->shape, &err);
        if (out && t->row_lengths &&
            (out->row_lengths = malloc((size_t)(t->shape[0] ? t->shape[0] : 1) *
                                       sizeof *out->row_lengths)))
            memcpy(out->row_lengths, t->row_lengths, (size_t)t->shape[0] * sizeof *out->row_lengths);
        if (!out || (t->row_lengths && !out->row_lengths)) {
            snprintf(why, why_size, "output '%s': %s", t->name,
                     out ? "out of memory" : err.message);
            return false;
        }
        /* numel <= the shape's product, which shard_outputs_add allocated */
        if (t->dtype == XLM_I64 && t->numel)
            memcpy(out->i64, t->i64, t->numel * sizeof *out->i64);
        else if (t->numel)
            memcpy(out->f32, t->f32, t->numel * sizeof *out->f32);
    }
    return true;
}

static char *result_line(const char *name, const xlm_result_t *result, char *code, size_t code_size)
{
    if (xlm_result_code(result) != XLM_CODE_OK) {
        snprintf(code, code_size, "%s", xlm_code_str(xlm_result_code(result)));
        return case_error_json(name, code, xlm_result_message(result));
    }
    shard_outputs_t outputs;
    char why[1024];
    shard_outputs_init(&outputs);
    const bool ok = result_outputs(result, &outputs, why, sizeof why);
    if (!ok)
        snprintf(code, code_size, "internal");
    char *line = ok ? case_result_json(name, &outputs) : case_error_json(name, "internal", why);
    shard_outputs_clear(&outputs);
    return line;
}

/* ------------------------------------------------------------ infer */

typedef struct {
    char *name;              /* owned */
    char *line;              /* the output line when known (owned), else NULL */
    char id[XLM_ID_SIZE];    /* the request's id while in flight */
    char code[32];           /* the line's error code; "" when it ran */
} entry_t;

typedef struct {
    xlm_client_t *client;
    const char *model;
    shard_head_t head;       /* for lines without one; SHARD_HEAD_COUNT_: none */
    uint32_t deadline_ms;
    long long max_errors;    /* -1: no limit */
    tools_tally_t tally;
    entry_t *ring;           /* lines in input order, first .. first + count */
    size_t capacity, first, count;
} infer_t;

/* A case as a request (arrays borrowed from the case, lengths filled).
 * NULL, or why the case cannot be sent. */
static const char *case_request(const infer_t *run, const case_t *c, int64_t *lengths,
                                xlm_tokens_t *tokens, xlm_request_t *rq)
{
    const shard_inputs_t *in = &c->inputs;
    xlm_request_init(rq);
    for (int64_t r = 0; r < in->batch; r++)
        lengths[r] = in->seq;
    tokens->rows = (size_t)in->batch;
    tokens->lengths = lengths;
    tokens->input_ids = in->input_ids;
    tokens->attention_mask = in->attention_mask;
    tokens->langs = in->langs;
    tokens->token_type_ids = in->token_type_ids;
    tokens->position_ids = in->position_ids;
    tokens->p_mask = in->p_mask;
    rq->tokens = tokens;
    rq->model = run->model;
    rq->deadline_ms = run->deadline_ms;
    rq->n_choices = in->n_choices;
    switch (c->kind) {
    case CASE_CLM_SCORE:
        rq->task = XLM_TASK_CLM_SCORE;
        break;
    case CASE_GREEDY:
        rq->task = XLM_TASK_GENERATE;
        rq->steps = c->steps;
        rq->lang_fill_id = c->langs_fill;
        break;
    case CASE_HEAD:
    case CASE_KIND_COUNT_: {
        shard_head_t head = c->head != SHARD_HEAD_COUNT_ ? c->head : run->head;
        if (head == SHARD_HEAD_COUNT_)
            return "the line names no head and --head is not given (the service has no "
                   "default head)";
        /* A head and its task share the name (xlm_task_from_name is the
         * client library's table); no value is assumed. */
        rq->task = xlm_task_from_name(shard_head_name(head));
        if (rq->task == XLM_TASK_COUNT_)
            return "the head has no task of the same name in the protocol";
        break;
    }
    }
    return NULL;
}

/* Parses a line and submits it; entry->line is set when it failed. */
static bool start_line(infer_t *run, entry_t *entry, const char *text, size_t len)
{
    case_t c;
    shard_error_t err = {0};
    bool ok = true;
    if (case_parse(text, len, &c, &err)) {
        snprintf(entry->code, sizeof entry->code, "%s", tools_code_of(err.code));
        entry->line = case_error_json(c.name, entry->code, err.message);
    } else {
        xlm_tokens_t tokens = {0};
        xlm_request_t rq;
        int64_t *lengths = malloc((size_t)(c.inputs.batch ? c.inputs.batch : 1) * sizeof *lengths);
        const char *why = lengths ? case_request(run, &c, lengths, &tokens, &rq) : "out of memory";
        xlm_status_t status = why ? XLM_OK : xlm_client_submit(run->client, &rq, entry->id);
        if (why || status == XLM_ERR_ARG || status == XLM_ERR_NOMEM)
            snprintf(entry->code, sizeof entry->code, "%s",
                     why || status == XLM_ERR_ARG ? "bad_request" : "internal");
        if (why)
            entry->line = case_error_json(c.name, entry->code, why);
        else if (status == XLM_ERR_ARG || status == XLM_ERR_NOMEM)
            entry->line = case_error_json(c.name, entry->code, xlm_client_error(run->client));
        else if (status) {
            say_error(xlm_client_error(run->client));
            ok = false;
        }
        free(lengths);
    }
    entry->name = strdup(c.name ? c.name : "");
    case_clear(&c);
    return ok;
}

/* Prints the first line, waiting for its result if needed. */
static bool finish_first(infer_t *run)
{
    entry_t *entry = &run->ring[run->first];
    if (!entry->line) {
        xlm_result_t *result = NULL;
        if (xlm_client_collect(run->client, entry->id, -1, &result)) {
            say_error(xlm_client_error(run->client));
            return false;
        }
        if (xlm_result_code(result) == XLM_CODE_PERMISSION_DENIED) {
            /* Every line after would get it too: the job stops here. */
            char said[1024];
            tools_user_message(xlm_result_message(result), said, sizeof said);
            fprintf(stderr, "xlm-client: stopping at line '%s': %s (permission_denied)\n",
                    entry->name, said);
            xlm_result_destroy(&result);
            return false;
        }
        entry->line = result_line(entry->name, result, entry->code, sizeof entry->code);
        xlm_result_destroy(&result);
    }
    case_print(stdout, entry->line, entry->name);
    tools_tally_add(&run->tally, entry->code[0] ? entry->code : NULL);
    free(entry->name);
    memset(entry, 0, sizeof *entry);
    run->first = (run->first + 1) % run->capacity;
    run->count--;
    return true;
}


static bool infer_stream(infer_t *run, FILE *in)
{
    char *line = NULL;
    size_t line_capacity = 0;
    bool eof = false, ok = true;
    while (ok) {
        while (ok && !eof && run->count < run->capacity) {
            ssize_t len = getline(&line, &line_capacity, in);
            if (len < 0) {
                eof = true;
            } else if (!case_line_is_blank(line)) {
                entry_t *entry = &run->ring[(run->first + run->count) % run->capacity];
                run->count++;
                ok = start_line(run, entry, line, (size_t)len);
            }
        }
        if (!ok || run->count == 0)
            break;
        ok = finish_first(run);
        if (ok && run->max_errors >= 0 && run->tally.errors > run->max_errors) {
            fprintf(stderr, "xlm-client: stopping: %lld lines failed, more than --max-errors %lld\n",
                    run->tally.errors, run->max_errors);
            ok = false;
        }
    }
    free(line);
    for (; run->count; run->count--, run->first = (run->first + 1) % run->capacity) {
        free(run->ring[run->first].name);
        free(run->ring[run->first].line);
    }
    return ok;
}

/* What would fail every line, refused once before the first (as xlm-score
 * does): no broker, a model it does not serve, --head's task not served by
 * the model. A line's own head stays the line's business. */
static bool check_service(infer_t *run, const char *endpoint, int timeout_ms,
                          tools_served_t *served)
{
    char error[1024];
    if (tools_service_check(run->client, endpoint, run->model, timeout_ms, served, error,
                            sizeof error) != 0 ||
        (run->head != SHARD_HEAD_COUNT_ &&
         tools_service_check_task(served, xlm_task_from_name(shard_head_name(run->head)), error,
                                  sizeof error) != 0)) {
        say_error(error);
        return false;
    }
    return true;
}

static int cmd_infer(int argc, char **argv)
{
    static const struct option options[] = {
        {"endpoint", required_argument, NULL, 'e'}, {"model", required_argument, NULL, 'm'},
        {"head", required_argument, NULL, 'H'}, {"window", required_argument, NULL, 'w'},
        {"attempt-timeout-ms", required_argument, NULL, 't'},
        {"attempts", required_argument, NULL, 'a'}, {"deadline-ms", required_argument, NULL, 'd'},
        {"max-errors", required_argument, NULL, 'X'}, {"version", no_argument, NULL, 'V'},
        {"connect-timeout-ms", required_argument, NULL, 'C'},
        {"curve-secret", required_argument, NULL, 'K'}, {"curve-server", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.window = 16;
    config.attempt_timeout_ms = 10000;
    infer_t run = {.head = SHARD_HEAD_COUNT_, .max_errors = -1};
    long value, connect_timeout_ms = 5000;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":e:m:H:w:t:a:d:h", options, NULL)) != -1) {
        switch (opt) {
        case 'e': config.endpoint = optarg; break;
        case 'K': config.curve_secret = optarg; break;
        case 'P': config.curve_server = optarg; break;
        case 'm': run.model = optarg; break;
        case 'H':
            if ((run.head = shard_head_from_name(optarg)) == SHARD_HEAD_COUNT_) {
                fprintf(stderr, "xlm-client: --head %s: expected base, lm, seq_cls, "
                        "multiple_choice, token_cls, qa_simple or qa\n", optarg);
                return 2;
            }
            break;
        case 'w':
            if (!parse_int("--window", optarg, 1, 4096, &value))
                return 2;
            config.window = (size_t)value;
            break;
        case 't':
            if (!parse_int("--attempt-timeout-ms", optarg, 1, 86400000, &value))
                return 2;
            config.attempt_timeout_ms = (int)value;
            break;
        case 'a':
            if (!parse_int("--attempts", optarg, 1, 1000, &value))
                return 2;
            config.max_attempts = (int)value;
            break;
        case 'd':
            if (!parse_int("--deadline-ms", optarg, 0, UINT32_MAX, &value))
                return 2;
            run.deadline_ms = (uint32_t)value;
            break;
        case 'X':
            if (!parse_int("--max-errors", optarg, 0, LONG_MAX, &value))
                return 2;
            run.max_errors = value;
            break;
        case 'C':
            if (!parse_int("--connect-timeout-ms", optarg, 1, 3600000, &connect_timeout_ms))
                return 2;
            break;
        case 'V': tools_print_version(stdout, "xlm-client"); return 0;
        case 'h': usage_infer(stdout); return 0;
        default: tools_bad_option(stderr, "xlm-client infer", argv, opt); return 2;
        }
    }
    if (!config.endpoint || optind != argc) {
        fprintf(stderr, "xlm-client infer: %s\n",
                config.endpoint ? "unexpected argument" : "--endpoint E is required");
        usage_infer(stderr);
        return 2;
    }
    xlm_error_t err;
    run.client = xlm_client_new(&config, &err);
    run.capacity = config.window;
    run.ring = calloc(run.capacity, sizeof *run.ring);
    tools_served_t served;
    if (!run.client || !run.ring ||
        !check_service(&run, config.endpoint, (int)connect_timeout_ms, &served)) {
        if (!run.client || !run.ring)
            say_error(run.client ? "out of memory" : err.message);
        xlm_client_destroy(&run.client);
        free(run.ring);
        return TOOLS_EXIT_CANNOT_RUN;
    }
    run.model = served.name; /* named from now on, even when it was the only one */
    bool ok = infer_stream(&run, stdin);
    xlm_client_destroy(&run.client);
    free(run.ring);
    tools_tally_print(stderr, "xlm-client", &run.tally);
    if (!ok || fflush(stdout) != 0)
        return TOOLS_EXIT_STOPPED;
    return run.tally.errors ? TOOLS_EXIT_LINE_ERRORS : TOOLS_EXIT_OK;
}

/* ------------------------------------------------------------ stats */

static int cmd_stats(int argc, char **argv)
{
    static const struct option options[] = {
        {"endpoint", required_argument, NULL, 'e'}, {"timeout-ms", required_argument, NULL, 't'},
        {"curve-secret", required_argument, NULL, 'K'}, {"curve-server", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.attempt_timeout_ms = 1000; /* the request is sent again every second */
    long timeout_ms = 5000;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":e:t:h", options, NULL)) != -1) {
        switch (opt) {
        case 'e': config.endpoint = optarg; break;
        case 'K': config.curve_secret = optarg; break;
        case 'P': config.curve_server = optarg; break;
        case 't':
            if (!parse_int("--timeout-ms", optarg, 1, INT_MAX, &timeout_ms))
                return 2;
            break;
        case 'h': usage_stats(stdout); return 0;
        default: tools_bad_option(stderr, "xlm-client stats", argv, opt); return 2;
        }
    }
    if (!config.endpoint || optind != argc) {
        fprintf(stderr, "xlm-client stats: %s\n",
                config.endpoint ? "unexpected argument" : "--endpoint E is required");
        usage_stats(stderr);
        return 2;
    }
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client) {
        say_error(err.message);
        return 1;
    }
    char *json = NULL;
    int rc = 0;
    char *valid = NULL;
    if (xlm_client_stats_json(client, (int)timeout_ms, &json)) {
        say_error(xlm_client_error(client));
        rc = 1;
    } else if (!(valid = tools_json_repair(json))) { /* names may hold any bytes */
        say_error("out of memory");
        rc = 1;
    } else {
        puts(valid);
        rc = fflush(stdout) == 0 ? 0 : 1;
    }
    free(valid);
    free(json);
    xlm_client_destroy(&client);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage_main(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (strcmp(command, "infer") == 0)
        return cmd_infer(argc - 1, argv + 1);
    if (strcmp(command, "stats") == 0)
        return cmd_stats(argc - 1, argv + 1);
    if (strcmp(command, "--version") == 0) {
        tools_print_version(stdout, "xlm-client");
        return 0;
    }
    if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 ||
        strcmp(command, "help") == 0) {
        usage_main(stdout);
        return 0;
    }
    fprintf(stderr, "xlm-client: unknown %s '%s'%s; see --help\n",
            command[0] == '-' ? "option" : "command", command,
            command[0] == '-' ? "" : " (infer or stats)");
    return 2;
}
