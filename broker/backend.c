/* backend.c: the worker side. Read -> decode -> dispatch to one handler per
 * message kind; sending micro-batches within the credit a pipeline gave;
 * heartbeats and the death of silent pipelines. */
#include "broker_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BACKEND_BURST = 256 };

static void free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* ------------------------------------------------------------ sending */

/* Sends [identity][msg packed](+ more frames when more is set). */
static bool worker_send_header(broker_t *b, const uint8_t *identity, size_t identity_len,
                               Xlm__WorkerMessage *msg, bool more)
{
    uint8_t *data;
    size_t size;
    proto_error_t err;
    if (proto_worker_pack(msg, &data, &size, &err)) {
        broker_log(b, BROKER_LOG_ERROR, "%s", err.message);
        return false;
    }
    zmq_msg_t frame;
    if (zmq_msg_init_data(&frame, data, size, free_buffer, NULL) != 0) {
        free(data);
        return false;
    }
    if (zmq_send(b->backend, identity, identity_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        broker_log(b, BROKER_LOG_DEBUG, "message to a worker dropped: %s", zmq_strerror(errno));
        zmq_msg_close(&frame);
        return false;
    }
    if (zmq_msg_send(&frame, b->backend, more ? ZMQ_SNDMORE : 0) < 0) {
        zmq_msg_close(&frame);
        return false;
    }
    return true;
}

void broker_worker_send_simple(broker_t *b, const uint8_t *identity, size_t identity_len,
                               const char *pipeline, Xlm__WorkerMessage *msg)
{
    msg->pipeline = (char *)pipeline; /* not written through by protobuf-c */
    worker_send_header(b, identity, identity_len, msg, false);
}

static void send_disconnect_refused(broker_t *b, const uint8_t *identity, size_t identity_len,
                                    const char *pipeline, const char *reason, bool refused)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = (char *)reason;
    disconnect.refused = refused;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    broker_worker_send_simple(b, identity, identity_len, pipeline, &msg);
}

/* A worker whose CURVE key left the backend's allow directory: refused
 * (it must not register again) and told why, so that it stops with a line
 * naming its key instead of beating for ever. */
static void send_revoked(broker_t *b, const uint8_t *identity, size_t identity_len,
                         const char *pipeline)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = (char *)"its CURVE key is no longer in the broker's backend allow directory";
    disconnect.refused = true;
    disconnect.revoked = true;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    broker_worker_send_simple(b, identity, identity_len, pipeline, &msg);
}

/* The pipeline was declared dead and its work queued again: both sockets
 * the broker knows of it hear so, and the rank that reads it ends the MPI
 * job (a hung rank cannot be revived from here; the supervisor restarts
 * the job). */
/* Another live pipeline of p's MPI job (any model), or NULL. */
static const broker_pipeline_t *job_sibling(const broker_t *b, const broker_pipeline_t *p)
{
    for (const broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        const broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        for (const broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
            const broker_pipeline_t *other = BROKER_CONTAINER(l, broker_pipeline_t, link);
            if (other != p && other->job == p->job)
                return other;
        }
    }
    return NULL;
}

static void send_stalled(broker_t *b, const broker_pipeline_t *p, const char *reason)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = (char *)reason;
    disconnect.stalled = true;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    broker_worker_send_simple(b, p->identity, p->identity_len, p->id, &msg);
    if (p->tail_len && (p->tail_len != p->identity_len ||
                        memcmp(p->tail, p->identity, p->tail_len) != 0))
        broker_worker_send_simple(b, p->tail, p->tail_len, p->id, &msg);
    /* A pipeline of one stage has one rank, which may be the stopped one:
     * a live pipeline of the same MPI job ends the job as well. (Of
     * several stages, a rank that hears it is left running.) */
    const broker_pipeline_t *sibling = p->job && p->n_stages == 1 ? job_sibling(b, p) : NULL;
    if (sibling)
        broker_worker_send_simple(b, sibling->identity, sibling->identity_len, p->id, &msg);
}

