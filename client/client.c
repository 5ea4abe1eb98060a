/* client.c: the client object, its window of requests, retries and the
 * receive loop (zguide's mdcliapi.c shape: one DEALER socket, send, poll
 * with a timeout, send again).
 *
 * Nothing runs in the background: replies are read and timers fire inside
 * the library's calls (submit, collect, cancel, stats), so results arrive
 * while the caller waits in collect. A request in the window is in one of
 * the slot states of client_internal.h; every path out of "pending" goes
 * through slot_finish, which is what makes delivery exactly once: a reply
 * for an id not pending finds no pending slot and is dropped.
 */
#include "client_internal.h"
#include "curve_keys.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum { WINDOW_MAX = 65536, ATTEMPTS_MAX = 1000 };

int64_t client_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

xlm_status_t client_fail(xlm_client_t *client, xlm_status_t status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(client->error, sizeof client->error, fmt, args);
    va_end(args);
    return status;
}

static void error_set(xlm_error_t *err, xlm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_set(xlm_error_t *err, xlm_status_t status, const char *fmt, ...)
{
    if (!err)
        return;
    err->code = status;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, args);
    va_end(args);
}

const char *xlm_client_error(const xlm_client_t *client)
{
    return client ? client->error : "xlm_client_error: no client";
}

size_t xlm_client_outstanding(const xlm_client_t *client) { return client ? client->used : 0; }

/* ------------------------------------------------------------ config */

static void config_fill_defaults(xlm_client_config_t *config)
{
    memset(config, 0, sizeof *config);
    config->struct_size = sizeof *config;
    config->window = 64;
    config->attempt_timeout_ms = 5000;
    config->max_attempts = 5;
    config->backoff_ms = 50;
    config->backoff_max_ms = 2000;
    config->deadline_ms = 0;
    config->max_message_bytes = (size_t)64 << 20;
}

void xlm_client_config_defaults_sized(xlm_client_config_t *config, size_t struct_size)
{
    if (!config || struct_size < sizeof config->struct_size)
        return;
    xlm_client_config_t fresh;
    config_fill_defaults(&fresh);
    size_t n = struct_size < sizeof fresh ? struct_size : sizeof fresh;
    fresh.struct_size = n;
    memset(config, 0, struct_size);
    memcpy(config, &fresh, n);
}

bool client_struct_copy(void *ours, size_t our_size, size_t min_size, const void *theirs,
                        const char *fn, const char *what, char *error, size_t error_size)
{
    size_t size = *(const size_t *)theirs;
    if (size < min_size) {
        snprintf(error, error_size, "%s: %s struct_size = %zu, expected at least %zu (set it "
                 "with the struct's init function)", fn, what, size, min_size);
        return false;
    }
    const unsigned char *bytes = theirs;
    for (size_t i = our_size; i < size; i++)
        if (bytes[i]) {
            snprintf(error, error_size, "%s: %s has fields this library (%s) does not know "
                     "(struct_size %zu, ours %zu)", fn, what, XLM_CLIENT_VERSION, size, our_size);
            return false;
        }
    memcpy(ours, theirs, size < our_size ? size : our_size);
    *(size_t *)ours = our_size;
    return true;
}

static bool config_valid(const xlm_client_config_t *c, xlm_error_t *err)
{
    static const char fn[] = "xlm_client_new";
    if (!c || !c->endpoint || !c->endpoint[0])
        error_set(err, XLM_ERR_ARG, "%s: no endpoint, expected e.g. tcp://HOST:PORT", fn);
    else if (c->window < 1 || c->window > WINDOW_MAX)
        error_set(err, XLM_ERR_ARG, "%s: window = %zu, expected 1 to %d", fn, c->window, WINDOW_MAX);
    else if (c->attempt_timeout_ms < 1 || c->attempt_timeout_ms > 86400000)
        error_set(err, XLM_ERR_ARG, "%s: attempt_timeout_ms = %d, expected 1 to 86400000", fn,
                  c->attempt_timeout_ms);
    else if (c->max_attempts < 1 || c->max_attempts > ATTEMPTS_MAX)
        error_set(err, XLM_ERR_ARG, "%s: max_attempts = %d, expected 1 to %d", fn,
                  c->max_attempts, ATTEMPTS_MAX);
    else if (c->backoff_ms < 0 || c->backoff_max_ms < c->backoff_ms || c->backoff_max_ms > 3600000)
        error_set(err, XLM_ERR_ARG,
                  "%s: backoff_ms = %d, backoff_max_ms = %d, expected 0 <= backoff_ms <= "
                  "backoff_max_ms <= 3600000", fn, c->backoff_ms, c->backoff_max_ms);
    else if (c->max_message_bytes < 1024)
        error_set(err, XLM_ERR_ARG, "%s: max_message_bytes = %zu, expected at least 1024", fn,
                  c->max_message_bytes);
    else
        return true;
    return false;
}

