/* first.c: stage 0. Talks to the broker, turns Batches into micro-batches,
 * runs the first layers and feeds the pipeline; drives greedy generation. */
#include "stage.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* A greedy generation in progress: one micro-batch per step. */
typedef struct gen_job {
    uint64_t id;
    worker_prepared_t prep; /* the prompt row; item addresses the reply */
    int64_t *ids, *langs;   /* [prompt + steps] */
    int64_t len, total;
    bool in_flight;
    struct gen_job *next;
} gen_job_t;

typedef struct queued {
    worker_micro_t *micro;
    struct queued *next;
} queued_t;

typedef struct {
    worker_stage_t *st;
    Xlm__Ready ready;
    char **lang_codes;
    Xlm__Task tasks[PROTO_TASK_COUNT_];
    queued_t *head, *tail;
    gen_job_t *jobs;
    uint64_t job_counter;
    slot_t slots[2];
    int next_slot;
    int64_t feedback[2];
    MPI_Request feedback_request;
    uint64_t last_sent_us, last_recv_us;
    uint64_t last_work_us; /* last feedback or compute: paces idle polling */
    bool accepting;
    bool refused; /* the broker will not take this pipeline: stop */
} first_t;

/* ------------------------------------------------------------ broker */

/* served[h]: the pipeline runs head h. Stage 0 of several does not hold
 * the heads: the engine reads the checkpoint's from one open of its head
 * tensors. A checkpoint that cannot be probed serves no head. */
static void heads_served(const worker_stage_t *st, bool served[SHARD_HEAD_COUNT_])
{
    if (st->n_stages == 1) {
        for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
            served[h] = shard_model_has_head(st->model, (shard_head_t)h);
        return;
    }
    shard_error_t err = {0};
    if (shard_model_probe_heads(st->options->model_dir, served, &err))
        worker_log(WORKER_LOG_ERROR, "probing the heads of %s: %s", st->options->model_dir,
                   err.message);
}

/* Pseudo-log-likelihood needs a masked LM: on a causal checkpoint it is
 * refused, as xlm-score refuses it in process. clm_score stays served on
 * every LM, as xlm-infer computes it for any checkpoint with the LM head. */
static bool task_suits_model(proto_task_t task, const shard_config_t *c)
{
    return task != PROTO_TASK_MLM_PLL || !c->causal;
}

static int build_ready(first_t *f)
{
    const worker_stage_t *st = f->st;
    const shard_config_t *c = st->config;
    xlm__ready__init(&f->ready);
    f->ready.model = (char *)st->options->name;
    f->ready.n_stages = (uint32_t)st->n_stages;
    f->ready.credit = st->options->credit ? st->options->credit : (uint32_t)st->n_stages + 1;
    f->ready.max_batch_tokens = st->options->max_batch_tokens;
    f->ready.vocab_size = c->vocab_size;
    f->ready.max_position_embeddings = c->max_position_embeddings;
    f->ready.n_langs = c->n_langs;
    f->ready.heartbeat_ms = st->options->heartbeat_ms;
    f->ready.instance = st->instance;
    f->ready.precision = (char *)shard_precision_name((shard_precision_t)st->options->precision);
    bool named = false;
    for (int64_t i = 0; i < c->n_langs; i++)
        named |= c->lang_names[i][0] != '\0';
    if (named) {
        f->lang_codes = calloc((size_t)c->n_langs, sizeof *f->lang_codes);
        if (!f->lang_codes)
            return -1;
        for (int64_t i = 0; i < c->n_langs; i++)
            f->lang_codes[i] = (char *)c->lang_names[i];
        f->ready.n_lang_codes = (size_t)c->n_langs;
        f->ready.lang_codes = f->lang_codes;
    }
    /* A task is served when the model has the head its engine call needs
     * (worker/tasks.c); the heads are probed once. */
    bool served[SHARD_HEAD_COUNT_];
    heads_served(st, served);
    size_t n = 0;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++) {
        const worker_task_t *wt = worker_task(t);
        if (wt && served[wt->head] && task_suits_model(wt->task, c))
            f->tasks[n++] = (Xlm__Task)wt->task;
    }
    f->ready.n_tasks = n;
    f->ready.tasks = f->tasks;
    return 0;
}

