/* score.c: POST /v1/score, translation scoring for people.
 *
 *   {"model": NAME (optional when one is served), "mode": "clm"|"mlm-pll",
 *    "token_scores": false, "no_source": false, "deadline_ms": optional,
 *    "pairs": [{"src_lang", "src", "tgt_lang", "tgt"}, ...]}
 *   -> {"model": NAME, "results": [one per pair, in order]}
 *
 * Each result holds what xlm-score writes for a line (score,
 * n_target_tokens, mean; token_scores and tokens when asked), or an error
 * object for that pair alone. The pairs go through one broker client's
 * window (xlm_client_score_pairs).
 */
#include "gateway_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    xlm_score_mode_t mode;
    xlm_task_t task;
} modes[] = {
    {"clm", XLM_SCORE_CLM, XLM_TASK_CLM_SCORE},
    {"mlm-pll", XLM_SCORE_MLM_PLL, XLM_TASK_MLM_PLL},
};

static const char *string_field(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* A pair that is not an object of strings gets its error here: its src
 * and tgt stay NULL, which score_pairs answers as a bad request. */
static void pair_read(const cJSON *json, xlm_pair_t *pair, bool no_source)
{
    pair->src_lang = string_field(json, "src_lang");
    pair->src = string_field(json, "src");
    pair->tgt_lang = string_field(json, "tgt_lang");
    pair->tgt = string_field(json, "tgt");
    if (no_source && !pair->src)
        pair->src = "";
}

/* 17 digits, as xlm-score writes them: cJSON's own printing takes 15 when
 * they read back within an epsilon, which loses the last bits of a score. */
static cJSON *number_or_null(double value)
{
    if (!isfinite(value))
        return cJSON_CreateNull();
    char text[32];
    snprintf(text, sizeof text, "%.17g", value);
    return cJSON_CreateRaw(text);
}

static cJSON *result_json(const xlm_pair_score_t *s, bool token_scores)
{
    cJSON *r = cJSON_CreateObject();
    if (s->code != XLM_CODE_OK) {
        cJSON *error = cJSON_AddObjectToObject(r, "error");
        cJSON_AddStringToObject(error, "code", xlm_code_str(s->code));
        cJSON_AddStringToObject(error, "message", s->message ? s->message : "");
        return r;
    }
    cJSON_AddItemToObject(r, "score", number_or_null(s->score));
    cJSON_AddNumberToObject(r, "n_target_tokens", (double)s->n_target_tokens);
    cJSON_AddItemToObject(r, "mean", number_or_null(s->mean));
    if (token_scores && s->token_scores) {
        cJSON *scores = cJSON_AddArrayToObject(r, "token_scores");
        for (int64_t i = 0; i < s->n_target_tokens; i++)
            cJSON_AddItemToArray(scores, gw_json_float(s->token_scores[i]));
    }
    if (token_scores && s->tokens) {
        cJSON *tokens = cJSON_AddArrayToObject(r, "tokens");
        for (int64_t i = 0; i < s->n_target_tokens; i++)
            cJSON_AddItemToArray(tokens, cJSON_CreateString(s->tokens[i]));
    }
    return r;
}

/* The body's options, or false with the reason. */
static bool read_options(const cJSON *body, xlm_score_options_t *options, int *mode_row,
                         const cJSON **pairs, char *why, size_t size)
{
    if (!cJSON_IsObject(body)) {
        snprintf(why, size, "the body must be a JSON object with \"mode\" and \"pairs\"");
        return false;
    }
    const char *mode = string_field(body, "mode");
    *mode_row = -1;
    for (int i = 0; mode && i < (int)(sizeof modes / sizeof modes[0]); i++)
        if (strcmp(mode, modes[i].name) == 0)
            *mode_row = i;
    if (*mode_row < 0) {
        snprintf(why, size, "mode: %s%s%s, expected \"clm\" or \"mlm-pll\"", mode ? "'" : "",
                 mode ? mode : "missing", mode ? "'" : "");
        return false;
    }
    static const char *const flags[] = {"token_scores", "no_source"};
    for (size_t f = 0; f < 2; f++) {
        const cJSON *flag = cJSON_GetObjectItemCaseSensitive(body, flags[f]);
        if (flag && !cJSON_IsBool(flag)) {
            snprintf(why, size, "%s: expected true or false", flags[f]);
            return false;
        }
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (model && !cJSON_IsString(model)) {
        snprintf(why, size, "model: expected a string");
        return false;
    }
    const cJSON *deadline = cJSON_GetObjectItemCaseSensitive(body, "deadline_ms");
    if (deadline && (!cJSON_IsNumber(deadline) || deadline->valuedouble < 1 || deadline->valuedouble > 4e9)) {
        snprintf(why, size, "deadline_ms: expected whole milliseconds, 1 to 4000000000");
        return false;
    }
    *pairs = cJSON_GetObjectItemCaseSensitive(body, "pairs");
    if (!cJSON_IsArray(*pairs)) {
        snprintf(why, size, "pairs: expected an array of {\"src_lang\", \"src\", \"tgt_lang\", \"tgt\"}");
        return false;
    }
    options->mode = modes[*mode_row].mode;
    options->token_scores = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "token_scores"));
    options->no_source = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "no_source"));
    options->deadline_ms = deadline ? (uint32_t)deadline->valuedouble : 0;
    return true;
}

