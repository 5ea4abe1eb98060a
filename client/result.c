/* result.c: result objects. A result from the service keeps the decoded
 * message and its tensors point into it (no copy); a result made by the
 * client (deadline, cancel, no reply) has a status and a message only. */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static xlm_result_t *result_alloc(const char *id, size_t tensors)
{
    xlm_result_t *result = calloc(1, sizeof *result);
    if (!result)
        return NULL;
    result->tensors = calloc(tensors ? tensors : 1, sizeof *result->tensors);
    if (!result->tensors) {
        free(result);
        return NULL;
    }
    snprintf(result->id, sizeof result->id, "%s", id);
    result->message = "";
    return result;
}

/* The response passed proto_response_check: one data type, sizes consistent. */
static void tensor_view(const Xlm__Tensor *t, xlm_tensor_t *view)
{
    view->name = t->name;
    view->ndim = t->n_shape;
    view->shape = t->shape;
    view->row_lengths = t->n_row_lengths ? t->row_lengths : NULL;
    if (t->n_text) {
        view->dtype = XLM_TEXT;
        view->text = t->text;
        view->numel = t->n_text;
    } else if (t->n_i64) {
        view->dtype = XLM_I64;
        view->i64 = t->i64;
        view->numel = t->n_i64;
    } else { /* f32, or empty: the wire does not say which */
        view->dtype = XLM_F32;
        view->f32 = t->f32;
        view->numel = t->n_f32;
    }
}

static void timings_view(const Xlm__Timings *t, xlm_timings_t *view)
{
    if (!t)
        return;
    view->queue_us = t->queue_us;
    view->tokenize_us = t->tokenize_us;
    view->worker_us = t->worker_us;
    view->n_stages = t->n_stage_us;
    view->stage_us = t->stage_us;
    view->batch_requests = t->batch_requests;
    view->batch_tokens = t->batch_tokens;
}

xlm_result_t *result_from_message(Xlm__ServiceMessage **msg_p)
{
    Xlm__ServiceMessage *msg = *msg_p;
    *msg_p = NULL;
    const Xlm__Response *r = msg->response;
    xlm_result_t *result = result_alloc(r->id, r->n_outputs);
    if (!result) {
        proto_service_free(&msg);
        return NULL;
    }
    result->msg = msg;
    result->code = (xlm_code_t)r->status;
    result->message = r->message ? r->message : "";
    result->count = r->n_outputs;
    for (size_t i = 0; i < r->n_outputs; i++)
        tensor_view(r->outputs[i], &result->tensors[i]);
    timings_view(r->timings, &result->timings);
    return result;
}

xlm_result_t *result_local(const char *id, xlm_code_t code, const char *fmt, va_list args)
{
    xlm_result_t *result = result_alloc(id, 0);
    char message[512];
    vsnprintf(message, sizeof message, fmt, args);
    if (result && !(result->owned_message = strdup(message)))
        xlm_result_destroy(&result);
    if (result) {
        result->code = code;
        result->message = result->owned_message;
    }
    return result;
}

const char *xlm_result_id(const xlm_result_t *result) { return result ? result->id : ""; }

xlm_code_t xlm_result_code(const xlm_result_t *result)
{
    return result ? result->code : XLM_CODE_INTERNAL;
}

const char *xlm_result_message(const xlm_result_t *result)
{
    return result ? result->message : "xlm_result_message: no result";
}

size_t xlm_result_count(const xlm_result_t *result) { return result ? result->count : 0; }

const xlm_tensor_t *xlm_result_tensor(const xlm_result_t *result, size_t index)
{
    return result && index < result->count ? &result->tensors[index] : NULL;
}

const xlm_tensor_t *xlm_result_find(const xlm_result_t *result, const char *name)
{
    for (size_t i = 0; result && name && i < result->count; i++)
        if (strcmp(result->tensors[i].name, name) == 0)
            return &result->tensors[i];
    return NULL;
}

const xlm_timings_t *xlm_result_timings(const xlm_result_t *result)
{
    return result ? &result->timings : NULL;
}

void xlm_result_destroy(xlm_result_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    xlm_result_t *result = *self_p;
    proto_service_free(&result->msg);
    free(result->tensors);
    free(result->owned_message);
    free(result);
    *self_p = NULL;
}
