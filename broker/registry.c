/* registry.c: models, the pipelines serving them, and the requests they
 * hold; creation, lookup, and the moves between queue and pipelines. */
#include "broker_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ models */

broker_model_t *broker_model_find(const broker_t *b, const char *name)
{
    for (broker_link_t *l = b->models.next; l != &b->models; l = l->next) {
        broker_model_t *m = BROKER_CONTAINER(l, broker_model_t, link);
        if (strcmp(m->name, name) == 0)
            return m;
    }
    return NULL;
}

broker_model_t *broker_model_get_or_add(broker_t *b, const char *name)
{
    broker_model_t *m = broker_model_find(b, name);
    if (m)
        return m;
    m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    snprintf(m->name, sizeof m->name, "%s", name);
    broker_list_init(&m->queue);
    broker_list_init(&m->pipelines);
    broker_list_push_back(&b->models, &m->link);
    b->n_models++;
    for (size_t i = 0; i < b->n_gone; i++) /* back: no longer gone */
        if (strcmp(b->gone[i].name, name) == 0) {
            memmove(&b->gone[i], &b->gone[i + 1], (b->n_gone - i - 1) * sizeof b->gone[0]);
            b->n_gone--;
            break;
        }
    broker_log_peer(b, BROKER_PEER_PIPELINE, BROKER_LOG_INFO, "model '%s' added", name);
    return m;
}

const broker_gone_t *broker_gone_find(const broker_t *b, const char *name)
{
    for (size_t i = 0; i < b->n_gone; i++)
        if (strcmp(b->gone[i].name, name) == 0)
            return &b->gone[i];
    return NULL;
}

broker_model_t *broker_model_default(const broker_t *b)
{
    broker_model_t *live = NULL;
    size_t n_live = 0;
    for (broker_link_t *l = b->models.next; l != &b->models; l = l->next) {
        broker_model_t *m = BROKER_CONTAINER(l, broker_model_t, link);
        if (m->n_pipelines > 0) {
            live = m;
            n_live++;
        }
    }
    if (n_live == 1)
        return live;
    if (n_live == 0 && b->n_models == 1)
        return BROKER_CONTAINER(b->models.next, broker_model_t, link);
    return NULL;
}

/* Frees a request's storage only (no list, no map). */
static void req_free(broker_req_t *r)
{
    zmq_msg_close(&r->body);
    free(r);
}

static void remember_gone(broker_t *b, const broker_model_t *m)
{
    if (b->n_gone == BROKER_GONE_MAX) { /* forget the oldest */
        memmove(&b->gone[0], &b->gone[1], (BROKER_GONE_MAX - 1) * sizeof b->gone[0]);
        b->n_gone--;
    }
    broker_gone_t *g = &b->gone[b->n_gone++];
    snprintf(g->name, sizeof g->name, "%s", m->name);
    snprintf(g->since, sizeof g->since, "%s", m->dead_since);
}

static void model_unregister(broker_t *b, broker_model_t *m)
{
    size_t failed = m->queue_len;
    while (!broker_list_empty(&m->queue)) {
        broker_req_t *r = BROKER_CONTAINER(m->queue.next, broker_req_t, link);
        broker_req_fail(b, r, PROTO_STATUS_UNAVAILABLE, "model '%s': no live pipeline since %s",
                        m->name, m->dead_since);
    }
    broker_log(b, BROKER_LOG_WARN, "model '%s' unregistered: no live pipeline since %s "
               "(--model-grace-ms %u); %zu queued requests answered UNAVAILABLE", m->name,
               m->dead_since, b->config.model_grace_ms, failed);
    remember_gone(b, m);
    broker_list_remove(&m->link);
    b->n_models--;
    proto_worker_free(&m->ready);
    free(m->stages);
    free(m);
}

void broker_models_expire(broker_t *b, int64_t now)
{
    const int64_t grace_us = (int64_t)b->config.model_grace_ms * 1000;
    for (broker_link_t *l = b->models.next, *next; l != &b->models; l = next) {
        next = l->next; /* the model may be freed */
        broker_model_t *m = BROKER_CONTAINER(l, broker_model_t, link);
        if (m->n_pipelines == 0 && m->dead_since_us && now - m->dead_since_us > grace_us)
            model_unregister(b, m);
    }
}

