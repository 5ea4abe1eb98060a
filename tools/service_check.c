/* service_check.c: the broker's stats, read once before a job starts. */
#include "service_check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "a, b, c" of the served names. */
static void list_names(const cJSON *models, char *out, size_t size)
{
    const cJSON *m;
    size_t used = 0;
    out[0] = '\0';
    cJSON_ArrayForEach(m, models) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        if (cJSON_IsString(name) && used < size)
            used += (size_t)snprintf(out + used, size - used, "%s%s", used ? ", " : "",
                                     name->valuestring);
    }
}

/* The only model with a live pipeline, else the only model, else NULL:
 * the broker's choice for a request that names none. */
static const cJSON *default_model(const cJSON *models)
{
    const cJSON *m, *live = NULL;
    int n_live = 0;
    cJSON_ArrayForEach(m, models) {
        const cJSON *alive = cJSON_GetObjectItemCaseSensitive(m, "pipelines_alive");
        if (cJSON_IsNumber(alive) && alive->valuedouble > 0) {
            live = m;
            n_live++;
        }
    }
    if (n_live == 1)
        return live;
    return n_live == 0 && cJSON_GetArraySize(models) == 1 ? cJSON_GetArrayItem(models, 0) : NULL;
}

/* "model 'X': no live pipeline since T" when the broker unregistered it. */
static bool model_gone(const cJSON *gone, const char *model, char *error, size_t error_size)
{
    const cJSON *g;
    cJSON_ArrayForEach(g, gone) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(g, "name");
        const cJSON *since = cJSON_GetObjectItemCaseSensitive(g, "since");
        if (cJSON_IsString(name) && strcmp(name->valuestring, model) == 0) {
            snprintf(error, error_size, "model '%s': no live pipeline since %s (the broker "
                     "unregistered it)", model, cJSON_IsString(since) ? since->valuestring : "?");
            return true;
        }
    }
    return false;
}

/* The stats name a task by its enum value's name (TASK_CLM_SCORE), the
 * client library by the protocol's task name (clm_score). */
static xlm_task_t task_of_enum_name(const char *name)
{
    static const char prefix[] = "TASK_";
    char lower[64];
    size_t n = 0;
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return XLM_TASK_COUNT_;
    for (const char *p = name + sizeof prefix - 1; *p && n + 1 < sizeof lower; p++)
        lower[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    lower[n] = '\0';
    return xlm_task_from_name(lower);
}

static void describe(const cJSON *m, tools_served_t *served)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
    const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(m, "tasks");
    const cJSON *t;
    size_t used = 0;
    snprintf(served->name, sizeof served->name, "%s", cJSON_IsString(name) ? name->valuestring : "");
    /* An older broker leaves tasks out; a model whose pipelines have not
     * registered yet has none: nothing to check against either way. */
    served->tasks_known = cJSON_IsArray(tasks) && cJSON_GetArraySize(tasks) > 0;
    const cJSON *listed = served->tasks_known ? tasks : NULL;
    cJSON_ArrayForEach(t, listed) {
        xlm_task_t task = cJSON_IsString(t) ? task_of_enum_name(t->valuestring) : XLM_TASK_COUNT_;
        if (task == XLM_TASK_COUNT_ || served->tasks[task])
            continue;
        served->tasks[task] = true;
        if (used < sizeof served->task_list)
            used += (size_t)snprintf(served->task_list + used, sizeof served->task_list - used,
                                     "%s%s", used ? ", " : "", xlm_task_name(task));
    }
}

static int check_model(const cJSON *models, const cJSON *gone, const char *endpoint,
                       const char *model, tools_served_t *served, char *error, size_t error_size)
{
    char names[512];
    list_names(models, names, sizeof names);
    const int n = cJSON_GetArraySize(models);
    if (model && model_gone(gone, model, error, error_size))
        return -1;
    if (n == 0) {
        snprintf(error, error_size, "the service at %s serves no model yet (no worker has "
                 "registered with its broker)", endpoint);
        return -1;
    }
    if (!model) {
        const cJSON *only = default_model(models);
        if (!only) {
            snprintf(error, error_size, "the service at %s serves %d models (%s): name one "
                     "with --model", endpoint, n, names);
            return -1;
        }
        describe(only, served);
        return 0;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, models) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        if (cJSON_IsString(name) && strcmp(name->valuestring, model) == 0) {
            describe(m, served);
            return 0;
        }
    }
    snprintf(error, error_size, "unknown model '%s': the service at %s serves %s", model,
             endpoint, names);
    return -1;
}

int tools_service_check(xlm_client_t *client, const char *endpoint, const char *model,
                        int timeout_ms, tools_served_t *served, char *error, size_t error_size)
{
    char *json = NULL;
    memset(served, 0, sizeof *served);
    if (xlm_client_stats_json(client, timeout_ms, &json) != XLM_OK) {
        /* The library says after " ms: " why a handshake failed, if one did. */
        const char *why = strstr(xlm_client_error(client), " ms: ");
        snprintf(error, error_size, "cannot reach the broker at %s (no reply to a stats request "
                 "within %g s)%s%s", endpoint, timeout_ms / 1000.0, why ? ": " : "",
                 why ? why + 5 : "");
        return -1;
    }
    cJSON *stats = cJSON_Parse(json);
    free(json);
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(stats, "models");
    int rc;
    if (!cJSON_IsObject(stats)) {
        snprintf(error, error_size, "the broker at %s sent stats that are not JSON", endpoint);
        rc = -1;
    } else {
        /* An empty repeated field may be left out of the JSON. */
        cJSON *none = models ? NULL : cJSON_CreateArray();
        rc = check_model(models ? models : none,
                         cJSON_GetObjectItemCaseSensitive(stats, "models_gone"), endpoint, model,
                         served, error, error_size);
        cJSON_Delete(none);
    }
    cJSON_Delete(stats);
    return rc;
}

int tools_service_check_task(const tools_served_t *served, xlm_task_t task, char *error,
                             size_t error_size)
{
    if (!served->tasks_known || ((int)task >= 0 && task < XLM_TASK_COUNT_ && served->tasks[task]))
        return 0;
    snprintf(error, error_size, "task %s is not served by model '%s' (it serves %s)",
             xlm_task_name(task), served->name, served->task_list);
    return -1;
}