/* "Register again": the worker answers with Ready. */
static void send_disconnect(broker_t *b, const uint8_t *identity, size_t identity_len,
                            const char *pipeline, const char *reason)
{
    send_disconnect_refused(b, identity, identity_len, pipeline, reason, false);
}

void broker_pipeline_cancel(broker_t *b, broker_pipeline_t *p, uint64_t ticket)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__CancelTickets cancel = XLM__CANCEL_TICKETS__INIT;
    cancel.n_tickets = 1;
    cancel.tickets = &ticket;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_CANCEL;
    msg.cancel = &cancel;
    broker_worker_send_simple(b, p->identity, p->identity_len, p->id, &msg);
}

/* [identity][Batch][request]...; the requests stay queued on failure. */
static bool send_batch(broker_t *b, broker_pipeline_t *p, broker_req_t **reqs, size_t n,
                       int64_t now)
{
    uint64_t *tickets = malloc(n * sizeof *tickets);
    uint64_t *queue_us = malloc(n * sizeof *queue_us);
    uint32_t *remaining_ms = malloc(n * sizeof *remaining_ms);
    bool ok = tickets && queue_us && remaining_ms;
    for (size_t i = 0; ok && i < n; i++) {
        tickets[i] = reqs[i]->ticket;
        queue_us[i] = (uint64_t)(now - reqs[i]->received_us);
        int64_t left = (reqs[i]->deadline_us - now) / 1000;
        remaining_ms[i] = left > 0 ? (uint32_t)left : 0;
    }
    if (ok) {
        Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
        Xlm__Batch batch = XLM__BATCH__INIT;
        batch.batch_id = b->next_batch++;
        batch.task = (Xlm__Task)reqs[0]->task;
        batch.n_tickets = batch.n_queue_us = batch.n_remaining_ms = n;
        batch.tickets = tickets;
        batch.queue_us = queue_us;
        batch.remaining_ms = remaining_ms;
        msg.body_case = XLM__WORKER_MESSAGE__BODY_BATCH;
        msg.batch = &batch;
        msg.pipeline = p->id;
        ok = worker_send_header(b, p->identity, p->identity_len, &msg, true);
    }
    /* Once the first frame is accepted the rest of the message is too. */
    for (size_t i = 0; ok && i < n; i++) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, &reqs[i]->body);
        if (zmq_msg_send(&copy, b->backend, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            zmq_msg_close(&copy);
            broker_log(b, BROKER_LOG_ERROR, "batch to pipeline '%s' cut short: %s", p->id,
                       zmq_strerror(errno));
        }
    }
    for (size_t i = 0; ok && i < n; i++)
        broker_histogram_observe(&reqs[i]->model->queue_hist, queue_us[i]);
    free(tickets);
    free(queue_us);
    free(remaining_ms);
    return ok;
}

/* ------------------------------------------------------------ dispatch */

/* The pipeline with credit that fits the head of the queue best: one whose
 * budget holds it, then the most credit, then the longest idle. */
static broker_pipeline_t *pick_pipeline(broker_model_t *m, const broker_req_t *head)
{
    const int64_t head_tokens = head->item.tokens;
    broker_pipeline_t *best = NULL;
    for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
        broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
        if (p->credit == 0 || !broker_pipeline_accepts(p, head))
            continue;
        if (!best) {
            best = p;
            continue;
        }
        bool fits = (uint64_t)head_tokens <= p->max_batch_tokens;
        bool best_fits = (uint64_t)head_tokens <= best->max_batch_tokens;
        if (fits != best_fits) {
            if (fits)
                best = p;
        } else if (p->credit != best->credit) {
            if (p->credit > best->credit)
                best = p;
        } else if (p->last_batch_us < best->last_batch_us) {
            best = p;
        }
    }
    return best;
}

