/* server.c: the HTTP side. libmicrohttpd parses HTTP and runs a thread per
 * connection; this file routes, gathers bodies under the size limit,
 * admits compute requests into a bounded queue, and sends the handlers'
 * replies (counting them by code).
 *
 * Admission: /infer and /v1/score hold a broker client while they compute
 * (gateway_options_t.clients of them at once); up to max_queue are
 * admitted, computing or waiting for a client, and the next gets 503 with
 * Retry-After. Health, metadata and metrics are not queued.
 */
#include "gateway_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t gw_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void gateway_options_defaults(gateway_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->listen_host = "127.0.0.1";
    o->listen_port = 8000;
    o->clients = 16;
    o->max_queue = 256;
    o->max_body_bytes = (size_t)16 << 20;
    o->retry_after_s = 1;
    o->attempt_timeout_ms = 5000;
    o->max_attempts = 12;
}

/* ------------------------------------------------------------ replies */

void gw_reply_json(gw_reply_t *reply, unsigned code, cJSON *json)
{
    reply->code = code;
    reply->body = json ? cJSON_PrintUnformatted(json) : NULL;
    reply->content_type = "application/json";
    cJSON_Delete(json);
    if (json && !reply->body) {
        reply->code = 500;
        reply->body = strdup("{\"error\":\"out of memory\"}");
    }
}

void gw_reply_error(gw_reply_t *reply, unsigned code, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "error", message);
    gw_reply_json(reply, code, json);
}

cJSON *gw_json_float(float value)
{
    if (!isfinite(value))
        return cJSON_CreateNull();
    char text[32];
    snprintf(text, sizeof text, "%.9g", (double)value); /* 9 digits: every float32 exactly */
    return cJSON_CreateRaw(text);
}

unsigned gw_http_status(xlm_code_t code)
{
    /* One row per wire status: what an HTTP client should make of it. */
    static const unsigned table[XLM_CODE_COUNT_] = {
        [XLM_CODE_OK] = 200,
        [XLM_CODE_BAD_REQUEST] = 400,
        [XLM_CODE_UNKNOWN_MODEL] = 404,
        [XLM_CODE_UNKNOWN_TASK] = 400,
        [XLM_CODE_OVERLOADED] = 503,
        [XLM_CODE_DEADLINE_EXCEEDED] = 504,
        [XLM_CODE_CANCELLED] = 503,
        [XLM_CODE_INTERNAL] = 500,
        [XLM_CODE_UNAVAILABLE] = 503,
        [XLM_CODE_TOO_LARGE] = 413,
        [XLM_CODE_MALFORMED] = 400,
        [XLM_CODE_BAD_VERSION] = 500,
        [XLM_CODE_NOT_FOUND] = 404,
        [XLM_CODE_PERMISSION_DENIED] = 403,
    };
    return code >= 0 && code < XLM_CODE_COUNT_ ? table[code] : 500;
}

cJSON *gw_parse_body(gw_request_t *rq, gw_reply_t *reply)
{
    const char *end = NULL;
    cJSON *json = rq->body_size ? cJSON_ParseWithLengthOpts(rq->body, rq->body_size, &end, false)
                                : NULL;
    if (json)
        return json;
    gw_metrics_malformed(rq->gw->metrics);
    if (!rq->body_size) {
        gw_reply_error(reply, 400, "malformed JSON at byte 0 (line 1, column 1): the body is empty");
        return NULL;
    }
    size_t at = end && end >= rq->body && end <= rq->body + rq->body_size
                    ? (size_t)(end - rq->body) : 0;
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at; i++) {
        if (rq->body[i] == '\n') {
            line++;
            column = 1;
        } else {
            column++;
        }
    }
    char near[24] = "";
    size_t n = 0;
    for (size_t i = at; i < rq->body_size && n + 1 < sizeof near; i++)
        near[n++] = rq->body[i] >= 0x20 && rq->body[i] < 0x7f ? rq->body[i] : '?';
    near[n] = '\0';
    gw_reply_error(reply, 400, "malformed JSON at byte %zu (line %zu, column %zu)%s%s%s", at, line,
                   column, n ? ": near '" : ": the body ends early", near, n ? "'" : "");
    return NULL;
}

/* ------------------------------------------------------------ clients */

xlm_client_t *gw_client_take(gateway_t *gw)
{
    xlm_client_t *client = gw_pool_take(gw->pool);
    pthread_mutex_lock(&gw->lock);
    gw->busy++;
    pthread_mutex_unlock(&gw->lock);
    return client;
}

