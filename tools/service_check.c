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

static int check_model(const cJSON *models, const cJSON *gone, const char *endpoint,
                       const char *model, char *resolved, size_t resolved_size, char *error,
                       size_t error_size)
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
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(only, "name");
        snprintf(resolved, resolved_size, "%s", cJSON_IsString(name) ? name->valuestring : "");
        return 0;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, models) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        if (cJSON_IsString(name) && strcmp(name->valuestring, model) == 0) {
            snprintf(resolved, resolved_size, "%s", model);
            return 0;
        }
    }
    snprintf(error, error_size, "unknown model '%s': the service at %s serves %s", model,
             endpoint, names);
    return -1;
}

int tools_service_check(xlm_client_t *client, const char *endpoint, const char *model,
                        int timeout_ms, char *resolved, size_t resolved_size, char *error,
                        size_t error_size)
{
    char *json = NULL;
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
                         resolved, resolved_size, error, error_size);
        cJSON_Delete(none);
    }
    cJSON_Delete(stats);
    return rc;
}
