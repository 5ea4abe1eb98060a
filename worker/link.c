/* link.c: a stage's ZeroMQ link to the broker, and reply packing. */
#include "worker_internal.h"

#include "curve_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* A request frame is at most the broker's --max-message-bytes (16 MiB by
 * default); this leaves room for a larger broker setting. */
#define WORKER_MAX_MESSAGE_BYTES ((int64_t)256 << 20)

worker_status_t worker_curve_load(const char *secret_path, const char *server_path,
                                  worker_curve_t *curve, worker_error_t *err)
{
    char why[PROTO_CURVE_ERROR_MAX];
    bool have_secret = secret_path && secret_path[0], have_server = server_path && server_path[0];
    memset(curve, 0, sizeof *curve);
    if (!have_secret && !have_server)
        return WORKER_OK;
    if (have_secret != have_server)
        return worker_error_set(err, WORKER_ERR_CONFIG,
                                "CURVE needs --curve-secret and --curve-server together");
    if (!proto_curve_available())
        return worker_error_set(err, WORKER_ERR_CONFIG,
                                "--curve-secret given, but this libzmq has no CURVE");
    if (proto_curve_cert_load(secret_path, true, &curve->mine, why) != 0 ||
        proto_curve_cert_load(server_path, false, &curve->server, why) != 0)
        return worker_error_set(err, WORKER_ERR_CONFIG, "%s", why);
    curve->on = true;
    curve->secret_path = secret_path;
    curve->server_path = server_path;
    return WORKER_OK;
}

/* A broker that closes the connection during the handshake this many times
 * in a row, with no handshake succeeding between, refuses this worker (a
 * wrong server key shows only so); once could be a broker stopping. */
enum { HANDSHAKE_RETRIES = 3 };

struct worker_link {
    void *context; /* borrowed */
    void *socket;
    void *monitor;                /* PAIR: the socket's handshake events; NULL: not watched */
    bool watched;
    unsigned monitors_opened;     /* each socket's monitor gets an endpoint of its own */
    int closed_in_handshake;      /* FAILED_NO_DETAIL in a row */
    const worker_curve_t *curve; /* borrowed; NULL: plain */
    char *endpoint;
    char *pipeline;
};

