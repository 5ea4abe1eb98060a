/* service.c: the scoring backend that goes through the service (xlm-score
 * --endpoint E). One request per pair, text in, tokenised by the workers
 * with the model's own tokenizer; the client library keeps a window in
 * flight and retries with the same id. */
#include "score.h"
#include "service_check.h"
#include "shard_engine.h"
#include "xlmclient.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char id[XLM_ID_SIZE];
    int64_t line;
    int64_t bytes;
} inflight_t;

typedef struct {
    score_backend_t base;
    score_options_t options;
    xlm_client_t *client;
    inflight_t *inflight; /* open addressing would be overkill: the window is small */
    size_t n_inflight, capacity;
    score_result_t *ready; /* pair errors answered without the service */
    size_t n_ready, cap_ready;
} service_t;

static int remember(service_t *s, const char *id, int64_t line, int64_t bytes)
{
    if (s->n_inflight == s->capacity) {
        size_t capacity = s->capacity ? 2 * s->capacity : 64;
        inflight_t *grown = realloc(s->inflight, capacity * sizeof *grown);
        if (!grown)
            return -1;
        s->inflight = grown;
        s->capacity = capacity;
    }
    inflight_t *f = &s->inflight[s->n_inflight++];
    snprintf(f->id, sizeof f->id, "%s", id);
    f->line = line;
    f->bytes = bytes;
    return 0;
}

static bool forget(service_t *s, const char *id, inflight_t *out)
{
    for (size_t i = 0; i < s->n_inflight; i++)
        if (strcmp(s->inflight[i].id, id) == 0) {
            *out = s->inflight[i];
            s->inflight[i] = s->inflight[--s->n_inflight];
            return true;
        }
    return false;
}

static int push_ready(service_t *s, score_result_t *r)
{
    if (s->n_ready == s->cap_ready) {
        size_t capacity = s->cap_ready ? 2 * s->cap_ready : 16;
        score_result_t *grown = realloc(s->ready, capacity * sizeof *grown);
        if (!grown)
            return -1;
        s->ready = grown;
        s->cap_ready = capacity;
    }
    s->ready[s->n_ready++] = *r;
    memset(r, 0, sizeof *r);
    return 0;
}

static int service_submit(score_backend_t *self, score_pair_t *pair)
{
    service_t *s = (service_t *)self;
    score_result_t r = {0};
    if (pair->error_code[0]) {
        score_result_error(&r, pair->line, pair->error_code, "%s", pair->error_message);
        score_pair_clear(pair);
        return push_ready(s, &r);
    }
    xlm_segment_t segments[2] = {{pair->src, pair->src_lang}, {pair->tgt, pair->tgt_lang}};
    size_t n_segments = s->options.no_source ? 1 : 2;
    xlm_text_t text = {1, &n_segments, s->options.no_source ? segments + 1 : segments};
    xlm_request_t request;
    xlm_request_init(&request);
    request.model = s->options.model;
    request.task = s->options.mode == SCORE_MODE_CLM ? XLM_TASK_CLM_SCORE : XLM_TASK_MLM_PLL;
    request.text = &text;
    request.return_tokens = s->options.token_scores;
    /* A scoring job keeps a deep queue: a pair may wait long for its turn. */
    request.deadline_ms = s->options.deadline_ms;
    char id[XLM_ID_SIZE];
    /* The caller keeps pending() under max_pending, the client's window. */
    xlm_status_t status = xlm_client_submit(s->client, &request, id);
    int64_t bytes = (int64_t)(strlen(pair->src) + strlen(pair->tgt));
    if (status == XLM_ERR_ARG) { /* a pair the protocol refuses, e.g. empty text */
        score_result_error(&r, pair->line, "bad_request", "%s", xlm_client_error(s->client));
        score_pair_clear(pair);
        return push_ready(s, &r);
    }
    if (status != XLM_OK) {
        snprintf(self->error, sizeof self->error, "submit: %s", xlm_client_error(s->client));
        return -1;
    }
    const int64_t line = pair->line;
    score_pair_clear(pair);
    return remember(s, id, line, bytes);
}

static void fill(service_t *s, const xlm_result_t *res, const inflight_t *f, score_result_t *r)
{
    memset(r, 0, sizeof *r);
    r->line = f->line;
    r->tokens_bytes = f->bytes;
    if (xlm_result_code(res) != XLM_CODE_OK) {
        score_result_error(r, f->line, xlm_code_str(xlm_result_code(res)), "%s", xlm_result_message(res));
        return;
    }
    const xlm_tensor_t *scores = xlm_result_find(res, "token_logprobs");
    const xlm_tensor_t *tokens = xlm_result_find(res, "tokens");
    if (!scores || scores->dtype != XLM_F32 || !scores->row_lengths || scores->shape[0] != 1) {
        score_result_error(r, f->line, "internal", "the reply has no token_logprobs row");
        return;
    }
    r->ok = true;
    r->n_target_tokens = scores->row_lengths[0];
    r->score = shard_score_sum(scores->f32, r->n_target_tokens); /* as in process */
    const xlm_timings_t *t = xlm_result_timings(res);
    r->n_tokens = t && t->batch_requests ? (int64_t)(t->batch_tokens / t->batch_requests) : r->n_target_tokens;
    if (!s->options.token_scores)
        return;
    r->token_scores = malloc((size_t)(r->n_target_tokens ? r->n_target_tokens : 1) * sizeof(float));
    if (r->token_scores)
        memcpy(r->token_scores, scores->f32, (size_t)r->n_target_tokens * sizeof(float));
    if (tokens && tokens->dtype == XLM_TEXT && (int64_t)tokens->numel == r->n_target_tokens) {
        r->tokens = calloc((size_t)(r->n_target_tokens ? r->n_target_tokens : 1), sizeof(char *));
        for (int64_t i = 0; r->tokens && i < r->n_target_tokens; i++)
            r->tokens[i] = strdup(tokens->text[i]);
    }
}

