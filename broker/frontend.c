/* frontend.c: the client side. Read -> decode -> dispatch to one handler
 * per message kind (request, cancel, stats). Every client message gets an
 * answer except a cancel of a request already answered. */
#include "broker_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FRONTEND_BURST = 256 }; /* messages read per poll wake-up */

/* ------------------------------------------------------------ sending */

static void free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

bool broker_client_send(broker_t *b, const uint8_t *client, size_t client_len, zmq_msg_t *body)
{
    /* ROUTER_MANDATORY: EHOSTUNREACH when the client is gone. DONTWAIT: a
     * client that does not read is not allowed to stall the broker; it gets
     * its reply again from the cache when it retries. */
    bool sent = false;
    if (zmq_send(b->frontend, client, client_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        broker_log(b, BROKER_LOG_DEBUG, "reply to a client dropped: %s", zmq_strerror(errno));
    else if (zmq_msg_send(body, b->frontend, ZMQ_DONTWAIT) < 0)
        broker_log_peer(b, BROKER_PEER_CLIENT, BROKER_LOG_WARN, "reply to a client failed: %s",
                        zmq_strerror(errno));
    else
        sent = true;
    if (!sent) { /* leave body empty, as a successful send does */
        zmq_msg_close(body);
        zmq_msg_init(body);
    }
    return sent;
}

static void client_status_v(broker_t *b, const uint8_t *client, size_t client_len,
                            const char *id, proto_status_t status, const char *fmt, va_list args)
{
    char message[PROTO_ERROR_MAX];
    vsnprintf(message, sizeof message, fmt, args);
    uint8_t *data;
    size_t size;
    proto_error_t err;
    if (proto_response_pack_status(id, status, message, &data, &size, &err)) {
        broker_log(b, BROKER_LOG_ERROR, "%s", err.message);
        return;
    }
    zmq_msg_t msg;
    if (zmq_msg_init_data(&msg, data, size, free_buffer, NULL) != 0) {
        free(data);
        return;
    }
    broker_client_send(b, client, client_len, &msg);
}

void broker_client_status(broker_t *b, const uint8_t *client, size_t client_len, const char *id,
                          proto_status_t status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    client_status_v(b, client, client_len, id, status, fmt, args);
    va_end(args);
}

void broker_req_fail(broker_t *b, broker_req_t *r, proto_status_t status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    client_status_v(b, r->client, r->client_len, r->id, status, fmt, args);
    va_end(args);
    if (r->pipeline)
        broker_pipeline_cancel(b, r->pipeline, r->ticket);
    broker_req_finish(b, r);
}

/* ------------------------------------------------------------ handlers */

/* The model a request names, or the only one when it names none. NULL
 * after answering the client. */
static broker_model_t *resolve_model(broker_t *b, const zmq_msg_t *client, const Xlm__Request *rq)
{
    const uint8_t *cid = zmq_msg_data((zmq_msg_t *)client);
    size_t clen = zmq_msg_size((zmq_msg_t *)client);
    const broker_gone_t *gone = broker_gone_find(b, rq->model);
    if (gone) {
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNAVAILABLE,
                             "model '%s': no live pipeline since %s", rq->model, gone->since);
        return NULL;
    }
    if (b->n_models == 0) {
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNAVAILABLE,
                             "no worker has registered yet; retry with the same id");
        return NULL;
    }
    if (rq->model[0] == '\0') {
        /* A model that lost its pipelines does not make the choice
         * ambiguous: the one that is served is meant. */
        broker_model_t *only = broker_model_default(b);
        if (!only)
            broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNKNOWN_MODEL,
                                 "no model named, and %zu models are served; name one", b->n_models);
        return only;
    }
    broker_model_t *m = broker_model_find(b, rq->model);
    if (!m && broker_now_us() - b->started_us < (int64_t)b->config.startup_grace_ms * 1000)
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNAVAILABLE,
                             "model '%s' has not registered since the broker started; retry with the same id",
                             rq->model);
    else if (!m)
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNKNOWN_MODEL,
                             "model '%s' is not served", rq->model);
    return m;
}