/* ------------------------------------------------------------ id index */

static uint64_t hash_id(const char *id)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ull;
    return h;
}

/* Slot number of the request with that id, or -1. */
static int32_t index_find(const xlm_client_t *client, const char *id)
{
    for (size_t i = hash_id(id) & client->index_mask;; i = (i + 1) & client->index_mask) {
        int32_t n = client->index[i];
        if (n < 0 || strcmp(client->slots[n].id, id) == 0)
            return n;
    }
}

static void index_insert(xlm_client_t *client, int32_t n)
{
    size_t i = hash_id(client->slots[n].id) & client->index_mask;
    while (client->index[i] >= 0)
        i = (i + 1) & client->index_mask;
    client->index[i] = n;
}

/* Linear probing removal: shift back the entries that probed past the hole. */
static void index_remove(xlm_client_t *client, int32_t n)
{
    const size_t mask = client->index_mask;
    size_t hole = hash_id(client->slots[n].id) & mask;
    while (client->index[hole] != n)
        hole = (hole + 1) & mask;
    client->index[hole] = -1;
    for (size_t j = (hole + 1) & mask; client->index[j] >= 0; j = (j + 1) & mask) {
        size_t home = hash_id(client->slots[client->index[j]].id) & mask;
        /* The entry at j may move to the hole unless its home lies in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            client->index[hole] = client->index[j];
            client->index[j] = -1;
            hole = j;
        }
    }
}

/* ------------------------------------------------------------ slots */

static int32_t slot_number(const xlm_client_t *client, const client_slot_t *s)
{
    return (int32_t)(s - client->slots);
}

static client_slot_t *slot_take(xlm_client_t *client, const char *id)
{
    int32_t n = client->free_head;
    client_slot_t *s = &client->slots[n];
    client->free_head = s->next;
    memset(s, 0, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->prev = s->next = -1;
    index_insert(client, n);
    client->used++;
    return s;
}

static void slot_release(xlm_client_t *client, client_slot_t *s)
{
    int32_t n = slot_number(client, s);
    index_remove(client, n);
    free(s->message);
    xlm_result_destroy(&s->result);
    memset(s, 0, sizeof *s);
    s->state = SLOT_FREE;
    s->prev = -1;
    s->next = client->free_head;
    client->free_head = n;
    client->used--;
}

static void done_push(xlm_client_t *client, client_slot_t *s)
{
    int32_t n = slot_number(client, s);
    s->next = -1;
    s->prev = client->done_tail;
    if (client->done_tail >= 0)
        client->slots[client->done_tail].next = n;
    else
        client->done_head = n;
    client->done_tail = n;
}

static void done_unlink(xlm_client_t *client, client_slot_t *s)
{
    if (s->prev >= 0)
        client->slots[s->prev].next = s->next;
    else
        client->done_head = s->next;
    if (s->next >= 0)
        client->slots[s->next].prev = s->prev;
    else
        client->done_tail = s->prev;
    s->prev = s->next = -1;
}

static bool slot_pending(const client_slot_t *s)
{
    return s->state == SLOT_SENT || s->state == SLOT_BACKOFF;
}

/* The next time a pending slot needs attention. */
static void schedule(xlm_client_t *client, const client_slot_t *s)
{
    int64_t t = s->due_us;
    if (s->deadline_us && s->deadline_us < t)
        t = s->deadline_us;
    if (t < client->next_timer_us)
        client->next_timer_us = t;
}

/* Takes result (NULL: out of memory, reported by collect). */
static void slot_finish(xlm_client_t *client, client_slot_t *s, xlm_result_t *result)
{
    free(s->message);
    s->message = NULL;
    s->size = 0;
    if (result) {
        result->timings.total_us = (uint64_t)(client_now_us() - s->submitted_us);
        result->timings.attempts = s->attempts;
    }
    s->result = result;
    s->state = SLOT_DONE;
    done_push(client, s);
}

static void finish_local(xlm_client_t *client, client_slot_t *s, xlm_code_t code,
                         const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void finish_local(xlm_client_t *client, client_slot_t *s, xlm_code_t code,
                         const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    xlm_result_t *result = result_local(s->id, code, fmt, args);
    va_end(args);
    slot_finish(client, s, result);
}

/* ------------------------------------------------------------ sending */

/* A full send queue (EAGAIN) is not an error: the attempt's timer sends
 * again. */
static xlm_status_t send_bytes(xlm_client_t *client, const uint8_t *data, size_t size)
{
    if (zmq_send(client->socket, data, size, ZMQ_DONTWAIT) >= 0 || errno == EAGAIN ||
        errno == EINTR)
        return XLM_OK;
    return client_fail(client, XLM_ERR_ZMQ, "xlm_client: send to %s failed: %s",
                       client->endpoint, zmq_strerror(errno));
}

static void send_cancel(xlm_client_t *client, const char *id)
{
    uint8_t *data = NULL;
    size_t size = 0;
    if (client_encode_cancel(client, id, &data, &size) == XLM_OK)
        send_bytes(client, data, size); /* best effort: the broker expires it anyway */
    free(data);
}

static void slot_send(xlm_client_t *client, client_slot_t *s, int64_t now)
{
    s->attempts++;
    s->state = SLOT_SENT;
    s->due_us = now + (int64_t)client->config.attempt_timeout_ms * 1000;
    send_bytes(client, s->message, s->size);
    schedule(client, s);
}

static uint64_t next_random(xlm_client_t *client)
{
    uint64_t x = client->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    client->rng = x;
    return x;
}

/* Exponential backoff after the attempts-th send, capped, with jitter in
 * [wait/2, wait] so that clients refused together do not return together. */
static int64_t backoff_us(xlm_client_t *client, int attempts)
{
    int64_t ms = client->config.backoff_ms;
    for (int i = 1; i < attempts && ms < client->config.backoff_max_ms; i++)
        ms *= 2;
    if (ms > client->config.backoff_max_ms)
        ms = client->config.backoff_max_ms;
    int64_t half = ms / 2;
    ms = half + (int64_t)(next_random(client) % (uint64_t)(ms - half + 1));
    return ms * 1000;
}

/* ------------------------------------------------------------ timers */

static void slot_timer(xlm_client_t *client, client_slot_t *s, int64_t now)
{
    if (s->deadline_us && now >= s->deadline_us) {
        send_cancel(client, s->id);
        finish_local(client, s, XLM_CODE_DEADLINE_EXCEEDED,
                     "xlm_client: no reply within the deadline of %u ms (%d attempts)",
                     s->deadline_ms, s->attempts);
        return;
    }
    if (now < s->due_us)
        return;
    if (s->state == SLOT_SENT && s->attempts >= client->config.max_attempts) {
        send_cancel(client, s->id);
        finish_local(client, s, XLM_CODE_UNAVAILABLE,
                     "xlm_client: no reply from %s after %d attempts of %d ms%s%s", client->endpoint,
                     s->attempts, client->config.attempt_timeout_ms,
                     client->handshake_error[0] ? ": " : "", client->handshake_error);
        return;
    }
    slot_send(client, s, now); /* a timed-out attempt, or the end of a backoff */
}

static void run_timers(xlm_client_t *client, int64_t now)
{
    if (now < client->next_timer_us)
        return;
    client->next_timer_us = INT64_MAX;
    for (size_t i = 0; i < client->config.window; i++) {
        client_slot_t *s = &client->slots[i];
        if (slot_pending(s))
            slot_timer(client, s, now);
        if (slot_pending(s))
            schedule(client, s);
    }
}

/* ------------------------------------------------------------ receiving */

static void handle_response(xlm_client_t *client, Xlm__ServiceMessage **msg_p, int64_t now)
{
    const Xlm__Response *r = (*msg_p)->response;
    int32_t n = index_find(client, r->id);
    client_slot_t *s = n >= 0 ? &client->slots[n] : NULL;
    if (!s || !slot_pending(s)) { /* a late duplicate, cancelled, or an answer to stats */
        if (r->status == XLM__STATUS__STATUS_PERMISSION_DENIED) /* a stats call's timeout says why */
            snprintf(client->handshake_error, sizeof client->handshake_error, "%s", r->message);
        client->dropped++;
        proto_service_free(msg_p);
        return;
    }
    if (proto_status_retryable((proto_status_t)r->status) &&
        s->attempts < client->config.max_attempts) {
        s->state = SLOT_BACKOFF;
        s->due_us = now + backoff_us(client, s->attempts);
        schedule(client, s);
        proto_service_free(msg_p);
        return;
    }
    slot_finish(client, s, result_from_message(msg_p));
}

static void handle_frame(xlm_client_t *client, const void *data, size_t size, int64_t now)
{
    proto_error_t err;
    Xlm__ServiceMessage *msg = NULL;
    if (proto_service_decode(data, size, client->config.max_message_bytes, &msg, &err)) {
        int32_t n = err.id[0] ? index_find(client, err.id) : -1;
        if (n >= 0 && slot_pending(&client->slots[n]))
            finish_local(client, &client->slots[n], XLM_CODE_MALFORMED,
                         "xlm_client: the reply does not decode: %s", err.message);
        else
            client->dropped++;
        return;
    }
    if (msg->body_case == XLM__SERVICE_MESSAGE__BODY_STATS) {
        if (client->stats_wanted) {
            proto_service_free(&client->stats);
            client->stats = msg;
        } else {
            client->dropped++;
            proto_service_free(&msg);
        }
        return;
    }
    handle_response(client, &msg, now);
}

/* Reads every message waiting. The protocol's messages are one frame; the
 * frames of a multi-frame message are dropped. */
static xlm_status_t receive_all(xlm_client_t *client)
{
    bool dropping = false;
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, client->socket, ZMQ_DONTWAIT) < 0) {
            int e = errno;
            zmq_msg_close(&frame);
            if (e == EAGAIN || e == EINTR)
                return XLM_OK;
            return client_fail(client, XLM_ERR_ZMQ, "xlm_client: receive from %s failed: %s",
                               client->endpoint, zmq_strerror(e));
        }
        bool more = zmq_msg_more(&frame);
        if (more || dropping) {
            if (!dropping)
                client->dropped++;
            dropping = more;
        } else {
            handle_frame(client, zmq_msg_data(&frame), zmq_msg_size(&frame), client_now_us());
        }
        zmq_msg_close(&frame);
    }
}

static void read_monitor(xlm_client_t *client);

/* One round: waits (when wait) until a message, the next timer or until_us,
 * reads what came and fires the timers that are due. */
static xlm_status_t pump(xlm_client_t *client, int64_t until_us, bool wait)
{
    long timeout_ms = 0;
    if (wait) {
        int64_t stop = until_us < client->next_timer_us ? until_us : client->next_timer_us;
        int64_t left = stop - client_now_us();
        timeout_ms = stop == INT64_MAX ? -1 : left <= 0 ? 0 : (long)((left + 999) / 1000);
        if (timeout_ms > INT_MAX)
            timeout_ms = INT_MAX;
    }
    zmq_pollitem_t items[] = {{client->socket, 0, ZMQ_POLLIN, 0}, {client->monitor, 0, ZMQ_POLLIN, 0}};
    int rc = zmq_poll(items, 2, timeout_ms);
    if (rc < 0 && errno != EINTR)
        return client_fail(client, XLM_ERR_ZMQ, "xlm_client: poll failed: %s",
                           zmq_strerror(errno));
    if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
        read_monitor(client);
    if (rc > 0 && (items[0].revents & ZMQ_POLLIN)) {
        xlm_status_t status = receive_all(client);
        if (status)
            return status;
    }
    run_timers(client, client_now_us());
    return XLM_OK;
}

static int64_t until_from_timeout(int timeout_ms)
{
    return timeout_ms < 0 ? INT64_MAX : client_now_us() + (int64_t)timeout_ms * 1000;
}

/* ------------------------------------------------------------ create, destroy */

static void make_prefix(xlm_client_t *client)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^
               ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)client;
    }
    snprintf(client->prefix, sizeof client->prefix, "%016llx", (unsigned long long)seed);
    client->rng = seed | 1;
}