static void pipeline_free(broker_pipeline_t *p)
{
    free(p->stage_seen_us);
    free(p->stage_work);
    free(p);
}

void broker_models_destroy(broker_t *b)
{
    while (!broker_list_empty(&b->models)) {
        broker_model_t *m = BROKER_CONTAINER(b->models.next, broker_model_t, link);
        while (!broker_list_empty(&m->pipelines)) {
            broker_pipeline_t *p = BROKER_CONTAINER(m->pipelines.next, broker_pipeline_t, link);
            while (!broker_list_empty(&p->in_flight)) {
                broker_req_t *r = BROKER_CONTAINER(p->in_flight.next, broker_req_t, link);
                broker_list_remove(&r->link);
                req_free(r);
            }
            broker_list_remove(&p->link);
            pipeline_free(p);
        }
        while (!broker_list_empty(&m->queue)) {
            broker_req_t *r = BROKER_CONTAINER(m->queue.next, broker_req_t, link);
            broker_list_remove(&r->link);
            req_free(r);
        }
        broker_list_remove(&m->link);
        proto_worker_free(&m->ready);
        free(m->stages);
        free(m);
    }
    b->n_models = 0;
    b->pending = 0;
}

void broker_model_record_stages(broker_model_t *m, const uint64_t *stage_us, size_t n,
                                uint64_t packet_bytes)
{
    if (n > m->n_stages) {
        broker_stage_stats_t *stages = realloc(m->stages, n * sizeof *stages);
        if (!stages)
            return; /* statistics only */
        memset(stages + m->n_stages, 0, (n - m->n_stages) * sizeof *stages);
        m->stages = stages;
        m->n_stages = n;
    }
    for (size_t s = 0; s < n; s++) {
        m->stages[s].batches++;
        m->stages[s].total_us += stage_us[s];
        if (stage_us[s] > m->stages[s].max_us)
            m->stages[s].max_us = stage_us[s];
        broker_histogram_observe(&m->stages[s].compute, stage_us[s]);
        if (s > 0)
            m->stages[s].packet_bytes += packet_bytes;
    }
}

/* ------------------------------------------------------------ pipelines */

broker_pipeline_t *broker_pipeline_add(broker_t *b, broker_model_t *m, const char *id,
                                       const uint8_t *identity, size_t identity_len,
                                       const Xlm__Ready *ready)
{
    if (identity_len > BROKER_IDENTITY_MAX)
        return NULL;
    broker_pipeline_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->id, sizeof p->id, "%s", id);
    memcpy(p->identity, identity, identity_len);
    p->identity_len = identity_len;
    p->model = m;
    p->instance = ready->instance;
    p->job = ready->job;
    p->n_stages = ready->n_stages;
    p->stage_seen_us = calloc(p->n_stages, sizeof *p->stage_seen_us);
    p->stage_work = calloc(p->n_stages, sizeof *p->stage_work);
    if (!p->stage_seen_us || !p->stage_work) {
        pipeline_free(p);
        return NULL;
    }
    p->credit = ready->credit;
    p->max_batch_tokens = ready->max_batch_tokens;
    broker_limits_of_ready(p, ready);
    snprintf(p->precision, sizeof p->precision, "%s", ready->precision ? ready->precision : "");
    /* Dead after liveness intervals of the slower side. */
    int64_t interval_ms = b->config.heartbeat_ms;
    if (ready->heartbeat_ms > interval_ms)
        interval_ms = ready->heartbeat_ms;
    p->expiry_us = interval_ms * 1000 * b->config.liveness;
    broker_list_init(&p->in_flight);
    if (broker_map_put(b->pipelines, p->id, strlen(p->id), p) != BROKER_OK) {
        pipeline_free(p);
        return NULL;
    }
    int64_t now = broker_now_us();
    p->last_seen_us = now;
    p->heartbeat_sent_us = now;
    p->progress_us = now;
    broker_list_push_back(&m->pipelines, &p->link);
    m->n_pipelines++;
    m->dead_since_us = 0;
    return p;
}

