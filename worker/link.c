/* link.c: a stage's ZeroMQ link to the broker, and reply packing. */
#include "worker_internal.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct worker_link {
    void *context; /* borrowed */
    void *socket;
    char *endpoint;
    char *pipeline;
};

static void *open_socket(void *context, const char *endpoint)
{
    void *socket = zmq_socket(context, ZMQ_DEALER);
    if (!socket)
        return NULL;
    int linger = 0, hwm = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    /* Credits bound what the broker sends; never drop for a high-water mark. */
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(socket, endpoint) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

worker_link_t *worker_link_new(void *context, const char *endpoint, const char *pipeline)
{
    worker_link_t *link = calloc(1, sizeof *link);
    if (!link)
        return NULL;
    link->context = context;
    link->endpoint = strdup(endpoint);
    link->pipeline = strdup(pipeline);
    link->socket = link->endpoint ? open_socket(context, endpoint) : NULL;
    if (!link->socket || !link->pipeline) {
        worker_log(WORKER_LOG_ERROR, "cannot connect to the broker at %s: %s", endpoint,
                   zmq_strerror(zmq_errno()));
        worker_link_destroy(&link);
    }
    return link;
}

void worker_link_destroy(worker_link_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_link_t *link = *self_p;
    if (link->socket)
        zmq_close(link->socket);
    free(link->endpoint);
    free(link->pipeline);
    free(link);
    *self_p = NULL;
}

void *worker_link_socket(worker_link_t *link) { return link->socket; }

int worker_link_reconnect(worker_link_t *link)
{
    if (link->socket)
        zmq_close(link->socket);
    link->socket = open_socket(link->context, link->endpoint);
    return link->socket ? 0 : -1;
}

int worker_link_send(worker_link_t *link, Xlm__WorkerMessage *msg, uint8_t **frames,
                     size_t *frame_sizes, size_t n_frames)
{
    msg->pipeline = link->pipeline;
    uint8_t *data = NULL;
    size_t size = 0;
    proto_error_t err;
    if (proto_worker_pack(msg, &data, &size, &err) != PROTO_STATUS_OK) {
        worker_log(WORKER_LOG_ERROR, "cannot pack a message for the broker: %s", err.message);
        return -1;
    }
    int rc = zmq_send(link->socket, data, size, n_frames ? ZMQ_SNDMORE : 0) < 0 ? -1 : 0;
    free(data);
    for (size_t i = 0; rc == 0 && i < n_frames; i++)
        if (zmq_send(link->socket, frames[i], frame_sizes[i], i + 1 < n_frames ? ZMQ_SNDMORE : 0) < 0)
            rc = -1;
    if (rc)
        worker_log(WORKER_LOG_ERROR, "sending to the broker failed: %s", zmq_strerror(zmq_errno()));
    return rc;
}

void worker_link_frames_free(uint8_t **frames, size_t *frame_sizes, size_t n_frames)
{
    for (size_t i = 0; frames && i < n_frames; i++)
        free(frames[i]);
    free(frames);
    free(frame_sizes);
}

/* Receives every part of one message; the first is the WorkerMessage. */
static int recv_parts(void *socket, zmq_msg_t **parts_out, size_t *count_out)
{
    size_t count = 0, capacity = 4;
    zmq_msg_t *parts = malloc(capacity * sizeof *parts);
    int more = 1;
    while (parts && more) {
        if (count == capacity) {
            zmq_msg_t *grown = realloc(parts, 2 * capacity * sizeof *parts);
            if (!grown)
                break;
            parts = grown;
            capacity *= 2;
        }
        zmq_msg_init(&parts[count]);
        if (zmq_msg_recv(&parts[count], socket, 0) < 0) {
            zmq_msg_close(&parts[count]);
            break;
        }
        more = zmq_msg_more(&parts[count]);
        count++;
    }
    if (!parts || more) {
        for (size_t i = 0; i < count; i++)
            zmq_msg_close(&parts[i]);
        free(parts);
        return -1;
    }
    *parts_out = parts;
    *count_out = count;
    return 0;
}

int worker_link_recv(worker_link_t *link, int timeout_ms, Xlm__WorkerMessage **msg,
                     uint8_t ***frames, size_t **frame_sizes, size_t *n_frames)
{
    *msg = NULL;
    *frames = NULL;
    *frame_sizes = NULL;
    *n_frames = 0;
    zmq_pollitem_t item = {link->socket, 0, ZMQ_POLLIN, 0};
    int ready = zmq_poll(&item, 1, timeout_ms);
    if (ready <= 0)
        return ready < 0 && zmq_errno() != EINTR ? -1 : 0;
    zmq_msg_t *parts = NULL;
    size_t count = 0;
    if (recv_parts(link->socket, &parts, &count) != 0)
        return zmq_errno() == EINTR ? 0 : -1;
    proto_error_t err;
    proto_status_t status = proto_worker_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]),
                                                PROTO_DEFAULT_LIMIT, msg, &err);
    int rc = 1;
    if (status != PROTO_STATUS_OK) {
        worker_log(WORKER_LOG_WARN, "dropping a malformed message from the broker: %s", err.message);
        rc = 0;
    } else if (count > 1) {
        *frames = calloc(count - 1, sizeof **frames);
        *frame_sizes = calloc(count - 1, sizeof **frame_sizes);
        for (size_t i = 1; *frames && *frame_sizes && i < count; i++) {
            size_t size = zmq_msg_size(&parts[i]);
            (*frames)[i - 1] = malloc(size ? size : 1);
            if (!(*frames)[i - 1])
                break;
            memcpy((*frames)[i - 1], zmq_msg_data(&parts[i]), size);
            (*frame_sizes)[i - 1] = size;
            (*n_frames)++;
        }
        if (*n_frames != count - 1) {
            worker_link_frames_free(*frames, *frame_sizes, *n_frames);
            proto_worker_free(msg);
            *frames = NULL;
            *frame_sizes = NULL;
            *n_frames = 0;
            rc = -1;
        }
    }
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&parts[i]);
    free(parts);
    return rc;
}

