/* models.c: what the broker serves, from its stats (xlm.proto's Stats as
 * libxlmclient's JSON). Health, metadata and scrapes ask often; the answer
 * is cached for a few hundred milliseconds so that probes cost the broker
 * little. */
#include "gateway_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STATS_TIMEOUT_MS = 1500 };

const char *gw_task_name(xlm_task_t task) { return xlm_task_name(task); }

static double number_of(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    return cJSON_IsNumber(item) ? item->valuedouble : 0.0;
}

/* "TASK_SEQ_CLS" (the schema's enum name) -> XLM_TASK_SEQ_CLS. */
static xlm_task_t task_of(const cJSON *item)
{
    if (cJSON_IsNumber(item))
        return item->valueint >= 0 && item->valueint < XLM_TASK_COUNT_ ? (xlm_task_t)item->valueint
                                                                       : XLM_TASK_COUNT_;
    if (!cJSON_IsString(item) || strncmp(item->valuestring, "TASK_", 5) != 0)
        return XLM_TASK_COUNT_;
    char lower[64];
    size_t i = 0;
    for (const char *c = item->valuestring + 5; *c && i + 1 < sizeof lower; c++)
        lower[i++] = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
    lower[i] = '\0';
    return xlm_task_from_name(lower);
}

static void hist_fill(gw_hist_t *h, const cJSON *json)
{
    const cJSON *bounds = cJSON_GetObjectItemCaseSensitive(json, "bounds");
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(json, "counts");
    int nb = cJSON_GetArraySize(bounds), nc = cJSON_GetArraySize(counts);
    if (!cJSON_IsObject(json) || nb < 1 || nb > GW_HIST_BOUNDS_MAX || nc != nb + 1)
        return; /* an older broker, or not one we can read: left out */
    for (int i = 0; i < nb; i++)
        h->bounds[i] = cJSON_GetArrayItem(bounds, i)->valuedouble;
    for (int i = 0; i < nc; i++)
        h->counts[i] = cJSON_GetArrayItem(counts, i)->valuedouble;
    h->n_bounds = (size_t)nb;
    h->sum = number_of(json, "sum");
    h->count = number_of(json, "count");
    h->present = true;
}

static bool model_fill(gw_model_t *m, const cJSON *json)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(json, "name");
    snprintf(m->name, sizeof m->name, "%s", cJSON_IsString(name) ? name->valuestring : "");
    m->queue_depth = (uint32_t)number_of(json, "queue_depth");
    m->in_flight = (uint32_t)number_of(json, "in_flight");
    m->pipelines_alive = (uint32_t)number_of(json, "pipelines_alive");
    m->max_length = (int64_t)number_of(json, "max_position_embeddings");
    m->vocab_size = (int64_t)number_of(json, "vocab_size");
    const cJSON *precision = cJSON_GetObjectItemCaseSensitive(json, "precision");
    snprintf(m->precision, sizeof m->precision, "%s",
             cJSON_IsString(precision) ? precision->valuestring : "");
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(json, "tasks"))
    {
        xlm_task_t t = task_of(item);
        if (t != XLM_TASK_COUNT_)
            m->serves[t] = true;
    }
    /* The default task is the checkpoint's own head, as an unchanged KServe
     * client expects: the most specific one served. */
    static const xlm_task_t preference[] = {
        XLM_TASK_SEQ_CLS, XLM_TASK_MULTIPLE_CHOICE, XLM_TASK_TOKEN_CLS, XLM_TASK_QA,
        XLM_TASK_QA_SIMPLE, XLM_TASK_LM, XLM_TASK_BASE, XLM_TASK_CLM_SCORE, XLM_TASK_MLM_PLL,
        XLM_TASK_GENERATE};
    m->first_task = XLM_TASK_COUNT_;
    for (size_t i = 0; m->first_task == XLM_TASK_COUNT_ && i < sizeof preference / sizeof preference[0]; i++)
        if (m->serves[preference[i]])
            m->first_task = preference[i];
    hist_fill(&m->queue, cJSON_GetObjectItemCaseSensitive(json, "queue_seconds"));
    hist_fill(&m->service, cJSON_GetObjectItemCaseSensitive(json, "service_seconds"));
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(json, "stages");
    int ns = cJSON_GetArraySize(stages);
    if (ns > 0 && !(m->stages = calloc((size_t)ns, sizeof *m->stages)))
        return false;
    cJSON_ArrayForEach(item, stages)
        hist_fill(&m->stages[m->n_stages++], cJSON_GetObjectItemCaseSensitive(item, "compute_seconds"));
    const cJSON *langs = cJSON_GetObjectItemCaseSensitive(json, "lang_codes");
    int n = cJSON_GetArraySize(langs);
    if (n > 0 && !(m->lang_codes = calloc((size_t)n, sizeof *m->lang_codes)))
        return false;
    cJSON_ArrayForEach(item, langs)
    {
        if (!(m->lang_codes[m->n_langs] = strdup(cJSON_IsString(item) ? item->valuestring : "")))
            return false;
        m->n_langs++;
    }
    return true;
}