void broker_pipeline_remove(broker_t *b, broker_pipeline_t *p, const char *why)
{
    broker_model_t *m = p->model;
    size_t requeued = p->n_in_flight;
    /* From the newest to the oldest, each to the front: the queue then
     * starts with them in their original order. */
    while (!broker_list_empty(&p->in_flight)) {
        broker_req_t *r = BROKER_CONTAINER(p->in_flight.prev, broker_req_t, link);
        broker_list_remove(&r->link);
        r->pipeline = NULL;
        broker_list_push_front(&m->queue, &r->link);
        m->queue_len++;
        m->queue_bytes += r->bytes;
        m->in_flight--;
        m->requeued++;
    }
    broker_map_remove(b->pipelines, p->id, strlen(p->id));
    broker_list_remove(&p->link);
    m->n_pipelines--;
    if (m->n_pipelines == 0) {
        m->dead_since_us = broker_now_us();
        broker_iso_time(m->dead_since);
    }
    broker_log_peer(b, BROKER_PEER_PIPELINE, requeued ? BROKER_LOG_WARN : BROKER_LOG_INFO,
                    "pipeline '%s' of model '%s' removed (%s); %zu requests queued again",
                    p->id, m->name, why, requeued);
    pipeline_free(p);
    broker_limits_recompute(m);
}

void broker_pipeline_touch(broker_pipeline_t *p, int64_t now)
{
    p->last_seen_us = now;
}

void broker_pipeline_progressed(broker_pipeline_t *p, int64_t now)
{
    p->progress_us = now;
}

/* ------------------------------------------------------------ requests */

broker_req_t *broker_req_new(broker_t *b, broker_model_t *m, const Xlm__Request *rq,
                             const proto_shape_t *shape, const zmq_msg_t *client,
                             zmq_msg_t *body)
{
    size_t client_len = zmq_msg_size((zmq_msg_t *)client);
    if (client_len > BROKER_IDENTITY_MAX)
        return NULL;
    broker_req_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ticket = b->next_ticket++;
    snprintf(r->id, sizeof r->id, "%s", rq->id);
    memcpy(r->client, zmq_msg_data((zmq_msg_t *)client), client_len);
    r->client_len = client_len;
    r->model = m;
    r->task = (proto_task_t)rq->task;
    r->item.rows = shape->rows;
    r->item.max_len = shape->max_len;
    r->item.tokens = shape->tokens;
    r->item.key = broker_batch_key_of(rq);
    /* proto_task_info says why some tasks are never shared. */
    r->item.alone = !proto_task_info(r->task)->batchable;
    r->positions = broker_request_positions(rq);
    r->received_us = broker_now_us();
    uint32_t deadline_ms = rq->deadline_ms ? rq->deadline_ms : b->config.default_deadline_ms;
    if (deadline_ms > b->config.max_deadline_ms)
        deadline_ms = b->config.max_deadline_ms;
    r->deadline_us = r->received_us + (int64_t)deadline_ms * 1000;
    zmq_msg_init(&r->body);
    zmq_msg_move(&r->body, body);
    r->bytes = zmq_msg_size(&r->body) + sizeof *r;
    broker_list_init(&r->link);
    if (broker_map_put(b->tickets, &r->ticket, sizeof r->ticket, r) != BROKER_OK)
        goto err;
    if (broker_map_put(b->ids, r->id, strlen(r->id), r) != BROKER_OK) {
        broker_map_remove(b->tickets, &r->ticket, sizeof r->ticket);
        goto err;
    }
    broker_list_push_back(&m->queue, &r->link);
    m->queue_len++;
    m->queue_bytes += r->bytes;
    b->pending++;
    if (r->deadline_us < b->next_deadline_us)
        b->next_deadline_us = r->deadline_us;
    return r;
err:
    zmq_msg_move(body, &r->body); /* the caller keeps its message */
    req_free(r);
    return NULL;
}

void broker_req_finish(broker_t *b, broker_req_t *r)
{
    broker_model_t *m = r->model;
    broker_list_remove(&r->link);
    if (r->pipeline) {
        r->pipeline->n_in_flight--;
        m->in_flight--;
    } else {
        m->queue_len--;
        m->queue_bytes -= r->bytes;
    }
    broker_map_remove(b->tickets, &r->ticket, sizeof r->ticket);
    broker_map_remove(b->ids, r->id, strlen(r->id));
    b->pending--;
    req_free(r);
}
