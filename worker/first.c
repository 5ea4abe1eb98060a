/* first.c: stage 0's loop. Hears the broker (Batches to the batcher,
 * cancels, orders), computes the embeddings and first layers of the oldest
 * queued micro-batch when the ring can take it, feeds the ring, takes the
 * generation tokens fed back. Calls batcher.c, generate.c, register.c,
 * queue.c, ring.c and last.c (a 1-stage pipeline finishes here). */
#include "first.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ broker */

static worker_status_t handle_message(first_t *f, Xlm__WorkerMessage *msg, uint8_t **frames,
                                      size_t *sizes, size_t n_frames, worker_error_t *err)
{
    f->last_recv_us = worker_now_us();
    switch (msg->body_case) {
    case XLM__WORKER_MESSAGE__BODY_BATCH:
        first_take_batch(f, msg->batch, frames, sizes, n_frames);
        return WORKER_OK;
    case XLM__WORKER_MESSAGE__BODY_CANCEL:
        first_cancel(f, msg->cancel);
        return WORKER_OK;
    case XLM__WORKER_MESSAGE__BODY_DISCONNECT:
        if (msg->disconnect->stalled) {
            /* Some rank of the ring hung (maybe not this one, maybe of
             * another pipeline of this job): only a new job brings the
             * pipeline back, and its work runs elsewhere. */
            f->stalled = true;
            return worker_error_set(err, WORKER_ERR_STALLED, "the broker declared pipeline %s "
                                    "dead (%s) and queued its work again: ending the MPI job so "
                                    "that it starts afresh",
                                    msg->pipeline && *msg->pipeline ? msg->pipeline
                                                                    : f->st->pipeline_id,
                                    msg->disconnect->reason);
        }
        if (msg->disconnect->refused && msg->disconnect->revoked) {
            f->refused = true;
            return worker_error_set(err, WORKER_ERR_AUTH, "the broker at %s no longer allows this "
                                    "worker's CURVE key (--curve-secret %s): %s; pipeline %s stops",
                                    f->st->options->broker,
                                    f->st->curve.secret_path ? f->st->curve.secret_path : "?",
                                    msg->disconnect->reason, f->st->pipeline_id);
        }
        if (msg->disconnect->refused) {
            /* Registering again would be refused again (or evict a live
             * pipeline): a start-up failure the operator must fix. */
            f->refused = true;
            return worker_error_set(err, WORKER_ERR_REFUSED, "the broker refused pipeline %s: "
                                    "%s; give each worker job its own ids (--pipeline-prefix)",
                                    f->st->pipeline_id, msg->disconnect->reason);
        }
        worker_log(f->st->log, WORKER_LOG_WARN, "the broker asked to re-register: %s",
                   msg->disconnect->reason);
        return f->accepting ? first_send_ready(f, err) : WORKER_OK;
    default: /* heartbeats: being heard is what counts */
        return WORKER_OK;
    }
}

/* Handles every message waiting on the socket (the first one waited for up
 * to timeout_ms), so that the broker's silence is judged on all it sent. */
static worker_status_t drain_socket(first_t *f, int timeout_ms, worker_error_t *err)
{
    worker_status_t rc = WORKER_OK;
    for (bool got = true; got && rc == WORKER_OK; timeout_ms = 0) {
        Xlm__WorkerMessage *msg = NULL;
        uint8_t **frames = NULL;
        size_t *sizes = NULL, n_frames = 0;
        worker_error_t recv_err;
        worker_status_t received = worker_link_recv(f->st->link, timeout_ms, &got, &msg, &frames,
                                                    &sizes, &n_frames, &recv_err);
        if (received == WORKER_ERR_WIRE) {
            worker_log(f->st->log, WORKER_LOG_WARN, "%s", recv_err.message);
            got = true; /* the next one may be fine */
        } else if (received == WORKER_ERR_AUTH) {
            /* Refused at the handshake: retrying would be refused again,
             * for ever and in silence. */
            *err = recv_err;
            return received;
        } else if (received != WORKER_OK) {
            /* Heard as silence: the broker's liveness rule reconnects. */
            worker_log(f->st->log, WORKER_LOG_DEBUG, "%s", recv_err.message);
        }
        if (got && msg)
            rc = handle_message(f, msg, frames, sizes, n_frames, err);
        proto_worker_free(&msg);
        worker_link_frames_free(frames, sizes, n_frames);
    }
    return rc;
}

/* ------------------------------------------------------------ compute */

