/* broker.c: construction, the poll loop and its timers, and the graceful
 * stop. The handlers live in frontend.c (clients) and backend.c (workers). */
#include "broker_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

enum { POLL_MAX_MS = 100 }; /* a stop request is seen within this */

void broker_config_defaults(broker_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->heartbeat_ms = 1000;
    c->liveness = 3;
    c->queue_max = 1024;
    c->queue_bytes = (size_t)256 << 20;
    c->max_message_bytes = PROTO_DEFAULT_LIMIT;
    c->max_worker_message_bytes = (size_t)64 << 20;
    c->default_deadline_ms = 30000;
    c->max_deadline_ms = 600000;
    c->spin_us = 100;
    c->dedup_ms = 60000;
    c->dedup_max = 65536;
    c->dedup_bytes = (size_t)256 << 20;
    c->drain_ms = 5000;
    c->startup_grace_ms = 6000;
    c->model_grace_ms = 30000;
    c->batch_scan = 64;
    c->batch_max_requests = 256;
    c->log_level = BROKER_LOG_INFO;
    c->log_window_ms = 10000;
}

static bool config_valid(const broker_config_t *c)
{
    const char *bad = NULL;
    if (!c->frontend || !c->backend)
        bad = "frontend and backend endpoints are required";
    else if (c->heartbeat_ms < 10 || c->heartbeat_ms > 3600000)
        bad = "heartbeat_ms must be 10 to 3600000";
    else if (c->liveness < 1 || c->liveness > 100)
        bad = "liveness must be 1 to 100";
    else if (c->queue_max < 1 || c->queue_bytes < 1)
        bad = "queue_max and queue_bytes must be positive";
    else if (c->max_message_bytes < 64 || c->max_message_bytes > ((size_t)1 << 30))
        bad = "max_message_bytes must be 64 to 1 GiB";
    else if (c->max_worker_message_bytes < 1024 || c->max_worker_message_bytes > ((size_t)1 << 32))
        bad = "max_worker_message_bytes must be 1 KiB to 4 GiB";
    else if (c->default_deadline_ms < 1 || c->max_deadline_ms < c->default_deadline_ms)
        bad = "default_deadline_ms must be positive and at most max_deadline_ms";
    else if (c->batch_scan > 65536 || c->batch_max_requests < 1 ||
             c->batch_max_requests > PROTO_MAX_TICKETS)
        bad = "batch_scan must be at most 65536, batch_max_requests 1 to 65536";
    else if ((int)c->log_level < 0 || c->log_level >= BROKER_LOG_COUNT_)
        bad = "log_level unknown";
    else if (c->log_window_ms < 10 || c->log_window_ms > 3600000)
        bad = "log_window_ms must be 10 to 3600000";
    if (bad)
        broker_log(NULL, BROKER_LOG_ERROR, "broker_new: %s", bad);
    return !bad;
}

static uint64_t random_u64(void)
{
    uint64_t v;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) == (ssize_t)sizeof v)
        return v;
    return (uint64_t)broker_now_us() * 0x9e3779b97f4a7c15ull;
}

/* Binds a ROUTER socket and records the endpoint actually bound. */
static void *bind_router(broker_t *b, int side, const char *endpoint, char *bound, int64_t max_msg)
{
    void *s = zmq_socket(b->ctx, ZMQ_ROUTER);
    int one = 1, linger = 1000;
    if (s && broker_auth_secure(b, s, side) != 0) {
        zmq_close(s);
        return NULL;
    }
    if (!s ||
        zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(s, ZMQ_ROUTER_HANDOVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg) != 0 ||
        zmq_bind(s, endpoint) != 0) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: cannot bind '%s': %s", endpoint,
                   zmq_strerror(errno));
        if (s)
            zmq_close(s);
        return NULL;
    }
    size_t len = BROKER_ENDPOINT_MAX;
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, bound, &len) != 0)
        snprintf(bound, BROKER_ENDPOINT_MAX, "%s", endpoint);
    return s;
}

