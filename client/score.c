/* score.c: xlm_client_score_pairs, xlm-score's service path as one call.
 *
 * One text request per pair (two segments, or the target alone), the
 * window kept full, results put back in the pairs' order. The window is
 * small, so the ids in flight are found by a linear search.
 */
#include "client_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void xlm_score_options_init_sized(xlm_score_options_t *options, size_t struct_size)
{
    if (!options || struct_size < sizeof options->struct_size)
        return;
    xlm_score_options_t fresh;
    memset(&fresh, 0, sizeof fresh);
    size_t n = struct_size < sizeof fresh ? struct_size : sizeof fresh;
    fresh.struct_size = n;
    memset(options, 0, struct_size);
    memcpy(options, &fresh, n);
}

void xlm_pair_scores_clear(xlm_pair_score_t *scores, size_t n)
{
    for (size_t i = 0; scores && i < n; i++) {
        free(scores[i].message);
        free(scores[i].token_scores);
        for (int64_t t = 0; scores[i].tokens && t < scores[i].n_target_tokens; t++)
            free(scores[i].tokens[t]);
        free(scores[i].tokens);
        memset(&scores[i], 0, sizeof scores[i]);
    }
}

typedef struct {
    char id[XLM_ID_SIZE];
    size_t pair;
} in_flight_t;

static void set_failure(xlm_pair_score_t *out, xlm_code_t code, const char *message)
{
    out->code = code;
    out->message = strdup(message);
    out->mean = NAN;
}

static void fill_score(const xlm_result_t *result, bool token_scores, xlm_pair_score_t *out)
{
    if (xlm_result_code(result) != XLM_CODE_OK) {
        set_failure(out, xlm_result_code(result), xlm_result_message(result));
        return;
    }
    const xlm_tensor_t *scores = xlm_result_find(result, "token_logprobs");
    if (!scores || scores->dtype != XLM_F32 || !scores->row_lengths || scores->shape[0] != 1) {
        set_failure(out, XLM_CODE_INTERNAL, "the reply has no token_logprobs row");
        return;
    }
    out->code = XLM_CODE_OK;
    out->message = strdup("");
    out->n_target_tokens = scores->row_lengths[0];
    double sum = 0.0; /* in double, in order, as xlm-score adds them */
    for (int64_t i = 0; i < out->n_target_tokens; i++)
        sum += scores->f32[i];
    out->score = sum;
    out->mean = out->n_target_tokens ? sum / (double)out->n_target_tokens : NAN;
    if (!token_scores)
        return;
    size_t n = (size_t)out->n_target_tokens;
    out->token_scores = malloc((n ? n : 1) * sizeof *out->token_scores);
    if (out->token_scores)
        memcpy(out->token_scores, scores->f32, n * sizeof *out->token_scores);
    const xlm_tensor_t *tokens = xlm_result_find(result, "tokens");
    if (tokens && tokens->dtype == XLM_TEXT && tokens->numel == n) {
        out->tokens = calloc(n ? n : 1, sizeof *out->tokens);
        for (size_t i = 0; out->tokens && i < n; i++)
            out->tokens[i] = strdup(tokens->text[i]);
    }
}

/* Submits pair i. XLM_OK also when the protocol refused the pair (it then
 * finishes at once with BAD_REQUEST); other statuses are the client's. */
static xlm_status_t submit_pair(xlm_client_t *client, const xlm_pair_t *pair,
                                const xlm_score_options_t *options, xlm_pair_score_t *out,
                                in_flight_t *slot, bool *sent)
{
    xlm_segment_t segments[2] = {{pair->src, pair->src_lang}, {pair->tgt, pair->tgt_lang}};
    size_t n_segments = options->no_source ? 1 : 2;
    xlm_text_t text = {1, &n_segments, options->no_source ? segments + 1 : segments};
    xlm_request_t request;
    xlm_request_init(&request);
    request.model = options->model;
    request.task = options->mode == XLM_SCORE_CLM ? XLM_TASK_CLM_SCORE : XLM_TASK_MLM_PLL;
    request.text = &text;
    request.return_tokens = options->token_scores;
    request.deadline_ms = options->deadline_ms;
    *sent = false;
    if ((!options->no_source && !pair->src) || !pair->tgt) {
        set_failure(out, XLM_CODE_BAD_REQUEST, pair->tgt ? "the pair has no src" : "the pair has no tgt");
        return XLM_OK;
    }
    xlm_status_t status = xlm_client_submit(client, &request, slot->id);
    if (status == XLM_ERR_ARG) {
        set_failure(out, XLM_CODE_BAD_REQUEST, xlm_client_error(client));
        return XLM_OK;
    }
    *sent = status == XLM_OK;
    return status;
}

