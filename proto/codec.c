/* codec.c: the only code that unpacks xlm.proto messages.
 *
 * Order on every decode path: size limit, unpack, version, body, meaning;
 * the unpacked message is freed on every failure. Nothing here trusts a
 * count or a value from the wire: counts are bounded before loops, sums are
 * checked for overflow, enums are range checked (protobuf-c keeps unknown
 * enum values as plain integers).
 */
#include "proto.h"

#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The C enums mirror the generated ones value for value. The test
 * test_codec.c also compares the counts with the schema's descriptors. */
_Static_assert((int)PROTO_STATUS_PERMISSION_DENIED == (int)XLM__STATUS__STATUS_PERMISSION_DENIED,
               "proto_status_t out of step with xlm.Status");
_Static_assert((int)PROTO_STATUS_NOT_FOUND == (int)XLM__STATUS__STATUS_NOT_FOUND,
               "proto_status_t out of step with xlm.Status");
_Static_assert((int)PROTO_STATUS_TOO_LARGE == (int)XLM__STATUS__STATUS_TOO_LARGE,
               "proto_status_t out of step with xlm.Status");
_Static_assert((int)PROTO_TASK_MLM_PLL == (int)XLM__TASK__TASK_MLM_PLL,
               "proto_task_t mirrors xlm.Task");
_Static_assert((int)PROTO_TASK_GENERATE == (int)XLM__TASK__TASK_GENERATE,
               "proto_task_t out of step with xlm.Task");
_Static_assert((int)PROTO_TASK_QA == (int)XLM__TASK__TASK_QA,
               "proto_task_t out of step with xlm.Task");

/* ------------------------------------------------------------ names */

static const char *const status_names[PROTO_STATUS_COUNT_] = {
    [PROTO_STATUS_OK] = "ok",
    [PROTO_STATUS_BAD_REQUEST] = "bad_request",
    [PROTO_STATUS_UNKNOWN_MODEL] = "unknown_model",
    [PROTO_STATUS_UNKNOWN_TASK] = "unknown_task",
    [PROTO_STATUS_OVERLOADED] = "overloaded",
    [PROTO_STATUS_DEADLINE_EXCEEDED] = "deadline_exceeded",
    [PROTO_STATUS_CANCELLED] = "cancelled",
    [PROTO_STATUS_INTERNAL] = "internal",
    [PROTO_STATUS_UNAVAILABLE] = "unavailable",
    [PROTO_STATUS_TOO_LARGE] = "too_large",
    [PROTO_STATUS_MALFORMED] = "malformed",
    [PROTO_STATUS_BAD_VERSION] = "bad_version",
    [PROTO_STATUS_NOT_FOUND] = "not_found",
    [PROTO_STATUS_PERMISSION_DENIED] = "permission_denied",
};

/* The task table (proto.h, proto_task_info_t). Indexed by task; the test
 * test_tasks.c walks the schema's enum descriptor against it. */
static const proto_task_info_t task_table[PROTO_TASK_COUNT_] = {
    [PROTO_TASK_BASE] = {PROTO_TASK_BASE, "base", PROTO_TASK_KIND_HEAD, .batchable = true},
    [PROTO_TASK_LM] = {PROTO_TASK_LM, "lm", PROTO_TASK_KIND_HEAD, .batchable = true,
                       .needs_lm = true},
    [PROTO_TASK_SEQ_CLS] = {PROTO_TASK_SEQ_CLS, "seq_cls", PROTO_TASK_KIND_HEAD, .batchable = true},
    [PROTO_TASK_MULTIPLE_CHOICE] = {PROTO_TASK_MULTIPLE_CHOICE, "multiple_choice",
                                    PROTO_TASK_KIND_HEAD, .batchable = true, .n_choices = true},
    [PROTO_TASK_TOKEN_CLS] = {PROTO_TASK_TOKEN_CLS, "token_cls", PROTO_TASK_KIND_HEAD,
                              .batchable = true},
    [PROTO_TASK_QA_SIMPLE] = {PROTO_TASK_QA_SIMPLE, "qa_simple", PROTO_TASK_KIND_HEAD,
                              .batchable = true},
    [PROTO_TASK_QA] = {PROTO_TASK_QA, "qa", PROTO_TASK_KIND_HEAD, .batchable = true,
                       .p_mask = true},
    [PROTO_TASK_CLM_SCORE] = {PROTO_TASK_CLM_SCORE, "clm_score", PROTO_TASK_KIND_SCORE,
                              .batchable = true, .needs_lm = true, .score_window = true},
    /* Not batchable: generate loops on one row; mlm_pll is expanded by the
     * worker into one masked copy per scored position, so its real size is
     * not rows * max_len and the worker splits it by its own budget. */
    [PROTO_TASK_GENERATE] = {PROTO_TASK_GENERATE, "generate", PROTO_TASK_KIND_GENERATE,
                             .needs_lm = true, .generate = true},
    [PROTO_TASK_MLM_PLL] = {PROTO_TASK_MLM_PLL, "mlm_pll", PROTO_TASK_KIND_SCORE,
                            .needs_lm = true, .score_window = true,
                            .tokens_need_score_from = true},
};

const proto_task_info_t *proto_task_info(proto_task_t task)
{
    if ((int)task < 0 || task >= PROTO_TASK_COUNT_)
        return NULL;
    return &task_table[task];
}