static bool service_parse(const char *text, gw_service_t *out)
{
    cJSON *json = cJSON_Parse(text);
    if (!json)
        return false;
    const cJSON *accepting = cJSON_GetObjectItemCaseSensitive(json, "accepting");
    out->accepting = cJSON_IsTrue(accepting);
    out->duplicates = number_of(json, "duplicates");
    out->malformed = number_of(json, "malformed");
    out->received = number_of(json, "requests_received");
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(json, "models");
    int n = cJSON_GetArraySize(models);
    bool ok = n == 0 || (out->models = calloc((size_t)n, sizeof *out->models));
    const cJSON *item;
    cJSON_ArrayForEach(item, models)
    {
        if (!ok)
            break;
        ok = model_fill(&out->models[out->n_models++], item);
    }
    cJSON_Delete(json);
    return ok;
}

static bool service_copy(const gw_service_t *from, gw_service_t *to)
{
    *to = *from;
    to->models = NULL;
    to->n_models = 0;
    if (!from->n_models)
        return true;
    if (!(to->models = calloc(from->n_models, sizeof *to->models)))
        return false;
    for (size_t i = 0; i < from->n_models; i++) {
        gw_model_t *m = &to->models[i];
        *m = from->models[i];
        m->lang_codes = NULL;
        m->n_langs = 0;
        m->stages = NULL;
        m->n_stages = 0;
        to->n_models++;
        if (from->models[i].n_stages &&
            !(m->stages = malloc(from->models[i].n_stages * sizeof *m->stages)))
            return false;
        for (size_t st = 0; st < from->models[i].n_stages; st++, m->n_stages++)
            m->stages[st] = from->models[i].stages[st];
        if (from->models[i].n_langs &&
            !(m->lang_codes = calloc(from->models[i].n_langs, sizeof *m->lang_codes)))
            return false;
        for (size_t l = 0; l < from->models[i].n_langs; l++, m->n_langs++)
            if (!(m->lang_codes[l] = strdup(from->models[i].lang_codes[l])))
                return false;
    }
    return true;
}

void gw_service_clear(gw_service_t *service)
{
    for (size_t i = 0; i < service->n_models; i++) {
        for (size_t l = 0; l < service->models[i].n_langs; l++)
            free(service->models[i].lang_codes[l]);
        free(service->models[i].lang_codes);
        free(service->models[i].stages);
    }
    free(service->models);
    memset(service, 0, sizeof *service);
}

static void service_fetch(gateway_t *gw, gw_service_t *fresh)
{
    memset(fresh, 0, sizeof *fresh);
    char *json = NULL;
    pthread_mutex_lock(&gw->stats_lock);
    xlm_status_t status = xlm_client_stats_json(gw->stats_client, STATS_TIMEOUT_MS, &json);
    if (status)
        snprintf(fresh->why, sizeof fresh->why, "the broker at %s does not answer: %s",
                 gw->broker, xlm_client_error(gw->stats_client));
    /* One line when the broker's state changes (a refused CURVE key, a
     * broker gone, back again), not one per request or probe. */
    if (status && strcmp(fresh->why, gw->broker_trouble) != 0) {
        fprintf(stderr, "xlm-gateway: %s\n", fresh->why);
        snprintf(gw->broker_trouble, sizeof gw->broker_trouble, "%s", fresh->why);
    } else if (!status && gw->broker_trouble[0]) {
        fprintf(stderr, "xlm-gateway: the broker at %s answers again\n", gw->broker);
        gw->broker_trouble[0] = '\0';
    }
    pthread_mutex_unlock(&gw->stats_lock);
    if (!status) {
        fresh->reached = service_parse(json, fresh);
        if (!fresh->reached) {
            gw_service_clear(fresh);
            snprintf(fresh->why, sizeof fresh->why, "the broker's stats do not parse");
        }
    }
    free(json);
}

void gw_service_get(gateway_t *gw, int max_age_ms, gw_service_t *out)
{
    pthread_mutex_lock(&gw->lock);
    bool fresh_enough = gw->service_at_us &&
                        gw_now_us() - gw->service_at_us <= (int64_t)max_age_ms * 1000;
    bool copied = fresh_enough && service_copy(&gw->service, out);
    pthread_mutex_unlock(&gw->lock);
    if (copied)
        return;
    if (fresh_enough)
        gw_service_clear(out);
    gw_service_t fresh;
    service_fetch(gw, &fresh);
    pthread_mutex_lock(&gw->lock);
    gw_service_clear(&gw->service);
    gw->service = fresh;
    gw->service_at_us = gw_now_us();
    if (!service_copy(&gw->service, out)) {
        gw_service_clear(out);
        snprintf(out->why, sizeof out->why, "out of memory");
    }
    pthread_mutex_unlock(&gw->lock);
}

const gw_model_t *gw_service_model(const gw_service_t *service, const char *name)
{
    if (!name || !name[0])
        return service->n_models == 1 ? &service->models[0] : NULL;
    for (size_t i = 0; i < service->n_models; i++)
        if (strcmp(service->models[i].name, name) == 0)
            return &service->models[i];
    return NULL;
}
