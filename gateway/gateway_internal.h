/* gateway_internal.h: what the files of the gateway share; not installed.
 *
 *   server.c   libmicrohttpd: routes, bodies, limits, admission, replies
 *   pool.c     the broker clients, one per request at a time
 *   models.c   the served models, from the broker's stats (cached briefly)
 *   v2.c       KServe v2 / Open Inference Protocol endpoints
 *   score.c    POST /v1/score
 *   metrics.c  counters and histograms, GET /metrics
 */
#ifndef XLM_GATEWAY_INTERNAL_H
#define XLM_GATEWAY_INTERNAL_H

#include "gateway.h"
#include "xlmclient.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdbool.h>

/* ------------------------------------------------------------ replies */

/* What a handler answers: a status, a body (owned, may be NULL) and its
 * type, and a Retry-After when > 0. */
typedef struct {
    unsigned code;
    char *body;
    const char *content_type;
    int retry_after_s;
} gw_reply_t;

/* reply = code with the protocol's error body {"error": "..."}. */
void gw_reply_error(gw_reply_t *reply, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* reply = code with json printed (json is freed). */
void gw_reply_json(gw_reply_t *reply, unsigned code, cJSON *json);
/* The HTTP status for a request that finished with code. */
unsigned gw_http_status(xlm_code_t code);

/* ------------------------------------------------------------ pool */

typedef struct gw_pool gw_pool_t;
gw_pool_t *gw_pool_new(const gateway_options_t *options, char *error, size_t error_size);
/* A client for this thread's request (waits until one is free). */
xlm_client_t *gw_pool_take(gw_pool_t *pool);
void gw_pool_give(gw_pool_t *pool, xlm_client_t *client);
void gw_pool_destroy(gw_pool_t **self_p);

/* ------------------------------------------------------------ models */

enum { GW_NAME_MAX = 256, GW_HIST_BOUNDS_MAX = 32 };

/* A histogram of the broker's Stats (xlm.proto's Histogram). */
typedef struct {
    bool present;
    size_t n_bounds;
    double bounds[GW_HIST_BOUNDS_MAX];
    double counts[GW_HIST_BOUNDS_MAX + 1]; /* not cumulative; the last beyond the last bound */
    double sum, count;
} gw_hist_t;

typedef struct {
    char name[GW_NAME_MAX];
    uint32_t queue_depth, in_flight, pipelines_alive;
    bool serves[XLM_TASK_COUNT_];
    xlm_task_t first_task;       /* XLM_TASK_COUNT_ when none */
    char **lang_codes;           /* [n_langs] */
    size_t n_langs;
    int64_t max_length, vocab_size;
    char precision[16];
    gw_hist_t queue, service;    /* the broker's: per request queued, served */
    gw_hist_t *stages;           /* [n_stages]: compute per micro-batch */
    size_t n_stages;
} gw_model_t;

typedef struct {
    bool reached;                /* the broker answered */
    bool accepting;
    char why[256];               /* when not reached */
    gw_model_t *models;
    size_t n_models;
    double duplicates, malformed, received;
} gw_service_t;

/* The service as the broker's stats say, at most max_age_ms old. The
 * result is a copy (gw_service_clear). */
void gw_service_get(gateway_t *gw, int max_age_ms, gw_service_t *out);
void gw_service_clear(gw_service_t *service);
/* The model of that name; name NULL or "": the only one. NULL otherwise. */
const gw_model_t *gw_service_model(const gw_service_t *service, const char *name);
/* Names of a task as the gateway spells them ("seq_cls", "clm_score"). */
const char *gw_task_name(xlm_task_t task);

/* ------------------------------------------------------------ metrics */

typedef struct gw_metrics gw_metrics_t;
gw_metrics_t *gw_metrics_new(void);
void gw_metrics_destroy(gw_metrics_t **self_p);
void gw_metrics_http(gw_metrics_t *m, unsigned code);
void gw_metrics_malformed(gw_metrics_t *m);
/* One broker request finished: its outcome and, when it has them, its
 * timings (the broker's queue time and each stage's compute); seconds
 * (< 0: not observed) is its end-to-end time in the gateway. */
void gw_metrics_request(gw_metrics_t *m, const char *model, const char *task, xlm_code_t code,
                        double seconds, const xlm_timings_t *timings);
/* The end-to-end time of an HTTP request that carried several broker
 * requests (/v1/score). */
void gw_metrics_latency(gw_metrics_t *m, const char *model, const char *task, double seconds);
/* A float32 as the shortest JSON number that reads back to the same float. */
cJSON *gw_json_float(float value);
/* The text exposition (malloc'd), the broker's gauges from service. */
char *gw_metrics_render(gw_metrics_t *m, const gw_service_t *service, size_t queued,
                        size_t busy);

/* ------------------------------------------------------------ the gateway */

struct gateway {
    gateway_options_t options;
    char *broker;                 /* owned copies of the options' strings */
    char *curve_server_file, *curve_secret_file;
    struct MHD_Daemon *daemon;
    uint16_t port;
    gw_pool_t *pool;
    gw_metrics_t *metrics;
    pthread_mutex_t stats_lock;   /* the stats client: health probes and scrapes never */
    xlm_client_t *stats_client;   /* wait behind requests for a pool client */
    char broker_trouble[512];     /* under stats_lock: why the broker did not answer the
                                   * last probe ("" when it did), logged when it changes */

    pthread_mutex_t lock;         /* admitted, busy, the cached service */
    size_t admitted;              /* requests past admission, not yet answered */
    size_t busy;                  /* of which holding a client */
    gw_service_t service;
    int64_t service_at_us;
};

int64_t gw_now_us(void);

/* A request's context for the handlers: the parsed body, the deadline. */
typedef struct {
    gateway_t *gw;
    const char *body;
    size_t body_size;
    uint32_t deadline_ms;         /* from the header; 0: none */
    int64_t started_us;
} gw_request_t;

/* cJSON parse with the error's place: NULL and a 400 in reply when the
 * body is not JSON. */
cJSON *gw_parse_body(gw_request_t *rq, gw_reply_t *reply);

/* v2.c */
void gw_v2_live(gw_request_t *rq, gw_reply_t *reply);
void gw_v2_ready(gw_request_t *rq, gw_reply_t *reply);
void gw_v2_server(gw_request_t *rq, gw_reply_t *reply);
void gw_v2_model(gw_request_t *rq, const char *model, gw_reply_t *reply);
void gw_v2_model_ready(gw_request_t *rq, const char *model, gw_reply_t *reply);
void gw_v2_infer(gw_request_t *rq, const char *model, gw_reply_t *reply);
/* score.c */
void gw_v1_score(gw_request_t *rq, gw_reply_t *reply);



/* server.c: a client of the pool for a request, counted as busy. */
xlm_client_t *gw_client_take(gateway_t *gw);
void gw_client_give(gateway_t *gw, xlm_client_t *client);
#endif
