/* fake_worker.c: a worker pipeline without a model, on the real protocol.
 *
 * One thread, one DEALER socket (two with split_reply_socket), the codec for
 * every message. Micro-batches are answered in arrival order, each delay_us
 * after the previous one finished, as one pipeline would. It registers with
 * Ready, heartbeats, gives one credit back with every reply, registers again
 * on Disconnect, and reconnects when the broker has been silent for
 * liveness heartbeats (a restarted broker). */
#include "broker_testing.h"
#include "curve_keys.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct held_batch {
    struct held_batch *next;
    Xlm__WorkerMessage *msg; /* the Batch header */
    zmq_msg_t *frames;
    size_t n_frames;
    int64_t due_us;
} held_batch_t;

struct fake_worker {
    fake_worker_config_t config;
    char endpoint[256], model[PROTO_NAME_MAX + 1], pipeline[PROTO_NAME_MAX + 1];
    pthread_t thread;
    atomic_int stop, mode;
    atomic_ullong requests, batches, registrations, max_batch, max_padding;
    /* Thread-only from here. */
    void *ctx, *sock, *reply_sock;
    held_batch_t *held, *held_tail;
    int64_t last_heard_us, heartbeat_sent_us, busy_until_us;
    uint64_t progress; /* FAKE_WORKER_PROGRESSING: heartbeats sent in that mode */
};

void fake_worker_config_defaults(fake_worker_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->model = "tiny";
    c->pipeline = "fake-0";
    c->credit = 4;
    c->max_batch_tokens = 4096;
    c->vocab_size = 1000;
    c->max_position_embeddings = 64;
    c->n_langs = 2;
    c->n_stages = 2;
    c->heartbeat_ms = 1000;
    c->liveness = 3;
}

static void free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* ------------------------------------------------------------ sending */

static int send_packed(void *sock, Xlm__WorkerMessage *msg, bool more)
{
    uint8_t *data;
    size_t size;
    if (proto_worker_pack(msg, &data, &size, NULL))
        return -1;
    zmq_msg_t frame;
    zmq_msg_init_data(&frame, data, size, free_buffer, NULL);
    if (zmq_msg_send(&frame, sock, more ? ZMQ_SNDMORE : 0) < 0) {
        zmq_msg_close(&frame);
        return -1;
    }
    return 0;
}

static void send_ready(fake_worker_t *w)
{
    static const char *const codes[] = {"en", "fr", "de", "ro"};
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Ready ready = XLM__READY__INIT;
    Xlm__Task tasks[PROTO_TASK_COUNT_];
    size_t n_tasks = 0;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++)
        if (!w->config.tasks_mask || (w->config.tasks_mask & (1u << t)))
            tasks[n_tasks++] = (Xlm__Task)t;
    ready.model = w->model;
    ready.n_stages = w->config.n_stages;
    ready.credit = w->config.credit;
    ready.max_batch_tokens = w->config.max_batch_tokens;
    ready.vocab_size = w->config.vocab_size;
    ready.max_position_embeddings = w->config.max_position_embeddings;
    ready.n_langs = w->config.n_langs;
    ready.n_lang_codes = w->config.n_langs <= 4 ? (size_t)w->config.n_langs : 0;
    ready.lang_codes = (char **)codes;
    ready.n_tasks = n_tasks;
    ready.tasks = tasks;
    ready.heartbeat_ms = (uint32_t)w->config.heartbeat_ms;
    ready.n_layers = w->config.n_layers;
    msg.pipeline = w->pipeline;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &ready;
    if (send_packed(w->sock, &msg, false) == 0)
        atomic_fetch_add(&w->registrations, 1);
}

static void send_simple(fake_worker_t *w, Xlm__WorkerMessage *msg)
{
    msg->pipeline = w->pipeline;
    send_packed(w->sock, msg, false);
}

static void send_heartbeat(fake_worker_t *w)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Heartbeat hb = XLM__HEARTBEAT__INIT;
    hb.heartbeat_ms = (uint32_t)w->config.heartbeat_ms;
    if (atomic_load(&w->mode) == FAKE_WORKER_PROGRESSING)
        hb.progress = ++w->progress;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    send_simple(w, &msg);
}

/* ------------------------------------------------------------ sockets */