static int send_body(first_t *f, Xlm__WorkerMessage *msg)
{
    int rc = worker_link_send(f->st->link, msg, NULL, NULL, 0);
    f->last_sent_us = worker_now_us();
    return rc;
}

static int send_ready(first_t *f)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &f->ready;
    worker_log(WORKER_LOG_INFO, "registering %s with the broker (credit %u)", f->st->pipeline_id,
               f->ready.credit);
    f->last_recv_us = worker_now_us();
    return send_body(f, &msg);
}

static int send_heartbeat(first_t *f)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
    heartbeat.heartbeat_ms = f->st->options->heartbeat_ms;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &heartbeat;
    return send_body(f, &msg);
}

static int send_disconnect(first_t *f, const char *reason)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = (char *)reason;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    return send_body(f, &msg);
}

/* ------------------------------------------------------------ batches */

static void enqueue(first_t *f, worker_micro_t *m)
{
    queued_t *q = calloc(1, sizeof *q);
    if (!q) {
        worker_log(WORKER_LOG_ERROR, "out of memory queueing micro-batch %llu",
                   (unsigned long long)m->micro_id);
        worker_micro_destroy(&m);
        return;
    }
    q->micro = m;
    if (f->tail)
        f->tail->next = q;
    else
        f->head = q;
    f->tail = q;
}

static bool same_signature(const worker_prepared_t *a, const worker_prepared_t *b)
{
    return (a->langs != NULL) == (b->langs != NULL) && (a->types != NULL) == (b->types != NULL);
}

bool worker_fits_budget(const worker_prepared_t *p, uint64_t budget)
{
    return (uint64_t)p->tokens <= budget &&
           (uint64_t)(p->item.rows * p->item.seq) <= PROTO_PADDED_FACTOR * budget;
}

size_t worker_group_end(const worker_prepared_t *preps, size_t first, size_t n, uint64_t budget)
{
    size_t end = first + 1;
    int64_t rows = preps[first].item.rows, seq = preps[first].item.seq;
    int64_t tokens = preps[first].tokens;
    while (end < n && preps[end].item.task != PROTO_TASK_GENERATE &&
           same_signature(&preps[first], &preps[end])) {
        const int64_t longer = preps[end].item.seq > seq ? preps[end].item.seq : seq;
        if ((uint64_t)(tokens + preps[end].tokens) > budget ||
            (uint64_t)((rows + preps[end].item.rows) * longer) > PROTO_PADDED_FACTOR * budget)
            break;
        rows += preps[end].item.rows;
        tokens += preps[end].tokens;
        seq = longer;
        end++;
    }
    return end;
}

/* Micro-batch of prepared requests [first, end) (same signature). */
static worker_micro_t *build_micro(first_t *f, worker_prepared_t *preps, size_t first, size_t end)
{
    int64_t rows = 0, seq = 0;
    bool p_mask = false;
    for (size_t i = first; i < end; i++) {
        rows += preps[i].item.rows;
        seq = preps[i].item.seq > seq ? preps[i].item.seq : seq;
        p_mask |= preps[i].p_mask != NULL;
    }
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, rows, seq, (int)(end - first),
                                         preps[first].langs != NULL, preps[first].types != NULL,
                                         p_mask);
    if (!m)
        return NULL;
    m->micro_id = ++f->st->micro_counter;
    m->n_stages = f->st->n_stages;
    int64_t row = 0;
    for (size_t i = first; i < end; i++) {
        worker_prepared_t *p = &preps[i];
        const int64_t n = p->item.seq;
        for (int64_t r = 0; r < p->item.rows; r++) {
            const int64_t src = r * n, dst = (row + r) * seq;
            memcpy(m->input_ids + dst, p->ids + src, (size_t)n * sizeof(int64_t));
            for (int64_t s = n; s < seq; s++)
                m->input_ids[dst + s] = f->st->config->pad_index;
            memcpy(m->attention_mask + dst, p->mask + src, (size_t)n * sizeof(int64_t));
            memcpy(m->position_ids + dst, p->positions + src, (size_t)n * sizeof(int64_t));
            if (p->langs)
                memcpy(m->langs + dst, p->langs + src, (size_t)n * sizeof(int64_t));
            if (p->types)
                memcpy(m->token_type_ids + dst, p->types + src, (size_t)n * sizeof(int64_t));
            if (p->p_mask)
                memcpy(m->p_mask + dst, p->p_mask + src, (size_t)n * sizeof(float));
        }
        m->items[i - first] = p->item;
        m->items[i - first].row0 = row;
        p->item.windows = NULL; /* moved into the micro-batch */
        p->item.copies = NULL;
        row += p->item.rows;
    }
    return m;
}