/* A request whose id the broker already holds: answered from the cache or
 * re-addressed to the latest sender. True when it was one. */
static bool handle_retry(broker_t *b, const zmq_msg_t *client, const char *id)
{
    const uint8_t *cid = zmq_msg_data((zmq_msg_t *)client);
    size_t clen = zmq_msg_size((zmq_msg_t *)client);
    broker_done_t *d = broker_done_find(b, id);
    if (d) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        if (zmq_msg_copy(&copy, &d->reply) == 0)
            broker_client_send(b, cid, clen, &copy);
        else
            zmq_msg_close(&copy);
        b->duplicates++;
        return true;
    }
    broker_req_t *r = broker_map_get(b->ids, id, strlen(id));
    if (r) {
        if (clen <= BROKER_IDENTITY_MAX) {
            memcpy(r->client, cid, clen);
            r->client_len = clen;
        }
        b->duplicates++;
        return true;
    }
    return false;
}

static void handle_request(broker_t *b, const zmq_msg_t *client, const Xlm__Request *rq,
                           const proto_shape_t *shape, zmq_msg_t *body)
{
    const uint8_t *cid = zmq_msg_data((zmq_msg_t *)client);
    size_t clen = zmq_msg_size((zmq_msg_t *)client);
    b->received++;
    if (handle_retry(b, client, rq->id))
        return;
    if (b->stopping) {
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_UNAVAILABLE,
                             "the broker is stopping; retry with the same id");
        return;
    }
    broker_model_t *m = resolve_model(b, client, rq);
    if (!m)
        return;
    proto_error_t err;
    proto_error_clear(&err);
    if (m->has_limits && proto_request_check_model(rq, &m->limits, &err)) {
        m->rejected++;
        broker_client_status(b, cid, clen, rq->id, err.code, "%s", err.message);
        return;
    }
    if (m->max_batch_tokens && ((uint64_t)shape->tokens > m->max_batch_tokens ||
                                (uint64_t)shape->padded > PROTO_PADDED_FACTOR * m->max_batch_tokens)) {
        m->rejected++;
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_TOO_LARGE,
                             "request needs %lld tokens (%lld rows of up to %lld), the pipelines of "
                             "model '%s' take at most %llu per micro-batch (%llu padded)",
                             (long long)shape->tokens, (long long)shape->rows,
                             (long long)shape->max_len, m->name,
                             (unsigned long long)m->max_batch_tokens,
                             (unsigned long long)(PROTO_PADDED_FACTOR * m->max_batch_tokens));
        return;
    }
    size_t bytes = zmq_msg_size(body) + sizeof(broker_req_t);
    if (m->queue_len >= b->config.queue_max || m->queue_bytes + bytes > b->config.queue_bytes) {
        m->rejected++;
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_OVERLOADED,
                             "model '%s' has %zu requests (%zu bytes) queued, the limit is %zu (%zu bytes); "
                             "retry later with the same id",
                             m->name, m->queue_len, m->queue_bytes, b->config.queue_max,
                             b->config.queue_bytes);
        return;
    }
    if (!broker_req_new(b, m, rq, shape, client, body)) {
        broker_client_status(b, cid, clen, rq->id, PROTO_STATUS_INTERNAL,
                             "broker out of memory; retry later");
        return;
    }
    broker_dispatch(b, m);
}

static void handle_cancel(broker_t *b, const zmq_msg_t *client, const char *id)
{
    broker_req_t *r = broker_map_get(b->ids, id, strlen(id));
    if (r) {
        r->model->cancelled++;
        broker_req_fail(b, r, PROTO_STATUS_CANCELLED, "cancelled by the client");
        return;
    }
    if (broker_done_find(b, id))
        return; /* answered already: that answer stands */
    broker_client_status(b, zmq_msg_data((zmq_msg_t *)client), zmq_msg_size((zmq_msg_t *)client),
                         id, PROTO_STATUS_NOT_FOUND, "cancel: no pending request has id '%s'", id);
}