static void *open_socket(void *context, const char *endpoint, const worker_curve_t *curve,
                         worker_error_t *err)
{
    void *socket = zmq_socket(context, ZMQ_DEALER);
    if (!socket) {
        worker_error_set(err, WORKER_ERR_ZMQ, "no ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int linger = 0, hwm = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    /* Credits bound what the broker sends; never drop for a high-water mark. */
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    /* What the broker sends is a micro-batch of requests it decoded within
     * its own limit; far past that, the connection is dropped unread. */
    int64_t max_message = WORKER_MAX_MESSAGE_BYTES;
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_message, sizeof max_message);
    char why[PROTO_CURVE_ERROR_MAX];
    if (curve && curve->on &&
        proto_curve_client_apply(socket, &curve->mine, &curve->server, why) != 0) {
        worker_error_set(err, WORKER_ERR_ZMQ, "%s", why);
        zmq_close(socket);
        return NULL;
    }
    if (zmq_connect(socket, endpoint) != 0) {
        worker_error_set(err, WORKER_ERR_ZMQ, "cannot connect to the broker at '%s': %s, expected "
                         "a ZeroMQ endpoint such as tcp://HOST:PORT", endpoint,
                         zmq_strerror(zmq_errno()));
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

worker_link_t *worker_link_new(void *context, const char *endpoint, const char *pipeline,
                               const worker_curve_t *curve, worker_error_t *err)
{
    worker_link_t *link = calloc(1, sizeof *link);
    if (!link) {
        worker_error_set(err, WORKER_ERR_NOMEM, "worker_link_new: out of memory");
        return NULL;
    }
    link->context = context;
    link->curve = curve;
    link->endpoint = strdup(endpoint);
    link->pipeline = strdup(pipeline);
    if (!link->endpoint || !link->pipeline) {
        worker_error_set(err, WORKER_ERR_NOMEM, "worker_link_new: out of memory");
        worker_link_destroy(&link);
        return NULL;
    }
    if (!(link->socket = open_socket(context, endpoint, curve, err)))
        worker_link_destroy(&link);
    return link;
}

static void close_monitor(worker_link_t *link)
{
    if (link->monitor) {
        zmq_socket_monitor(link->socket, NULL, 0);
        zmq_close(link->monitor);
        link->monitor = NULL;
    }
}

static worker_status_t open_monitor(worker_link_t *link, worker_error_t *err)
{
    char name[96];
    snprintf(name, sizeof name, "inproc://xlm-worker-handshakes-%p-%u", (void *)link,
             link->monitors_opened++);
    int linger = 0;
    if (zmq_socket_monitor(link->socket, name, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                                   ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                                   ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                                   ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0 ||
        !(link->monitor = zmq_socket(link->context, ZMQ_PAIR)) ||
        zmq_setsockopt(link->monitor, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(link->monitor, name) != 0) {
        worker_status_t rc = worker_error_set(err, WORKER_ERR_ZMQ, "worker_link_watch_handshakes: "
                                              "cannot monitor the link to %s: %s", link->endpoint,
                                              zmq_strerror(zmq_errno()));
        close_monitor(link);
        return rc;
    }
    link->closed_in_handshake = 0;
    return WORKER_OK;
}

worker_status_t worker_link_watch_handshakes(worker_link_t *link, worker_error_t *err)
{
    link->watched = true;
    return link->monitor ? WORKER_OK : open_monitor(link, err);
}

void worker_link_destroy(worker_link_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_link_t *link = *self_p;
    close_monitor(link);
    if (link->socket)
        zmq_close(link->socket);
    free(link->endpoint);
    free(link->pipeline);
    free(link);
    *self_p = NULL;
}

worker_status_t worker_link_reconnect(worker_link_t *link, worker_error_t *err)
{
    close_monitor(link);
    if (link->socket)
        zmq_close(link->socket);
    link->socket = open_socket(link->context, link->endpoint, link->curve, err);
    if (!link->socket)
        return err->code;
    return link->watched ? open_monitor(link, err) : WORKER_OK;
}

/* ------------------------------------------------------------ handshakes */

/* What a failed handshake says about this worker's configuration: the one
 * line the operator reads before the job ends. */
static worker_status_t handshake_refused(const worker_link_t *link, uint16_t event, uint32_t value,
                                         worker_error_t *err)
{
    const bool curve = link->curve && link->curve->on;
    const char *secret = curve ? link->curve->secret_path : NULL;
    const char *server = curve ? link->curve->server_path : NULL;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return worker_error_set(err, WORKER_ERR_AUTH, "the broker at %s refused this worker's CURVE "
                                "key (--curve-secret %s, ZAP status %u): its public key is not in "
                                "the broker's backend allow directory; copy the .pub file "
                                "xlm-keygen wrote beside it there", link->endpoint,
                                secret ? secret : "?", value);
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return curve ? worker_error_set(err, WORKER_ERR_AUTH, "the broker at %s does not use CURVE "
                                        "on its backend, and this worker was given CURVE keys "
                                        "(--curve-secret %s): give the broker --curve-key and "
                                        "--curve-allow, or the worker no keys", link->endpoint,
                                        secret)
                     : worker_error_set(err, WORKER_ERR_AUTH, "the broker at %s requires CURVE "
                                        "on its backend: give the worker --curve-secret FILE and "
                                        "--curve-server FILE (xlm-keygen writes them)",
                                        link->endpoint);
    if (curve)
        return worker_error_set(err, WORKER_ERR_AUTH, "the CURVE handshake with the broker at %s "
                                "failed (%s): --curve-server %s is not that broker's public key, "
                                "or the broker does not use CURVE on its backend", link->endpoint,
                                event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                                    ? "a protocol error" : "the broker closed the connection",
                                server);
    /* A plain worker meets a CURVE broker's refusal so: the connection
     * closed during the handshake. */
    return worker_error_set(err, WORKER_ERR_AUTH, "the handshake with the broker at %s failed (%s): "
                            "the broker requires CURVE on its backend, or it is no broker's "
                            "backend: give the worker --curve-secret FILE and --curve-server FILE "
                            "(xlm-keygen writes them)", link->endpoint,
                            event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                                ? "a protocol error" : "the broker closed the connection");
}

/* Reads the monitor's events: WORKER_ERR_AUTH once the handshakes show the
 * broker refuses this worker. */
static worker_status_t read_monitor(worker_link_t *link, worker_error_t *err)
{
    for (;;) {
        zmq_msg_t event, address;
        zmq_msg_init(&event);
        if (zmq_msg_recv(&event, link->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&event);
            return WORKER_OK;
        }
        zmq_msg_init(&address);
        if (zmq_msg_more(&event))
            zmq_msg_recv(&address, link->monitor, 0);
        uint16_t id = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&event) >= 6) {
            memcpy(&id, zmq_msg_data(&event), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&event) + 2, 4);
        }
        zmq_msg_close(&address);
        zmq_msg_close(&event);
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            link->closed_in_handshake = 0;
        else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL &&
                 ++link->closed_in_handshake < HANDSHAKE_RETRIES)
            continue;
        else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL || id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
                 id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            return handshake_refused(link, id, value, err);
    }
}

worker_status_t worker_link_send(worker_link_t *link, Xlm__WorkerMessage *msg, uint8_t **frames,
                                 size_t *frame_sizes, size_t n_frames, worker_error_t *err)
{
    msg->pipeline = link->pipeline;
    uint8_t *data = NULL;
    size_t size = 0;
    proto_error_t perr;
    if (proto_worker_pack(msg, &data, &size, &perr) != PROTO_STATUS_OK)
        return worker_error_set(err, WORKER_ERR_WIRE, "worker_link_send: cannot pack a message "
                                "for the broker: %s", perr.message);
    bool sent = zmq_send(link->socket, data, size, n_frames ? ZMQ_SNDMORE : 0) >= 0;
    free(data);
    for (size_t i = 0; sent && i < n_frames; i++)
        sent = zmq_send(link->socket, frames[i], frame_sizes[i],
                        i + 1 < n_frames ? ZMQ_SNDMORE : 0) >= 0;
    if (!sent)
        return worker_error_set(err, WORKER_ERR_ZMQ, "worker_link_send: sending %zu frames to "
                                "the broker failed: %s", n_frames + 1, zmq_strerror(zmq_errno()));
    return WORKER_OK;
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

worker_status_t worker_link_recv(worker_link_t *link, int timeout_ms, bool *got,
                                 Xlm__WorkerMessage **msg, uint8_t ***frames,
                                 size_t **frame_sizes, size_t *n_frames, worker_error_t *err)
{
    static const char fn[] = "worker_link_recv";
    *got = false;
    *msg = NULL;
    *frames = NULL;
    *frame_sizes = NULL;
    *n_frames = 0;
    zmq_pollitem_t items[2] = {{link->socket, 0, ZMQ_POLLIN, 0}, {link->monitor, 0, ZMQ_POLLIN, 0}};
    int ready = zmq_poll(items, link->monitor ? 2 : 1, timeout_ms);
    if (ready < 0 && zmq_errno() != EINTR)
        return worker_error_set(err, WORKER_ERR_ZMQ, "%s: poll failed: %s", fn,
                                zmq_strerror(zmq_errno()));
    if (ready <= 0)
        return WORKER_OK;
    worker_status_t watched = link->monitor && (items[1].revents & ZMQ_POLLIN)
                                  ? read_monitor(link, err) : WORKER_OK;
    if (watched != WORKER_OK || !(items[0].revents & ZMQ_POLLIN))
        return watched;
    zmq_msg_t *parts = NULL;
    size_t count = 0;
    if (recv_parts(link->socket, &parts, &count) != 0) {
        if (zmq_errno() == EINTR)
            return WORKER_OK;
        return worker_error_set(err, WORKER_ERR_ZMQ, "%s: receiving a message failed: %s", fn,
                                zmq_strerror(zmq_errno()));
    }
    proto_error_t perr;
    proto_status_t status = proto_worker_decode(zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]),
                                                PROTO_DEFAULT_LIMIT, msg, &perr);
    worker_status_t rc = WORKER_OK;
    if (status != PROTO_STATUS_OK) {
        rc = worker_error_set(err, WORKER_ERR_WIRE, "%s: dropping a malformed message from the "
                              "broker: %s", fn, perr.message);
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
            rc = worker_error_set(err, WORKER_ERR_NOMEM, "%s: out of memory for %zu frames", fn,
                                  count - 1);
        }
    }
    *got = rc == WORKER_OK;
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&parts[i]);
    free(parts);
    return rc;
}