static void start_job(first_t *f, worker_prepared_t *p)
{
    gen_job_t *job = calloc(1, sizeof *job);
    const int64_t total = p->item.seq + p->steps;
    if (job) {
        job->ids = calloc((size_t)total, sizeof *job->ids);
        job->langs = p->langs ? calloc((size_t)total, sizeof *job->langs) : NULL;
    }
    if (!job || !job->ids || (p->langs && !job->langs)) {
        worker_log(WORKER_LOG_ERROR, "out of memory starting a generation");
        if (job) {
            free(job->ids);
            free(job->langs);
        }
        free(job);
        worker_prepared_clear(p);
        return;
    }
    job->id = ++f->job_counter;
    job->prep = *p;
    memset(p, 0, sizeof *p);
    job->len = job->prep.item.seq;
    job->total = total;
    memcpy(job->ids, job->prep.ids, (size_t)job->len * sizeof *job->ids);
    for (int64_t i = 0; job->langs && i < total; i++)
        job->langs[i] = i < job->len ? job->prep.langs[i] : job->prep.lang_fill;
    job->next = f->jobs;
    f->jobs = job;
}

/* The micro-batch of a generation's next step: the sequence so far, run as
 * given (its default mask, positions 0..len-1). */
static void enqueue_step(first_t *f, gen_job_t *job)
{
    const bool types = job->prep.types != NULL;
    worker_micro_t *m = worker_micro_new(MICRO_GENERATE, 1, job->len, 1, job->langs != NULL, types,
                                         false);
    if (!m) {
        worker_log(WORKER_LOG_ERROR, "out of memory for a generation step");
        return;
    }
    m->micro_id = ++f->st->micro_counter;
    m->n_stages = f->st->n_stages;
    memcpy(m->input_ids, job->ids, (size_t)job->len * sizeof(int64_t));
    shard_default_mask(f->st->config, job->ids, job->len, m->attention_mask);
    for (int64_t s = 0; s < job->len; s++)
        m->position_ids[s] = s;
    if (job->langs)
        memcpy(m->langs, job->langs, (size_t)job->len * sizeof(int64_t));
    m->items[0] = job->prep.item;
    m->items[0].windows = NULL; /* the job keeps the prompt's */
    m->items[0].copies = NULL;
    m->items[0].row0 = 0;
    m->items[0].rows = 1;
    m->items[0].seq = job->len;
    m->items[0].gen_job = job->id;
    job->in_flight = true;
    enqueue(f, m);
}

static void reply_error(first_t *f, uint64_t batch_id, uint64_t ticket, const char *id,
                        proto_status_t status, const char *message, uint32_t credit)
{
    worker_item_t item = {.ticket = ticket, .batch_id = batch_id, .credit = credit,
                          .received_us = worker_now_us()};
    snprintf(item.id, sizeof item.id, "%s", id ? id : "");
    worker_reply_t reply;
    if (worker_reply_pack(&reply, &item, status, message, NULL, NULL, NULL, 0, 0, 0) == 0)
        worker_replies_send(f->st->link, &reply, 1, NULL, 0);
}