const char *proto_status_str(proto_status_t status)
{
    if ((int)status < 0 || status >= PROTO_STATUS_COUNT_)
        return "unknown";
    return status_names[status];
}

bool proto_status_retryable(proto_status_t status)
{
    return status == PROTO_STATUS_OVERLOADED || status == PROTO_STATUS_UNAVAILABLE;
}

const char *proto_task_name(proto_task_t task)
{
    const proto_task_info_t *info = proto_task_info(task);
    return info ? info->name : "unknown";
}

proto_task_t proto_task_from_name(const char *name)
{
    for (int t = 0; name && t < PROTO_TASK_COUNT_; t++)
        if (strcmp(name, task_table[t].name) == 0)
            return (proto_task_t)t;
    return PROTO_TASK_COUNT_;
}

proto_status_t proto_error_set(proto_error_t *err, proto_status_t code,
                               const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
    }
    return code;
}

void proto_error_clear(proto_error_t *err)
{
    if (err) {
        err->code = PROTO_STATUS_OK;
        err->message[0] = '\0';
        err->id[0] = '\0';
    }
}

/* ------------------------------------------------------------ helpers */

static bool task_valid(int task)
{
    return task >= 0 && task < PROTO_TASK_COUNT_;
}

static bool status_valid(int status)
{
    return status >= 0 && status < PROTO_STATUS_COUNT_;
}

/* a + b into *sum unless it overflows or goes past limit. */
static bool add_bounded(int64_t a, int64_t b, int64_t limit, int64_t *sum)
{
    if (a < 0 || b < 0 || a > limit - b)
        return false;
    *sum = a + b;
    return true;
}

static proto_status_t check_string(const char *fn, const char *what, const char *s,
                                   size_t max, bool required, proto_error_t *err)
{
    size_t n = s ? strnlen(s, max + 1) : 0;
    if (required && n == 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: %s is empty, expected 1 to %zu bytes",
                               fn, what, max);
    if (n > max)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: %s is longer than %zu bytes",
                               fn, what, max);
    return PROTO_STATUS_OK;
}

/* Every value of v[n] in [0, bound); bound < 0: no upper bound. */
static proto_status_t check_range(const char *fn, const char *what, const int64_t *v,
                                  size_t n, int64_t bound, proto_error_t *err)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] < 0 && bound < 0)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: %s[%zu] = %lld, expected >= 0",
                                   fn, what, i, (long long)v[i]);
        if (v[i] < 0 || (bound >= 0 && v[i] >= bound))
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: %s[%zu] = %lld, expected 0 to %lld",
                                   fn, what, i, (long long)v[i], (long long)bound - 1);
    }
    return PROTO_STATUS_OK;
}

/* Names of the tasks whose option flag at offset field (a bool of
 * proto_task_info_t) is set, "a, b and c", for the error messages. */
static const char *tasks_taking(size_t field, char *buf, size_t size)
{
    size_t n = 0, used = 0;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++)
        n += *(const bool *)((const char *)&task_table[t] + field);
    buf[0] = '\0';
    for (int t = 0, seen = 0; t < PROTO_TASK_COUNT_ && used < size; t++) {
        if (!*(const bool *)((const char *)&task_table[t] + field))
            continue;
        seen++;
        const char *sep = seen == 1 ? "" : (size_t)seen == n ? " and " : ", ";
        int w = snprintf(buf + used, size - used, "%s%s", sep, task_table[t].name);
        used += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

#define TASKS_TAKING(field, buf) tasks_taking(offsetof(proto_task_info_t, field), buf, sizeof buf)

/* ------------------------------------------------------------ request structure */

static proto_status_t check_token_arrays(const Xlm__TokenInput *in, proto_task_t task,
                                         proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    const size_t n = in->n_input_ids;
    const struct { const char *name; size_t count; } aux[] = {
        {"attention_mask", in->n_attention_mask}, {"langs", in->n_langs},
        {"token_type_ids", in->n_token_type_ids}, {"position_ids", in->n_position_ids},
        {"p_mask", in->n_p_mask},
    };
    for (size_t a = 0; a < sizeof aux / sizeof aux[0]; a++)
        if (aux[a].count != 0 && aux[a].count != n)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: %s has %zu values, expected 0 or %zu (one per input id)",
                                   fn, aux[a].name, aux[a].count, n);
    proto_status_t rc;
    if ((rc = check_range(fn, "input_ids", in->input_ids, n, -1, err)) ||
        (rc = check_range(fn, "attention_mask", in->attention_mask, in->n_attention_mask, 2, err)) ||
        (rc = check_range(fn, "langs", in->langs, in->n_langs, -1, err)) ||
        (rc = check_range(fn, "token_type_ids", in->token_type_ids, in->n_token_type_ids, -1, err)) ||
        (rc = check_range(fn, "position_ids", in->position_ids, in->n_position_ids, -1, err)))
        return rc;
    char names[64];
    if (in->n_p_mask && !proto_task_info(task)->p_mask)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: p_mask given for task %s, expected only for %s",
                               fn, proto_task_name(task), TASKS_TAKING(p_mask, names));
    for (size_t i = 0; i < in->n_p_mask; i++)
        if (!isfinite(in->p_mask[i]))
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: p_mask[%zu] is not finite", fn, i);
    return PROTO_STATUS_OK;
}

