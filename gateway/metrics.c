/* metrics.c: the gateway's counters and histograms and the Prometheus text
 * exposition of GET /metrics (format 0.0.4).
 *
 * Naming as node_exporter does: base units (seconds), `_total` counters,
 * one HELP and TYPE per family, fixed buckets, labels of low cardinality
 * (model, task, status, stage, code; never ids or text). What the gateway
 * sees is counted here; the broker's gauges and counters come from its
 * stats at scrape time.
 */
#include "gateway_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 100 us to 10 s: a tiny model's round trip to a long scoring request. */
static const double bucket_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
enum { N_BUCKETS = sizeof bucket_bounds / sizeof bucket_bounds[0], HTTP_CODES = 600 };

typedef struct {
    char *labels; /* rendered: model="m",task="t" */
    uint64_t count;
    uint64_t buckets[N_BUCKETS]; /* histograms: not cumulative here */
    double sum;
} series_t;

typedef struct {
    series_t *items;
    size_t n, capacity;
} family_t;

struct gw_metrics {
    pthread_mutex_t lock;
    uint64_t http[HTTP_CODES];
    uint64_t malformed;
    family_t requests, latency, queue, compute;
};

gw_metrics_t *gw_metrics_new(void)
{
    gw_metrics_t *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void family_free(family_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->items[i].labels);
    free(f->items);
}

void gw_metrics_destroy(gw_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_metrics_t *m = *self_p;
    family_free(&m->requests);
    family_free(&m->latency);
    family_free(&m->queue);
    family_free(&m->compute);
    pthread_mutex_destroy(&m->lock);
    free(m);
    *self_p = NULL;
}

/* A label value as the text format escapes it (backslash, quote, newline). */
static void escape_into(char *out, size_t size, const char *value)
{
    size_t n = 0;
    for (const char *c = value; *c && n + 3 < size; c++) {
        if (*c == '\\' || *c == '"' || *c == '\n')
            out[n++] = '\\';
        out[n++] = *c == '\n' ? 'n' : *c;
    }
    out[n] = '\0';
}

/* The series of these labels, made when new; NULL when out of memory. */
static series_t *family_series(family_t *f, const char *labels)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->items[i].labels, labels) == 0)
            return &f->items[i];
    if (f->n == f->capacity) {
        size_t capacity = f->capacity ? 2 * f->capacity : 8;
        series_t *grown = realloc(f->items, capacity * sizeof *grown);
        if (!grown)
            return NULL;
        f->items = grown;
        f->capacity = capacity;
    }
    series_t *s = &f->items[f->n];
    memset(s, 0, sizeof *s);
    if (!(s->labels = strdup(labels)))
        return NULL;
    f->n++;
    return s;
}

static void observe(family_t *f, const char *labels, double seconds)
{
    series_t *s = family_series(f, labels);
    if (!s)
        return;
    s->count++;
    s->sum += seconds;
    for (size_t b = 0; b < N_BUCKETS; b++)
        if (seconds <= bucket_bounds[b]) {
            s->buckets[b]++;
            break;
        }
}

void gw_metrics_http(gw_metrics_t *m, unsigned code)
{
    pthread_mutex_lock(&m->lock);
    m->http[code < HTTP_CODES ? code : 0]++;
    pthread_mutex_unlock(&m->lock);
}

void gw_metrics_malformed(gw_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    m->malformed++;
    pthread_mutex_unlock(&m->lock);
}

