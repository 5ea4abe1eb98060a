/* request.c: encoding of requests into ClientMessage bytes.
 *
 * The caller's arrays are pointed at, not copied: the generated structs are
 * filled on the stack, checked with proto_request_check (the broker's own
 * rules, so that a request the broker would refuse is refused here with the
 * same words) and packed. protobuf-c does not write through the pointers
 * when packing, hence the casts from const.
 */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void xlm_request_init_sized(xlm_request_t *request, size_t struct_size)
{
    if (!request || struct_size < sizeof request->struct_size)
        return;
    xlm_request_t fresh;
    memset(&fresh, 0, sizeof fresh);
    fresh.lang_fill_id = -1;
    /* A caller's older, smaller struct gets only the fields it has. */
    size_t n = struct_size < sizeof fresh ? struct_size : sizeof fresh;
    fresh.struct_size = n;
    memset(request, 0, struct_size);
    memcpy(request, &fresh, n);
}

/* Sum of n row counts, each checked in [1, max]. */
static xlm_status_t sum_counts(xlm_client_t *client, const char *fn, const char *what,
                               const int64_t *counts, size_t n, int64_t max, size_t *total)
{
    size_t sum = 0;
    for (size_t r = 0; r < n; r++) {
        if (counts[r] < 1 || counts[r] > max)
            return client_fail(client, XLM_ERR_ARG, "%s: row %zu has %s %lld, expected 1 to %lld",
                               fn, r, what, (long long)counts[r], (long long)max);
        sum += (size_t)counts[r]; /* rows <= PROTO_MAX_ROWS: no overflow */
    }
    *total = sum;
    return XLM_OK;
}

static xlm_status_t fill_tokens(xlm_client_t *client, const char *fn, const xlm_tokens_t *in,
                                Xlm__TokenInput *out)
{
    if (in->rows == 0 || in->rows > PROTO_MAX_ROWS)
        return client_fail(client, XLM_ERR_ARG, "%s: tokens.rows = %zu, expected 1 to %d", fn,
                           in->rows, PROTO_MAX_ROWS);
    if (!in->lengths || !in->input_ids)
        return client_fail(client, XLM_ERR_ARG, "%s: tokens without %s", fn,
                           in->lengths ? "input_ids" : "lengths");
    size_t total = 0;
    xlm_status_t status = sum_counts(client, fn, "length", in->lengths, in->rows,
                                     PROTO_MAX_ROW_TOKENS, &total);
    if (status)
        return status;
    out->n_lengths = in->rows;
    out->lengths = (int64_t *)in->lengths;
    out->n_input_ids = total;
    out->input_ids = (int64_t *)in->input_ids;
    out->n_attention_mask = in->attention_mask ? total : 0;
    out->attention_mask = (int64_t *)in->attention_mask;
    out->n_langs = in->langs ? total : 0;
    out->langs = (int64_t *)in->langs;
    out->n_token_type_ids = in->token_type_ids ? total : 0;
    out->token_type_ids = (int64_t *)in->token_type_ids;
    out->n_position_ids = in->position_ids ? total : 0;
    out->position_ids = (int64_t *)in->position_ids;
    out->n_p_mask = in->p_mask ? total : 0;
    out->p_mask = (float *)in->p_mask;
    return XLM_OK;
}

/* The text rows' structs, allocated in one block each. */
typedef struct {
    Xlm__TextRow *rows;
    Xlm__TextRow **row_ptrs;
    Xlm__TextSegment *segments;
    Xlm__TextSegment **segment_ptrs;
} text_parts_t;

static void text_parts_free(text_parts_t *parts)
{
    free(parts->rows);
    free(parts->row_ptrs);
    free(parts->segments);
    free(parts->segment_ptrs);
}