static proto_status_t check_tokens(const Xlm__TokenInput *in, proto_task_t task,
                                   proto_shape_t *shape, proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    if (in->n_lengths == 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: tokens has no rows (lengths is empty)", fn);
    if (in->n_lengths > PROTO_MAX_ROWS)
        return proto_error_set(err, PROTO_STATUS_TOO_LARGE, "%s: %zu rows, expected at most %d",
                               fn, in->n_lengths, PROTO_MAX_ROWS);
    int64_t total = 0, max_len = 0;
    for (size_t r = 0; r < in->n_lengths; r++) {
        int64_t len = in->lengths[r];
        if (len <= 0)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: row %zu has length %lld, expected > 0",
                                   fn, r, (long long)len);
        if (len > PROTO_MAX_ROW_TOKENS)
            return proto_error_set(err, PROTO_STATUS_TOO_LARGE,
                                   "%s: row %zu has length %lld, expected at most %d",
                                   fn, r, (long long)len, PROTO_MAX_ROW_TOKENS);
        if (!add_bounded(total, len, INT64_MAX, &total))
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: row lengths overflow", fn);
        if (len > max_len)
            max_len = len;
    }
    if ((uint64_t)total != in->n_input_ids)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: lengths sum to %lld, but input_ids has %zu values",
                               fn, (long long)total, in->n_input_ids);
    shape->rows = (int64_t)in->n_lengths;
    shape->max_len = max_len;
    shape->tokens = total;
    shape->text = false;
    return check_token_arrays(in, task, err);
}

/* Upper estimate of a text row's tokens: every BPE token covers at least
 * one byte, plus one separator per segment and the opening one. */
static proto_status_t check_text(const Xlm__TextInput *in, proto_shape_t *shape,
                                 proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    if (in->n_rows == 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: text has no rows", fn);
    if (in->n_rows > PROTO_MAX_ROWS)
        return proto_error_set(err, PROTO_STATUS_TOO_LARGE, "%s: %zu text rows, expected at most %d",
                               fn, in->n_rows, PROTO_MAX_ROWS);
    int64_t total = 0, max_len = 0;
    for (size_t r = 0; r < in->n_rows; r++) {
        const Xlm__TextRow *row = in->rows[r];
        if (!row || row->n_segments == 0 || row->n_segments > PROTO_MAX_SEGMENTS)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: text row %zu has %zu segments, expected 1 to %d",
                                   fn, r, row ? row->n_segments : 0, PROTO_MAX_SEGMENTS);
        int64_t len = 1;
        for (size_t s = 0; s < row->n_segments; s++) {
            const Xlm__TextSegment *seg = row->segments[s];
            size_t bytes = seg && seg->text ? strnlen(seg->text, PROTO_MAX_ROW_TOKENS + 1) : 0;
            if (bytes == 0)
                return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                       "%s: text row %zu segment %zu is empty", fn, r, s);
            if (!add_bounded(len, (int64_t)bytes + 1, PROTO_MAX_ROW_TOKENS, &len))
                return proto_error_set(err, PROTO_STATUS_TOO_LARGE,
                                       "%s: text row %zu is longer than %d bytes",
                                       fn, r, PROTO_MAX_ROW_TOKENS);
            proto_status_t rc = check_string(fn, "text segment language", seg->lang,
                                             PROTO_LANG_MAX, false, err);
            if (rc)
                return rc;
        }
        total += len; /* rows * PROTO_MAX_ROW_TOKENS fits in int64 */
        if (len > max_len)
            max_len = len;
    }
    shape->rows = (int64_t)in->n_rows;
    shape->max_len = max_len;
    shape->tokens = total;
    shape->text = true;
    return PROTO_STATUS_OK;
}

static proto_status_t check_generate(const Xlm__Generate *g, const proto_shape_t *shape,
                                     proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    if (!g)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: task generate without generate options", fn);
    if (g->steps <= 0 || g->steps > PROTO_MAX_STEPS)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate.steps = %lld, expected 1 to %d",
                               fn, (long long)g->steps, PROTO_MAX_STEPS);
    if (shape->rows != 1)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate from %lld rows, expected 1", fn,
                               (long long)shape->rows);
    if (g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_ID && g->lang_fill_id < 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate.lang_fill_id = %lld, expected >= 0", fn,
                               (long long)g->lang_fill_id);
    if (g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_CODE)
        return check_string(fn, "generate.lang_fill_code", g->lang_fill_code, PROTO_LANG_MAX,
                            true, err);
    return PROTO_STATUS_OK;
}

/* Options tied to some tasks (proto_task_info_t says which): n_choices,
 * generate, score_from, score_to, return_tokens. */