broker_t *broker_new(const broker_config_t *config)
{
    if (!config || !config_valid(config))
        return NULL;
    broker_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->config = *config;
    broker_list_init(&b->models);
    broker_list_init(&b->done);
    b->tickets = broker_map_new();
    b->ids = broker_map_new();
    b->pipelines = broker_map_new();
    b->done_ids = broker_map_new();
    size_t scan = config->batch_scan + 1;
    b->scratch_items = calloc(scan, sizeof *b->scratch_items);
    b->scratch_reqs = calloc(scan, sizeof *b->scratch_reqs);
    b->scratch_chosen = calloc(scan, sizeof *b->scratch_chosen);
    if (!b->tickets || !b->ids || !b->pipelines || !b->done_ids || !b->scratch_items ||
        !b->scratch_reqs || !b->scratch_chosen) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: out of memory");
        goto err;
    }
    /* Tickets start at random: a reply to a ticket of an earlier broker
     * process (a worker that outlived it) matches nothing here. */
    b->next_ticket = random_u64() >> 1;
    b->next_batch = random_u64() >> 1;
    b->ctx = zmq_ctx_new();
    if (!b->ctx) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: zmq_ctx_new: %s", zmq_strerror(errno));
        goto err;
    }
    if (broker_auth_start(b) != 0)
        goto err;
    /* Past 4x the decoding limit a client's connection is dropped unread;
     * up to it, the client gets a TOO_LARGE reply. A worker's reply frame
     * goes to a client as it is: the client library's own limit. */
    int64_t hard_limit = (int64_t)config->max_message_bytes * 4;
    b->frontend = bind_router(b, BROKER_SIDE_FRONTEND, config->frontend, b->frontend_endpoint,
                              hard_limit);
    b->backend = b->frontend ? bind_router(b, BROKER_SIDE_BACKEND, config->backend,
                                           b->backend_endpoint,
                                           (int64_t)config->max_worker_message_bytes)
                             : NULL;
    if (!b->backend)
        goto err;
    b->started_us = broker_now_us();
    b->next_heartbeat_us = b->started_us + (int64_t)config->heartbeat_ms * 1000;
    b->next_deadline_us = INT64_MAX;
    broker_log(b, BROKER_LOG_INFO, "serving clients on %s, workers on %s", b->frontend_endpoint,
               b->backend_endpoint);
    return b;
err:
    broker_destroy(&b);
    return NULL;
}

void broker_destroy(broker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_t *b = *self_p;
    broker_models_destroy(b);
    broker_done_clear(b);
    broker_map_destroy(&b->tickets);
    broker_map_destroy(&b->ids);
    broker_map_destroy(&b->pipelines);
    broker_map_destroy(&b->done_ids);
    free(b->scratch_items);
    free(b->scratch_reqs);
    free(b->scratch_chosen);
    free(b->frames);
    if (b->frontend)
        zmq_close(b->frontend);
    if (b->backend)
        zmq_close(b->backend);
    broker_auth_destroy(&b->auth);
    if (b->ctx)
        zmq_ctx_term(b->ctx);
    free(b);
    *self_p = NULL;
}

const char *broker_frontend_endpoint(const broker_t *b)
{
    return b->frontend_endpoint;
}

const char *broker_backend_endpoint(const broker_t *b)
{
    return b->backend_endpoint;
}

/* ------------------------------------------------------------ timers */

/* Answers DEADLINE_EXCEEDED to every request past its deadline, queued or
 * in flight, and notes the next deadline. Iterates with the next link saved
 * first: a request may be freed under the cursor. */
static void expire_list(broker_t *b, broker_link_t *head, int64_t now)
{
    for (broker_link_t *l = head->next, *next; l != head; l = next) {
        next = l->next;
        broker_req_t *r = BROKER_CONTAINER(l, broker_req_t, link);
        if (r->deadline_us <= now) {
            r->model->expired++;
            broker_req_fail(b, r, PROTO_STATUS_DEADLINE_EXCEEDED,
                            "deadline passed after %lld ms %s",
                            (long long)(now - r->received_us) / 1000,
                            r->pipeline ? "in a pipeline" : "in the queue");
        } else if (r->deadline_us < b->next_deadline_us) {
            b->next_deadline_us = r->deadline_us;
        }
    }
}

static void expire_deadlines(broker_t *b, int64_t now)
{
    if (now < b->next_deadline_us)
        return;
    b->next_deadline_us = INT64_MAX;
    for (broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        expire_list(b, &m->queue, now);
        for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next)
            expire_list(b, &BROKER_CONTAINER(l, broker_pipeline_t, link)->in_flight, now);
    }
}