void broker_dispatch(broker_t *b, broker_model_t *m)
{
    while (m->queue_len > 0) {
        broker_req_t *head = BROKER_CONTAINER(m->queue.next, broker_req_t, link);
        broker_pipeline_t *p = pick_pipeline(m, head);
        if (!p) {
            /* Accepted under limits that left with a pipeline: no live
             * one can ever take it, so it hears why now. */
            proto_status_t status;
            char why[PROTO_ERROR_MAX];
            if (!broker_model_refuses(m, head, &status, why, sizeof why))
                return;
            m->rejected++;
            broker_req_fail(b, head, status, "%s", why);
            continue;
        }
        /* The head and up to batch_scan requests behind it that p takes. */
        size_t n = 0, looked = 0;
        for (broker_link_t *l = m->queue.next; l != &m->queue && looked <= b->config.batch_scan;
             l = l->next, looked++) {
            broker_req_t *r = BROKER_CONTAINER(l, broker_req_t, link);
            if (!broker_pipeline_accepts(p, r))
                continue;
            b->scratch_reqs[n] = r;
            b->scratch_items[n++] = r->item;
        }
        size_t chosen = broker_batch_select(b->scratch_items, n, p->max_batch_tokens,
                                            b->config.batch_max_requests, b->scratch_chosen);
        for (size_t i = 0; i < chosen; i++)
            b->scratch_reqs[i] = b->scratch_reqs[b->scratch_chosen[i]]; /* chosen is increasing */
        int64_t now = broker_now_us();
        if (!send_batch(b, p, b->scratch_reqs, chosen, now)) {
            /* Gone or not reading: no more batches until it speaks again. */
            p->credit = 0;
            continue;
        }
        if (p->n_in_flight == 0) /* its progress clock starts with the work */
            broker_pipeline_progressed(p, now);
        for (size_t i = 0; i < chosen; i++) {
            broker_req_t *r = b->scratch_reqs[i];
            broker_list_remove(&r->link);
            m->queue_len--;
            m->queue_bytes -= r->bytes;
            r->pipeline = p;
            broker_list_push_back(&p->in_flight, &r->link);
            p->n_in_flight++;
            m->in_flight++;
        }
        p->credit--;
        p->batches++;
        p->last_batch_us = now;
        broker_log(b, BROKER_LOG_DEBUG, "batch of %zu requests to pipeline '%s' (credit left %u)",
                   chosen, p->id, p->credit);
    }
}

/* ------------------------------------------------------------ handlers */