void gw_metrics_request(gw_metrics_t *m, const char *model, const char *task, xlm_code_t code,
                        double seconds, const xlm_timings_t *timings)
{
    char model_v[2 * GW_NAME_MAX], labels[3 * GW_NAME_MAX];
    escape_into(model_v, sizeof model_v, model && model[0] ? model : "");
    pthread_mutex_lock(&m->lock);
    snprintf(labels, sizeof labels, "model=\"%s\",task=\"%s\",status=\"%s\"", model_v, task,
             xlm_code_str(code));
    series_t *s = family_series(&m->requests, labels);
    if (s)
        s->count++;
    snprintf(labels, sizeof labels, "model=\"%s\",task=\"%s\"", model_v, task);
    if (seconds >= 0)
        observe(&m->latency, labels, seconds);
    if (timings && code == XLM_CODE_OK) {
        snprintf(labels, sizeof labels, "model=\"%s\"", model_v);
        observe(&m->queue, labels, (double)timings->queue_us / 1e6);
        for (size_t st = 0; st < timings->n_stages; st++) {
            snprintf(labels, sizeof labels, "model=\"%s\",stage=\"%zu\"", model_v, st);
            observe(&m->compute, labels, (double)timings->stage_us[st] / 1e6);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void gw_metrics_latency(gw_metrics_t *m, const char *model, const char *task, double seconds)
{
    char model_v[2 * GW_NAME_MAX], labels[3 * GW_NAME_MAX];
    escape_into(model_v, sizeof model_v, model && model[0] ? model : "");
    snprintf(labels, sizeof labels, "model=\"%s\",task=\"%s\"", model_v, task);
    pthread_mutex_lock(&m->lock);
    observe(&m->latency, labels, seconds);
    pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------------ rendering */

typedef struct {
    char *text;
    size_t used, capacity;
    bool failed;
} text_t;

static void put(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_t *t, const char *fmt, ...)
{
    for (;;) {
        va_list args;
        va_start(args, fmt);
        int n = t->failed ? 0 : vsnprintf(t->text + t->used, t->capacity - t->used, fmt, args);
        va_end(args);
        if (t->failed || n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->capacity - t->used) {
            t->used += (size_t)n;
            return;
        }
        size_t capacity = 2 * t->capacity + (size_t)n;
        char *grown = realloc(t->text, capacity);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->text = grown;
        t->capacity = capacity;
    }
}

static void header(text_t *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_counters(text_t *t, const char *name, const family_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        put(t, "%s{%s} %llu\n", name, f->items[i].labels, (unsigned long long)f->items[i].count);
}

static void render_histograms(text_t *t, const char *name, const family_t *f)
{
    for (size_t i = 0; i < f->n; i++) {
        const series_t *s = &f->items[i];
        uint64_t cumulative = 0;
        for (size_t b = 0; b < N_BUCKETS; b++) {
            cumulative += s->buckets[b];
            put(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, s->labels, bucket_bounds[b],
                (unsigned long long)cumulative);
        }
        put(t, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, s->labels, (unsigned long long)s->count);
        put(t, "%s_sum{%s} %.9g\n", name, s->labels, s->sum);
        put(t, "%s_count{%s} %llu\n", name, s->labels, (unsigned long long)s->count);
    }
}

static void render_broker_histogram(text_t *t, const char *name, const char *labels,
                                    const gw_hist_t *h)
{
    double cumulative = 0;
    for (size_t b = 0; b < h->n_bounds; b++) {
        cumulative += h->counts[b];
        put(t, "%s_bucket{%s,le=\"%g\"} %.0f\n", name, labels, h->bounds[b], cumulative);
    }
    put(t, "%s_bucket{%s,le=\"+Inf\"} %.0f\n", name, labels, h->count);
    put(t, "%s_sum{%s} %.9g\n", name, labels, h->sum);
    put(t, "%s_count{%s} %.0f\n", name, labels, h->count);
}

/* The histograms the broker keeps for every request, whichever client sent it. */
static void render_broker_histograms(text_t *t, const gw_service_t *service)
{
    static const struct {
        const char *name, *help;
        size_t offset;
    } families[] = {
        {"xlm_broker_queue_duration_seconds",
         "Time requests waited in the broker's queue, receipt to dispatch (the broker's histogram).",
         offsetof(gw_model_t, queue)},
        {"xlm_broker_request_duration_seconds",
         "Time from the broker's receipt of a request to the worker's reply (the broker's histogram).",
         offsetof(gw_model_t, service)},
    };
    char labels[3 * GW_NAME_MAX], model_v[2 * GW_NAME_MAX];
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        header(t, families[f].name, "histogram", families[f].help);
        for (size_t i = 0; i < service->n_models; i++) {
            const gw_hist_t *h = (const gw_hist_t *)((const char *)&service->models[i] + families[f].offset);
            if (!h->present)
                continue;
            escape_into(model_v, sizeof model_v, service->models[i].name);
            snprintf(labels, sizeof labels, "model=\"%s\"", model_v);
            render_broker_histogram(t, families[f].name, labels, h);
        }
    }
    header(t, "xlm_broker_stage_compute_duration_seconds", "histogram",
           "Compute time of each pipeline stage per micro-batch (the broker's histogram).");
    for (size_t i = 0; i < service->n_models; i++) {
        escape_into(model_v, sizeof model_v, service->models[i].name);
        for (size_t st = 0; st < service->models[i].n_stages; st++) {
            if (!service->models[i].stages[st].present)
                continue;
            snprintf(labels, sizeof labels, "model=\"%s\",stage=\"%zu\"", model_v, st);
            render_broker_histogram(t, "xlm_broker_stage_compute_duration_seconds", labels,
                                    &service->models[i].stages[st]);
        }
    }
}

static void render_broker(text_t *t, const gw_service_t *service)
{
    header(t, "xlm_broker_up", "gauge", "1 when the broker answered the gateway's stats request.");
    put(t, "xlm_broker_up %d\n", service->reached ? 1 : 0);
    if (!service->reached)
        return;
    static const struct {
        const char *name, *help;
        size_t offset;
    } gauges[] = {
        {"xlm_model_queue_depth", "Requests waiting in the broker's queue of the model.",
         offsetof(gw_model_t, queue_depth)},
        {"xlm_model_requests_in_flight", "Requests of the model sent to its pipelines, not answered.",
         offsetof(gw_model_t, in_flight)},
        {"xlm_model_pipelines_alive", "Live pipelines serving the model.",
         offsetof(gw_model_t, pipelines_alive)},
    };
    for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        header(t, gauges[g].name, "gauge", gauges[g].help);
        for (size_t i = 0; i < service->n_models; i++) {
            char model_v[2 * GW_NAME_MAX];
            escape_into(model_v, sizeof model_v, service->models[i].name);
            uint32_t v = *(const uint32_t *)((const char *)&service->models[i] + gauges[g].offset);
            put(t, "%s{model=\"%s\"} %u\n", gauges[g].name, model_v, v);
        }
    }
    header(t, "xlm_broker_requests_received_total", "counter",
           "Requests the broker received (since it started).");
    put(t, "xlm_broker_requests_received_total %.0f\n", service->received);
    header(t, "xlm_broker_duplicate_requests_total", "counter",
           "Retried requests the broker answered from its cache or already held.");
    put(t, "xlm_broker_duplicate_requests_total %.0f\n", service->duplicates);
    header(t, "xlm_broker_malformed_messages_total", "counter",
           "Messages the broker could not decode.");
    put(t, "xlm_broker_malformed_messages_total %.0f\n", service->malformed);
    render_broker_histograms(t, service);
}

char *gw_metrics_render(gw_metrics_t *m, const gw_service_t *service, size_t queued, size_t busy)
{
    text_t t = {0};
    pthread_mutex_lock(&m->lock);
    header(&t, "xlm_gateway_http_responses_total", "counter",
           "HTTP responses of the gateway by status code.");
    for (unsigned code = 0; code < HTTP_CODES; code++)
        if (m->http[code])
            put(&t, "xlm_gateway_http_responses_total{code=\"%u\"} %llu\n", code,
                (unsigned long long)m->http[code]);
    header(&t, "xlm_gateway_requests_total", "counter",
           "Requests the gateway sent to the broker, by model, task and final status.");
    render_counters(&t, "xlm_gateway_requests_total", &m->requests);
    header(&t, "xlm_gateway_request_duration_seconds", "histogram",
           "End-to-end time of a request in the gateway, body parsed to reply built.");
    render_histograms(&t, "xlm_gateway_request_duration_seconds", &m->latency);
    header(&t, "xlm_queue_duration_seconds", "histogram",
           "Time requests waited in the broker's queue (from the replies' timings).");
    render_histograms(&t, "xlm_queue_duration_seconds", &m->queue);
    header(&t, "xlm_stage_compute_duration_seconds", "histogram",
           "Compute time of each pipeline stage for the micro-batch of a request.");
    render_histograms(&t, "xlm_stage_compute_duration_seconds", &m->compute);
    header(&t, "xlm_gateway_malformed_requests_total", "counter",
           "Request bodies that were not valid JSON.");
    put(&t, "xlm_gateway_malformed_requests_total %llu\n", (unsigned long long)m->malformed);
    pthread_mutex_unlock(&m->lock);
    header(&t, "xlm_gateway_queue_depth", "gauge",
           "Requests admitted by the gateway and waiting for a broker client.");
    put(&t, "xlm_gateway_queue_depth %zu\n", queued);
    header(&t, "xlm_gateway_requests_in_flight", "gauge",
           "Requests of the gateway holding a broker client.");
    put(&t, "xlm_gateway_requests_in_flight %zu\n", busy);
    render_broker(&t, service);
    if (t.failed) {
        free(t.text);
        return NULL;
    }
    return t.text;
}