static void on_timers(broker_t *b, int64_t now)
{
    expire_deadlines(b, now);
    if (now >= b->next_heartbeat_us) {
        broker_heartbeat(b, now);
        broker_models_expire(b, now);
        broker_done_expire(b, now);
        broker_log_peer_flush(b, now);
        broker_auth_reload(b);
        /* Half an interval: a heartbeat is never more than 1.5 intervals late. */
        b->next_heartbeat_us = now + (int64_t)b->config.heartbeat_ms * 500;
    }
}

static int poll_timeout_ms(const broker_t *b, int64_t now)
{
    int64_t next = b->next_heartbeat_us;
    if (b->next_deadline_us < next)
        next = b->next_deadline_us;
    if (b->stopping && b->drain_until_us < next)
        next = b->drain_until_us;
    int64_t ms = (next - now + 999) / 1000;
    return ms < 0 ? 0 : ms > POLL_MAX_MS ? POLL_MAX_MS : (int)ms;
}

/* ------------------------------------------------------------ stop */

static void begin_stop(broker_t *b)
{
    b->stopping = true;
    b->drain_until_us = broker_now_us() + (int64_t)b->config.drain_ms * 1000;
    broker_log(b, BROKER_LOG_INFO, "stopping: %zu requests held, %u ms to finish them",
               b->pending, b->config.drain_ms);
}

/* Answers UNAVAILABLE to the queued requests of models without pipelines
 * (nobody can finish them) or, when the drain time is over, to all. */
static void hand_back(broker_t *b, bool all)
{
    for (broker_link_t *ml = b->models.next; ml != &b->models; ml = ml->next) {
        broker_model_t *m = BROKER_CONTAINER(ml, broker_model_t, link);
        if (!all && m->n_pipelines > 0)
            continue;
        while (!broker_list_empty(&m->queue))
            broker_req_fail(b, BROKER_CONTAINER(m->queue.next, broker_req_t, link),
                            PROTO_STATUS_UNAVAILABLE,
                            "the broker stopped before this request ran; retry with the same id");
        for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
            broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
            while (!broker_list_empty(&p->in_flight))
                broker_req_fail(b, BROKER_CONTAINER(p->in_flight.next, broker_req_t, link),
                                PROTO_STATUS_UNAVAILABLE,
                                "the broker stopped before this request finished; retry with the same id");
        }
    }
}

/* True when the stop is complete. */
static bool stop_step(broker_t *b, int64_t now)
{
    bool over = now >= b->drain_until_us;
    hand_back(b, over);
    if (b->pending > 0)
        return false;
    broker_backend_disconnect_all(b, "broker stopped");
    broker_log(b, BROKER_LOG_INFO, "stopped: %llu requests received",
               (unsigned long long)b->received);
    return true;
}

/* ------------------------------------------------------------ loop */

broker_status_t broker_run(broker_t *b, const atomic_int *stop)
{
    zmq_pollitem_t items[5] = {
        {b->frontend, 0, ZMQ_POLLIN, 0},
        {b->backend, 0, ZMQ_POLLIN, 0},
    };
    const size_t n_auth = broker_auth_poll_items(b, items + 2);
    const int n_items = 2 + (int)n_auth;
    int64_t active_us = 0;
    for (;;) {
        int64_t now = broker_now_us();
        if (!b->stopping && stop && atomic_load(stop))
            begin_stop(b);
        if (b->stopping && stop_step(b, now))
            return BROKER_OK;
        /* Right after traffic the answer to it is usually on its way: look
         * again without sleeping for a short while, which saves the wake-up
         * of a blocked poll on the round trip. */
        const bool spinning = now - active_us < (int64_t)b->config.spin_us;
        int rc = zmq_poll(items, n_items, spinning ? 0 : poll_timeout_ms(b, now));
        if (rc > 0)
            active_us = broker_now_us();
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            broker_log(b, BROKER_LOG_ERROR, "broker_run: zmq_poll: %s", zmq_strerror(errno));
            return BROKER_ERR_ZMQ;
        }
        if (n_auth)
            broker_auth_handle(b, items + 2, n_auth);
        if (items[1].revents & ZMQ_POLLIN)
            broker_backend_recv(b);
        if (items[0].revents & ZMQ_POLLIN)
            broker_frontend_recv(b);
        on_timers(b, broker_now_us());
    }
}