static void on_ready(broker_t *b, const zmq_msg_t *identity, Xlm__WorkerMessage **msg_p)
{
    Xlm__WorkerMessage *msg = *msg_p;
    const Xlm__Ready *ready = msg->ready;
    broker_pipeline_t *old = broker_map_get(b->pipelines, msg->pipeline, strlen(msg->pipeline));
    if (old && old->instance && ready->instance && old->instance != ready->instance) {
        /* Another process claims a live pipeline's id: taking it would
         * evict the live one, which would claim it back when it hears
         * nothing (the eviction loop). Refused; the worker stops. */
        b->registrations_refused++;
        broker_log_peer(b, BROKER_PEER_REFUSED, BROKER_LOG_ERROR,
                        "pipeline '%s' of model '%s' refused: that id is served by another live "
                        "pipeline (instance %016llx, this one %016llx); each worker job needs its "
                        "own ids (the default model@host/jJOB/pINDEX, or --pipeline-prefix)",
                        msg->pipeline, ready->model, (unsigned long long)old->instance,
                        (unsigned long long)ready->instance);
        send_disconnect_refused(b, zmq_msg_data((zmq_msg_t *)identity),
                                zmq_msg_size((zmq_msg_t *)identity), msg->pipeline,
                                "pipeline id already served by another live pipeline", true);
        return;
    }
    if (old) /* a reconnection (or an older worker's restart): what it held is lost on its side */
        broker_pipeline_remove(b, old, "registered again");
    if (b->stopping) {
        send_disconnect(b, zmq_msg_data((zmq_msg_t *)identity), zmq_msg_size((zmq_msg_t *)identity),
                        msg->pipeline, "broker stopping");
        return;
    }
    broker_model_t *existing = broker_model_find(b, ready->model);
    char why[PROTO_ERROR_MAX];
    if (existing && broker_ready_contradicts(existing, ready, why, sizeof why)) {
        /* Another checkpoint under a served name: requests checked against
         * one would be computed by the other. Refused; the worker stops. */
        b->registrations_refused++;
        broker_log_peer(b, BROKER_PEER_REFUSED, BROKER_LOG_ERROR,
                        "pipeline '%s' of model '%s' refused: its configuration contradicts the "
                        "model's live pipelines (%s)", msg->pipeline, ready->model, why);
        char reason[PROTO_ERROR_MAX + 64];
        snprintf(reason, sizeof reason, "configuration contradicts the model's live pipelines: %s", why);
        send_disconnect_refused(b, zmq_msg_data((zmq_msg_t *)identity),
                                zmq_msg_size((zmq_msg_t *)identity), msg->pipeline, reason, true);
        return;
    }
    broker_model_t *m = broker_model_get_or_add(b, ready->model);
    broker_pipeline_t *p = m ? broker_pipeline_add(b, m, msg->pipeline,
                                                   zmq_msg_data((zmq_msg_t *)identity),
                                                   zmq_msg_size((zmq_msg_t *)identity), ready)
                             : NULL;
    if (!p) {
        broker_log(b, BROKER_LOG_ERROR, "pipeline '%s' not registered: out of memory", msg->pipeline);
        return;
    }
    proto_worker_free(&m->ready);
    m->ready = msg; /* kept: the identity and language codes of the model's limits */
    *msg_p = NULL;
    broker_limits_recompute(m);
    broker_log_peer(b, BROKER_PEER_PIPELINE, BROKER_LOG_INFO,
                    "pipeline '%s' of model '%s' ready: %u stages, credit %u, %llu tokens per "
                    "micro-batch", p->id, m->name, p->n_stages, p->credit,
                    (unsigned long long)p->max_batch_tokens);
    broker_dispatch(b, m);
}

static void add_credit(broker_pipeline_t *p, uint32_t credit)
{
    uint64_t total = (uint64_t)p->credit + credit;
    p->credit = total > PROTO_MAX_CREDIT ? PROTO_MAX_CREDIT : (uint32_t)total;
}

/* Whether a retry of the same id should get this answer again rather than
 * a new run: results, and errors a new run would repeat. */
static bool reply_cacheable(Xlm__Status status)
{
    switch ((proto_status_t)status) {
    case PROTO_STATUS_OVERLOADED:
    case PROTO_STATUS_UNAVAILABLE:
    case PROTO_STATUS_DEADLINE_EXCEEDED:
    case PROTO_STATUS_CANCELLED:
    case PROTO_STATUS_INTERNAL:
        return false;
    default:
        return true;
    }
}