static void handle_batch(first_t *f, const Xlm__Batch *batch, uint8_t **frames, size_t *sizes,
                         size_t n_frames)
{
    const uint64_t now = worker_now_us();
    const size_t n = batch->n_tickets;
    worker_prepared_t *preps = calloc(n ? n : 1, sizeof *preps);
    size_t n_prepared = 0;
    if (!f->accepting || !preps || n_frames != n) {
        for (size_t i = 0; i < n; i++)
            reply_error(f, batch->batch_id, batch->tickets[i], NULL,
                        f->accepting ? PROTO_STATUS_INTERNAL : PROTO_STATUS_UNAVAILABLE,
                        f->accepting ? "the worker could not take the batch" : "the worker is stopping",
                        i + 1 == n);
        free(preps);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Xlm__ClientMessage *cm = NULL;
        proto_error_t perr;
        proto_error_clear(&perr);
        char message[PROTO_ERROR_MAX] = "";
        proto_status_t status = proto_client_decode(frames[i], sizes[i], PROTO_DEFAULT_LIMIT, &cm,
                                                    NULL, &perr);
        if (status == PROTO_STATUS_OK && cm->body_case != XLM__CLIENT_MESSAGE__BODY_REQUEST)
            status = proto_error_set(&perr, PROTO_STATUS_MALFORMED, "batch frame %zu is not a request", i);
        if (status == PROTO_STATUS_OK)
            status = proto_request_check_model(cm->request, &f->ready, &perr);
        worker_prepared_t *p = &preps[n_prepared];
        p->item = (worker_item_t){.ticket = batch->tickets[i], .batch_id = batch->batch_id,
                                  .queue_us = i < batch->n_queue_us ? batch->queue_us[i] : 0,
                                  .received_us = now};
        if (status == PROTO_STATUS_OK)
            status = worker_prepare(p, f->st, cm->request, message, sizeof message);
        else
            snprintf(message, sizeof message, "%s", perr.message);
        if (status != PROTO_STATUS_OK) {
            /* The credit travels with the Batch's last reply. */
            bool last_of_batch = i + 1 == n && n_prepared == 0;
            reply_error(f, batch->batch_id, batch->tickets[i],
                        cm ? cm->request->id : perr.id, status, message, last_of_batch);
            worker_prepared_clear(p);
        } else {
            n_prepared++;
        }
        proto_client_free(&cm);
    }
    if (n_prepared)
        preps[n_prepared - 1].item.credit = 1;
    for (size_t first = 0; first < n_prepared;) {
        if (preps[first].item.task == PROTO_TASK_GENERATE) {
            start_job(f, &preps[first]);
            enqueue_step(f, f->jobs);
            first++;
            continue;
        }
        /* Requests of one signature share a micro-batch while its tokens
         * fit the stages' budget (padded positions: PROTO_PADDED_FACTOR x). */
        const uint64_t budget = f->st->batch_tokens;
        if (!worker_fits_budget(&preps[first], budget)) {
            char message[PROTO_ERROR_MAX];
            snprintf(message, sizeof message, "%lld rows of up to %lld tokens exceed the worker's "
                     "%llu tokens per micro-batch", (long long)preps[first].item.rows,
                     (long long)preps[first].item.seq, (unsigned long long)budget);
            reply_error(f, batch->batch_id, preps[first].item.ticket, preps[first].item.id,
                        PROTO_STATUS_TOO_LARGE, message, preps[first].item.credit);
            first++;
            continue;
        }
        const size_t end = worker_group_end(preps, first, n_prepared, budget);
        worker_micro_t *m = build_micro(f, preps, first, end);
        if (m) {
            enqueue(f, m);
        } else {
            for (size_t i = first; i < end; i++)
                reply_error(f, batch->batch_id, preps[i].item.ticket, preps[i].item.id,
                            PROTO_STATUS_INTERNAL, "out of memory", preps[i].item.credit);
        }
        first = end;
    }
    for (size_t i = 0; i < n_prepared; i++)
        worker_prepared_clear(&preps[i]);
    free(preps);
}