/* Handshake failures are silent on a ZeroMQ socket (it retries for ever):
 * a monitor hears them, so that a timeout can say why. */
static bool open_monitor(xlm_client_t *client)
{
    char name[64];
    snprintf(name, sizeof name, "inproc://xlmclient-monitor-%p", (void *)client);
    if (zmq_socket_monitor(client->socket, name,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0)
        return false;
    client->monitor = zmq_socket(client->context, ZMQ_PAIR);
    return client->monitor && zmq_connect(client->monitor, name) == 0;
}

static void read_monitor(xlm_client_t *client)
{
    for (;;) {
        zmq_msg_t event, address;
        zmq_msg_init(&event);
        if (zmq_msg_recv(&event, client->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&event);
            return;
        }
        zmq_msg_init(&address);
        if (zmq_msg_more(&event))
            zmq_msg_recv(&address, client->monitor, 0);
        uint16_t id = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&event) >= 6) {
            memcpy(&id, zmq_msg_data(&event), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&event) + 2, 4);
        }
        bool curve = client->config.curve_secret != NULL;
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            client->handshake_error[0] = '\0';
        else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            snprintf(client->handshake_error, sizeof client->handshake_error,
                     "the broker refused this client's CURVE key (status %u): its public key is "
                     "not in the broker's allow directory", value);
        else if (id)
            snprintf(client->handshake_error, sizeof client->handshake_error, "%s",
                     curve ? "the CURVE handshake failed: a wrong --curve-server key, or the "
                             "broker does not use CURVE"
                           : "the handshake failed: the broker requires CURVE (give "
                             "--curve-secret and --curve-server)");
        zmq_msg_close(&address);
        zmq_msg_close(&event);
    }
}