static xlm_status_t fill_text(xlm_client_t *client, const char *fn, const xlm_text_t *in,
                              Xlm__TextInput *out, text_parts_t *parts)
{
    if (in->rows == 0 || in->rows > PROTO_MAX_ROWS)
        return client_fail(client, XLM_ERR_ARG, "%s: text.rows = %zu, expected 1 to %d", fn,
                           in->rows, PROTO_MAX_ROWS);
    if (!in->n_segments || !in->segments)
        return client_fail(client, XLM_ERR_ARG, "%s: text without %s", fn,
                           in->segments ? "n_segments" : "segments");
    size_t total = 0;
    for (size_t r = 0; r < in->rows; r++) {
        if (in->n_segments[r] < 1 || in->n_segments[r] > PROTO_MAX_SEGMENTS)
            return client_fail(client, XLM_ERR_ARG, "%s: text row %zu has %zu segments, "
                               "expected 1 to %d", fn, r, in->n_segments[r], PROTO_MAX_SEGMENTS);
        total += in->n_segments[r];
    }
    parts->rows = calloc(in->rows, sizeof *parts->rows);
    parts->row_ptrs = calloc(in->rows, sizeof *parts->row_ptrs);
    parts->segments = calloc(total, sizeof *parts->segments);
    parts->segment_ptrs = calloc(total, sizeof *parts->segment_ptrs);
    if (!parts->rows || !parts->row_ptrs || !parts->segments || !parts->segment_ptrs)
        return client_fail(client, XLM_ERR_NOMEM, "%s: out of memory for %zu text rows", fn,
                           in->rows);
    static const Xlm__TextRow row_init = XLM__TEXT_ROW__INIT;
    static const Xlm__TextSegment segment_init = XLM__TEXT_SEGMENT__INIT;
    for (size_t r = 0, k = 0; r < in->rows; r++) {
        parts->rows[r] = row_init;
        parts->rows[r].n_segments = in->n_segments[r];
        parts->rows[r].segments = &parts->segment_ptrs[k];
        parts->row_ptrs[r] = &parts->rows[r];
        for (size_t s = 0; s < in->n_segments[r]; s++, k++) {
            parts->segments[k] = segment_init;
            parts->segments[k].text = (char *)(in->segments[k].text ? in->segments[k].text : "");
            parts->segments[k].lang = (char *)(in->segments[k].lang ? in->segments[k].lang : "");
            parts->segment_ptrs[k] = &parts->segments[k];
        }
    }
    out->n_rows = in->rows;
    out->rows = parts->row_ptrs;
    return XLM_OK;
}

static xlm_status_t pack_client_message(xlm_client_t *client, const char *fn,
                                        Xlm__ClientMessage *msg, uint8_t **data, size_t *size)
{
    proto_error_t err;
    if (proto_client_pack(msg, data, size, &err))
        return client_fail(client, XLM_ERR_NOMEM, "%s: %s", fn, err.message);
    return XLM_OK;
}

static xlm_status_t check_and_pack(xlm_client_t *client, const char *fn, Xlm__Request *rq,
                                   uint8_t **data, size_t *size)
{
    proto_error_t err;
    if (proto_request_check(rq, NULL, &err))
        return client_fail(client, XLM_ERR_ARG, "%s: %s: %s", fn, proto_status_str(err.code),
                           err.message);
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_REQUEST;
    msg.request = rq;
    return pack_client_message(client, fn, &msg, data, size);
}