static int service_collect(score_backend_t *self, score_result_t *result, int timeout_ms, bool flush)
{
    (void)flush;
    service_t *s = (service_t *)self;
    if (s->n_ready) {
        *result = s->ready[--s->n_ready];
        return 1;
    }
    if (s->n_inflight == 0)
        return 0;
    xlm_result_t *res = NULL;
    xlm_status_t status = xlm_client_collect(s->client, NULL, timeout_ms, &res);
    if (status == XLM_ERR_TIMEOUT)
        return 0;
    if (status != XLM_OK) {
        snprintf(self->error, sizeof self->error, "collect: %s", xlm_client_error(s->client));
        return -1;
    }
    inflight_t f;
    int rc = 1;
    if (!forget(s, xlm_result_id(res), &f)) {
        rc = 0; /* not ours: cannot happen with one client per job */
    } else {
        fill(s, res, &f, result);
    }
    xlm_result_destroy(&res);
    return rc;
}

static size_t service_pending(score_backend_t *self)
{
    service_t *s = (service_t *)self;
    return s->n_inflight + s->n_ready;
}

static void service_destroy(score_backend_t *self)
{
    service_t *s = (service_t *)self;
    for (size_t i = 0; i < s->n_ready; i++)
        score_result_clear(&s->ready[i]);
    free(s->ready);
    free(s->inflight);
    xlm_client_destroy(&s->client);
    free(s);
}

/* The mode must fit the model, as in process (local.c): by what the
 * model's pipelines serve. A masked LM serves mlm_pll, a causal one does
 * not; both serve clm_score (xlm-client infer's "kind": "clm_score" runs on
 * any LM, as xlm-infer's does), so --mode clm on a masked LM is refused
 * here, by the model's tasks, and not by the workers. */
static int check_mode(const tools_served_t *served, score_mode_t mode, char *error, size_t size)
{
    char why[512];
    if (mode == SCORE_MODE_MLM_PLL && tools_service_check_task(served, XLM_TASK_MLM_PLL, why,
                                                               sizeof why) != 0) {
        snprintf(error, size, "%s: --mode mlm-pll needs a masked LM: a causal LM is scored with "
                 "--mode clm", why);
        return -1;
    }
    if (mode == SCORE_MODE_CLM && tools_service_check_task(served, XLM_TASK_CLM_SCORE, why,
                                                           sizeof why) != 0) {
        snprintf(error, size, "%s: --mode clm needs a causal LM", why);
        return -1;
    }
    if (mode == SCORE_MODE_CLM && served->tasks_known && served->tasks[XLM_TASK_MLM_PLL]) {
        snprintf(error, size, "model '%s' is a masked LM (it serves mlm_pll): score it with "
                 "--mode mlm-pll", served->name);
        return -1;
    }
    return 0;
}

score_backend_t *score_backend_service(const score_options_t *options, char *error, size_t size)
{
    service_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(error, size, "out of memory");
        return NULL;
    }
    s->options = *options;
    s->base.submit = service_submit;
    s->base.collect = service_collect;
    s->base.pending = service_pending;
    s->base.destroy = service_destroy;
    s->base.max_pending = options->window;
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = options->endpoint;
    config.window = options->window;
    config.curve_secret = options->curve_secret;
    config.curve_server = options->curve_server;
    /* Retries are for a lost message or a restarted broker, not for a long
     * queue: wait long per attempt, and try many times. */
    config.attempt_timeout_ms = options->timeout_ms ? options->timeout_ms : 20000;
    config.max_attempts = options->attempts ? options->attempts : 60;
    config.deadline_ms = 0; /* the request's own deadline, below, holds */
    xlm_error_t err;
    s->client = xlm_client_new(&config, &err);
    if (!s->client) {
        snprintf(error, size, "%s", err.message);
        free(s);
        return NULL;
    }
    tools_served_t served;
    if (tools_service_check(s->client, options->endpoint, options->model,
                            options->connect_timeout_ms ? (int)options->connect_timeout_ms : 5000,
                            &served, error, size) != 0 ||
        check_mode(&served, options->mode, error, size) != 0) {
        service_destroy(&s->base);
        return NULL;
    }
    snprintf(s->base.model_name, sizeof s->base.model_name, "%s", served.name);
    s->options.model = s->base.model_name; /* named from now on, even when it was the only one */
    s->base.probe_first = true;
    return &s->base;
}