static proto_status_t check_task_options(const Xlm__Request *rq, proto_task_t task,
                                         const proto_shape_t *shape, proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    const proto_task_info_t *info = proto_task_info(task);
    char names[128];
    if (info->n_choices) {
        if (rq->n_choices <= 0 || rq->n_choices > shape->rows || shape->rows % rq->n_choices)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: n_choices = %lld with %lld rows, expected n_choices > 0 dividing the rows",
                                   fn, (long long)rq->n_choices, (long long)shape->rows);
    } else if (rq->n_choices != 0) {
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: n_choices = %lld for task %s, expected 0 (%s only)",
                               fn, (long long)rq->n_choices, info->name,
                               TASKS_TAKING(n_choices, names));
    }

    if (info->generate) {
        proto_status_t rc = check_generate(rq->generate, shape, err);
        if (rc)
            return rc;
    } else if (rq->generate) {
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate options for task %s, expected only for %s",
                               fn, info->name, TASKS_TAKING(generate, names));
    }

    if ((rq->n_score_from || rq->n_score_to || rq->return_tokens) && !info->score_window)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: score_from, score_to or return_tokens for task %s, expected "
                               "only for %s", fn, info->name, TASKS_TAKING(score_window, names));
    if (info->tokens_need_score_from && !shape->text && !rq->n_score_from)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: %s of token rows needs score_from (the first scored "
                               "position of each row)", fn, info->name);
    if (rq->n_score_to && !rq->n_score_from)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: score_to without score_from", fn);
    const size_t lists[2] = {rq->n_score_from, rq->n_score_to};
    for (int k = 0; k < 2; k++)
        if (lists[k] && lists[k] != (size_t)shape->rows)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: %s has %zu values, expected %lld (one per row)", fn,
                                   k ? "score_to" : "score_from", lists[k], (long long)shape->rows);
    for (size_t r = 0; r < rq->n_score_from; r++) {
        int64_t limit = shape->text ? PROTO_MAX_ROW_TOKENS : rq->tokens->lengths[r];
        int64_t to = rq->n_score_to ? rq->score_to[r] : limit;
        if (rq->score_from[r] < 0 || rq->score_from[r] > limit || to < rq->score_from[r] || to > limit)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: row %zu scores [%lld, %lld), expected 0 <= score_from <= "
                                   "score_to <= %lld (the row's length)",
                                   fn, r, (long long)rq->score_from[r], (long long)to, (long long)limit);
    }
    return PROTO_STATUS_OK;
}

proto_status_t proto_request_check(const Xlm__Request *rq, proto_shape_t *shape_out,
                                   proto_error_t *err)
{
    static const char fn[] = "proto_request_check";
    proto_shape_t shape = {0};
    proto_status_t rc;
    if (!rq)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: no request", fn);
    if ((rc = check_string(fn, "id", rq->id, PROTO_ID_MAX, true, err)))
        return rc;
    if (err)
        snprintf(err->id, sizeof err->id, "%s", rq->id);
    if ((rc = check_string(fn, "model", rq->model, PROTO_NAME_MAX, false, err)))
        return rc;
    if (!task_valid((int)rq->task))
        return proto_error_set(err, PROTO_STATUS_UNKNOWN_TASK,
                               "%s: task %d, expected 0 to %d (base .. generate)",
                               fn, (int)rq->task, PROTO_TASK_COUNT_ - 1);
    proto_task_t task = (proto_task_t)rq->task;
    switch (rq->input_case) {
    case XLM__REQUEST__INPUT_TOKENS:
        rc = check_tokens(rq->tokens, task, &shape, err);
        break;
    case XLM__REQUEST__INPUT_TEXT:
        rc = check_text(rq->text, &shape, err);
        break;
    default:
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: request has no input, expected tokens or text", fn);
    }
    if (rc)
        return rc;
    shape.padded = shape.rows * shape.max_len; /* <= 2^16 * 2^20 */
    if ((rc = check_task_options(rq, task, &shape, err)))
        return rc;
    if (shape_out)
        *shape_out = shape;
    return PROTO_STATUS_OK;
}

/* ------------------------------------------------------------ request against a model */

static bool ready_has_task(const Xlm__Ready *ready, proto_task_t task)
{
    for (size_t i = 0; i < ready->n_tasks; i++)
        if ((int)ready->tasks[i] == (int)task)
            return true;
    return false;
}

static bool ready_has_lang(const Xlm__Ready *ready, const char *code)
{
    if (code[0] == '\0')
        return true; /* the row's default language */
    for (size_t i = 0; i < ready->n_lang_codes; i++)
        if (strcmp(ready->lang_codes[i], code) == 0)
            return true;
    return false;
}

static proto_status_t check_model_tokens(const Xlm__Request *rq, const Xlm__Ready *ready,
                                         proto_error_t *err)
{
    static const char fn[] = "proto_request_check_model";
    const Xlm__TokenInput *in = rq->tokens;
    const proto_task_info_t *info = proto_task_info((proto_task_t)rq->task);
    int64_t extra = info && info->generate && rq->generate ? rq->generate->steps : 0;
    for (size_t r = 0; r < in->n_lengths; r++)
        if (in->lengths[r] + extra > ready->max_position_embeddings)
            return proto_error_set(err, PROTO_STATUS_TOO_LARGE,
                                   "%s: row %zu has %lld tokens%s, the model takes at most %lld",
                                   fn, r, (long long)(in->lengths[r] + extra),
                                   extra ? " with the generated ones" : "",
                                   (long long)ready->max_position_embeddings);
    proto_status_t rc;
    if ((rc = check_range(fn, "input_ids", in->input_ids, in->n_input_ids, ready->vocab_size, err)) ||
        (rc = check_range(fn, "token_type_ids", in->token_type_ids, in->n_token_type_ids,
                          ready->vocab_size, err)) ||
        (rc = check_range(fn, "position_ids", in->position_ids, in->n_position_ids,
                          ready->max_position_embeddings, err)) ||
        (rc = check_range(fn, "langs", in->langs, in->n_langs, ready->n_langs, err)))
        return rc;
    return PROTO_STATUS_OK;
}

