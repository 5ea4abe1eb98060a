/* stats.c: the answer to a stats request: queue depths, pipelines alive,
 * requests done and failed, per-stage timings. Built on the stack of
 * generated structs, packed once, freed on every path. */
#include "broker_internal.h"

#include <stdlib.h>
#include <string.h>

/* 100 us to 10 s: a tiny model's round trip to a long scoring request
 * (the gateway's /metrics buckets). */
static const double hist_bounds[BROKER_HIST_BOUNDS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

void broker_histogram_observe(broker_histogram_t *h, uint64_t us)
{
    double s = (double)us / 1e6;
    size_t b = 0;
    while (b < BROKER_HIST_BOUNDS && s > hist_bounds[b])
        b++;
    h->counts[b]++;
    h->count++;
    h->sum_s += s;
}

/* The message of h, borrowing its arrays (packed before they change). */
static void histogram_fill(Xlm__Histogram *out, broker_histogram_t *h)
{
    xlm__histogram__init(out);
    out->n_bounds = BROKER_HIST_BOUNDS;
    out->bounds = (double *)hist_bounds;
    out->n_counts = BROKER_HIST_BOUNDS + 1;
    out->counts = h->counts;
    out->sum = h->sum_s;
    out->count = h->count;
}

static void free_buffer(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Per-model parts, allocated together so that one free releases them. */
typedef struct {
    Xlm__ModelStats model;
    Xlm__Histogram queue_hist, service_hist;
    Xlm__Histogram *stage_hists;
    Xlm__StageStats *stages;
    Xlm__StageStats **stage_ptrs;
    Xlm__PipelineStats *pipelines;
    Xlm__PipelineStats **pipeline_ptrs;
} model_parts_t;

static void model_parts_free(model_parts_t *parts)
{
    free(parts->stage_hists);
    free(parts->stages);
    free(parts->stage_ptrs);
    free(parts->pipelines);
    free(parts->pipeline_ptrs);
}

static bool model_parts_fill(model_parts_t *parts, broker_model_t *m)
{
    Xlm__ModelStats *ms = &parts->model;
    xlm__model_stats__init(ms);
    ms->name = (char *)m->name;
    ms->queue_depth = (uint32_t)m->queue_len;
    ms->queue_bytes = m->queue_bytes;
    ms->in_flight = (uint32_t)m->in_flight;
    ms->pipelines_alive = (uint32_t)m->n_pipelines;
    ms->requests_done = m->done;
    ms->requests_failed = m->failed;
    ms->requests_rejected = m->rejected;
    ms->requests_expired = m->expired;
    ms->requests_cancelled = m->cancelled;
    ms->requests_requeued = m->requeued;
    const Xlm__Ready *ready = m->ready ? m->ready->ready : NULL;
    if (ready) { /* borrowed: packed before the model can change */
        ms->n_tasks = ready->n_tasks;
        ms->tasks = ready->tasks;
        ms->n_lang_codes = ready->n_lang_codes;
        ms->lang_codes = ready->lang_codes;
        ms->max_position_embeddings = ready->max_position_embeddings;
        ms->vocab_size = ready->vocab_size;
        ms->precision = ready->precision;
    }
    if (m->has_limits) { /* what every live pipeline accepts, not the latest one alone */
        ms->n_tasks = m->limits.n_tasks;
        ms->tasks = m->limits.tasks;
        ms->max_position_embeddings = m->limits.max_position_embeddings;
    }
    histogram_fill(&parts->queue_hist, &m->queue_hist);
    histogram_fill(&parts->service_hist, &m->service_hist);
    ms->queue_seconds = &parts->queue_hist;
    ms->service_seconds = &parts->service_hist;
    size_t ns = m->n_stages ? m->n_stages : 1, np = m->n_pipelines ? m->n_pipelines : 1;
    parts->stage_hists = calloc(ns, sizeof *parts->stage_hists);
    parts->stages = calloc(ns, sizeof *parts->stages);
    parts->stage_ptrs = calloc(ns, sizeof *parts->stage_ptrs);
    parts->pipelines = calloc(np, sizeof *parts->pipelines);
    parts->pipeline_ptrs = calloc(np, sizeof *parts->pipeline_ptrs);
    if (!parts->stage_hists || !parts->stages || !parts->stage_ptrs || !parts->pipelines ||
        !parts->pipeline_ptrs)
        return false;
    for (size_t s = 0; s < m->n_stages; s++) {
        Xlm__StageStats *st = &parts->stages[s];
        xlm__stage_stats__init(st);
        st->stage = (uint32_t)s;
        st->batches = m->stages[s].batches;
        st->total_us = m->stages[s].total_us;
        st->max_us = m->stages[s].max_us;
        histogram_fill(&parts->stage_hists[s], &m->stages[s].compute);
        st->compute_seconds = &parts->stage_hists[s];
        st->packet_bytes = m->stages[s].packet_bytes;
        parts->stage_ptrs[s] = st;
    }
    ms->n_stages = m->n_stages;
    ms->stages = parts->stage_ptrs;
    size_t i = 0;
    for (const broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next, i++) {
        const broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
        Xlm__PipelineStats *ps = &parts->pipelines[i];
        xlm__pipeline_stats__init(ps);
        ps->id = (char *)p->id;
        ps->n_stages = p->n_stages;
        ps->credit = p->credit;
        ps->in_flight = (uint32_t)p->n_in_flight;
        ps->batches = p->batches;
        ps->max_batch_tokens = p->max_batch_tokens;
        ps->precision = (char *)p->precision;
        ps->tail_known = p->tail_len > 0;
        /* The model's: its pipelines', or "mixed" when two of them differ. */
        if (i == 0)
            ms->precision = (char *)p->precision;
        else if (strcmp(ms->precision, p->precision) != 0)
            ms->precision = (char *)"mixed";
        parts->pipeline_ptrs[i] = ps;
    }
    ms->n_pipelines = i;
    ms->pipelines = parts->pipeline_ptrs;
    return true;
}

void broker_stats_send(broker_t *b, const uint8_t *client, size_t client_len)
{
    Xlm__Stats stats = XLM__STATS__INIT;
    Xlm__ServiceMessage msg = XLM__SERVICE_MESSAGE__INIT;
    size_t n = b->n_models ? b->n_models : 1;
    model_parts_t *parts = calloc(n, sizeof *parts);
    Xlm__ModelStats **models = calloc(n, sizeof *models);
    Xlm__GoneModel gone[BROKER_GONE_MAX], *gone_p[BROKER_GONE_MAX];
    for (size_t g = 0; g < b->n_gone; g++) {
        xlm__gone_model__init(&gone[g]);
        gone[g].name = (char *)b->gone[g].name;
        gone[g].since = (char *)b->gone[g].since;
        gone_p[g] = &gone[g];
    }
    uint8_t *data = NULL;
    size_t size = 0, i = 0;
    bool ok = parts && models;
    for (const broker_link_t *l = b->models.next; ok && l != &b->models; l = l->next, i++) {
        ok = model_parts_fill(&parts[i], BROKER_CONTAINER(l, broker_model_t, link));
        models[i] = &parts[i].model;
    }
    if (ok) {
        stats.uptime_ms = (uint64_t)(broker_now_us() - b->started_us) / 1000;
        stats.accepting = !b->stopping;
        stats.n_models = i;
        stats.models = models;
        stats.requests_received = b->received;
        stats.duplicates = b->duplicates;
        stats.malformed = b->malformed;
        stats.late_replies = b->late_replies;
        stats.foreign_replies = b->foreign_replies;
        stats.registrations_refused = b->registrations_refused;
        stats.log_suppressed = b->log_suppressed;
        stats.tail_beats_ignored = b->tail_beats_ignored;
        stats.auth_refused = broker_auth_refused(b->auth);
        stats.revoked_messages = broker_auth_revoked_messages(b->auth);
        stats.cache_entries = (uint32_t)b->done_count;
        stats.cache_bytes = b->done_bytes;
        stats.n_models_gone = b->n_gone;
        stats.models_gone = gone_p;
        msg.body_case = XLM__SERVICE_MESSAGE__BODY_STATS;
        msg.stats = &stats;
        proto_error_t err;
        ok = proto_service_pack(&msg, &data, &size, &err) == PROTO_STATUS_OK;
    }
    for (size_t k = 0; parts && k < n; k++)
        model_parts_free(&parts[k]);
    free(parts);
    free(models);
    zmq_msg_t frame;
    if (ok && zmq_msg_init_data(&frame, data, size, free_buffer, NULL) == 0) {
        broker_client_send(b, client, client_len, &frame);
        return;
    }
    free(data);
    broker_client_status(b, client, client_len, "", PROTO_STATUS_INTERNAL,
                         "stats: out of memory");
}