static void count_pairs(gw_request_t *rq, const char *model, xlm_task_t task,
                        const xlm_pair_score_t *scores, size_t n, double seconds)
{
    for (size_t i = 0; i < n; i++)
        gw_metrics_request(rq->gw->metrics, model, gw_task_name(task), scores[i].code, -1, NULL);
    gw_metrics_latency(rq->gw->metrics, model, gw_task_name(task), seconds);
}

static void score_run(gw_request_t *rq, const gw_model_t *m, xlm_score_options_t *options,
                      int mode_row, const cJSON *pairs_json, gw_reply_t *reply)
{
    size_t n = (size_t)cJSON_GetArraySize(pairs_json);
    xlm_pair_t *pairs = calloc(n ? n : 1, sizeof *pairs);
    xlm_pair_score_t *scores = calloc(n ? n : 1, sizeof *scores);
    if (!pairs || !scores) {
        free(pairs);
        free(scores);
        gw_reply_error(reply, 500, "out of memory for %zu pairs", n);
        return;
    }
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, pairs_json)
        pair_read(item, &pairs[i++], options->no_source);
    options->model = m->name;
    if (!options->deadline_ms)
        options->deadline_ms = rq->deadline_ms;
    xlm_client_t *client = gw_client_take(rq->gw);
    xlm_status_t status = xlm_client_score_pairs(client, pairs, n, options, scores);
    char failure[256];
    snprintf(failure, sizeof failure, "%s", status ? xlm_client_error(client) : "");
    gw_client_give(rq->gw, client);
    count_pairs(rq, m->name, modes[mode_row].task, scores, n,
                (double)(gw_now_us() - rq->started_us) / 1e6);
    if (status) {
        gw_reply_error(reply, 500, "%s", failure);
    } else {
        cJSON *json = cJSON_CreateObject();
        cJSON_AddStringToObject(json, "model", m->name);
        cJSON *results = cJSON_AddArrayToObject(json, "results");
        for (size_t k = 0; k < n; k++)
            cJSON_AddItemToArray(results, result_json(&scores[k], options->token_scores));
        gw_reply_json(reply, 200, json);
    }
    xlm_pair_scores_clear(scores, n);
    free(scores);
    free(pairs);
}

void gw_v1_score(gw_request_t *rq, gw_reply_t *reply)
{
    cJSON *body = gw_parse_body(rq, reply);
    if (!body)
        return;
    xlm_score_options_t options;
    xlm_score_options_init(&options);
    int mode_row = -1;
    const cJSON *pairs = NULL;
    char why[512];
    if (!read_options(body, &options, &mode_row, &pairs, why, sizeof why)) {
        gw_reply_error(reply, 400, "%s", why);
        cJSON_Delete(body);
        return;
    }
    gw_service_t service;
    gw_service_get(rq->gw, 1000, &service);
    const char *name = string_field(body, "model");
    const gw_model_t *m = service.reached ? gw_service_model(&service, name) : NULL;
    if (!service.reached) {
        gw_reply_error(reply, 503, "%s", service.why);
        reply->retry_after_s = 1;
    } else if (!m && name && name[0]) {
        gw_reply_error(reply, 404, "unknown model '%s'", name);
    } else if (!m) {
        gw_reply_error(reply, 400, "model: the service serves %zu models, name one",
                       service.n_models);
    } else if (!m->serves[modes[mode_row].task]) {
        gw_reply_error(reply, 400, "mode '%s': model '%s' does not serve %s (a %s checkpoint is "
                       "needed)", modes[mode_row].name, m->name, gw_task_name(modes[mode_row].task),
                       mode_row == 0 ? "causal" : "masked-LM");
    } else {
        score_run(rq, m, &options, mode_row, pairs, reply);
    }
    gw_service_clear(&service);
    cJSON_Delete(body);
}