static proto_status_t check_model_text(const Xlm__Request *rq, const Xlm__Ready *ready,
                                       proto_error_t *err)
{
    static const char fn[] = "proto_request_check_model";
    for (size_t r = 0; r < rq->text->n_rows; r++) {
        const Xlm__TextRow *row = rq->text->rows[r];
        for (size_t s = 0; s < row->n_segments; s++)
            if (!ready_has_lang(ready, row->segments[s]->lang))
                return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                       "%s: text row %zu segment %zu: language '%s' is not one of the model's %zu",
                                       fn, r, s, row->segments[s]->lang, ready->n_lang_codes);
    }
    return PROTO_STATUS_OK;
}

proto_status_t proto_request_check_model(const Xlm__Request *rq, const Xlm__Ready *ready,
                                         proto_error_t *err)
{
    static const char fn[] = "proto_request_check_model";
    if (!rq || !ready)
        return proto_error_set(err, PROTO_STATUS_INTERNAL, "%s: no request or no model", fn);
    proto_task_t task = (proto_task_t)rq->task;
    if (!ready_has_task(ready, task))
        return proto_error_set(err, PROTO_STATUS_UNKNOWN_TASK,
                               "%s: task %s is not served by model '%s'",
                               fn, proto_task_name(task), ready->model);
    const Xlm__Generate *g = rq->generate;
    if (g && g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_ID &&
        g->lang_fill_id >= ready->n_langs)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate.lang_fill_id = %lld, expected below n_langs = %lld",
                               fn, (long long)g->lang_fill_id, (long long)ready->n_langs);
    if (g && g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_CODE &&
        !ready_has_lang(ready, g->lang_fill_code))
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: generate.lang_fill_code '%s' is not a language of the model",
                               fn, g->lang_fill_code);
    if (rq->input_case == XLM__REQUEST__INPUT_TOKENS)
        return check_model_tokens(rq, ready, err);
    if (rq->input_case == XLM__REQUEST__INPUT_TEXT)
        return check_model_text(rq, ready, err);
    return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: request has no input", fn);
}

/* ------------------------------------------------------------ unpack */

/* True when m or a message inside it holds an unknown field numbered 0.
 * protobuf-c takes a tag of field 0 written in more than one byte as an
 * unknown field, though no field 0 exists (it refuses the one-byte form it
 * re-encodes such a field as). Found by tests/fuzz/fuzz_wire.c. The
 * schema has no recursive messages: the depth is bounded by it. */
static bool has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return true;
    const char *base = (const char *)m;
    for (unsigned f = 0; f < m->descriptor->n_fields; f++) {
        const ProtobufCFieldDescriptor *fd = &m->descriptor->fields[f];
        if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + fd->quantifier_offset);
            ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)(base + fd->offset);
            for (size_t k = 0; k < n; k++)
                if (items[k] && has_field_zero(items[k]))
                    return true;
            continue;
        }
        if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
            continue;
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + fd->offset);
        if (sub && has_field_zero(sub))
            return true;
    }
    return false;
}

/* Size limit, then unpack. The only call of protobuf_c_message_unpack. */
static proto_status_t unpack(const char *fn, const ProtobufCMessageDescriptor *desc,
                             const void *data, size_t size, size_t limit,
                             ProtobufCMessage **out, proto_error_t *err)
{
    *out = NULL;
    if (size > limit)
        return proto_error_set(err, PROTO_STATUS_TOO_LARGE,
                               "%s: message of %zu bytes, expected at most %zu", fn, size, limit);
    if (size == 0 || !data)
        return proto_error_set(err, PROTO_STATUS_MALFORMED, "%s: empty message (0 bytes)", fn);
    *out = protobuf_c_message_unpack(desc, NULL, size, data);
    if (*out && has_field_zero(*out)) {
        protobuf_c_message_free_unpacked(*out, NULL);
        *out = NULL;
    }
    if (!*out)
        return proto_error_set(err, PROTO_STATUS_MALFORMED,
                               "%s: %zu bytes are not a valid %s", fn, size, desc->name);
    return PROTO_STATUS_OK;
}

static proto_status_t check_version(const char *fn, uint32_t version, proto_error_t *err)
{
    if (version != PROTO_VERSION)
        return proto_error_set(err, PROTO_STATUS_BAD_VERSION,
                               "%s: protocol version %u, expected %d", fn, version, PROTO_VERSION);
    return PROTO_STATUS_OK;
}