/* One reply frame per ticket; the first reply of a ticket wins. */
static void on_reply(broker_t *b, broker_pipeline_t *p, const char *named,
                     const Xlm__Reply *reply, zmq_msg_t *frames, size_t n_frames)
{
    if (n_frames != reply->n_tickets) {
        b->malformed++;
        broker_log_peer(b, BROKER_PEER_PROTOCOL, BROKER_LOG_WARN,
                        "reply from pipeline '%s' with %zu tickets and %zu frames dropped", named,
                        reply->n_tickets, n_frames);
        return;
    }
    if (p) {
        add_credit(p, reply->credit);
        broker_model_record_stages(p->model, reply->stage_us, reply->n_stage_us,
                                   reply->packet_bytes);
        broker_pipeline_progressed(p, broker_now_us());
    }
    for (size_t i = 0; i < reply->n_tickets; i++) {
        broker_req_t *r = broker_map_get(b->tickets, &reply->tickets[i], sizeof reply->tickets[i]);
        if (!r) {
            b->late_replies++;
            continue;
        }
        if (r->pipeline != p || !p) {
            /* Only the pipeline holding a ticket answers it: a reply from
             * another (confused or hostile) would replace the real answer. */
            b->foreign_replies++;
            broker_log_peer(b, BROKER_PEER_FOREIGN, BROKER_LOG_WARN,
                            "reply from pipeline '%s' for ticket %llu ignored: %s", named,
                            (unsigned long long)reply->tickets[i],
                            r->pipeline ? "another pipeline holds it" : "it is queued, no pipeline holds it");
            continue;
        }
        if (reply->statuses[i] == XLM__STATUS__STATUS_OK)
            r->model->done++;
        else
            r->model->failed++;
        broker_histogram_observe(&r->model->service_hist,
                                 (uint64_t)(broker_now_us() - r->received_us));
        if (reply_cacheable(reply->statuses[i]))
            broker_done_add(b, r->id, &frames[i]);
        broker_client_send(b, r->client, r->client_len, &frames[i]);
        broker_req_finish(b, r);
    }
    if (p)
        broker_dispatch(b, p->model);
}

/* Remembers the socket the last stage speaks from (replies, progress). */
static void note_tail(broker_pipeline_t *p, const zmq_msg_t *identity)
{
    size_t len = zmq_msg_size((zmq_msg_t *)identity);
    if (!p || len > BROKER_IDENTITY_MAX)
        return;
    memcpy(p->tail, zmq_msg_data((zmq_msg_t *)identity), len);
    p->tail_len = len;
}

/* The last stage's own beat (Heartbeat.tail): it names the socket the
 * stalled order must reach from the pipeline's start, so that a stage 0
 * that hangs before any Reply still gets its job ended. It is not stage
 * 0's liveness (a last stage beating beside a hung stage 0 must not keep
 * the pipeline) and progress only when its count grew (an idle beat says
 * 0). Before stage 0 registered, or from a last stage of another instance
 * under the same id, there is nothing to note and nothing to answer:
 * stage 0 registers by itself, and a reply would only be dropped. */
static void on_tail_beat(broker_t *b, broker_pipeline_t *p, const zmq_msg_t *identity,
                         const char *named, const Xlm__Heartbeat *beat)
{
    if (!p || (beat->instance && p->instance && beat->instance != p->instance)) {
        b->tail_beats_ignored++;
        broker_log_peer(b, BROKER_PEER_TAIL, BROKER_LOG_DEBUG,
                        "last-stage beat of pipeline '%s' (instance %016llx) ignored: %s", named,
                        (unsigned long long)beat->instance,
                        p ? "another instance holds that id" : "not registered (yet)");
        return;
    }
    const size_t len = zmq_msg_size((zmq_msg_t *)identity);
    if (len != p->identity_len || memcmp(zmq_msg_data((zmq_msg_t *)identity), p->identity, len) != 0)
        note_tail(p, identity); /* stage 0's own socket is told anyway */
    if (beat->progress > p->progress) {
        p->progress = beat->progress;
        broker_pipeline_progressed(p, broker_now_us());
    }
}

/* A stage's heartbeat thread (Heartbeat.stage_beat): its process is alive,
 * and, while the pipeline holds work, a work count that grew is progress
 * (a micro-batch may compute for longer than the liveness window). Stage
 * 0's beat is also the pipeline's own liveness. Beats of an unknown
 * pipeline or of another instance are not answered: stage 0 registers by
 * itself, and these sockets read nothing. */
