/* broker.h: the xlmserve broker.
 *
 * Two ZeroMQ ROUTER sockets: the frontend towards clients (DEALER), the
 * backend towards worker pipelines (DEALER). The wire protocol is
 * proto/xlm.proto; this module never links the engine (no MPI, no BLAS).
 *
 *   client --request--> frontend -> queue of the model -> micro-batch
 *          -> backend -> pipeline stage 0 ... last stage -> backend
 *          -> reply by ticket -> frontend -> client
 *
 * Flow control is by credit only: a pipeline says how many micro-batches it
 * can hold and the broker never sends more (high-water marks are not relied
 * on). Each model has a bounded queue (OVERLOADED past it), requests have
 * deadlines (DEADLINE_EXCEEDED), can be cancelled by id, and are remembered
 * by id for a while so that a client's retry is answered once (from a
 * cache of completed replies, or by re-addressing the pending request).
 * A pipeline that misses heartbeats is dead and what it held is queued
 * again. One thread, one poll loop.
 */
#ifndef XLM_BROKER_H
#define XLM_BROKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    BROKER_OK = 0,
    BROKER_ERR_ARG = -1,   /* a configuration value out of range */
    BROKER_ERR_ZMQ = -2,   /* a ZeroMQ call failed (bind, poll) */
    BROKER_ERR_NOMEM = -3,
    BROKER_STATUS_COUNT_ = 4
} broker_status_t;

const char *broker_status_str(broker_status_t status);

typedef enum {
    BROKER_LOG_DEBUG = 0,
    BROKER_LOG_INFO,
    BROKER_LOG_WARN,
    BROKER_LOG_ERROR,
    BROKER_LOG_COUNT_
} broker_log_level_t;

/* "debug", "info", "warn", "error"; BROKER_LOG_COUNT_ when unknown. */
broker_log_level_t broker_log_level_from_name(const char *name);

typedef struct {
    const char *frontend;        /* endpoint to bind for clients (borrowed) */
    const char *backend;         /* endpoint to bind for workers (borrowed) */
    int heartbeat_ms;            /* interval of heartbeats to workers: 1000 */
    int liveness;                /* heartbeats missed before a pipeline is dead: 3 */
    size_t queue_max;            /* queued requests per model: 1024 */
    size_t queue_bytes;          /* queued request bytes per model: 256 MiB */
    size_t max_message_bytes;    /* largest client message decoded: 16 MiB; messages
                                    past 4x this drop the connection (ZMQ_MAXMSGSIZE) */
    size_t max_worker_message_bytes; /* largest frame from a worker (a reply for one
                                    request): 64 MiB, the client library's default;
                                    past it the worker's connection drops (ZMQ_MAXMSGSIZE) */
    uint32_t default_deadline_ms;/* when a request gives none: 30000 */
    uint32_t max_deadline_ms;    /* cap on a request's deadline: 600000 */
    uint32_t spin_us;            /* polls without sleeping this long after traffic: 100 */
    uint32_t dedup_ms;           /* completed replies kept for retries: 60000 (0: none) */
    size_t dedup_max;            /* at most this many kept: 65536 */
    size_t dedup_bytes;          /* and at most this many bytes: 256 MiB */
    uint32_t drain_ms;           /* on stop, time to finish what is held: 5000 */
    uint32_t startup_grace_ms;   /* after start, an unknown model is UNAVAILABLE (its
                                    pipelines may not have registered again after a
                                    broker restart), not UNKNOWN_MODEL: 6000 */
    uint32_t model_grace_ms;     /* a model whose last pipeline died and none came back
                                    within this long is unregistered: its queue and later
                                    requests get UNAVAILABLE "no live pipeline since T": 30000 */
    size_t batch_scan;           /* queued requests looked at past the head: 64 */
    size_t batch_max_requests;   /* requests per micro-batch: 256 */
    broker_log_level_t log_level;/* BROKER_LOG_INFO */
    const char *curve_key;       /* the broker's key pair file (NAME.key of xlm-keygen):
                                    NULL, no CURVE (borrowed) */
    const char *frontend_curve_allow; /* directory of the clients' allowed public keys: the
                                    frontend requires CURVE; NULL: plain (borrowed) */
    const char *backend_curve_allow;  /* the same for the workers on the backend */
    bool insecure;               /* a plain side may bind off loopback (else refused) */
    uint32_t log_window_ms;      /* each kind of peer-caused log line writes its burst per
                                    window, then one count of the lines held back: 10000 */
} broker_config_t;

/* Fills config with the defaults above (endpoints NULL). */
void broker_config_defaults(broker_config_t *config);

typedef struct broker broker_t;

/* Binds both endpoints. NULL on failure, with the reason logged. */
broker_t *broker_new(const broker_config_t *config);
void broker_destroy(broker_t **self_p);

/* The endpoint bound (with the port chosen when the config said "*"). */
const char *broker_frontend_endpoint(const broker_t *broker);
const char *broker_backend_endpoint(const broker_t *broker);

/* Serves until *stop becomes non-zero (set it from a signal handler or
 * another thread), then stops gracefully: refuses new requests with
 * UNAVAILABLE, lets the pipelines finish what is queued and in flight for
 * up to drain_ms, answers what is left with UNAVAILABLE (the clients retry
 * elsewhere), tells the workers to disconnect and returns BROKER_OK.
 * Returns a negative status if polling fails. */
broker_status_t broker_run(broker_t *broker, const atomic_int *stop);

#ifdef __cplusplus
}
#endif

#endif /* XLM_BROKER_H */