proto_status_t proto_client_decode(const void *data, size_t size, size_t limit,
                                   Xlm__ClientMessage **out, proto_shape_t *shape,
                                   proto_error_t *err)
{
    static const char fn[] = "proto_client_decode";
    ProtobufCMessage *base;
    proto_error_clear(err);
    *out = NULL;
    proto_status_t rc = unpack(fn, &xlm__client_message__descriptor, data, size, limit, &base, err);
    if (rc)
        return rc;
    Xlm__ClientMessage *msg = (Xlm__ClientMessage *)base;
    /* The id first, so that even a version error can be addressed. */
    if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST && err &&
        strnlen(msg->request->id, PROTO_ID_MAX + 1) <= PROTO_ID_MAX)
        snprintf(err->id, sizeof err->id, "%s", msg->request->id);
    if ((rc = check_version(fn, msg->version, err)))
        goto err;
    switch (msg->body_case) {
    case XLM__CLIENT_MESSAGE__BODY_REQUEST:
        rc = proto_request_check(msg->request, shape, err);
        break;
    case XLM__CLIENT_MESSAGE__BODY_CANCEL:
        rc = check_string(fn, "cancel.id", msg->cancel->id, PROTO_ID_MAX, true, err);
        if (!rc && err)
            snprintf(err->id, sizeof err->id, "%s", msg->cancel->id);
        break;
    case XLM__CLIENT_MESSAGE__BODY_STATS:
        break;
    default:
        rc = proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                             "%s: message has no body, expected request, cancel or stats", fn);
        break;
    }
    if (rc)
        goto err;
    *out = msg;
    return PROTO_STATUS_OK;
err:
    xlm__client_message__free_unpacked(msg, NULL);
    return rc;
}

void proto_client_free(Xlm__ClientMessage **msg_p)
{
    if (msg_p && *msg_p) {
        xlm__client_message__free_unpacked(*msg_p, NULL);
        *msg_p = NULL;
    }
}

/* ------------------------------------------------------------ responses */

static proto_status_t check_tensor(const Xlm__Tensor *t, size_t index, proto_error_t *err)
{
    static const char fn[] = "proto_response_check";
    if (!t->name[0])
        return proto_error_set(err, PROTO_STATUS_MALFORMED, "%s: output %zu has no name", fn, index);
    if (t->n_shape == 0 || t->n_shape > PROTO_MAX_DIMS)
        return proto_error_set(err, PROTO_STATUS_MALFORMED,
                               "%s: output '%s' has %zu dims, expected 1 to %d",
                               fn, t->name, t->n_shape, PROTO_MAX_DIMS);
    if ((t->n_f32 != 0) + (t->n_i64 != 0) + (t->n_text != 0) > 1)
        return proto_error_set(err, PROTO_STATUS_MALFORMED,
                               "%s: output '%s' has data of more than one type", fn, t->name);
    for (size_t i = 0; i < t->n_text; i++)
        if (!t->text[i])
            return proto_error_set(err, PROTO_STATUS_MALFORMED, "%s: output '%s' text %zu is null",
                                   fn, t->name, i);
    int64_t numel = 1;
    for (size_t d = 0; d < t->n_shape; d++) {
        if (t->shape[d] < 0 || (t->shape[d] > 0 && numel > INT64_MAX / t->shape[d]))
            return proto_error_set(err, PROTO_STATUS_MALFORMED,
                                   "%s: output '%s' dim %zu = %lld is negative or overflows",
                                   fn, t->name, d, (long long)t->shape[d]);
        numel *= t->shape[d];
    }
    if (t->n_row_lengths) {
        if (t->n_shape != 2 || (int64_t)t->n_row_lengths != t->shape[0])
            return proto_error_set(err, PROTO_STATUS_MALFORMED,
                                   "%s: ragged output '%s' has %zu row lengths for %zu dims, expected shape [rows, max] and one per row",
                                   fn, t->name, t->n_row_lengths, t->n_shape);
        numel = 0;
        for (size_t r = 0; r < t->n_row_lengths; r++) {
            if (t->row_lengths[r] < 0 || t->row_lengths[r] > t->shape[1])
                return proto_error_set(err, PROTO_STATUS_MALFORMED,
                                       "%s: ragged output '%s' row %zu has length %lld, expected 0 to %lld",
                                       fn, t->name, r, (long long)t->row_lengths[r],
                                       (long long)t->shape[1]);
            numel += t->row_lengths[r]; /* each <= shape[1], rows * shape[1] did not overflow */
        }
    }
    size_t have = t->n_f32 ? t->n_f32 : t->n_i64 ? t->n_i64 : t->n_text;
    if ((uint64_t)numel != have)
        return proto_error_set(err, PROTO_STATUS_MALFORMED,
                               "%s: output '%s' has %zu values, its shape needs %lld",
                               fn, t->name, have, (long long)numel);
    return PROTO_STATUS_OK;
}

proto_status_t proto_response_check(const Xlm__Response *r, proto_error_t *err)
{
    static const char fn[] = "proto_response_check";
    if (!r)
        return proto_error_set(err, PROTO_STATUS_MALFORMED, "%s: no response", fn);
    if (!status_valid((int)r->status))
        return proto_error_set(err, PROTO_STATUS_MALFORMED, "%s: status %d, expected 0 to %d",
                               fn, (int)r->status, PROTO_STATUS_COUNT_ - 1);
    for (size_t i = 0; i < r->n_outputs; i++) {
        proto_status_t rc = check_tensor(r->outputs[i], i, err);
        if (rc)
            return rc;
    }
    return PROTO_STATUS_OK;
}