static bool open_socket(xlm_client_t *client, xlm_error_t *err)
{
    int linger = 0;
    int64_t max_message = (int64_t)client->config.max_message_bytes * 2;
    char curve_err[PROTO_CURVE_ERROR_MAX];
    client->context = zmq_ctx_new();
    client->socket = client->context ? zmq_socket(client->context, ZMQ_DEALER) : NULL;
    if (!client->socket) {
        error_set(err, XLM_ERR_ZMQ, "xlm_client_new: cannot create a ZeroMQ socket: %s",
                  zmq_strerror(errno));
        return false;
    }
    if (proto_curve_client_files(client->socket, client->config.curve_secret,
                                 client->config.curve_server, curve_err) != 0) {
        error_set(err, XLM_ERR_ARG, "xlm_client_new: %s", curve_err);
        return false;
    }
    if (!open_monitor(client)) {
        error_set(err, XLM_ERR_ZMQ, "xlm_client_new: cannot monitor the socket: %s",
                  zmq_strerror(errno));
        return false;
    }
    if (zmq_setsockopt(client->socket, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(client->socket, ZMQ_MAXMSGSIZE, &max_message, sizeof max_message) ||
        zmq_connect(client->socket, client->endpoint)) {
        error_set(err, XLM_ERR_ZMQ,
                  "xlm_client_new: cannot connect to '%s': %s (expected tcp://HOST:PORT, "
                  "ipc://PATH or inproc://NAME)", client->endpoint, zmq_strerror(errno));
        return false;
    }
    return true;
}

static bool allocate_window(xlm_client_t *client)
{
    size_t window = client->config.window, capacity = 2;
    while (capacity < 2 * window)
        capacity *= 2;
    client->slots = calloc(window, sizeof *client->slots);
    client->index = malloc(capacity * sizeof *client->index);
    if (!client->slots || !client->index)
        return false;
    client->index_mask = capacity - 1;
    for (size_t i = 0; i < capacity; i++)
        client->index[i] = -1;
    for (size_t i = 0; i < window; i++) {
        client->slots[i].prev = -1;
        client->slots[i].next = i + 1 < window ? (int32_t)(i + 1) : -1;
    }
    client->free_head = 0;
    client->done_head = client->done_tail = -1;
    client->next_timer_us = INT64_MAX;
    return true;
}

xlm_client_t *xlm_client_new(const xlm_client_config_t *config, xlm_error_t *err)
{
    if (err) {
        err->code = XLM_OK;
        err->message[0] = '\0';
    }
    if (!config) {
        error_set(err, XLM_ERR_ARG, "xlm_client_new: no config");
        return NULL;
    }
    xlm_client_config_t ours;
    config_fill_defaults(&ours);
    char why[256];
    if (!client_struct_copy(&ours, sizeof ours,
                            CLIENT_SIZE_TO(xlm_client_config_t, max_message_bytes), config,
                            "xlm_client_new", "the config", why, sizeof why)) {
        error_set(err, XLM_ERR_ARG, "%s", why);
        return NULL;
    }
    config = &ours;
    if (!config_valid(config, err))
        return NULL;
    xlm_client_t *client = calloc(1, sizeof *client);
    if (!client) {
        error_set(err, XLM_ERR_NOMEM, "xlm_client_new: out of memory");
        return NULL;
    }
    client->config = *config;
    client->endpoint = strdup(config->endpoint);
    client->config.endpoint = client->endpoint;
    if (!client->endpoint || !allocate_window(client)) {
        error_set(err, XLM_ERR_NOMEM, "xlm_client_new: out of memory for a window of %zu",
                  config->window);
        goto err;
    }
    make_prefix(client);
    if (!open_socket(client, err))
        goto err;
    return client;
err:
    xlm_client_destroy(&client);
    return NULL;
}

void xlm_client_destroy(xlm_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    xlm_client_t *client = *self_p;
    for (size_t i = 0; client->slots && i < client->config.window; i++) {
        free(client->slots[i].message);
        xlm_result_destroy(&client->slots[i].result);
    }
    free(client->slots);
    free(client->index);
    proto_service_free(&client->stats);
    if (client->socket)
        zmq_close(client->socket);
    if (client->monitor)
        zmq_close(client->monitor);
    if (client->context)
        zmq_ctx_term(client->context);
    free(client->endpoint);
    free(client);
    *self_p = NULL;
}

/* ------------------------------------------------------------ submit */

static xlm_status_t window_room(xlm_client_t *client, const char *fn)
{
    if (client->used < client->config.window)
        return XLM_OK;
    return client_fail(client, XLM_ERR_WINDOW_FULL,
                       "%s: %zu requests submitted and not collected, the window's size: "
                       "collect first", fn, client->used);
}

static void generate_id(xlm_client_t *client, char *id)
{
    snprintf(id, XLM_ID_SIZE, "%s-%llu", client->prefix, (unsigned long long)++client->counter);
}

static xlm_status_t check_new_id(xlm_client_t *client, const char *fn, const char *id)
{
    if (strnlen(id, XLM_ID_MAX + 1) > XLM_ID_MAX)
        return client_fail(client, XLM_ERR_ARG, "%s: the id is longer than %d bytes", fn,
                           XLM_ID_MAX);
    if (index_find(client, id) >= 0)
        return client_fail(client, XLM_ERR_DUPLICATE,
                           "%s: a request with id '%s' is already in the window", fn, id);
    return XLM_OK;
}

/* Puts the encoded request (data, taken) in a slot and sends it. */
static xlm_status_t launch(xlm_client_t *client, const char *id, uint32_t deadline_ms,
                           uint8_t *data, size_t size, char *id_out)
{
    int64_t now = client_now_us();
    client_slot_t *s = slot_take(client, id);
    s->message = data;
    s->size = size;
    s->submitted_us = now;
    s->deadline_ms = deadline_ms;
    s->deadline_us = deadline_ms ? now + (int64_t)deadline_ms * 1000 : 0;
    s->attempts = 1;
    s->state = SLOT_SENT;
    s->due_us = now + (int64_t)client->config.attempt_timeout_ms * 1000;
    xlm_status_t status = send_bytes(client, data, size);
    if (status) {
        slot_release(client, s);
        return status;
    }
    schedule(client, s);
    if (id_out)
        snprintf(id_out, XLM_ID_SIZE, "%s", id);
    return XLM_OK;
}

xlm_status_t xlm_client_submit(xlm_client_t *client, const xlm_request_t *request, char *id_out)
{
    static const char fn[] = "xlm_client_submit";
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!request)
        return client_fail(client, XLM_ERR_ARG, "%s: no request", fn);
    xlm_request_t full;
    xlm_request_init(&full);
    if (!client_struct_copy(&full, sizeof full, CLIENT_SIZE_TO(xlm_request_t, return_tokens),
                            request, fn, "the request", client->error, sizeof client->error))
        return XLM_ERR_ARG;
    request = &full;
    xlm_status_t status = pump(client, 0, false);
    if (status || (status = window_room(client, fn)))
        return status;
    char id[XLM_ID_SIZE];
    if (request->id && request->id[0]) {
        if ((status = check_new_id(client, fn, request->id)))
            return status;
        snprintf(id, sizeof id, "%s", request->id);
    } else {
        generate_id(client, id);
    }
    uint32_t deadline_ms = request->deadline_ms ? request->deadline_ms : client->config.deadline_ms;
    uint8_t *data = NULL;
    size_t size = 0;
    if ((status = client_encode_request(client, request, id, deadline_ms, &data, &size)))
        return status;
    return launch(client, id, deadline_ms, data, size, id_out);
}

