/* broker_internal.h: the broker's own types, shared by its source files and
 * its unit tests. Not installed, not for other modules.
 *
 * Ownership: the broker owns models, pipelines, requests and cached replies.
 * A request is in exactly one place at a time: its model's queue or the
 * in-flight list of the pipeline it was sent to (the same link serves both),
 * and is indexed by ticket (the broker's id, used on the worker side) and by
 * the client's id (for retries and cancellation). When answered it is freed
 * and its reply, if a worker produced it, goes to the cache of completed
 * replies, indexed by client id, for dedup_ms.
 */
#ifndef XLM_BROKER_INTERNAL_H
#define XLM_BROKER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "broker.h"
#include "proto.h"

enum { BROKER_IDENTITY_MAX = 255, BROKER_ENDPOINT_MAX = 256, BROKER_TIME_MAX = 32,
       BROKER_GONE_MAX = 64 };

/* ------------------------------------------------------------ lists */

/* Intrusive circular doubly linked list; a head is a link to itself. */
typedef struct broker_link {
    struct broker_link *prev, *next;
} broker_link_t;

static inline void broker_list_init(broker_link_t *head) { head->prev = head->next = head; }
static inline bool broker_list_empty(const broker_link_t *head) { return head->next == head; }
static inline void broker_list_insert_after(broker_link_t *at, broker_link_t *l)
{
    l->prev = at;
    l->next = at->next;
    at->next->prev = l;
    at->next = l;
}
static inline void broker_list_push_back(broker_link_t *head, broker_link_t *l)
{
    broker_list_insert_after(head->prev, l);
}
static inline void broker_list_push_front(broker_link_t *head, broker_link_t *l)
{
    broker_list_insert_after(head, l);
}
static inline void broker_list_remove(broker_link_t *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

#define BROKER_CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------ map */

/* Hash map from byte strings to borrowed pointers. Keys are copied. The
 * hash is seeded at random, so client-chosen ids cannot aim at one bucket. */
typedef struct broker_map broker_map_t;

broker_map_t *broker_map_new(void);
void broker_map_destroy(broker_map_t **self_p);
/* Inserts or replaces. BROKER_ERR_NOMEM on allocation failure. */
broker_status_t broker_map_put(broker_map_t *map, const void *key, size_t len, void *value);
void *broker_map_get(const broker_map_t *map, const void *key, size_t len);
/* Removes and returns the value, NULL when absent. */
void *broker_map_remove(broker_map_t *map, const void *key, size_t len);
size_t broker_map_size(const broker_map_t *map);

/* ------------------------------------------------------------ batching */

/* What requests must have in common to share a micro-batch: the task, and
 * for multiple_choice the choices per example (the head reshapes the rows
 * by it). Compared field by field (broker_batch_key_equal). */
typedef struct {
    proto_task_t task;
    int64_t n_choices; /* 0 for tasks without choices */
} broker_batch_key_t;

/* A request's batch key, from proto_task_info (rq already checked). */
broker_batch_key_t broker_batch_key_of(const Xlm__Request *rq);
bool broker_batch_key_equal(const broker_batch_key_t *a, const broker_batch_key_t *b);

/* One queued request as the batcher sees it. Requests with different keys
 * never share a micro-batch; alone: never shares (the task is not
 * batchable). */
typedef struct {
    int64_t rows;
    int64_t max_len;
    broker_batch_key_t key;
    bool alone;
    int64_t tokens; /* sum of the row lengths (an upper estimate for text) */
} broker_batch_item_t;

/* Chooses one micro-batch from items[0..n) in queue order. items[0] (the
 * oldest) is always taken, so nothing starves; others join when they have
 * its key, the tokens stay within budget and the padded size rows * longest
 * row within PROTO_PADDED_FACTOR * budget, up to max_requests. Writes the
 * indices to chosen and returns their count (>= 1 when n >= 1). */
size_t broker_batch_select(const broker_batch_item_t *items, size_t n, uint64_t budget,
                           size_t max_requests, size_t *chosen);

/* ------------------------------------------------------------ objects */

typedef struct broker_model broker_model_t;
typedef struct broker_pipeline broker_pipeline_t;

typedef struct {
    broker_link_t link;         /* model->queue or pipeline->in_flight */
    uint64_t ticket;
    char id[PROTO_ID_MAX + 1];
    uint8_t client[BROKER_IDENTITY_MAX]; /* routing id of the latest sender */
    size_t client_len;
    broker_model_t *model;
    broker_pipeline_t *pipeline;/* NULL while queued */
    proto_task_t task;
    broker_batch_item_t item;
    int64_t positions;          /* positions it needs of a pipeline (0: text, checked there) */
    int64_t received_us, deadline_us;
    zmq_msg_t body;             /* the ClientMessage bytes, forwarded as they came */
    size_t bytes;
} broker_req_t;

/* Durations over fixed buckets (stats.c's bounds, 100 us to 10 s), for
 * the Stats message's histograms. */
enum { BROKER_HIST_BOUNDS = 16 };
typedef struct {
    uint64_t counts[BROKER_HIST_BOUNDS + 1]; /* the last: beyond the last bound */
    uint64_t count;
    double sum_s;
} broker_histogram_t;
void broker_histogram_observe(broker_histogram_t *h, uint64_t us);

typedef struct {
    uint64_t batches, total_us, max_us;
    broker_histogram_t compute;
    uint64_t packet_bytes; /* received from the stage before, summed */
} broker_stage_stats_t;

struct broker_model {
    broker_link_t link;         /* broker->models */
    char name[PROTO_NAME_MAX + 1];
    broker_link_t queue;
    size_t queue_len, queue_bytes, in_flight;
    broker_link_t pipelines;
    size_t n_pipelines;
    Xlm__WorkerMessage *ready;  /* the latest accepted Ready of one of its pipelines (owned) */
    Xlm__Ready limits;          /* what all its live pipelines accept (limits.c); its
                                   arrays borrow ready's and limit_tasks */
    Xlm__Task limit_tasks[PROTO_TASK_COUNT_];
    bool has_limits;
    uint64_t max_batch_tokens;  /* largest budget of its live pipelines */
    uint64_t done, failed, rejected, expired, cancelled, requeued;
    broker_stage_stats_t *stages;
    size_t n_stages;
    broker_histogram_t queue_hist, service_hist;
    int64_t dead_since_us;      /* when its last pipeline went; 0 while it has one */
    char dead_since[BROKER_TIME_MAX]; /* the same, as UTC ISO 8601 for messages */
};

/* A model unregistered after model_grace_ms without a live pipeline:
 * remembered so that its requests hear why, not "not served". */
typedef struct {
    char name[PROTO_NAME_MAX + 1];
    char since[BROKER_TIME_MAX];
} broker_gone_t;

struct broker_pipeline {
    broker_link_t link;         /* model->pipelines */
    char id[PROTO_NAME_MAX + 1];
    uint8_t identity[BROKER_IDENTITY_MAX]; /* stage 0's socket, from Ready */
    size_t identity_len;
    /* The last stage's socket, from its beats (Heartbeat.tail, sent from
     * its start on), Replies or progress heartbeats (its replies come on a
     * socket of their own): told too when the pipeline is declared dead.
     * tail_len 0: not heard yet. */
    uint8_t tail[BROKER_IDENTITY_MAX];
    size_t tail_len;
    broker_model_t *model;
    uint64_t instance;          /* the worker process's, from Ready (0: not said) */
    uint64_t job;               /* its MPI job's, from Ready (0: not said) */
    uint32_t n_stages;
    uint32_t credit;
    uint64_t max_batch_tokens;
    int64_t max_positions;      /* its Ready's max_position_embeddings */
    uint32_t tasks;             /* bit per proto_task_t it serves */
    char precision[PROTO_PRECISION_MAX + 1]; /* from Ready; "" when unsaid */
    int64_t last_seen_us, heartbeat_sent_us, last_batch_us;
    int64_t expiry_us;          /* silence longer than this: dead */
    /* While it holds work, a pipeline must also make progress: a Reply, a
     * Credit, or a last-stage heartbeat whose progress count grew. Time of
     * the last one (or of the batch that ended its idleness), and the
     * count. No progress for expiry_us while holding work: dead. */
    int64_t progress_us;
    uint64_t progress;
    /* Each stage's heartbeat thread (Heartbeat.stage_beat): when it was
     * last heard (0: never yet; a stage that loads its layers beats once
     * loaded) and its process's work count. A stage silent for expiry_us
     * after it was heard: dead; a work count that grew: progress. */
    int64_t *stage_seen_us; /* [n_stages] */
    uint64_t *stage_work;   /* [n_stages] */
    broker_link_t in_flight;
    size_t n_in_flight;
    uint64_t batches;
};

/* Kinds of log line a peer can cause (peerlog.c, one row each). */
typedef enum {
    BROKER_PEER_MALFORMED = 0,
    BROKER_PEER_PROTOCOL,
    BROKER_PEER_REFUSED,
    BROKER_PEER_FOREIGN,
    BROKER_PEER_PIPELINE,
    BROKER_PEER_CLIENT,
    BROKER_PEER_AUTH,
    BROKER_PEER_REVOKED,
    BROKER_PEER_TAIL,
    BROKER_PEER_COUNT_
} broker_peer_line_t;

typedef struct {
    int64_t window_start_us;
    uint64_t in_window, suppressed;
} broker_peer_log_t;

typedef struct broker_auth broker_auth_t;

typedef struct {
    broker_link_t link;         /* broker->done, oldest first */
    char id[PROTO_ID_MAX + 1];
    zmq_msg_t reply;            /* the ServiceMessage sent to the client */
    size_t bytes;
    int64_t expires_us;
} broker_done_t;

struct broker {
    broker_config_t config;
    void *ctx, *frontend, *backend;
    char frontend_endpoint[BROKER_ENDPOINT_MAX], backend_endpoint[BROKER_ENDPOINT_MAX];

    broker_link_t models;
    size_t n_models;
    broker_gone_t gone[BROKER_GONE_MAX]; /* unregistered models, oldest first */
    size_t n_gone;
    broker_map_t *tickets;      /* ticket -> broker_req_t */
    broker_map_t *ids;          /* client id -> pending broker_req_t */
    broker_map_t *pipelines;    /* pipeline id -> broker_pipeline_t */
    broker_map_t *done_ids;     /* client id -> broker_done_t */
    broker_link_t done;
    size_t done_count, done_bytes;
    size_t pending;             /* queued + in flight, all models */

    uint64_t next_ticket, next_batch;
    int64_t started_us, next_heartbeat_us, next_deadline_us;
    int64_t liveness_checked_us; /* last broker_heartbeat: a long gap means the broker
                                    itself was stopped, not its pipelines */
    bool stopping;
    int64_t drain_until_us;

    uint64_t received, duplicates, malformed, late_replies;
    uint64_t foreign_replies, registrations_refused, log_suppressed;
    uint64_t tail_beats_ignored; /* Heartbeat.tail of no registered pipeline (or instance) */
    broker_peer_log_t peer_log[BROKER_PEER_COUNT_];
    broker_auth_t *auth;        /* CURVE's ZAP handler; NULL when neither side needs it */

    /* Scratch space of the batcher, batch_scan + 1 entries. */
    broker_batch_item_t *scratch_items;
    broker_req_t **scratch_reqs;
    size_t *scratch_chosen;
    /* Frames of the worker message being handled. */
    zmq_msg_t *frames;
    size_t frames_cap;
};

/* ------------------------------------------------------------ shared helpers */

int64_t broker_now_us(void);
/* The wall-clock time now as 2026-01-31T12:00:00.000Z. */
void broker_iso_time(char out[BROKER_TIME_MAX]);
void broker_log(const broker_t *b, broker_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* peerlog.c: a line a peer caused, within its kind's burst per
 * log_window_ms; the rest counted, summarised by broker_log_peer_flush. */
void broker_log_peer(broker_t *b, broker_peer_line_t kind, broker_log_level_t level,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void broker_log_peer_flush(broker_t *b, int64_t now);

/* limits.c: see there. */
void broker_limits_of_ready(broker_pipeline_t *p, const Xlm__Ready *ready);
/* True when ready contradicts the model's live pipelines; why says how. */
bool broker_ready_contradicts(const broker_model_t *m, const Xlm__Ready *ready, char *why,
                              size_t size);
void broker_limits_recompute(broker_model_t *m);
int64_t broker_request_positions(const Xlm__Request *rq);
bool broker_pipeline_accepts(const broker_pipeline_t *p, const broker_req_t *r);
bool broker_model_refuses(const broker_model_t *m, const broker_req_t *r, proto_status_t *status,
                          char *why, size_t size);

/* registry.c: models, pipelines, requests. */
broker_model_t *broker_model_find(const broker_t *b, const char *name);
broker_model_t *broker_model_get_or_add(broker_t *b, const char *name);
void broker_models_destroy(broker_t *b);
/* Unregisters the models without a pipeline for longer than model_grace_ms:
 * their queued requests get UNAVAILABLE, their names go to b->gone. */
void broker_models_expire(broker_t *b, int64_t now);
/* The record of an unregistered model, NULL when none. */
const broker_gone_t *broker_gone_find(const broker_t *b, const char *name);
/* The only model with a live pipeline, else the only model, else NULL. */
broker_model_t *broker_model_default(const broker_t *b);
/* One micro-batch's Reply: each stage's compute time, and the bytes of its
 * packet, which every stage after the first received. */
void broker_model_record_stages(broker_model_t *m, const uint64_t *stage_us, size_t n,
                                uint64_t packet_bytes);
broker_pipeline_t *broker_pipeline_add(broker_t *b, broker_model_t *m, const char *id,
                                       const uint8_t *identity, size_t identity_len,
                                       const Xlm__Ready *ready);
/* Queues again what p held (at the front, in order) and frees p. */
void broker_pipeline_remove(broker_t *b, broker_pipeline_t *p, const char *why);
void broker_pipeline_touch(broker_pipeline_t *p, int64_t now);
/* What is heard from p that shows the whole pipeline advanced. */
void broker_pipeline_progressed(broker_pipeline_t *p, int64_t now);
/* Takes the request out of its list and both maps, frees it. */
void broker_req_finish(broker_t *b, broker_req_t *r);
broker_req_t *broker_req_new(broker_t *b, broker_model_t *m, const Xlm__Request *rq,
                             const proto_shape_t *shape, const zmq_msg_t *client,
                             zmq_msg_t *body);

/* cache.c: completed replies by client id. */
void broker_done_add(broker_t *b, const char *id, zmq_msg_t *reply);
broker_done_t *broker_done_find(const broker_t *b, const char *id);
void broker_done_expire(broker_t *b, int64_t now);
void broker_done_clear(broker_t *b);

/* frontend.c: clients. */
void broker_frontend_recv(broker_t *b);
/* Sends body (consumed) to a client; false when the client is gone. */
bool broker_client_send(broker_t *b, const uint8_t *client, size_t client_len, zmq_msg_t *body);
void broker_client_status(broker_t *b, const uint8_t *client, size_t client_len, const char *id,
                          proto_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Answers r's client with status and finishes r (counted as rejected,
 * expired or cancelled by the caller). */
void broker_req_fail(broker_t *b, broker_req_t *r, proto_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* backend.c: workers. */
void broker_backend_recv(broker_t *b);
void broker_dispatch(broker_t *b, broker_model_t *m);
void broker_heartbeat(broker_t *b, int64_t now);
void broker_worker_send_simple(broker_t *b, const uint8_t *identity, size_t identity_len,
                               const char *pipeline, Xlm__WorkerMessage *msg);
void broker_pipeline_cancel(broker_t *b, broker_pipeline_t *p, uint64_t ticket);
void broker_backend_disconnect_all(broker_t *b, const char *reason);

/* auth.c: CURVE on the frontend and backend, the ZAP handler. */
enum { BROKER_SIDE_FRONTEND = 0, BROKER_SIDE_BACKEND = 1 };
/* Checks the configuration (a plain side off loopback needs insecure) and,
 * when a side asks for CURVE, loads the keys and binds the ZAP handler
 * (b->auth). -1 after logging why. */
int broker_auth_start(broker_t *b);
void broker_auth_destroy(broker_auth_t **self_p);
/* Makes socket a CURVE server when its side has an allow list. */
int broker_auth_secure(broker_t *b, void *socket, int side);
/* Writes the sockets to poll (ZAP, handshake monitors; at most 3) to
 * items, returns their count (0 without CURVE). */
size_t broker_auth_poll_items(const broker_t *b, zmq_pollitem_t *items);
/* Handles what those items say (the same items, after zmq_poll). */
void broker_auth_handle(broker_t *b, const zmq_pollitem_t *items, size_t n);
/* Reads an allow directory again when it changed (timer tick). */
void broker_auth_reload(broker_t *b);
/* Whether a received frame's key is still allowed (true without CURVE);
 * false is logged (rate-limited). */
bool broker_auth_allows(broker_t *b, int side, zmq_msg_t *frame);
/* Whether one more message of a revoked key on side may be answered now
 * (at most a fixed number a second; the rest are dropped). */
bool broker_auth_may_answer(broker_t *b, int side);
/* Handshakes refused so far (0 without CURVE). */
uint64_t broker_auth_refused(const broker_auth_t *auth);
/* Messages refused from connections whose key was revoked while connected. */
uint64_t broker_auth_revoked_messages(const broker_auth_t *auth);

/* stats.c */
void broker_stats_send(broker_t *b, const uint8_t *client, size_t client_len);

#endif /* XLM_BROKER_INTERNAL_H */