proto_status_t proto_service_decode(const void *data, size_t size, size_t limit,
                                    Xlm__ServiceMessage **out, proto_error_t *err)
{
    static const char fn[] = "proto_service_decode";
    ProtobufCMessage *base;
    proto_error_clear(err);
    *out = NULL;
    proto_status_t rc = unpack(fn, &xlm__service_message__descriptor, data, size, limit, &base, err);
    if (rc)
        return rc;
    Xlm__ServiceMessage *msg = (Xlm__ServiceMessage *)base;
    if ((rc = check_version(fn, msg->version, err)))
        goto err;
    if (msg->body_case == XLM__SERVICE_MESSAGE__BODY_RESPONSE) {
        if (err)
            snprintf(err->id, sizeof err->id, "%.*s", PROTO_ID_MAX, msg->response->id);
        rc = proto_response_check(msg->response, err);
    } else if (msg->body_case != XLM__SERVICE_MESSAGE__BODY_STATS) {
        rc = proto_error_set(err, PROTO_STATUS_MALFORMED,
                             "%s: message has no body, expected response or stats", fn);
    }
    if (rc)
        goto err;
    *out = msg;
    return PROTO_STATUS_OK;
err:
    xlm__service_message__free_unpacked(msg, NULL);
    return rc;
}

void proto_service_free(Xlm__ServiceMessage **msg_p)
{
    if (msg_p && *msg_p) {
        xlm__service_message__free_unpacked(*msg_p, NULL);
        *msg_p = NULL;
    }
}

/* ------------------------------------------------------------ worker messages */

static proto_status_t check_ready(const Xlm__Ready *r, proto_error_t *err)
{
    static const char fn[] = "proto_worker_decode";
    proto_status_t rc = check_string(fn, "ready.model", r->model, PROTO_NAME_MAX, true, err);
    if (rc || (rc = check_string(fn, "ready.precision", r->precision, PROTO_PRECISION_MAX, false,
                                 err)))
        return rc;
    if (r->n_stages == 0 || r->n_stages > PROTO_MAX_STAGES || r->credit > PROTO_MAX_CREDIT ||
        r->max_batch_tokens == 0 || r->vocab_size <= 0 || r->max_position_embeddings <= 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: ready with n_stages %u, credit %u, max_batch_tokens %llu, vocab_size %lld, "
                               "max_position_embeddings %lld; expected stages 1 to %d, credit <= %d, the others > 0",
                               fn, r->n_stages, r->credit, (unsigned long long)r->max_batch_tokens,
                               (long long)r->vocab_size, (long long)r->max_position_embeddings,
                               PROTO_MAX_STAGES, PROTO_MAX_CREDIT);
    if (r->n_langs < 0 || r->n_langs > PROTO_MAX_LANGS ||
        (r->n_lang_codes && r->n_lang_codes != (size_t)r->n_langs))
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: ready with n_langs %lld and %zu language codes, expected 0 to %d and as many codes or none",
                               fn, (long long)r->n_langs, r->n_lang_codes, PROTO_MAX_LANGS);
    for (size_t i = 0; i < r->n_lang_codes; i++)
        if ((rc = check_string(fn, "ready.lang_codes[]", r->lang_codes[i], PROTO_LANG_MAX, false, err)))
            return rc;
    if (r->n_tasks == 0 || r->n_tasks > PROTO_TASK_COUNT_)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: ready lists %zu tasks, expected 1 to %d", fn, r->n_tasks,
                               PROTO_TASK_COUNT_);
    for (size_t i = 0; i < r->n_tasks; i++)
        if (!task_valid((int)r->tasks[i]))
            return proto_error_set(err, PROTO_STATUS_UNKNOWN_TASK,
                                   "%s: ready lists task %d, expected 0 to %d",
                                   fn, (int)r->tasks[i], PROTO_TASK_COUNT_ - 1);
    if (r->n_layers < 0 || r->emb_dim < 0 || r->n_heads < 0)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: ready with n_layers %lld, emb_dim %lld, n_heads %lld; expected >= 0",
                               fn, (long long)r->n_layers, (long long)r->emb_dim, (long long)r->n_heads);
    return check_string(fn, "ready.architecture", r->architecture, PROTO_NAME_MAX, false, err);
}

static proto_status_t check_tickets(const char *what, size_t n_tickets, const size_t *counts,
                                    size_t n_counts, proto_error_t *err)
{
    static const char fn[] = "proto_worker_decode";
    if (n_tickets == 0 || n_tickets > PROTO_MAX_TICKETS)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: %s with %zu tickets, expected 1 to %d",
                               fn, what, n_tickets, PROTO_MAX_TICKETS);
    for (size_t i = 0; i < n_counts; i++)
        if (counts[i] != 0 && counts[i] != n_tickets)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: %s with %zu tickets has a per-ticket array of %zu values",
                                   fn, what, n_tickets, counts[i]);
    return PROTO_STATUS_OK;
}

static proto_status_t check_reply(const Xlm__Reply *r, proto_error_t *err)
{
    static const char fn[] = "proto_worker_decode";
    const size_t counts[] = {r->n_statuses};
    proto_status_t rc = check_tickets("reply", r->n_tickets, counts, 1, err);
    if (rc)
        return rc;
    if (r->n_statuses != r->n_tickets)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: reply with %zu tickets and %zu statuses, expected one per ticket",
                               fn, r->n_tickets, r->n_statuses);
    for (size_t i = 0; i < r->n_statuses; i++)
        if (!status_valid((int)r->statuses[i]))
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                                   "%s: reply status %d, expected 0 to %d",
                                   fn, (int)r->statuses[i], PROTO_STATUS_COUNT_ - 1);
    if (r->n_stage_us > PROTO_MAX_STAGES || r->credit > PROTO_MAX_CREDIT)
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: reply with %zu stage timings and credit %u, expected at most %d and %d",
                               fn, r->n_stage_us, r->credit, PROTO_MAX_STAGES, PROTO_MAX_CREDIT);
    return PROTO_STATUS_OK;
}