xlm_status_t xlm_client_submit_packed(xlm_client_t *client, const void *request_bytes,
                                      size_t size, char *id_out)
{
    static const char fn[] = "xlm_client_submit_packed";
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!request_bytes && size)
        return client_fail(client, XLM_ERR_ARG, "%s: no bytes", fn);
    xlm_status_t status = pump(client, 0, false);
    if (status || (status = window_room(client, fn)))
        return status;
    char id[XLM_ID_SIZE];
    uint32_t deadline_ms = 0;
    uint8_t *data = NULL;
    size_t length = 0;
    status = client_encode_packed(client, request_bytes, size, id, &deadline_ms, &data, &length);
    if (!status && (status = check_new_id(client, fn, id)))
        free(data);
    if (status)
        return status;
    /* The bytes are sent as they are; a default deadline holds on this side only. */
    return launch(client, id, deadline_ms ? deadline_ms : client->config.deadline_ms, data, length,
                  id_out);
}

xlm_status_t xlm_client_new_id(xlm_client_t *client, char *id_out)
{
    if (!client || !id_out)
        return XLM_ERR_ARG;
    generate_id(client, id_out);
    return XLM_OK;
}

/* ------------------------------------------------------------ collect, call, cancel */

static xlm_status_t take_result(xlm_client_t *client, client_slot_t *s, xlm_result_t **result_p)
{
    done_unlink(client, s);
    *result_p = s->result;
    s->result = NULL;
    char id[XLM_ID_SIZE];
    memcpy(id, s->id, sizeof id);
    slot_release(client, s);
    if (!*result_p)
        return client_fail(client, XLM_ERR_NOMEM, "xlm_client_collect: out of memory for the "
                           "result of '%s' (the request is dropped)", id);
    return XLM_OK;
}