static void on_stage_beat(broker_t *b, broker_pipeline_t *p, const char *named,
                          const Xlm__Heartbeat *beat)
{
    if (!p || (beat->instance && p->instance && beat->instance != p->instance) ||
        beat->stage >= p->n_stages) {
        b->tail_beats_ignored++;
        broker_log_peer(b, BROKER_PEER_TAIL, BROKER_LOG_DEBUG,
                        "stage %u beat of pipeline '%s' (instance %016llx) ignored: %s",
                        beat->stage, named, (unsigned long long)beat->instance,
                        !p ? "not registered (yet)"
                           : beat->stage >= p->n_stages ? "no such stage"
                                                        : "another instance holds that id");
        return;
    }
    const int64_t now = broker_now_us();
    if (beat->stage == 0)
        broker_pipeline_touch(p, now);
    p->stage_seen_us[beat->stage] = now;
    if (beat->work > p->stage_work[beat->stage]) {
        p->stage_work[beat->stage] = beat->work;
        broker_pipeline_progressed(p, now);
    }
}

/* Handles one decoded message; takes *msg_p when it keeps it. */
static void handle_worker(broker_t *b, const zmq_msg_t *identity, Xlm__WorkerMessage **msg_p,
                          zmq_msg_t *frames, size_t n_frames)
{
    Xlm__WorkerMessage *msg = *msg_p;
    const uint8_t *wid = zmq_msg_data((zmq_msg_t *)identity);
    size_t wlen = zmq_msg_size((zmq_msg_t *)identity);
    broker_pipeline_t *p = broker_map_get(b->pipelines, msg->pipeline, strlen(msg->pipeline));
    const bool beat = msg->body_case == XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    const bool tail_beat = beat && msg->heartbeat->tail;
    const bool stage_beat = beat && msg->heartbeat->stage_beat;
    if (p && !tail_beat && !stage_beat) /* stage 0's liveness is stage 0's to show */
        broker_pipeline_touch(p, broker_now_us());
    switch (msg->body_case) {
    case XLM__WORKER_MESSAGE__BODY_READY:
        if (n_frames == 0)
            on_ready(b, identity, msg_p);
        break;
    case XLM__WORKER_MESSAGE__BODY_REPLY:
        note_tail(p, identity);
        on_reply(b, p, msg->pipeline, msg->reply, frames, n_frames);
        break;
    case XLM__WORKER_MESSAGE__BODY_CREDIT:
        if (p) {
            broker_pipeline_progressed(p, broker_now_us());
            add_credit(p, msg->credit->credit);
            broker_dispatch(b, p->model);
        } else {
            send_disconnect(b, wid, wlen, msg->pipeline, "unknown pipeline: send ready");
        }
        break;
    case XLM__WORKER_MESSAGE__BODY_HEARTBEAT:
        if (stage_beat) {
            on_stage_beat(b, p, msg->pipeline, msg->heartbeat);
        } else if (tail_beat) {
            on_tail_beat(b, p, identity, msg->pipeline, msg->heartbeat);
        } else if (!p) {
            /* The last stage's progress is no registration: stage 0's
             * heartbeat will hear the answer. */
            if (msg->heartbeat->progress == 0)
                send_disconnect(b, wid, wlen, msg->pipeline, "unknown pipeline: send ready");
        } else if (msg->heartbeat->progress > p->progress) {
            p->progress = msg->heartbeat->progress;
            note_tail(p, identity);
            broker_pipeline_progressed(p, broker_now_us());
        }
        break;
    case XLM__WORKER_MESSAGE__BODY_DISCONNECT:
        if (p) {
            broker_model_t *m = p->model;
            broker_pipeline_remove(b, p, "disconnected");
            broker_dispatch(b, m);
        }
        break;
    default:
        broker_log_peer(b, BROKER_PEER_PROTOCOL, BROKER_LOG_WARN,
                        "pipeline '%s' sent a message only the broker sends (body %d)",
                        msg->pipeline, (int)msg->body_case);
        break;
    }
}