/* ------------------------------------------------------------ replies */

proto_status_t worker_status_of(shard_status_t status)
{
    switch (status) {
    case SHARD_OK: return PROTO_STATUS_OK;
    case SHARD_ERR_INPUT:
    case SHARD_ERR_UTF8:
    case SHARD_ERR_LANG: return PROTO_STATUS_BAD_REQUEST;
    case SHARD_ERR_HEAD: return PROTO_STATUS_UNKNOWN_TASK;
    default: return PROTO_STATUS_INTERNAL;
    }
}

static Xlm__Tensor *tensor_of(const shard_tensor_t *t)
{
    Xlm__Tensor *out = calloc(1, sizeof *out);
    if (!out)
        return NULL;
    xlm__tensor__init(out);
    out->name = (char *)t->name;
    out->n_shape = (size_t)t->ndim;
    out->shape = (int64_t *)t->shape;
    const size_t numel = (size_t)shard_tensor_numel(t);
    if (t->elem == SHARD_F32) {
        out->n_f32 = numel;
        out->f32 = t->f32;
    } else {
        out->n_i64 = numel;
        out->i64 = t->i64;
    }
    if (t->row_lengths) {
        out->n_row_lengths = (size_t)t->shape[0];
        out->row_lengths = t->row_lengths;
    }
    return out;
}

void worker_texts_clear(worker_texts_t *texts)
{
    for (int64_t i = 0; texts->text && i < texts->n; i++)
        free(texts->text[i]);
    free(texts->text);
    free(texts->row_lengths);
    memset(texts, 0, sizeof *texts);
}