static xlm_status_t collect_one(xlm_client_t *client, in_flight_t *flights, size_t *n_flights,
                                bool token_scores, xlm_pair_score_t *scores_out)
{
    xlm_result_t *result = NULL;
    xlm_status_t status = xlm_client_collect(client, NULL, -1, &result);
    if (status)
        return status;
    for (size_t f = 0; f < *n_flights; f++)
        if (strcmp(flights[f].id, xlm_result_id(result)) == 0) {
            fill_score(result, token_scores, &scores_out[flights[f].pair]);
            flights[f] = flights[--*n_flights];
            break;
        }
    xlm_result_destroy(&result);
    return XLM_OK;
}

/* After a failure of the client itself: the pairs in flight are cancelled
 * (the window is left empty, as it was found) and every pair without a
 * result says why; the client's error message is kept. */
static void abandon(xlm_client_t *client, xlm_pair_score_t *scores_out, size_t n)
{
    char why[sizeof client->error];
    memcpy(why, client->error, sizeof why);
    char message[sizeof why + 32];
    snprintf(message, sizeof message, "not scored: %s", why);
    while (client->used) {
        xlm_result_t *dropped = NULL;
        if (client->done_head < 0) {
            for (size_t i = 0; i < client->config.window; i++)
                if (client->slots[i].state == SLOT_SENT || client->slots[i].state == SLOT_BACKOFF)
                    xlm_client_cancel(client, client->slots[i].id);
        }
        if (xlm_client_collect(client, NULL, 0, &dropped))
            break;
        xlm_result_destroy(&dropped);
    }
    for (size_t i = 0; i < n; i++)
        if (!scores_out[i].message)
            set_failure(&scores_out[i], XLM_CODE_CANCELLED, message);
    memcpy(client->error, why, sizeof why);
}

xlm_status_t xlm_client_score_pairs(xlm_client_t *client, const xlm_pair_t *pairs, size_t n,
                                    const xlm_score_options_t *options,
                                    xlm_pair_score_t *scores_out)
{
    static const char fn[] = "xlm_client_score_pairs";
    if (!client)
        return XLM_ERR_ARG;
    client->error[0] = '\0';
    if ((n && (!pairs || !scores_out)) || !options)
        return client_fail(client, XLM_ERR_ARG, "%s: %s", fn,
                           !options ? "no options" : !pairs ? "no pairs" : "no place for the scores");
    xlm_score_options_t opts;
    xlm_score_options_init(&opts);
    if (!client_struct_copy(&opts, sizeof opts, CLIENT_SIZE_TO(xlm_score_options_t, deadline_ms),
                            options, fn, "the options", client->error, sizeof client->error))
        return XLM_ERR_ARG;
    if (opts.mode < 0 || opts.mode >= XLM_SCORE_MODE_COUNT_)
        return client_fail(client, XLM_ERR_ARG, "%s: mode %d, expected XLM_SCORE_CLM or "
                           "XLM_SCORE_MLM_PLL", fn, (int)opts.mode);
    if (client->used)
        return client_fail(client, XLM_ERR_ARG, "%s: %zu requests are outstanding: collect them "
                           "first", fn, client->used);
    memset(scores_out, 0, n * sizeof *scores_out);
    in_flight_t *flights = calloc(client->config.window, sizeof *flights);
    if (!flights)
        return client_fail(client, XLM_ERR_NOMEM, "%s: out of memory", fn);
    size_t n_flights = 0, next = 0;
    xlm_status_t status = XLM_OK;
    while (!status && (next < n || n_flights)) {
        if (next < n && n_flights < client->config.window) {
            bool sent = false;
            flights[n_flights].pair = next;
            status = submit_pair(client, &pairs[next], &opts, &scores_out[next],
                                 &flights[n_flights], &sent);
            n_flights += sent;
            next += !status;
        } else {
            status = collect_one(client, flights, &n_flights, opts.token_scores, scores_out);
        }
    }
    free(flights);
    if (status)
        abandon(client, scores_out, n);
    return status;
}