/* Whether a socket is one the broker knows as p's (stage 0's, the last
 * stage's). */
static bool socket_of(const broker_pipeline_t *p, const zmq_msg_t *identity)
{
    const size_t len = zmq_msg_size((zmq_msg_t *)identity);
    const void *id = zmq_msg_data((zmq_msg_t *)identity);
    return (len == p->identity_len && memcmp(id, p->identity, len) == 0) ||
           (len == p->tail_len && memcmp(id, p->tail, len) == 0);
}

/* A message of a key no longer allowed (broker_auth_allows said so and
 * logged it): not served. The pipeline it speaks for goes (its work is
 * queued again) when the message came from one of that pipeline's own
 * sockets: a revoked peer cannot remove another's pipeline by naming it.
 * The socket hears Disconnect{refused, revoked}, rate-limited. */
static void refuse_revoked(broker_t *b, const zmq_msg_t *identity, const zmq_msg_t *header)
{
    Xlm__WorkerMessage *msg = NULL;
    proto_error_t err;
    if (proto_worker_decode(zmq_msg_data((zmq_msg_t *)header), zmq_msg_size((zmq_msg_t *)header),
                            b->config.max_message_bytes, &msg, &err) != PROTO_STATUS_OK)
        return; /* names no pipeline to answer for */
    broker_pipeline_t *p = broker_map_get(b->pipelines, msg->pipeline, strlen(msg->pipeline));
    if (p && socket_of(p, identity)) {
        broker_model_t *m = p->model;
        broker_pipeline_remove(b, p, "its CURVE key is no longer allowed");
        broker_dispatch(b, m);
    }
    if (msg->body_case != XLM__WORKER_MESSAGE__BODY_DISCONNECT &&
        broker_auth_may_answer(b, BROKER_SIDE_BACKEND))
        send_revoked(b, zmq_msg_data((zmq_msg_t *)identity), zmq_msg_size((zmq_msg_t *)identity),
                     msg->pipeline);
    proto_worker_free(&msg);
}

/* Receives the rest of a multi-part message into b->frames. */
static size_t recv_frames(broker_t *b, bool more)
{
    size_t n = 0;
    while (more) {
        if (n == b->frames_cap) {
            size_t cap = b->frames_cap ? 2 * b->frames_cap : 16;
            zmq_msg_t *frames = cap <= PROTO_MAX_TICKETS + 1 ? realloc(b->frames, cap * sizeof *frames) : NULL;
            if (!frames) { /* drain and drop the rest */
                zmq_msg_t frame;
                zmq_msg_init(&frame);
                more = zmq_msg_recv(&frame, b->backend, 0) >= 0 && zmq_msg_more(&frame);
                zmq_msg_close(&frame);
                continue;
            }
            b->frames = frames;
            b->frames_cap = cap;
        }
        zmq_msg_init(&b->frames[n]);
        if (zmq_msg_recv(&b->frames[n], b->backend, 0) < 0) {
            zmq_msg_close(&b->frames[n]);
            break;
        }
        more = zmq_msg_more(&b->frames[n]);
        n++;
    }
    return n;
}

void broker_backend_recv(broker_t *b)
{
    for (int i = 0; i < BACKEND_BURST; i++) {
        zmq_msg_t identity, header;
        zmq_msg_init(&identity);
        if (zmq_msg_recv(&identity, b->backend, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&identity);
            return;
        }
        zmq_msg_init(&header);
        bool have_header = zmq_msg_more(&identity) && zmq_msg_recv(&header, b->backend, 0) >= 0;
        size_t n_frames = have_header ? recv_frames(b, zmq_msg_more(&header)) : 0;
        Xlm__WorkerMessage *msg = NULL;
        proto_error_t err;
        if (have_header && !broker_auth_allows(b, BROKER_SIDE_BACKEND, &header)) {
            refuse_revoked(b, &identity, &header);
            have_header = false;
        }
        if (have_header && proto_worker_decode(zmq_msg_data(&header), zmq_msg_size(&header),
                                               b->config.max_message_bytes, &msg, &err)) {
            b->malformed++;
            broker_log_peer(b, BROKER_PEER_MALFORMED, BROKER_LOG_WARN, "worker message refused: %s",
                            err.message);
        }
        if (msg)
            handle_worker(b, &identity, &msg, b->frames, n_frames);
        proto_worker_free(&msg);
        for (size_t f = 0; f < n_frames; f++)
            zmq_msg_close(&b->frames[f]);
        zmq_msg_close(&header);
        zmq_msg_close(&identity);
    }
}