xlm_status_t client_encode_request(xlm_client_t *client, const xlm_request_t *request,
                                   const char *id, uint32_t deadline_ms, uint8_t **data,
                                   size_t *size)
{
    static const char fn[] = "xlm_client_submit";
    Xlm__Request rq = XLM__REQUEST__INIT;
    Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
    Xlm__TextInput text = XLM__TEXT_INPUT__INIT;
    Xlm__Generate generate = XLM__GENERATE__INIT;
    text_parts_t parts = {0};
    size_t rows = 0;
    xlm_status_t status = XLM_OK;
    if ((int)request->task < 0 || request->task >= XLM_TASK_COUNT_)
        return client_fail(client, XLM_ERR_ARG, "%s: task %d, expected 0 to %d", fn,
                           (int)request->task, XLM_TASK_COUNT_ - 1);
    if (!request->tokens == !request->text)
        return client_fail(client, XLM_ERR_ARG, "%s: %s, expected exactly one of tokens and text",
                           fn, request->tokens ? "both tokens and text" : "no input");
    if (request->tokens) {
        status = fill_tokens(client, fn, request->tokens, &tokens);
        rq.input_case = XLM__REQUEST__INPUT_TOKENS;
        rq.tokens = &tokens;
        rows = request->tokens->rows;
    } else {
        status = fill_text(client, fn, request->text, &text, &parts);
        rq.input_case = XLM__REQUEST__INPUT_TEXT;
        rq.text = &text;
        rows = request->text->rows;
    }
    if (status)
        goto done;
    rq.id = (char *)id;
    rq.model = (char *)(request->model ? request->model : "");
    rq.task = (Xlm__Task)client_task_to_wire(request->task);
    rq.deadline_ms = deadline_ms;
    rq.n_choices = request->n_choices;
    /* Options of other tasks are sent only when set, so that the check names them. */
    if (request->task == XLM_TASK_GENERATE || request->steps != 0) {
        generate.steps = request->steps;
        if (request->lang_fill_code) {
            generate.lang_fill_case = XLM__GENERATE__LANG_FILL_LANG_FILL_CODE;
            generate.lang_fill_code = (char *)request->lang_fill_code;
        } else if (request->lang_fill_id >= 0) {
            generate.lang_fill_case = XLM__GENERATE__LANG_FILL_LANG_FILL_ID;
            generate.lang_fill_id = request->lang_fill_id;
        }
        rq.generate = &generate;
    }
    if (request->score_from) {
        rq.n_score_from = rows;
        rq.score_from = (int64_t *)request->score_from;
    }
    if (request->score_to) {
        rq.n_score_to = rows;
        rq.score_to = (int64_t *)request->score_to;
    }
    rq.return_tokens = request->return_tokens;
    status = check_and_pack(client, fn, &rq, data, size);
done:
    text_parts_free(&parts);
    return status;
}

/* Appends a varint. */
static size_t put_varint(uint8_t *out, uint64_t value)
{
    size_t n = 0;
    do {
        out[n++] = (uint8_t)((value & 0x7f) | (value > 0x7f ? 0x80 : 0));
        value >>= 7;
    } while (value);
    return n;
}

/* Only the codec unpacks messages, so the caller's Request bytes are put in
 * a ClientMessage envelope, [version = 1][request = bytes], and decoded and
 * checked as one. On success the envelope is the message sent. */
xlm_status_t client_encode_packed(xlm_client_t *client, const void *bytes, size_t length,
                                  char *id_out, uint32_t *deadline_out, uint8_t **data,
                                  size_t *size)
{
    static const char fn[] = "xlm_client_submit_packed";
    if (length > client->config.max_message_bytes)
        return client_fail(client, XLM_ERR_ARG, "%s: %zu bytes, expected at most %zu", fn, length,
                           client->config.max_message_bytes);
    uint8_t head[16];
    size_t at = 0;
    head[at++] = 0x08; /* field 1, varint: version */
    at += put_varint(head + at, PROTO_VERSION);
    head[at++] = 0x12; /* field 2, length-delimited: request */
    at += put_varint(head + at, length);
    uint8_t *envelope = malloc(at + length);
    if (!envelope)
        return client_fail(client, XLM_ERR_NOMEM, "%s: out of memory for %zu bytes", fn, length);
    memcpy(envelope, head, at);
    if (length)
        memcpy(envelope + at, bytes, length);
    Xlm__ClientMessage *msg = NULL;
    proto_error_t err;
    proto_status_t rc = proto_client_decode(envelope, at + length, at + length, &msg, NULL, &err);
    if (rc) {
        free(envelope);
        return client_fail(client, XLM_ERR_ARG, "%s: %s: %s", fn, proto_status_str(rc),
                           err.message);
    }
    snprintf(id_out, XLM_ID_SIZE, "%s", msg->request->id);
    *deadline_out = msg->request->deadline_ms;
    proto_client_free(&msg);
    *data = envelope;
    *size = at + length;
    return XLM_OK;
}

xlm_status_t client_encode_cancel(xlm_client_t *client, const char *id, uint8_t **data,
                                  size_t *size)
{
    Xlm__Cancel cancel = XLM__CANCEL__INIT;
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    cancel.id = (char *)id;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_CANCEL;
    msg.cancel = &cancel;
    return pack_client_message(client, "xlm_client_cancel", &msg, data, size);
}

xlm_status_t client_encode_stats(xlm_client_t *client, uint8_t **data, size_t *size)
{
    Xlm__StatsRequest stats = XLM__STATS_REQUEST__INIT;
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_STATS;
    msg.stats = &stats;
    return pack_client_message(client, "xlm_client_stats_json", &msg, data, size);
}