xlm_status_t xlm_client_collect(xlm_client_t *client, const char *id, int timeout_ms,
                                xlm_result_t **result_p)
{
    static const char fn[] = "xlm_client_collect";
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!result_p)
        return client_fail(client, XLM_ERR_ARG, "%s: no place for the result", fn);
    *result_p = NULL;
    client_slot_t *wanted = NULL;
    if (id) {
        int32_t n = index_find(client, id);
        if (n < 0)
            return client_fail(client, XLM_ERR_NOT_FOUND, "%s: no request '%s' in the window "
                               "(never submitted, or already collected)", fn, id);
        wanted = &client->slots[n];
    } else if (client->used == 0) {
        return client_fail(client, XLM_ERR_EMPTY, "%s: nothing submitted to collect", fn);
    }
    int64_t until = until_from_timeout(timeout_ms);
    xlm_status_t status = pump(client, until, false);
    while (!status) {
        client_slot_t *s = wanted ? (wanted->state == SLOT_DONE ? wanted : NULL)
                                  : (client->done_head >= 0 ? &client->slots[client->done_head]
                                                            : NULL);
        if (s)
            return take_result(client, s, result_p);
        if (client_now_us() >= until)
            return client_fail(client, XLM_ERR_TIMEOUT, "%s: nothing finished within %d ms", fn,
                               timeout_ms);
        status = pump(client, until, true);
    }
    return status;
}