static void handle_message(first_t *f, Xlm__WorkerMessage *msg, uint8_t **frames, size_t *sizes,
                           size_t n_frames)
{
    f->last_recv_us = worker_now_us();
    switch (msg->body_case) {
    case XLM__WORKER_MESSAGE__BODY_BATCH:
        handle_batch(f, msg->batch, frames, sizes, n_frames);
        break;
    case XLM__WORKER_MESSAGE__BODY_DISCONNECT:
        if (msg->disconnect->refused) {
            /* Registering again would be refused again (or evict a live
             * pipeline): a start-up failure the operator must fix. */
            worker_log(WORKER_LOG_ERROR, "the broker refused pipeline %s: %s; give each worker "
                       "job its own ids (--pipeline-prefix)", f->st->pipeline_id,
                       msg->disconnect->reason);
            f->refused = true;
            break;
        }
        worker_log(WORKER_LOG_WARN, "the broker asked to re-register: %s", msg->disconnect->reason);
        if (f->accepting)
            send_ready(f);
        break;
    default: /* heartbeats and cancels: being heard is what counts */
        break;
    }
}

/* ------------------------------------------------------------ generation */

static gen_job_t *find_job(first_t *f, uint64_t id, gen_job_t ***link_out)
{
    gen_job_t **link = &f->jobs;
    for (; *link; link = &(*link)->next)
        if ((*link)->id == id) {
            *link_out = link;
            return *link;
        }
    return NULL;
}

static void finish_job(first_t *f, gen_job_t *job, gen_job_t **link, int64_t token)
{
    proto_status_t status = PROTO_STATUS_OK;
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    int64_t shape_all[2] = {1, job->total}, shape_new[2] = {1, job->prep.steps};
    shard_tensor_t *all = NULL, *fresh = NULL;
    if (token < 0 || !(all = shard_outputs_add(&outputs, "generated_ids", SHARD_I64, 2, shape_all, &err)) ||
        !(fresh = shard_outputs_add(&outputs, "new_ids", SHARD_I64, 2, shape_new, &err))) {
        status = PROTO_STATUS_INTERNAL;
    } else {
        memcpy(all->i64, job->ids, (size_t)job->total * sizeof(int64_t));
        memcpy(fresh->i64, job->ids + job->prep.item.seq, (size_t)job->prep.steps * sizeof(int64_t));
    }
    worker_reply_t reply;
    if (worker_reply_pack(&reply, &job->prep.item, status,
                          status ? "the generation failed" : NULL, &outputs, NULL, NULL, 0,
                          (uint64_t)job->total, 1) == 0)
        worker_replies_send(f->st->link, &reply, 1, NULL, 0);
    shard_outputs_clear(&outputs);
    *link = job->next;
    worker_prepared_clear(&job->prep);
    free(job->ids);
    free(job->langs);
    free(job);
}

static void on_token(first_t *f, uint64_t job_id, int64_t token)
{
    gen_job_t **link = NULL;
    gen_job_t *job = find_job(f, job_id, &link);
    if (!job)
        return;
    job->in_flight = false;
    if (token >= 0)
        job->ids[job->len++] = token;
    if (token < 0 || job->len == job->total)
        finish_job(f, job, link, token);
    else
        enqueue_step(f, job);
}

/* ------------------------------------------------------------ compute */

static int run_queued(first_t *f)
{
    queued_t *q = f->head;
    f->head = q->next;
    if (!f->head)
        f->tail = NULL;
    worker_micro_t *m = q->micro;
    free(q);
    worker_stage_t *st = f->st;
    shard_inputs_t in = worker_micro_inputs(m);
    shard_error_t err = {0};
    uint64_t start = worker_now_us();
    m->started_us = start;
    int rc = 0;
    if (shard_embed(st->model, st->state, &in, m->acts, &err) ||
        shard_run_layers(st->model, st->state, m->acts, &err)) {
        /* Inputs were checked per request: a failure here is ours. */
        worker_log(WORKER_LOG_ERROR, "micro-batch %llu: %s", (unsigned long long)m->micro_id, err.message);
        for (int i = 0; i < m->n_items; i++) {
            if (m->kind == MICRO_GENERATE) {
                on_token(f, m->items[i].gen_job, -1);
                continue;
            }
            reply_error(f, m->items[i].batch_id, m->items[i].ticket, m->items[i].id,
                        PROTO_STATUS_INTERNAL, err.message, m->items[i].credit);
        }
        worker_micro_destroy(&m);
        return 0;
    }
    m->stage_us[0] = worker_now_us() - start;
    if (st->n_stages > 1) {
        rc = worker_send_next(st, f->slots, &f->next_slot, m);
    } else {
        int64_t token = -1;
        rc = worker_finish_micro(st, m, &token);
        if (m->kind == MICRO_GENERATE)
            on_token(f, m->items[0].gen_job, token);
    }
    worker_micro_destroy(&m);
    return rc;
}