worker_status_t worker_link_send_credit(worker_link_t *link, uint32_t credit, worker_error_t *err)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Credit body = XLM__CREDIT__INIT;
    body.credit = credit;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_CREDIT;
    msg.credit = &body;
    return worker_link_send(link, &msg, NULL, NULL, 0, err);
}

worker_status_t worker_link_send_progress(worker_link_t *link, uint32_t heartbeat_ms,
                                          uint64_t progress, bool tail, uint64_t instance,
                                          worker_error_t *err)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
    heartbeat.heartbeat_ms = heartbeat_ms;
    heartbeat.progress = progress;
    heartbeat.tail = tail;
    heartbeat.instance = tail ? instance : 0;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &heartbeat;
    return worker_link_send(link, &msg, NULL, NULL, 0, err);
}

worker_status_t worker_link_check_stalled(worker_link_t *link, worker_error_t *err)
{
    worker_status_t rc = WORKER_OK;
    for (bool got = true; got && rc == WORKER_OK;) {
        Xlm__WorkerMessage *msg = NULL;
        uint8_t **frames = NULL;
        size_t *sizes = NULL, n_frames = 0;
        worker_error_t ignored;
        /* What does not decode is not an order: skipped. */
        if (worker_link_recv(link, 0, &got, &msg, &frames, &sizes, &n_frames, &ignored) ==
            WORKER_ERR_WIRE)
            got = true;
        if (got && msg && msg->body_case == XLM__WORKER_MESSAGE__BODY_DISCONNECT &&
            msg->disconnect->stalled)
            rc = worker_error_set(err, WORKER_ERR_STALLED, "the broker declared this pipeline "
                                  "dead (%s) and queued its work again: ending the MPI job so "
                                  "that it starts afresh", msg->disconnect->reason);
        proto_worker_free(&msg);
        worker_link_frames_free(frames, sizes, n_frames);
    }
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

worker_status_t worker_reply_pack(worker_reply_t *reply, const worker_item_t *item,
                                  proto_status_t status, const char *message,
                                  const shard_outputs_t *outputs, const worker_texts_t *texts,
                                  const uint64_t *stage_us, int n_stages, uint64_t batch_tokens,
                                  uint32_t batch_requests, worker_error_t *err)
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
    worker_status_t rc = WORKER_OK;
    if (status == PROTO_STATUS_OK && outputs) {
        response.n_outputs = (size_t)outputs->count;
        response.outputs = tensors;
        for (int i = 0; i < outputs->count; i++)
            if (!(tensors[i] = tensor_of(&outputs->tensors[i])))
                rc = worker_error_set(err, WORKER_ERR_NOMEM, "worker_reply_pack: out of memory "
                                      "for output %d of %s", i, item->id);
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
    proto_error_t perr;
    reply->ticket = item->ticket;
    reply->batch_id = item->batch_id;
    reply->credit = item->credit;
    reply->packet_bytes = item->packet_bytes;
    reply->status = status;
    reply->frame = NULL;
    if (rc == WORKER_OK &&
        proto_service_pack(&msg, &reply->frame, &reply->frame_size, &perr) != PROTO_STATUS_OK)
        rc = worker_error_set(err, WORKER_ERR_WIRE, "worker_reply_pack: cannot pack the reply "
                              "of %s: %s", item->id, perr.message);
    for (int i = 0; i < SHARD_MAX_OUTPUTS; i++)
        if (tensors[i] != &token_tensor)
            free(tensors[i]);
    if (rc != WORKER_OK) {
        /* Still answer: the request must not be lost. */
        reply->status = PROTO_STATUS_INTERNAL;
        if (proto_response_pack_status(item->id, PROTO_STATUS_INTERNAL,
                                       "the worker could not encode the reply", &reply->frame,
                                       &reply->frame_size, &perr) != PROTO_STATUS_OK)
            reply->frame = NULL;
    }
    return rc;
}

worker_status_t worker_replies_send(worker_link_t *link, worker_reply_t *replies, size_t count,
                                    const uint64_t *stage_us, int n_stages, worker_error_t *err)
{
    worker_status_t rc = WORKER_OK;
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
            rc = worker_error_set(err, WORKER_ERR_NOMEM, "worker_replies_send: out of memory "
                                  "for a reply of %zu tickets", n);
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
            worker_status_t sent = worker_link_send(link, &msg, frames, sizes, n, err);
            if (sent != WORKER_OK)
                rc = sent;
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
