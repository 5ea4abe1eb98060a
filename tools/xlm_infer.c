/* xlm-infer: runs the engine offline over JSON lines of cases. */
#include "cases.h"
#include "cli.h"
#include "errors.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: xlm-infer --model DIR [--head HEAD] [--threads N] [--precision P]\n"
          "                 < cases.jsonl > results.jsonl\n"
          "\n"
          "Runs an XLM checkpoint folder (config.json, model.safetensors or pytorch_model.bin)\n"
          "over one JSON object per input line:\n"
          "  {\"name\": ..., \"head\": ..., \"inputs\": {\"input_ids\": [[...]], ...}, [\"kind\": ...]}\n"
          "inputs: input_ids [batch][seq] ([batch][choices][seq] for multiple_choice) and\n"
          "optionally attention_mask, langs, token_type_ids, position_ids, p_mask (qa);\n"
          "\"kind\": \"clm_score\" gives token_logprobs and sum_logprob, \"kind\": \"greedy\"\n"
          "(with inputs.steps and inputs.langs_fill) gives generated_ids and new_ids.\n"
          "\n"
          "Writes one line per input line, in order: {\"name\": ..., \"outputs\": {...}} with\n"
          "HuggingFace's field names and shapes, or {\"name\": ..., \"error\": {\"code\", \"message\"}}\n"
          "for a line that cannot run; the other lines still run. Blank lines are skipped.\n"
          "\n"
          "  --model DIR    checkpoint folder (required)\n"
          "  --head HEAD    head for lines that name none: base, lm, seq_cls, multiple_choice,\n"
          "                 token_cls, qa_simple, qa (default: the checkpoint's architecture)\n"
          "  --threads N    engine threads (default: OpenBLAS's choice; pins nothing)\n"
          "  --precision P  fp32 (default), bf16 or int8: the linear layers' weights and\n"
          "                 products (how they run on this CPU is printed on stderr)\n"
          "  --max-errors N stop once more than N lines failed (default: no limit)\n"
          "  --version      the program's and the wire protocol's versions\n"
          "  --help         this text\n"
          "\n"
          "Exit status: 0 every line ran; 1 some lines hold an error (counted by code on\n"
          "stderr); 2 could not run (usage, the model); 3 stopped early (--max-errors, output).\n",
          out);
}



/* The line's error code, or NULL when it ran. */
static const char *run_line(const shard_model_t *model, shard_state_t *state,
                            shard_head_t default_head, const char *line, size_t len)
{
    case_t c;
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    shard_status_t status = case_parse(line, len, &c, &err);
    const char *code = status ? tools_code_of(status) : NULL;
    if (!code) {
        if (c.head == SHARD_HEAD_COUNT_)
            c.head = default_head;
        code = case_check_limits(shard_model_config(model), &c, &err);
    }
    if (!code && (status = case_run(model, state, &c, &outputs, &err)))
        code = tools_code_of(status);
    case_print(stdout, code ? case_error_json(c.name, code, err.message)
                    : case_result_json(c.name, &outputs), c.name);
    shard_outputs_clear(&outputs);
    case_clear(&c);
    return code;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'}, {"head", required_argument, NULL, 'H'},
        {"threads", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
        {"max-errors", required_argument, NULL, 'X'}, {"version", no_argument, NULL, 'V'},
        {"precision", required_argument, NULL, 'P'}, {NULL, 0, NULL, 0}};
    const char *model_dir = NULL, *head_name = NULL;
    int threads = 0, opt;
    shard_precision_t precision = SHARD_PRECISION_FP32;
    long long max_errors = -1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":m:H:t:P:h", options, NULL)) != -1) {
        switch (opt) {
        case 'm': model_dir = optarg; break;
        case 'H': head_name = optarg; break;
        case 't': {
            char *end = NULL;
            long value = strtol(optarg, &end, 10);
            if (!*optarg || *end || value < 1 || value > 1024) {
                fprintf(stderr, "xlm-infer: --threads %s: expected an integer 1..1024\n", optarg);
                return 2;
            }
            threads = (int)value;
            break;
        }
        case 'X': {
            char *end = NULL;
            max_errors = strtoll(optarg, &end, 10);
            if (!*optarg || *end || max_errors < 0) {
                fprintf(stderr, "xlm-infer: --max-errors %s: expected an integer >= 0\n", optarg);
                return TOOLS_EXIT_CANNOT_RUN;
            }
            break;
        }
        case 'P': {
            shard_error_t perr = {0};
            if ((precision = shard_precision_parse(optarg, &perr)) == SHARD_PRECISION_COUNT_) {
                fprintf(stderr, "xlm-infer: --precision %s: expected fp32, bf16 or int8\n", optarg);
                return TOOLS_EXIT_CANNOT_RUN;
            }
            break;
        }
        case 'V': tools_print_version(stdout, "xlm-infer"); return 0;
        case 'h': usage(stdout); return 0;
        default: tools_bad_option(stderr, "xlm-infer", argv, opt); return TOOLS_EXIT_CANNOT_RUN;
        }
    }
    if (!model_dir || optind != argc) {
        if (model_dir)
            fprintf(stderr, "xlm-infer: unexpected argument '%s'; see --help\n", argv[optind]);
        else
            fprintf(stderr, "xlm-infer: --model DIR is required; see --help\n");
        return TOOLS_EXIT_CANNOT_RUN;
    }
    shard_head_t head = SHARD_HEAD_COUNT_;
    if (head_name && (head = shard_head_from_name(head_name)) == SHARD_HEAD_COUNT_) {
        char names[256];
        shard_head_names(names, sizeof names);
        fprintf(stderr, "xlm-infer: --head %s: expected %s\n", head_name, names);
        return TOOLS_EXIT_CANNOT_RUN;
    }
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(
        model_dir, &(shard_model_options_t){.threads = threads, .precision = precision}, &err);
    if (model && precision != SHARD_PRECISION_FP32)
        fprintf(stderr, "xlm-infer: precision %s: %s\n", shard_precision_name(precision),
                shard_model_precision_note(model));
    shard_state_t *state = model ? shard_state_new() : NULL;
    if (!state) {
        char said[1024];
        tools_user_message(model ? "out of memory" : err.message, said, sizeof said);
        fprintf(stderr, "xlm-infer: %s\n", said);
        shard_model_destroy(&model);
        return TOOLS_EXIT_CANNOT_RUN;
    }
    if (head == SHARD_HEAD_COUNT_)
        head = shard_model_default_head(model);
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;
    tools_tally_t tally = {0};
    int rc = TOOLS_EXIT_OK;
    while (rc == TOOLS_EXIT_OK && (len = getline(&line, &capacity, stdin)) != -1) {
        if (case_line_is_blank(line))
            continue;
        tools_tally_add(&tally, run_line(model, state, head, line, (size_t)len));
        if (max_errors >= 0 && tally.errors > max_errors) {
            fprintf(stderr, "xlm-infer: stopping: %lld lines failed, more than --max-errors %lld\n",
                    tally.errors, max_errors);
            rc = TOOLS_EXIT_STOPPED;
        }
    }
    free(line);
    shard_state_destroy(&state);
    shard_model_destroy(&model);
    tools_tally_print(stderr, "xlm-infer", &tally);
    if (fflush(stdout) != 0)
        return TOOLS_EXIT_STOPPED;
    return rc ? rc : tally.errors ? TOOLS_EXIT_LINE_ERRORS : TOOLS_EXIT_OK;
}