xlm_status_t xlm_client_call(xlm_client_t *client, const xlm_request_t *request, int timeout_ms,
                             xlm_result_t **result_p)
{
    char id[XLM_ID_SIZE];
    if (result_p)
        *result_p = NULL;
    if (!client)
        return XLM_ERR_ARG;
    if (!result_p)
        return client_fail(client, XLM_ERR_ARG, "xlm_client_call: no place for the result");
    xlm_status_t status = xlm_client_submit(client, request, id);
    if (status)
        return status;
    status = xlm_client_collect(client, id, timeout_ms, result_p);
    if (status == XLM_ERR_TIMEOUT) {
        int32_t n = index_find(client, id);
        if (n >= 0) {
            if (slot_pending(&client->slots[n]))
                send_cancel(client, id);
            else
                done_unlink(client, &client->slots[n]);
            slot_release(client, &client->slots[n]);
        }
        return client_fail(client, XLM_ERR_TIMEOUT,
                           "xlm_client_call: no result for '%s' within %d ms; it was cancelled",
                           id, timeout_ms);
    }
    return status;
}

xlm_status_t xlm_client_cancel(xlm_client_t *client, const char *id)
{
    static const char fn[] = "xlm_client_cancel";
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!id)
        return client_fail(client, XLM_ERR_ARG, "%s: no id", fn);
    int32_t n = index_find(client, id);
    if (n < 0)
        return client_fail(client, XLM_ERR_NOT_FOUND, "%s: no request '%s' in the window", fn, id);
    client_slot_t *s = &client->slots[n];
    if (!slot_pending(s))
        return client_fail(client, XLM_ERR_NOT_FOUND,
                           "%s: '%s' has finished already: collect its result", fn, id);
    send_cancel(client, id);
    finish_local(client, s, XLM_CODE_CANCELLED, "xlm_client: cancelled by the client");
    return XLM_OK;
}