void gw_client_give(gateway_t *gw, xlm_client_t *client)
{
    pthread_mutex_lock(&gw->lock);
    gw->busy--;
    pthread_mutex_unlock(&gw->lock);
    gw_pool_give(gw->pool, client);
}

static bool admit(gateway_t *gw)
{
    pthread_mutex_lock(&gw->lock);
    bool room = gw->admitted < gw->options.max_queue;
    gw->admitted += room;
    pthread_mutex_unlock(&gw->lock);
    return room;
}

static void release(gateway_t *gw)
{
    pthread_mutex_lock(&gw->lock);
    gw->admitted--;
    pthread_mutex_unlock(&gw->lock);
}

/* ------------------------------------------------------------ routes */

static void metrics_page(gw_request_t *rq, gw_reply_t *reply)
{
    gateway_t *gw = rq->gw;
    gw_service_t service;
    gw_service_get(gw, 0, &service);
    pthread_mutex_lock(&gw->lock);
    size_t busy = gw->busy, queued = gw->admitted > gw->busy ? gw->admitted - gw->busy : 0;
    pthread_mutex_unlock(&gw->lock);
    reply->body = gw_metrics_render(gw->metrics, &service, queued, busy);
    gw_service_clear(&service);
    reply->code = reply->body ? 200 : 500;
    reply->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/* /v2/models/NAME[/versions/V][/SUFFIX]: NAME into name, the rest into
 * suffix ("" for the metadata). false when the path is not of that form. */
static bool model_path(const char *url, char *name, size_t size, const char **suffix)
{
    static const char prefix[] = "/v2/models/";
    if (strncmp(url, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *start = url + sizeof prefix - 1, *slash = strchr(start, '/');
    size_t length = slash ? (size_t)(slash - start) : strlen(start);
    if (length == 0 || length >= size)
        return false;
    memcpy(name, start, length);
    name[length] = '\0';
    const char *rest = start + length;
    if (strncmp(rest, "/versions/", 10) == 0) { /* one version per model: any is it */
        const char *v = rest + 10, *after = strchr(v, '/');
        if (v[0] == '\0' || v[0] == '/')
            return false;
        rest = after ? after : v + strlen(v);
    }
    *suffix = rest;
    return true;
}

/* Compute requests, admitted into the queue first. */
static void compute(gw_request_t *rq, gw_reply_t *reply, const char *model,
                    void (*handler)(gw_request_t *, const char *, gw_reply_t *))
{
    if (!admit(rq->gw)) {
        gw_reply_error(reply, 503, "the gateway's queue is full (%zu requests admitted): retry "
                       "after %d s", rq->gw->options.max_queue, rq->gw->options.retry_after_s);
        reply->retry_after_s = rq->gw->options.retry_after_s;
        return;
    }
    handler(rq, model, reply);
    release(rq->gw);
}

static void score_handler(gw_request_t *rq, const char *model, gw_reply_t *reply)
{
    (void)model;
    gw_v1_score(rq, reply);
}

static void route(gw_request_t *rq, const char *method, const char *url, gw_reply_t *reply)
{
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool post = strcmp(method, "POST") == 0;
    char name[GW_NAME_MAX];
    const char *suffix = NULL, *wants = NULL;
    if (strcmp(url, "/v2/health/live") == 0) {
        if (get) gw_v2_live(rq, reply); else wants = "GET";
    } else if (strcmp(url, "/v2/health/ready") == 0) {
        if (get) gw_v2_ready(rq, reply); else wants = "GET";
    } else if (strcmp(url, "/v2") == 0 || strcmp(url, "/v2/") == 0) {
        if (get) gw_v2_server(rq, reply); else wants = "GET";
    } else if (strcmp(url, "/metrics") == 0) {
        if (get) metrics_page(rq, reply); else wants = "GET";
    } else if (strcmp(url, "/v1/score") == 0) {
        if (post) compute(rq, reply, NULL, score_handler); else wants = "POST";
    } else if (model_path(url, name, sizeof name, &suffix) && suffix[0] == '\0') {
        if (get) gw_v2_model(rq, name, reply); else wants = "GET";
    } else if (suffix && strcmp(suffix, "/ready") == 0) {
        if (get) gw_v2_model_ready(rq, name, reply); else wants = "GET";
    } else if (suffix && strcmp(suffix, "/infer") == 0) {
        if (post) compute(rq, reply, name, gw_v2_infer); else wants = "POST";
    } else {
        gw_reply_error(reply, 404, "no such endpoint: %s %s", method, url);
        return;
    }
    if (wants)
        gw_reply_error(reply, 405, "%s %s: this endpoint takes %s", method, url, wants);
}

/* ------------------------------------------------------------ libmicrohttpd */

typedef struct {
    char *body;
    size_t size, capacity;
    bool too_big;
} upload_t;

static enum MHD_Result send_reply(gateway_t *gw, struct MHD_Connection *connection,
                                  gw_reply_t *reply)
{
    if (!reply->body)
        reply->body = strdup("");
    size_t length = reply->body ? strlen(reply->body) : 0;
    struct MHD_Response *response =
        MHD_create_response_from_buffer(length, reply->body ? reply->body : (char *)"",
                                        reply->body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!response) {
        free(reply->body);
        return MHD_NO;
    }
    if (length)
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                                reply->content_type ? reply->content_type : "application/json");
    if (reply->retry_after_s > 0) {
        char seconds[16];
        snprintf(seconds, sizeof seconds, "%d", reply->retry_after_s);
        MHD_add_response_header(response, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
    }
    enum MHD_Result rc = MHD_queue_response(connection, reply->code, response);
    MHD_destroy_response(response);
    gw_metrics_http(gw->metrics, reply->code);
    return rc;
}

static bool too_big_declared(gateway_t *gw, struct MHD_Connection *connection)
{
    const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!length)
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long n = strtoull(length, &end, 10);
    return errno == ERANGE || (end && *end == '\0' && n > gw->options.max_body_bytes);
}

static void gather(gateway_t *gw, upload_t *up, const char *data, size_t size)
{
    if (up->too_big)
        return;
    if (size > gw->options.max_body_bytes - up->size) {
        up->too_big = true;
        free(up->body);
        up->body = NULL;
        up->size = up->capacity = 0;
        return;
    }
    if (up->size + size + 1 > up->capacity) {
        size_t capacity = up->capacity ? up->capacity : 4096;
        while (capacity < up->size + size + 1)
            capacity *= 2;
        char *grown = realloc(up->body, capacity);
        if (!grown) {
            up->too_big = true; /* answered 413: the body cannot be held */
            return;
        }
        up->body = grown;
        up->capacity = capacity;
    }
    memcpy(up->body + up->size, data, size);
    up->size += size;
    up->body[up->size] = '\0';
}

/* The deadline header: whole milliseconds. false (reply set) when bad. */
static bool read_deadline(struct MHD_Connection *connection, gw_request_t *rq, gw_reply_t *reply)
{
    const char *value = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Deadline-Ms");
    if (!value)
        return true;
    char *end = NULL;
    errno = 0;
    unsigned long ms = strtoul(value, &end, 10);
    if (errno || !end || *end || end == value || ms == 0 || ms > UINT32_MAX || value[0] == '-') {
        gw_reply_error(reply, 400, "X-Deadline-Ms: '%s', expected whole milliseconds, 1 to %u",
                       value, UINT32_MAX);
        return false;
    }
    rq->deadline_ms = (uint32_t)ms;
    return true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **context)
{
    (void)version;
    gateway_t *gw = cls;
    upload_t *up = *context;
    if (!up) { /* headers only, so far */
        if (!(up = calloc(1, sizeof *up)))
            return MHD_NO;
        *context = up;
        if (too_big_declared(gw, connection)) {
            up->too_big = true;
            gw_reply_t reply = {0};
            gw_reply_error(&reply, 413, "the request body is over %zu bytes (Content-Length %s)",
                           gw->options.max_body_bytes,
                           MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                       MHD_HTTP_HEADER_CONTENT_LENGTH));
            return send_reply(gw, connection, &reply);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        gather(gw, up, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    gw_reply_t reply = {0};
    gw_request_t rq = {.gw = gw, .body = up->body ? up->body : "", .body_size = up->size,
                       .started_us = gw_now_us()};
    if (up->too_big)
        gw_reply_error(&reply, 413, "the request body is over %zu bytes",
                       gw->options.max_body_bytes);
    else if (read_deadline(connection, &rq, &reply))
        route(&rq, method, url, &reply);
    return send_reply(gw, connection, &reply);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **context,
                         enum MHD_RequestTerminationCode why)
{
    (void)cls;
    (void)connection;
    (void)why;
    upload_t *up = *context;
    if (up) {
        free(up->body);
        free(up);
        *context = NULL;
    }
}

/* ------------------------------------------------------------ the gateway */

static bool options_valid(const gateway_options_t *o, char *error, size_t size)
{
    if (!o->broker || !o->broker[0])
        snprintf(error, size, "no broker: expected --broker tcp://HOST:PORT");
    else if (!o->listen_host)
        snprintf(error, size, "no listen address");
    else if (o->clients < 1 || o->clients > 1024)
        snprintf(error, size, "clients = %zu, expected 1 to 1024", o->clients);
    else if (o->max_queue < 1 || o->max_queue > 100000)
        snprintf(error, size, "max queue = %zu, expected 1 to 100000", o->max_queue);
    else if (o->max_body_bytes < 64)
        snprintf(error, size, "max body = %zu bytes, expected at least 64", o->max_body_bytes);
    else
        return true;
    return false;
}

static bool copy_string(const char *from, char **to)
{
    if (!from)
        return true;
    return (*to = strdup(from)) != NULL;
}

static bool start_daemon(gateway_t *gw, char *error, size_t error_size)
{
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons(gw->options.listen_port);
    if (inet_pton(AF_INET, gw->options.listen_host, &address.sin_addr) != 1) {
        snprintf(error, error_size, "listen address '%s': expected a numeric IPv4 address such "
                 "as 127.0.0.1", gw->options.listen_host);
        return false;
    }
    /* Connections past admission still get their 503: allow more of them
     * than the queue holds. */
    unsigned limit = (unsigned)(gw->options.max_queue * 2 + 64);
    gw->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ERROR_LOG,
        gw->options.listen_port, NULL, NULL, on_request, gw, MHD_OPTION_SOCK_ADDR, &address,
        MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!gw->daemon) {
        snprintf(error, error_size, "cannot listen on %s:%u: %s", gw->options.listen_host,
                 (unsigned)gw->options.listen_port, strerror(errno));
        return false;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(gw->daemon, MHD_DAEMON_INFO_BIND_PORT);
    gw->port = info ? info->port : gw->options.listen_port;
    return true;
}

static xlm_client_t *stats_client_new(const gateway_t *gw, char *error, size_t error_size)
{
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = gw->broker;
    config.attempt_timeout_ms = 500; /* stats are resent until the call's timeout */
    config.curve_server = gw->curve_server_file;
    config.curve_secret = gw->curve_secret_file;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client)
        snprintf(error, error_size, "%s", err.message);
    return client;
}

gateway_t *gateway_new(const gateway_options_t *options, char *error, size_t error_size)
{
    if (!options_valid(options, error, error_size))
        return NULL;
    gateway_t *gw = calloc(1, sizeof *gw);
    if (!gw) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    gw->options = *options;
    pthread_mutex_init(&gw->lock, NULL);
    pthread_mutex_init(&gw->stats_lock, NULL);
    if (!copy_string(options->broker, &gw->broker) ||
        !copy_string(options->curve_server_file, &gw->curve_server_file) ||
        !copy_string(options->curve_secret_file, &gw->curve_secret_file) ||
        !(gw->metrics = gw_metrics_new())) {
        snprintf(error, error_size, "out of memory");
        goto err;
    }
    gw->options.broker = gw->broker;
    gw->options.curve_server_file = gw->curve_server_file;
    gw->options.curve_secret_file = gw->curve_secret_file;
    if (!(gw->pool = gw_pool_new(&gw->options, error, error_size)) ||
        !(gw->stats_client = stats_client_new(gw, error, error_size)) ||
        !start_daemon(gw, error, error_size))
        goto err;
    return gw;
err:
    gateway_destroy(&gw);
    return NULL;
}

uint16_t gateway_port(const gateway_t *gw) { return gw ? gw->port : 0; }

void gateway_destroy(gateway_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gateway_t *gw = *self_p;
    if (gw->daemon)
        MHD_stop_daemon(gw->daemon); /* joins the connection threads */
    gw_pool_destroy(&gw->pool);
    xlm_client_destroy(&gw->stats_client);
    gw_metrics_destroy(&gw->metrics);
    gw_service_clear(&gw->service);
    pthread_mutex_destroy(&gw->lock);
    pthread_mutex_destroy(&gw->stats_lock);
    free(gw->broker);
    free(gw->curve_server_file);
    free(gw->curve_secret_file);
    free(gw);
    *self_p = NULL;
}