static worker_status_t run_queued(first_t *f, worker_error_t *err)
{
    worker_micro_t *m = first_dequeue(f);
    worker_stage_t *st = f->st;
    shard_inputs_t in = worker_micro_inputs(m);
    shard_error_t serr = {0};
    uint64_t start = worker_now_us();
    m->started_us = start;
    worker_status_t rc = WORKER_OK;
    worker_error_t layer_err = {WORKER_OK, ""};
    /* A cached step embeds only the positions the caches lack; when this
     * stage's cache went since the step was queued (evicted by another
     * generation's), the step starts the caches over. */
    int64_t from = m->kv_mode == WORKER_KV_STEP ? worker_kv_length(st->kv, m->kv_key) : 0;
    if (m->kv_mode == WORKER_KV_STEP && (from <= 0 || from >= m->seq)) {
        m->kv_mode = WORKER_KV_FILL;
        from = 0;
    }
    shard_status_t embedded = from > 0
        ? shard_embed_from(st->model, st->state, &in, from, m->acts, &serr)
        : shard_embed(st->model, st->state, &in, m->acts, &serr);
    if (embedded ||
        worker_kv_run_layers(st->kv, st->model, st->state, m, 0, st->log, &layer_err)) {
        /* Inputs were checked per request: a failure here is ours, the
         * requests are answered and the rank goes on. */
        worker_log(st->log, WORKER_LOG_ERROR, "micro-batch %llu: %s",
                   (unsigned long long)m->micro_id, embedded ? serr.message : layer_err.message);
        for (int i = 0; i < m->n_items; i++) {
            if (m->kind == MICRO_GENERATE) {
                first_job_token(f, m->items[i].gen_job, -1);
                continue;
            }
            first_reply_error(f, m->items[i].batch_id, m->items[i].ticket, m->items[i].id,
                              PROTO_STATUS_INTERNAL, embedded ? serr.message : layer_err.message,
                              m->items[i].credit);
        }
        worker_micro_destroy(&m);
        return WORKER_OK;
    }
    m->stage_us[0] = worker_now_us() - start;
    if (st->n_stages > 1) {
        rc = worker_send_next(st, f->slots, &f->next_slot, m, err);
    } else {
        int64_t token = -1;
        rc = worker_finish_micro(st, m, &token, err);
        if (rc == WORKER_OK)
            rc = worker_note_progress(st, m->kind != MICRO_GENERATE, err);
        if (m->kind == MICRO_GENERATE)
            first_job_token(f, m->items[0].gen_job, token);
    }
    worker_micro_destroy(&m);
    return rc;
}

static worker_status_t post_feedback(first_t *f, worker_error_t *err)
{
    return WORKER_MPI(MPI_Irecv(f->feedback, 2, MPI_INT64_T, f->st->n_stages - 1, TAG_FEEDBACK,
                                f->st->comm, &f->feedback_request), err);
}

/* Generation tokens fed back by the last stage. */
static worker_status_t poll_feedback(first_t *f, worker_error_t *err)
{
    if (f->st->n_stages == 1)
        return WORKER_OK;
    worker_status_t rc = WORKER_OK;
    int done = 0;
    while (f->feedback_request != MPI_REQUEST_NULL) {
        if ((rc = WORKER_MPI(MPI_Test(&f->feedback_request, &done, MPI_STATUS_IGNORE), err)))
            return rc;
        if (!done)
            return WORKER_OK;
        f->last_work_us = worker_now_us();
        first_job_token(f, (uint64_t)f->feedback[0], f->feedback[1]);
        if ((rc = post_feedback(f, err)))
            return rc;
    }
    return WORKER_OK;
}

/* The shutdown packet through the ring, then every send completed. */
static worker_status_t shutdown_pipeline(first_t *f, worker_error_t *err)
{
    worker_status_t rc = WORKER_OK;
    if (f->st->n_stages > 1) {
        worker_micro_t *m = worker_micro_new(MICRO_SHUTDOWN, 0, 0, 0, false, false, false);
        if (!m || shard_acts_reserve(m->acts, 0, 0, f->st->config->emb_dim, 0, NULL)) {
            rc = worker_error_set(err, WORKER_ERR_NOMEM, "shutdown_pipeline: out of memory for "
                                  "the shutdown packet");
        } else {
            m->acts->row_start[0] = 0;
            rc = worker_send_next(f->st, f->slots, &f->next_slot, m, err);
        }
        worker_micro_destroy(&m);
    }
    for (int i = 0; i < 2; i++) {
        worker_status_t waited = WORKER_OK;
        if (f->slots[i].request != MPI_REQUEST_NULL)
            waited = WORKER_MPI(MPI_Wait(&f->slots[i].request, MPI_STATUS_IGNORE),
                                rc == WORKER_OK ? err : NULL);
        if (rc == WORKER_OK)
            rc = waited;
    }
    if (f->feedback_request != MPI_REQUEST_NULL) {
        MPI_Cancel(&f->feedback_request);
        MPI_Request_free(&f->feedback_request);
    }
    return rc;
}

/* Whether the next send slot towards stage 1 is free. A micro-batch is
 * computed only then, so stage 0 never blocks in MPI_Wait on a stage that
 * stopped taking packets, and keeps hearing the broker. */