/* ------------------------------------------------------------ heartbeats */

/* Why p is dead now, or NULL: silent (stage 0 and its heartbeat thread
 * stopped), or holding work that did not advance (a stage somewhere in the
 * ring hung while stage 0 still beats). */
static const char *pipeline_death(const broker_pipeline_t *p, int64_t now, char *why, size_t size)
{
    if (now - p->last_seen_us > p->expiry_us)
        return "missed heartbeats";
    for (uint32_t s = 1; s < p->n_stages; s++)
        if (p->stage_seen_us[s] && now - p->stage_seen_us[s] > p->expiry_us) {
            snprintf(why, size, "stage %u missed heartbeats: silent for %lld ms", s,
                     (long long)((now - p->stage_seen_us[s]) / 1000));
            return why;
        }
    if (p->n_in_flight > 0 && now - p->progress_us > p->expiry_us) {
        snprintf(why, size, "no progress for %lld ms while holding %zu requests",
                 (long long)((now - p->progress_us) / 1000), p->n_in_flight);
        return why;
    }
    return NULL;
}

/* Gives every pipeline a fresh interval after the broker's own loop did
 * not run for long (the broker was stopped or starved): their silence was
 * the broker's, not theirs. */
static void forgive_own_pause(broker_t *b, int64_t now)
{
    const int64_t gap = now - b->liveness_checked_us;
    b->liveness_checked_us = now;
    if (gap <= (int64_t)b->config.heartbeat_ms * 1000 * 2)
        return;
    broker_log(b, BROKER_LOG_WARN, "the broker's loop did not run for %lld ms: pipelines get a "
               "fresh liveness interval", (long long)(gap / 1000));
    for (broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
            broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
            p->last_seen_us = p->progress_us = now;
            for (uint32_t s = 0; s < p->n_stages; s++)
                if (p->stage_seen_us[s])
                    p->stage_seen_us[s] = now;
        }
    }
}

void broker_heartbeat(broker_t *b, int64_t now)
{
    if (b->liveness_checked_us)
        forgive_own_pause(b, now);
    b->liveness_checked_us = now;
    for (broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        bool removed = false;
        for (broker_link_t *l = m->pipelines.next, *next; l != &m->pipelines; l = next) {
            next = l->next; /* p may be freed */
            broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
            char text[128];
            const char *why = pipeline_death(p, now, text, sizeof text);
            if (why) {
                send_stalled(b, p, why);
                broker_pipeline_remove(b, p, why);
                removed = true;
                continue;
            }
            if (now - p->heartbeat_sent_us >= (int64_t)b->config.heartbeat_ms * 1000) {
                Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
                Xlm__Heartbeat hb = XLM__HEARTBEAT__INIT;
                hb.heartbeat_ms = (uint32_t)b->config.heartbeat_ms;
                msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
                msg.heartbeat = &hb;
                broker_worker_send_simple(b, p->identity, p->identity_len, p->id, &msg);
                p->heartbeat_sent_us = now;
            }
        }
        if (removed)
            broker_dispatch(b, m);
    }
}

void broker_backend_disconnect_all(broker_t *b, const char *reason)
{
    for (broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
            broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
            send_disconnect(b, p->identity, p->identity_len, p->id, reason);
        }
    }
}