int worker_reply_pack(worker_reply_t *reply, const worker_item_t *item, proto_status_t status,
                      const char *message, const shard_outputs_t *outputs,
                      const worker_texts_t *texts,
                      const uint64_t *stage_us, int n_stages, uint64_t batch_tokens,
                      uint32_t batch_requests)
{
    Xlm__ServiceMessage msg = XLM__SERVICE_MESSAGE__INIT;
    Xlm__Response response = XLM__RESPONSE__INIT;
    Xlm__Timings timings = XLM__TIMINGS__INIT;
    Xlm__Tensor *tensors[SHARD_MAX_OUTPUTS + 1] = {0};
    Xlm__Tensor token_tensor = XLM__TENSOR__INIT;
    int64_t token_shape[2] = {0, 0};
    msg.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    msg.response = &response;
    response.id = (char *)item->id;
    response.status = (Xlm__Status)status;
    response.message = (char *)(message ? message : "");
    response.timings = &timings;
    timings.queue_us = item->queue_us;
    timings.tokenize_us = item->tokenize_us;
    timings.n_stage_us = (size_t)n_stages;
    timings.stage_us = (uint64_t *)stage_us;
    timings.worker_us = worker_now_us() - item->received_us;
    timings.batch_requests = batch_requests;
    timings.batch_tokens = batch_tokens;
    int rc = 0;
    if (status == PROTO_STATUS_OK && outputs) {
        response.n_outputs = (size_t)outputs->count;
        response.outputs = tensors;
        for (int i = 0; i < outputs->count; i++)
            if (!(tensors[i] = tensor_of(&outputs->tensors[i])))
                rc = -1;
        if (texts && texts->text) {
            token_tensor.name = (char *)"tokens";
            token_shape[0] = texts->rows;
            token_shape[1] = texts->longest;
            token_tensor.n_shape = 2;
            token_tensor.shape = token_shape;
            token_tensor.n_text = (size_t)texts->n;
            token_tensor.text = texts->text;
            token_tensor.n_row_lengths = (size_t)texts->rows;
            token_tensor.row_lengths = texts->row_lengths;
            tensors[response.n_outputs++] = &token_tensor;
        }
    }
    proto_error_t err;
    reply->ticket = item->ticket;
    reply->batch_id = item->batch_id;
    reply->credit = item->credit;
    reply->packet_bytes = item->packet_bytes;
    reply->status = status;
    reply->frame = NULL;
    if (rc == 0 && proto_service_pack(&msg, &reply->frame, &reply->frame_size, &err) != PROTO_STATUS_OK) {
        worker_log(WORKER_LOG_ERROR, "cannot pack the reply of %s: %s", item->id, err.message);
        rc = -1;
    }
    for (int i = 0; i < SHARD_MAX_OUTPUTS; i++)
        if (tensors[i] != &token_tensor)
            free(tensors[i]);
    if (rc != 0) {
        /* Still answer: the request must not be lost. */
        reply->status = PROTO_STATUS_INTERNAL;
        rc = proto_response_pack_status(item->id, PROTO_STATUS_INTERNAL,
                                        "the worker could not encode the reply", &reply->frame,
                                        &reply->frame_size, &err) == PROTO_STATUS_OK ? 0 : -1;
    }
    return rc;
}

int worker_replies_send(worker_link_t *link, worker_reply_t *replies, size_t count,
                        const uint64_t *stage_us, int n_stages)
{
    int rc = 0;
    for (size_t first = 0; first < count;) {
        /* One Reply per batch id, in order. */
        size_t end = first;
        while (end < count && replies[end].batch_id == replies[first].batch_id)
            end++;
        size_t n = end - first;
        uint64_t *tickets = calloc(n, sizeof *tickets);
        Xlm__Status *statuses = calloc(n, sizeof *statuses);
        uint8_t **frames = calloc(n, sizeof *frames);
        size_t *sizes = calloc(n, sizeof *sizes);
        uint32_t credit = 0;
        if (!tickets || !statuses || !frames || !sizes) {
            rc = -1;
        } else {
            for (size_t i = 0; i < n; i++) {
                tickets[i] = replies[first + i].ticket;
                statuses[i] = (Xlm__Status)replies[first + i].status;
                frames[i] = replies[first + i].frame;
                sizes[i] = replies[first + i].frame_size;
                credit += replies[first + i].credit;
            }
            Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
            Xlm__Reply reply = XLM__REPLY__INIT;
            msg.body_case = XLM__WORKER_MESSAGE__BODY_REPLY;
            msg.reply = &reply;
            reply.batch_id = replies[first].batch_id;
            reply.n_tickets = n;
            reply.tickets = tickets;
            reply.n_statuses = n;
            reply.statuses = statuses;
            reply.n_stage_us = (size_t)n_stages;
            reply.stage_us = (uint64_t *)stage_us;
            reply.credit = credit;
            /* One micro-batch per Reply: its items came in one packet. */
            reply.packet_bytes = replies[first].packet_bytes;
            if (worker_link_send(link, &msg, frames, sizes, n) != 0)
                rc = -1;
        }
        for (size_t i = first; i < end; i++) {
            free(replies[i].frame);
            replies[i].frame = NULL;
        }
        free(tickets);
        free(statuses);
        free(frames);
        free(sizes);
        first = end;
    }
    return rc;
}