static void *open_dealer(fake_worker_t *w)
{
    void *s = zmq_socket(w->ctx, ZMQ_DEALER);
    int linger = 0;
    if (!s)
        return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_client_files(s, w->config.curve_secret, w->config.curve_server, err) != 0) {
        fprintf(stderr, "fake_worker: %s\n", err);
        zmq_close(s);
        return NULL;
    }
    if (zmq_connect(s, w->endpoint) != 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

static void held_free(held_batch_t *h)
{
    for (size_t i = 0; i < h->n_frames; i++)
        zmq_msg_close(&h->frames[i]);
    free(h->frames);
    proto_worker_free(&h->msg);
    free(h);
}

static void drop_held(fake_worker_t *w)
{
    while (w->held) {
        held_batch_t *h = w->held;
        w->held = h->next;
        held_free(h);
    }
    w->held_tail = NULL;
}

/* New sockets and a fresh registration: what a worker does when its broker
 * went away. */
static int reconnect(fake_worker_t *w)
{
    if (w->sock)
        zmq_close(w->sock);
    if (w->reply_sock)
        zmq_close(w->reply_sock);
    w->reply_sock = NULL;
    drop_held(w);
    w->sock = open_dealer(w);
    if (!w->sock)
        return -1;
    if (w->config.split_reply_socket && !(w->reply_sock = open_dealer(w)))
        return -1;
    send_ready(w);
    int64_t now = testing_now_us();
    w->last_heard_us = w->heartbeat_sent_us = now;
    return 0;
}

/* ------------------------------------------------------------ answering */

static void max_store(atomic_ullong *a, unsigned long long v)
{
    unsigned long long cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

/* The fake's answer to one request frame, packed. */
static zmq_msg_t answer(fake_worker_t *w, const zmq_msg_t *frame, const Xlm__Batch *batch,
                        size_t index, Xlm__Status *status_out, proto_shape_t *shape)
{
    Xlm__ClientMessage *cm = NULL;
    proto_error_t err;
    proto_status_t rc = proto_client_decode(zmq_msg_data((zmq_msg_t *)frame),
                                            zmq_msg_size((zmq_msg_t *)frame), PROTO_DEFAULT_LIMIT,
                                            &cm, shape, &err);
    if (rc)
        memset(shape, 0, sizeof *shape);
    Xlm__Response resp = XLM__RESPONSE__INIT;
    Xlm__Timings timings = XLM__TIMINGS__INIT;
    Xlm__Tensor sums = XLM__TENSOR__INIT, lengths = XLM__TENSOR__INIT;
    Xlm__Tensor *outputs[2] = {&sums, &lengths};
    int64_t dims[1] = {0};
    uint64_t stage_us[16] = {0};
    int64_t *sum_data = NULL;
    resp.id = err.id;
    if (!rc && cm->body_case != XLM__CLIENT_MESSAGE__BODY_REQUEST)
        rc = proto_error_set(&err, PROTO_STATUS_BAD_REQUEST, "worker: not a request");
    if (!rc && cm->request->input_case == XLM__REQUEST__INPUT_TOKENS) {
        const Xlm__TokenInput *in = cm->request->tokens;
        for (size_t i = 0; i < in->n_input_ids && !rc; i++)
            if (in->input_ids[i] >= w->config.vocab_size)
                rc = proto_error_set(&err, PROTO_STATUS_BAD_REQUEST,
                                     "worker: input_ids[%zu] = %lld, expected below %lld", i,
                                     (long long)in->input_ids[i], (long long)w->config.vocab_size);
        dims[0] = (int64_t)in->n_lengths;
        sum_data = rc ? NULL : calloc(in->n_lengths, sizeof *sum_data);
        size_t t = 0;
        for (size_t r = 0; sum_data && r < in->n_lengths; r++)
            for (int64_t k = 0; k < in->lengths[r]; k++)
                sum_data[r] += in->input_ids[t++];
        sums.name = "sum_ids";
        sums.n_shape = lengths.n_shape = 1;
        sums.shape = lengths.shape = dims;
        sums.n_i64 = sum_data ? in->n_lengths : 0;
        sums.i64 = sum_data;
        lengths.name = "lengths";
        lengths.n_i64 = sum_data ? in->n_lengths : 0;
        lengths.i64 = in->lengths;
        resp.n_outputs = sum_data ? 2 : 0;
        resp.outputs = outputs;
    }
    resp.status = (Xlm__Status)rc;
    resp.message = rc ? err.message : "";
    size_t n_stages = w->config.n_stages < 16 ? w->config.n_stages : 16;
    for (size_t s = 0; s < n_stages; s++)
        stage_us[s] = (uint64_t)w->config.delay_us / (n_stages ? n_stages : 1);
    timings.queue_us = index < batch->n_queue_us ? batch->queue_us[index] : 0;
    timings.n_stage_us = n_stages;
    timings.stage_us = stage_us;
    timings.batch_requests = (uint32_t)batch->n_tickets;
    resp.timings = &timings;
    Xlm__ServiceMessage sm = XLM__SERVICE_MESSAGE__INIT;
    sm.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    sm.response = &resp;
    uint8_t *data = NULL;
    size_t size = 0;
    zmq_msg_t out;
    if (proto_service_pack(&sm, &data, &size, NULL) == PROTO_STATUS_OK)
        zmq_msg_init_data(&out, data, size, free_buffer, NULL);
    else
        zmq_msg_init(&out);
    *status_out = resp.status;
    free(sum_data);
    proto_client_free(&cm);
    return out;
}

static void reply_batch(fake_worker_t *w, held_batch_t *h)
{
    const Xlm__Batch *batch = h->msg->batch;
    size_t n = batch->n_tickets < h->n_frames ? batch->n_tickets : h->n_frames;
    zmq_msg_t *out = calloc(n ? n : 1, sizeof *out);
    Xlm__Status *statuses = calloc(n ? n : 1, sizeof *statuses);
    uint64_t stage_us[16] = {0};
    if (!out || !statuses)
        goto done;
    int64_t rows = 0, longest = 0, real = 0;
    for (size_t i = 0; i < n; i++) {
        proto_shape_t shape;
        out[i] = answer(w, &h->frames[i], batch, i, &statuses[i], &shape);
        rows += shape.rows;
        real += shape.tokens;
        longest = shape.max_len > longest ? shape.max_len : longest;
    }
    /* Padded-but-empty share of the batch, per mille, for the batching test. */
    if (rows && longest)
        max_store(&w->max_padding, (unsigned long long)((rows * longest - real) * 1000 / (rows * longest)));
    /* Counted before the reply goes: a test that has its answer may read
     * the counts at once (under ASan it won the race). */
    atomic_fetch_add(&w->requests, n);
    atomic_fetch_add(&w->batches, 1);
    max_store(&w->max_batch, n);
    int copies = atomic_load(&w->mode) == FAKE_WORKER_DUPLICATE ? 2 : 1;
    for (int c = 0; c < copies; c++) {
        Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
        Xlm__Reply reply = XLM__REPLY__INIT;
        reply.batch_id = batch->batch_id;
        reply.n_tickets = reply.n_statuses = n;
        reply.tickets = batch->tickets;
        reply.statuses = statuses;
        reply.n_stage_us = w->config.n_stages < 16 ? w->config.n_stages : 16;
        reply.stage_us = stage_us;
        reply.credit = c == 0 ? 1 : 0;
        msg.pipeline = w->pipeline;
        msg.body_case = XLM__WORKER_MESSAGE__BODY_REPLY;
        msg.reply = &reply;
        void *sock = w->reply_sock ? w->reply_sock : w->sock;
        if (send_packed(sock, &msg, n > 0) != 0)
            break;
        for (size_t i = 0; i < n; i++) {
            zmq_msg_t copy;
            zmq_msg_init(&copy);
            zmq_msg_copy(&copy, &out[i]);
            if (zmq_msg_send(&copy, sock, i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
                zmq_msg_close(&copy);
        }
    }
done:
    for (size_t i = 0; out && i < n; i++)
        zmq_msg_close(&out[i]);
    free(out);
    free(statuses);
}

/* ------------------------------------------------------------ receiving */

static void on_batch(fake_worker_t *w, Xlm__WorkerMessage **msg_p, zmq_msg_t *frames, size_t n)
{
    held_batch_t *h = calloc(1, sizeof *h);
    if (!h) {
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        free(frames);
        return;
    }
    h->msg = *msg_p;
    *msg_p = NULL;
    h->frames = frames;
    h->n_frames = n;
    int64_t now = testing_now_us();
    int64_t start = w->busy_until_us > now ? w->busy_until_us : now;
    h->due_us = w->busy_until_us = start + w->config.delay_us;
    if (w->held_tail)
        w->held_tail->next = h;
    else
        w->held = h;
    w->held_tail = h;
}

/* False when there was nothing to read. */
static bool recv_one(fake_worker_t *w)
{
    zmq_msg_t header;
    zmq_msg_init(&header);
    if (zmq_msg_recv(&header, w->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&header);
        return false;
    }
    size_t n = 0, cap = 0;
    zmq_msg_t *frames = NULL;
    for (int more = zmq_msg_more(&header); more;) {
        if (n == cap) {
            zmq_msg_t *grown = realloc(frames, (cap ? 2 * cap : 8) * sizeof *frames);
            if (!grown)
                break; /* test double: the rest of the message is read as the next one */
            frames = grown;
            cap = cap ? 2 * cap : 8;
        }
        zmq_msg_init(&frames[n]);
        zmq_msg_recv(&frames[n], w->sock, 0);
        more = zmq_msg_more(&frames[n]);
        n++;
    }
    Xlm__WorkerMessage *msg = NULL;
    proto_worker_decode(zmq_msg_data(&header), zmq_msg_size(&header), PROTO_DEFAULT_LIMIT, &msg, NULL);
    zmq_msg_close(&header);
    w->last_heard_us = testing_now_us();
    if (msg && msg->body_case == XLM__WORKER_MESSAGE__BODY_BATCH) {
        on_batch(w, &msg, frames, n);
        return true;
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    free(frames);
    if (msg && msg->body_case == XLM__WORKER_MESSAGE__BODY_DISCONNECT &&
        atomic_load(&w->mode) != FAKE_WORKER_SILENT) {
        drop_held(w); /* the broker queued them again */
        send_ready(w);
    }
    proto_worker_free(&msg);
    return true;
}

static void *worker_main(void *arg)
{
    fake_worker_t *w = arg;
    const int64_t hb_us = (int64_t)w->config.heartbeat_ms * 1000;
    while (!atomic_load(&w->stop)) {
        int64_t now = testing_now_us();
        int mode = atomic_load(&w->mode);
        int64_t next = w->heartbeat_sent_us + hb_us;
        const bool holding = mode == FAKE_WORKER_PAUSED || mode == FAKE_WORKER_PROGRESSING;
        if (w->held && !holding && mode != FAKE_WORKER_SILENT && w->held->due_us < next)
            next = w->held->due_us;
        long timeout = (long)((next - now + 999) / 1000);
        zmq_pollitem_t item = {w->sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, timeout < 0 ? 0 : timeout > 20 ? 20 : timeout);
        if (item.revents & ZMQ_POLLIN)
            for (int i = 0; i < 64 && recv_one(w); i++)
                ;
        now = testing_now_us();
        mode = atomic_load(&w->mode); /* it may have changed while polling */
        if (mode == FAKE_WORKER_SILENT) {
            w->last_heard_us = now; /* it is us who are silent */
            continue;
        }
        while (mode != FAKE_WORKER_PAUSED && mode != FAKE_WORKER_PROGRESSING && w->held &&
               w->held->due_us <= now) {
            held_batch_t *h = w->held;
            w->held = h->next;
            if (!w->held)
                w->held_tail = NULL;
            reply_batch(w, h);
            held_free(h);
        }
        if (now - w->heartbeat_sent_us >= hb_us) {
            send_heartbeat(w);
            w->heartbeat_sent_us = now;
        }
        if (now - w->last_heard_us > hb_us * w->config.liveness)
            reconnect(w);
    }
    return NULL;
}

/* ------------------------------------------------------------ control */

fake_worker_t *fake_worker_start(const fake_worker_config_t *config)
{
    fake_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->config = *config;
    snprintf(w->endpoint, sizeof w->endpoint, "%s", config->endpoint);
    snprintf(w->model, sizeof w->model, "%s", config->model);
    snprintf(w->pipeline, sizeof w->pipeline, "%s", config->pipeline);
    w->ctx = zmq_ctx_new();
    if (!w->ctx || reconnect(w) != 0)
        goto err;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        goto err;
    return w;
err:
    if (w->sock)
        zmq_close(w->sock);
    if (w->reply_sock)
        zmq_close(w->reply_sock);
    if (w->ctx)
        zmq_ctx_term(w->ctx);
    free(w);
    return NULL;
}

void fake_worker_stop(fake_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    fake_worker_t *w = *self_p;
    atomic_store(&w->stop, 1);
    pthread_join(w->thread, NULL);
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect d = XLM__DISCONNECT__INIT;
    d.reason = "fake worker stopping";
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &d;
    send_simple(w, &msg);
    drop_held(w);
    zmq_close(w->sock);
    if (w->reply_sock)
        zmq_close(w->reply_sock);
    zmq_ctx_term(w->ctx);
    free(w);
    *self_p = NULL;
}

void fake_worker_set_mode(fake_worker_t *w, fake_worker_mode_t mode)
{
    atomic_store(&w->mode, (int)mode);
}

uint64_t fake_worker_requests(const fake_worker_t *w) { return atomic_load(&w->requests); }
uint64_t fake_worker_batches(const fake_worker_t *w) { return atomic_load(&w->batches); }
uint64_t fake_worker_registrations(const fake_worker_t *w) { return atomic_load(&w->registrations); }
uint64_t fake_worker_max_batch(const fake_worker_t *w) { return atomic_load(&w->max_batch); }
uint64_t fake_worker_max_padding(const fake_worker_t *w) { return atomic_load(&w->max_padding); }