static int poll_feedback(first_t *f)
{
    if (f->st->n_stages == 1)
        return 0;
    int done = 0;
    while (f->feedback_request != MPI_REQUEST_NULL) {
        if (WORKER_MPI(MPI_Test(&f->feedback_request, &done, MPI_STATUS_IGNORE)))
            return -1;
        if (!done)
            return 0;
        f->last_work_us = worker_now_us();
        on_token(f, (uint64_t)f->feedback[0], f->feedback[1]);
        if (WORKER_MPI(MPI_Irecv(f->feedback, 2, MPI_INT64_T, f->st->n_stages - 1, TAG_FEEDBACK,
                                 f->st->comm, &f->feedback_request)))
            return -1;
    }
    return 0;
}

static int shutdown_pipeline(first_t *f)
{
    int rc = 0;
    if (f->st->n_stages > 1) {
        worker_micro_t *m = worker_micro_new(MICRO_SHUTDOWN, 0, 0, 0, false, false, false);
        if (!m || shard_acts_reserve(m->acts, 0, 0, f->st->config->emb_dim, 0, NULL))
            rc = -1;
        else {
            m->acts->row_start[0] = 0;
            rc = worker_send_next(f->st, f->slots, &f->next_slot, m);
        }
        worker_micro_destroy(&m);
    }
    for (int i = 0; i < 2; i++)
        if (f->slots[i].request != MPI_REQUEST_NULL &&
            WORKER_MPI(MPI_Wait(&f->slots[i].request, MPI_STATUS_IGNORE)))
            rc = -1;
    if (f->feedback_request != MPI_REQUEST_NULL) {
        MPI_Cancel(&f->feedback_request);
        MPI_Request_free(&f->feedback_request);
    }
    return rc;
}

/* Handles every message waiting on the socket (the first one waited for up
 * to timeout_ms), so that the broker's silence is judged on all it sent. */
static void drain_socket(first_t *f, int timeout_ms)
{
    for (int got = 1; got > 0; timeout_ms = 0) {
        Xlm__WorkerMessage *msg = NULL;
        uint8_t **frames = NULL;
        size_t *sizes = NULL, n_frames = 0;
        got = worker_link_recv(f->st->link, timeout_ms, &msg, &frames, &sizes, &n_frames);
        if (got > 0)
            handle_message(f, msg, frames, sizes, n_frames);
        proto_worker_free(&msg);
        worker_link_frames_free(frames, sizes, n_frames);
    }
}

static int one_round(first_t *f)
{
    const worker_options_t *o = f->st->options;
    const uint64_t now = worker_now_us();
    const uint64_t beat_us = (uint64_t)o->heartbeat_ms * 1000;
    int timeout_ms = 0;
    if (!f->head) {
        uint64_t since = now - f->last_sent_us;
        timeout_ms = since >= beat_us ? 0 : (int)((beat_us - since) / 1000) + 1;
        if (f->jobs && f->st->n_stages > 1)
            timeout_ms = 0; /* feedback arrives over MPI, not the socket */
        if (timeout_ms > 100)
            timeout_ms = 100; /* look at signals now and then */
    }
    drain_socket(f, timeout_ms);
    if (f->refused)
        return -1;
    const uint64_t after = worker_now_us();
    if (f->accepting && after - f->last_recv_us > (uint64_t)o->liveness * beat_us) {
        worker_log(WORKER_LOG_WARN, "the broker has been silent for %llu ms: reconnecting",
                   (unsigned long long)((after - f->last_recv_us) / 1000));
        if (worker_link_reconnect(f->st->link) || send_ready(f))
            return -1;
    }
    if (poll_feedback(f))
        return -1;
    if (f->head) {
        f->last_work_us = worker_now_us();
        if (run_queued(f))
            return -1;
    }
    if (worker_now_us() - f->last_sent_us >= beat_us)
        send_heartbeat(f);
    if (f->jobs && f->st->n_stages > 1 && !f->head)
        worker_idle_pause(f->last_work_us);
    return 0;
}