/* One client message: [identity][body]. */
static void handle_client(broker_t *b, zmq_msg_t *client, zmq_msg_t *body, bool extra_frames)
{
    const uint8_t *cid = zmq_msg_data(client);
    size_t clen = zmq_msg_size(client);
    if (extra_frames) {
        b->malformed++;
        broker_client_status(b, cid, clen, "", PROTO_STATUS_MALFORMED,
                             "broker: a client message is one frame, this one had more");
        return;
    }
    Xlm__ClientMessage *msg;
    proto_shape_t shape;
    proto_error_t err;
    proto_status_t rc = proto_client_decode(zmq_msg_data(body), zmq_msg_size(body),
                                            b->config.max_message_bytes, &msg, &shape, &err);
    if (rc) {
        if (rc == PROTO_STATUS_MALFORMED)
            b->malformed++;
        broker_log(b, BROKER_LOG_DEBUG, "client message refused: %s", err.message);
        broker_client_status(b, cid, clen, err.id, rc, "%s", err.message);
        return;
    }
    switch (msg->body_case) {
    case XLM__CLIENT_MESSAGE__BODY_REQUEST:
        handle_request(b, client, msg->request, &shape, body);
        break;
    case XLM__CLIENT_MESSAGE__BODY_CANCEL:
        handle_cancel(b, client, msg->cancel->id);
        break;
    case XLM__CLIENT_MESSAGE__BODY_STATS:
        broker_stats_send(b, cid, clen);
        break;
    default: /* the codec accepts no other body */
        break;
    }
    proto_client_free(&msg);
}

/* A message of a client whose CURVE key left the frontend's allow
 * directory after its handshake: a final PERMISSION_DENIED (never retried)
 * under the request's id, so that the client stops now instead of waiting
 * for its deadline. Nothing of the message is served. */
static void answer_revoked(broker_t *b, zmq_msg_t *client, zmq_msg_t *body)
{
    if (!broker_auth_may_answer(b, BROKER_SIDE_FRONTEND))
        return;
    Xlm__ClientMessage *msg = NULL;
    proto_shape_t shape;
    proto_error_t err;
    const char *id = "";
    if (proto_client_decode(zmq_msg_data(body), zmq_msg_size(body), b->config.max_message_bytes,
                            &msg, &shape, &err) != PROTO_STATUS_OK)
        id = err.id;
    else if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST)
        id = msg->request->id;
    else if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_CANCEL)
        id = msg->cancel->id;
    broker_client_status(b, zmq_msg_data(client), zmq_msg_size(client), id,
                         PROTO_STATUS_PERMISSION_DENIED,
                         "the broker no longer allows this client's CURVE key: it was removed from "
                         "the frontend's allow directory");
    proto_client_free(&msg);
}

void broker_frontend_recv(broker_t *b)
{
    for (int i = 0; i < FRONTEND_BURST; i++) {
        zmq_msg_t client, body;
        zmq_msg_init(&client);
        if (zmq_msg_recv(&client, b->frontend, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&client);
            return; /* EAGAIN: nothing more */
        }
        zmq_msg_init(&body);
        bool have_body = zmq_msg_more(&client) && zmq_msg_recv(&body, b->frontend, 0) >= 0;
        bool extra = have_body && zmq_msg_more(&body);
        for (int more = extra; more;) { /* drain the rest of a multi-frame message */
            zmq_msg_t frame;
            zmq_msg_init(&frame);
            more = zmq_msg_recv(&frame, b->frontend, 0) >= 0 && zmq_msg_more(&frame);
            zmq_msg_close(&frame);
        }
        if (have_body && broker_auth_allows(b, BROKER_SIDE_FRONTEND, &body))
            handle_client(b, &client, &body, extra);
        else if (have_body)
            answer_revoked(b, &client, &body);
        zmq_msg_close(&body);
        zmq_msg_close(&client);
    }
}