/* ------------------------------------------------------------ stats */

static xlm_status_t wait_stats(xlm_client_t *client, const uint8_t *data, size_t size,
                               int timeout_ms)
{
    int64_t until = until_from_timeout(timeout_ms), next_send = 0;
    const int64_t interval = (int64_t)client->config.attempt_timeout_ms * 1000;
    xlm_status_t status = XLM_OK;
    while (!status && !client->stats) {
        int64_t now = client_now_us();
        if (now >= until)
            return client_fail(client, XLM_ERR_TIMEOUT,
                               "xlm_client_stats_json: no stats from %s within %d ms%s%s",
                               client->endpoint, timeout_ms,
                               client->handshake_error[0] ? ": " : "", client->handshake_error);
        if (now >= next_send) {
            if ((status = send_bytes(client, data, size)))
                break;
            next_send = now + interval;
        }
        status = pump(client, until < next_send ? until : next_send, true);
    }
    return status;
}

xlm_status_t xlm_client_stats_json(xlm_client_t *client, int timeout_ms, char **json_out)
{
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!json_out)
        return client_fail(client, XLM_ERR_ARG, "xlm_client_stats_json: no place for the JSON");
    *json_out = NULL;
    uint8_t *data = NULL;
    size_t size = 0;
    xlm_status_t status = client_encode_stats(client, &data, &size);
    if (status)
        return status;
    proto_service_free(&client->stats);
    client->stats_wanted = true;
    status = wait_stats(client, data, size, timeout_ms);
    client->stats_wanted = false;
    free(data);
    if (!status && !(*json_out = message_to_json(&client->stats->stats->base)))
        status = client_fail(client, XLM_ERR_NOMEM, "xlm_client_stats_json: out of memory");
    proto_service_free(&client->stats);
    return status;
}

/* ------------------------------------------------------------ event loops */

xlm_status_t xlm_client_fd(xlm_client_t *client, int *fd_out)
{
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if (!fd_out)
        return client_fail(client, XLM_ERR_ARG, "xlm_client_fd: no place for the descriptor");
    int fd = -1;
    size_t size = sizeof fd;
    if (zmq_getsockopt(client->socket, ZMQ_FD, &fd, &size))
        return client_fail(client, XLM_ERR_ZMQ, "xlm_client_fd: %s", zmq_strerror(errno));
    *fd_out = fd;
    return XLM_OK;
}

xlm_status_t xlm_client_process(xlm_client_t *client, size_t *finished_out, int *timeout_ms_out)
{
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    /* pump without waiting reads until EAGAIN, which also re-arms ZMQ_FD's edge. */
    xlm_status_t status = pump(client, 0, false);
    if (status)
        return status;
    size_t finished = 0;
    for (int32_t n = client->done_head; n >= 0; n = client->slots[n].next)
        finished++;
    if (finished_out)
        *finished_out = finished;
    if (finished == client->used) /* nothing pending: the timer left is stale */
        client->next_timer_us = INT64_MAX;
    if (timeout_ms_out) {
        int64_t left = client->next_timer_us - client_now_us();
        *timeout_ms_out = client->next_timer_us == INT64_MAX ? -1
                          : left <= 0                       ? 0
                          : left / 1000 >= INT_MAX          ? INT_MAX
                                                            : (int)((left + 999) / 1000);
    }
    return XLM_OK;
}