/* ------------------------------------------------------------ heartbeats */

/* A micro-batch may compute for longer than the broker waits for a sign of
 * life; this thread keeps the pipeline's heartbeat going meanwhile, on a
 * socket of its own (the broker judges liveness by pipeline id). It never
 * touches MPI. */
typedef struct {
    void *context;
    const char *endpoint, *pipeline;
    uint32_t heartbeat_ms;
    atomic_int stop;
    pthread_t thread;
    bool started;
} beat_t;

static void *beat_main(void *arg)
{
    beat_t *beat = arg;
    worker_link_t *link = worker_link_new(beat->context, beat->endpoint, beat->pipeline);
    while (link && !atomic_load(&beat->stop)) {
        Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
        Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
        heartbeat.heartbeat_ms = beat->heartbeat_ms;
        msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
        msg.heartbeat = &heartbeat;
        worker_link_send(link, &msg, NULL, NULL, 0);
        /* Whatever the broker says to this socket is for the main one. */
        Xlm__WorkerMessage *reply = NULL;
        uint8_t **frames = NULL;
        size_t *sizes = NULL, n_frames = 0;
        if (worker_link_recv(link, (int)beat->heartbeat_ms, &reply, &frames, &sizes, &n_frames) > 0)
            proto_worker_free(&reply);
        worker_link_frames_free(frames, sizes, n_frames);
    }
    worker_link_destroy(&link);
    return NULL;
}

int worker_run_first(worker_stage_t *st)
{
    first_t f = {.st = st, .accepting = true, .feedback_request = MPI_REQUEST_NULL};
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        f.slots[i].request = MPI_REQUEST_NULL;
        f.slots[i].buffer = st->n_stages > 1 ? malloc(st->packet_capacity) : NULL;
        if (st->n_stages > 1 && !f.slots[i].buffer)
            rc = -1;
    }
    if (rc == 0 && st->n_stages > 1)
        rc = WORKER_MPI(MPI_Irecv(f.feedback, 2, MPI_INT64_T, st->n_stages - 1, TAG_FEEDBACK,
                                  st->comm, &f.feedback_request));
    if (rc == 0 && (build_ready(&f) || send_ready(&f)))
        rc = -1;
    beat_t beat = {st->zmq_context, st->options->broker, st->pipeline_id,
                   st->options->heartbeat_ms, 0, 0, false};
    if (rc == 0)
        beat.started = pthread_create(&beat.thread, NULL, beat_main, &beat) == 0;
    while (rc == 0) {
        if (atomic_load(st->stop) && f.accepting) {
            worker_log(WORKER_LOG_INFO, "stopping: draining %s", f.head || f.jobs ? "work in flight" : "nothing");
            send_disconnect(&f, "worker stopping");
            f.accepting = false;
        }
        if (!f.accepting && !f.head && !f.jobs)
            break;
        rc = one_round(&f);
    }
    atomic_store(&beat.stop, 1);
    if (beat.started)
        pthread_join(beat.thread, NULL);
    if (shutdown_pipeline(&f))
        rc = -1;
    while (f.head) {
        queued_t *q = f.head;
        f.head = q->next;
        worker_micro_destroy(&q->micro);
        free(q);
    }
    while (f.jobs) {
        gen_job_t *job = f.jobs;
        f.jobs = job->next;
        worker_prepared_clear(&job->prep);
        free(job->ids);
        free(job->langs);
        free(job);
    }
    for (int i = 0; i < 2; i++)
        free(f.slots[i].buffer);
    free(f.lang_codes);
    return rc;
}