static worker_status_t send_slot_free(first_t *f, bool *free_out, worker_error_t *err)
{
    *free_out = true;
    MPI_Request *request = &f->slots[f->next_slot].request;
    if (f->st->n_stages == 1 || *request == MPI_REQUEST_NULL)
        return WORKER_OK;
    int done = 0;
    worker_status_t rc = WORKER_MPI(MPI_Test(request, &done, MPI_STATUS_IGNORE), err);
    *free_out = done != 0;
    return rc;
}

static worker_status_t one_round(first_t *f, worker_error_t *err)
{
    const worker_options_t *o = f->st->options;
    const uint64_t now = worker_now_us();
    const uint64_t beat_us = (uint64_t)o->heartbeat_ms * 1000;
    bool can_run = true;
    worker_status_t rc = WORKER_OK;
    if (f->head && (rc = send_slot_free(f, &can_run, err)))
        return rc;
    int timeout_ms = 0;
    if (!f->head) {
        uint64_t since = now - f->last_sent_us;
        timeout_ms = since >= beat_us ? 0 : (int)((beat_us - since) / 1000) + 1;
        if (f->jobs && f->st->n_stages > 1)
            timeout_ms = 0; /* feedback arrives over MPI, not the socket */
        if (timeout_ms > 100)
            timeout_ms = 100; /* look at signals now and then */
    } else if (!can_run) {
        timeout_ms = 1; /* stage 1 is busy: wait for it, listening */
    }
    if ((rc = drain_socket(f, timeout_ms, err)))
        return rc;
    const uint64_t after = worker_now_us();
    if (f->accepting && after - f->last_recv_us > (uint64_t)o->liveness * beat_us) {
        worker_log(f->st->log, WORKER_LOG_WARN, "the broker has been silent for %llu ms: "
                   "reconnecting", (unsigned long long)((after - f->last_recv_us) / 1000));
        if ((rc = worker_link_reconnect(f->st->link, err)) || (rc = first_send_ready(f, err)))
            return rc;
    }
    if ((rc = poll_feedback(f, err)))
        return rc;
    if (f->head && can_run) {
        f->last_work_us = worker_now_us();
        if ((rc = run_queued(f, err)))
            return rc;
    }
    if (worker_now_us() - f->last_sent_us >= beat_us) {
        worker_error_t beat_err;
        if (first_send_heartbeat(f, &beat_err)) /* missed: the next one may go */
            worker_log(f->st->log, WORKER_LOG_DEBUG, "%s", beat_err.message);
    }
    if (f->jobs && f->st->n_stages > 1 && !f->head)
        worker_idle_pause(f->last_work_us);
    return WORKER_OK;
}

static worker_status_t first_open(first_t *f, worker_error_t *err)
{
    worker_stage_t *st = f->st;
    for (int i = 0; i < 2; i++) {
        f->slots[i].request = MPI_REQUEST_NULL;
        f->slots[i].buffer = st->n_stages > 1 ? malloc(st->packet_capacity) : NULL;
        if (st->n_stages > 1 && !f->slots[i].buffer)
            return worker_error_set(err, WORKER_ERR_NOMEM, "worker_run_first: out of memory for "
                                    "packets of %zu bytes", st->packet_capacity);
    }
    worker_status_t rc = WORKER_OK;
    if (st->n_stages > 1 && (rc = post_feedback(f, err)))
        return rc;
    if ((rc = worker_link_watch_handshakes(st->link, err)) || (rc = first_build_ready(f, err)) ||
        (rc = first_send_ready(f, err)))
        return rc;
    return WORKER_OK;
}

worker_status_t worker_run_first(worker_stage_t *st, worker_error_t *err)
{
    first_t f = {.st = st, .accepting = true, .feedback_request = MPI_REQUEST_NULL};
    worker_status_t rc = first_open(&f, err);
    while (rc == WORKER_OK) {
        if (atomic_load(st->stop) && f.accepting) {
            worker_log(st->log, WORKER_LOG_INFO, "stopping: draining %s",
                       f.head || f.jobs ? "work in flight" : "nothing");
            worker_error_t bye_err;
            if (first_send_disconnect(&f, "worker stopping", &bye_err))
                worker_log(st->log, WORKER_LOG_WARN, "%s", bye_err.message);
            f.accepting = false;
        }
        if (!f.accepting && !f.head && !f.jobs)
            break;
        rc = one_round(&f, err);
    }
    /* A stalled ring cannot drain (a send to a hung rank never completes):
     * the caller ends the job at once, the buffers MPI may still read are
     * left to the process's end. */
    if (f.stalled)
        return rc;
    worker_error_t shutdown_err;
    worker_status_t down = shutdown_pipeline(&f, rc == WORKER_OK ? err : &shutdown_err);
    if (rc == WORKER_OK)
        rc = down;
    for (worker_micro_t *m; (m = first_dequeue(&f));)
        worker_micro_destroy(&m);
    first_jobs_free(&f);
    for (int i = 0; i < 2; i++)
        free(f.slots[i].buffer);
    free(f.lang_codes);
    return rc;
}