static proto_status_t check_worker_body(const Xlm__WorkerMessage *m, proto_error_t *err)
{
    static const char fn[] = "proto_worker_decode";
    switch (m->body_case) {
    case XLM__WORKER_MESSAGE__BODY_READY:
        return check_ready(m->ready, err);
    case XLM__WORKER_MESSAGE__BODY_CREDIT:
        if (m->credit->credit > PROTO_MAX_CREDIT)
            return proto_error_set(err, PROTO_STATUS_BAD_REQUEST, "%s: credit %u, expected at most %d",
                                   fn, m->credit->credit, PROTO_MAX_CREDIT);
        return PROTO_STATUS_OK;
    case XLM__WORKER_MESSAGE__BODY_BATCH: {
        const Xlm__Batch *b = m->batch;
        const size_t counts[] = {b->n_queue_us, b->n_remaining_ms};
        if (!task_valid((int)b->task))
            return proto_error_set(err, PROTO_STATUS_UNKNOWN_TASK, "%s: batch task %d, expected 0 to %d",
                                   fn, (int)b->task, PROTO_TASK_COUNT_ - 1);
        return check_tickets("batch", b->n_tickets, counts, 2, err);
    }
    case XLM__WORKER_MESSAGE__BODY_REPLY:
        return check_reply(m->reply, err);
    case XLM__WORKER_MESSAGE__BODY_CANCEL:
        return check_tickets("cancel", m->cancel->n_tickets, NULL, 0, err);
    case XLM__WORKER_MESSAGE__BODY_HEARTBEAT:
    case XLM__WORKER_MESSAGE__BODY_DISCONNECT:
        return PROTO_STATUS_OK;
    default:
        return proto_error_set(err, PROTO_STATUS_BAD_REQUEST,
                               "%s: message has no body, expected ready, credit, batch, reply, "
                               "heartbeat, disconnect or cancel", fn);
    }
}

proto_status_t proto_worker_decode(const void *data, size_t size, size_t limit,
                                   Xlm__WorkerMessage **out, proto_error_t *err)
{
    static const char fn[] = "proto_worker_decode";
    ProtobufCMessage *base;
    proto_error_clear(err);
    *out = NULL;
    proto_status_t rc = unpack(fn, &xlm__worker_message__descriptor, data, size, limit, &base, err);
    if (rc)
        return rc;
    Xlm__WorkerMessage *msg = (Xlm__WorkerMessage *)base;
    if ((rc = check_version(fn, msg->version, err)) ||
        (rc = check_string(fn, "pipeline", msg->pipeline, PROTO_NAME_MAX, true, err)) ||
        (rc = check_worker_body(msg, err)))
        goto err;
    *out = msg;
    return PROTO_STATUS_OK;
err:
    xlm__worker_message__free_unpacked(msg, NULL);
    return rc;
}

void proto_worker_free(Xlm__WorkerMessage **msg_p)
{
    if (msg_p && *msg_p) {
        xlm__worker_message__free_unpacked(*msg_p, NULL);
        *msg_p = NULL;
    }
}

/* ------------------------------------------------------------ pack */

static proto_status_t pack(const char *fn, const ProtobufCMessage *msg, uint8_t **data,
                           size_t *size, proto_error_t *err)
{
    *data = NULL;
    *size = 0;
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return proto_error_set(err, PROTO_STATUS_INTERNAL, "%s: cannot allocate %zu bytes", fn, n);
    size_t packed = protobuf_c_message_pack(msg, buf);
    if (packed != n) {
        free(buf);
        return proto_error_set(err, PROTO_STATUS_INTERNAL, "%s: packed %zu bytes, expected %zu",
                               fn, packed, n);
    }
    *data = buf;
    *size = n;
    return PROTO_STATUS_OK;
}

proto_status_t proto_client_pack(Xlm__ClientMessage *msg, uint8_t **data, size_t *size,
                                 proto_error_t *err)
{
    msg->version = PROTO_VERSION;
    return pack("proto_client_pack", &msg->base, data, size, err);
}

proto_status_t proto_service_pack(Xlm__ServiceMessage *msg, uint8_t **data, size_t *size,
                                  proto_error_t *err)
{
    msg->version = PROTO_VERSION;
    return pack("proto_service_pack", &msg->base, data, size, err);
}

proto_status_t proto_worker_pack(Xlm__WorkerMessage *msg, uint8_t **data, size_t *size,
                                 proto_error_t *err)
{
    msg->version = PROTO_VERSION;
    return pack("proto_worker_pack", &msg->base, data, size, err);
}

proto_status_t proto_response_pack_status(const char *id, proto_status_t status,
                                          const char *message, uint8_t **data,
                                          size_t *size, proto_error_t *err)
{
    Xlm__Response response = XLM__RESPONSE__INIT;
    Xlm__ServiceMessage msg = XLM__SERVICE_MESSAGE__INIT;
    /* protobuf-c does not write through these pointers when packing. */
    response.id = (char *)(id ? id : "");
    response.status = (Xlm__Status)status;
    response.message = (char *)(message ? message : "");
    msg.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    msg.response = &response;
    return proto_service_pack(&msg, data, size, err);
}
