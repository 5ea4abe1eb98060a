/* cases.h: the JSON-lines format of cases and results that the tools share
 * (the golden cases.jsonl, xlm-infer's and xlm-client's input and output).
 *
 * Parses a line into the engine's shard_inputs_t and formats the engine's
 * shard_outputs_t; case_run runs a parsed case on a whole model in process.
 */
#ifndef XLM_TOOLS_CASES_H
#define XLM_TOOLS_CASES_H

#include "shard_engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Tokens a greedy case may ask for: the protocol's PROTO_MAX_STEPS (a
 * test checks that they agree), so that xlm-infer refuses what the service
 * refuses. */
enum { CASE_MAX_STEPS = 1 << 16 };

/* One line of the cases format (golden cases.jsonl): a name, a head, the
 * inputs and, for the extra records, a kind. */
typedef enum {
    CASE_HEAD = 0,  /* run a head */
    CASE_CLM_SCORE, /* "kind": "clm_score" */
    CASE_GREEDY,    /* "kind": "greedy" */
    CASE_KIND_COUNT_
} case_kind_t;

typedef struct {
    char *name;            /* owned; "" when absent */
    case_kind_t kind;
    shard_head_t head;     /* SHARD_HEAD_COUNT_ when the line names none */
    shard_inputs_t inputs; /* arrays owned by the case */
    int64_t steps;         /* greedy */
    int64_t langs_fill;    /* greedy */
} case_t;

/* Parses one JSON line. On error the case's name is still set when the line
 * had one, so the error can be reported under it; tools_code_of(status) is
 * the line's error code. */
shard_status_t case_parse(const char *line, size_t length, case_t *c,
                                shard_error_t *err);
void case_clear(case_t *c);

/* The result line {"name": ..., "outputs": {...}} (malloc'd, no newline). */
char *case_result_json(const char *name, const shard_outputs_t *outputs);
/* The error line {"name": ..., "error": {"code": ..., "message": ...}}:
 * code one of errors.h's vocabulary, message as a user reads it
 * (tools_user_message). */
char *case_error_json(const char *name, const char *code, const char *message);

/* True for a line of only whitespace (the cases format skips those). */
bool case_line_is_blank(const char *line);

/* Writes one result line and frees json; when json is NULL (it could not be
 * formatted) an internal (out of memory) error line under name instead, so that every
 * input line still gets its line. */
void case_print(FILE *out, char *json, const char *name);

/* Runs a parsed case on a whole model (head, clm_score or greedy). */
shard_status_t case_run(const shard_model_t *model, shard_state_t *state, const case_t *c,
                        shard_outputs_t *outputs, shard_error_t *err);

/* What the service refuses of a case before running it, for the model of
 * config: NULL, or the line's error code (errors.h) with the message in
 * err. */
const char *case_check_limits(const shard_config_t *config, const case_t *c, shard_error_t *err);

#endif /* XLM_TOOLS_CASES_H */
