/* last.c: the last stage: the heads and scores of a micro-batch that went
 * through every layer, its replies, and the progress and idle beats it
 * reports (the broker learns this socket from them). Calls
 * the engine, link.c and micro.c; called by ring.c and first.c. */
#include "stage.h"

#include <stdlib.h>
#include <string.h>

/* Scored positions of item row r (orig rows): [from, to). */
static int64_t score_from(const worker_item_t *it, int64_t r) { return it->windows[r].from; }
static int64_t score_to(const worker_item_t *it, int64_t r) { return it->windows[r].to; }

/* The scored tokens as text, when the request asked and a tokenizer is here. */
static void scored_texts(worker_stage_t *st, const worker_item_t *it, const shard_inputs_t *in,
                         worker_texts_t *texts)
{
    memset(texts, 0, sizeof *texts);
    if (!it->return_tokens || !st->tokenizer)
        return;
    int64_t total = 0;
    for (int64_t r = 0; r < it->orig_rows; r++)
        total += score_to(it, r) - score_from(it, r);
    texts->text = calloc((size_t)(total ? total : 1), sizeof(char *));
    texts->row_lengths = calloc((size_t)(it->orig_rows ? it->orig_rows : 1), sizeof(int64_t));
    if (!texts->text || !texts->row_lengths) {
        worker_texts_clear(texts);
        return;
    }
    texts->rows = it->orig_rows;
    for (int64_t r = 0; r < it->orig_rows; r++) {
        const int64_t from = score_from(it, r), to = score_to(it, r);
        texts->row_lengths[r] = to - from;
        texts->longest = to - from > texts->longest ? to - from : texts->longest;
        for (int64_t pos = from; pos < to; pos++) {
            int64_t id;
            if (it->copies) /* the copies hold the mask there */
                id = it->copies[texts->n].target;
            else
                id = in->input_ids[r * in->seq + pos];
            const char *token = shard_tokenizer_id_to_token(st->tokenizer, id);
            texts->text[texts->n++] = strdup(token ? token : "");
        }
    }
}

/* clm_score of every row of a micro-batch at once: one pass of the
 * vocabulary projection for all its requests instead of one each. */
typedef struct {
    shard_outputs_t outputs; /* token_logprobs of every row of the micro-batch */
    bool ok;
} micro_clm_t;

static void micro_clm_run(worker_stage_t *st, worker_micro_t *m, micro_clm_t *clm)
{
    memset(clm, 0, sizeof *clm);
    shard_outputs_init(&clm->outputs);
    bool any = false;
    for (int i = 0; i < m->n_items; i++)
        any |= m->items[i].task == PROTO_TASK_CLM_SCORE;
    int64_t *from = any ? malloc((size_t)m->batch * sizeof *from) : NULL;
    if (!from)
        return;
    for (int64_t r = 0; r < m->batch; r++)
        from[r] = m->seq; /* rows of other requests: nothing scored */
    for (int i = 0; i < m->n_items; i++) {
        const worker_item_t *it = &m->items[i];
        for (int64_t r = 0; it->task == PROTO_TASK_CLM_SCORE && r < it->orig_rows; r++)
            from[it->row0 + r] = it->windows[r].from;
    }
    shard_inputs_t in = {.batch = m->batch, .seq = m->seq, .input_ids = m->input_ids,
                         .attention_mask = m->attention_mask};
    shard_error_t err = {0};
    /* A failure here (e.g. a long row with explicit positions) falls back
     * to each request on its own, which names the problem. */
    clm->ok = shard_head_clm_score(st->model, st->state, m->acts, &in, from, &clm->outputs, &err) == SHARD_OK;
    free(from);
}

static void micro_clm_clear(micro_clm_t *clm)
{
    shard_outputs_clear(&clm->outputs);
    memset(clm, 0, sizeof *clm);
}

/* The scores of one request, by the engine's pieces that xlm-score in
 * process runs too: its windows' outputs, the copies' or the clm head's
 * log-probs gathered into them, the rows summed. */
static shard_status_t score_item(worker_stage_t *st, const worker_item_t *it, const shard_acts_t *view,
                                 const shard_inputs_t *in, const micro_clm_t *clm,
                                 shard_outputs_t *outputs, shard_error_t *err)
{
    shard_tensor_t *tokens = NULL, *sums = NULL;
    shard_status_t status = shard_score_outputs_add(outputs, it->windows, it->orig_rows, &tokens,
                                                    &sums, err);
    if (status)
        return status;
    if (it->task == PROTO_TASK_MLM_PLL) {
        float *logprob = malloc((size_t)(it->n_copies ? it->n_copies : 1) * sizeof *logprob);
        status = logprob ? shard_pll_logprob(st->model, st->state, view, it->copies, it->n_copies,
                                             logprob, err)
                         : shard_error_set(err, SHARD_ERR_NOMEM, "mlm_pll: out of memory");
        if (!status)
            status = shard_pll_gather(it->copies, it->n_copies, logprob, it->windows, tokens, err);
        free(logprob);
    } else if (clm && clm->ok) {
        status = shard_clm_gather(shard_outputs_find(&clm->outputs, "token_logprobs"), it->row0,
                                  it->windows, tokens, err);
    } else {
        shard_outputs_t all;
        shard_outputs_init(&all);
        int64_t *from = malloc((size_t)it->orig_rows * sizeof *from);
        if (!from)
            status = shard_error_set(err, SHARD_ERR_NOMEM, "clm_score: out of memory");
        for (int64_t r = 0; !status && r < it->orig_rows; r++)
            from[r] = score_from(it, r);
        if (!status && !(status = shard_head_clm_score(st->model, st->state, view, in, from, &all, err)))
            status = shard_clm_gather(shard_outputs_find(&all, "token_logprobs"), 0, it->windows,
                                      tokens, err);
        free(from);
        shard_outputs_clear(&all);
    }
    if (!status)
        shard_score_sum_rows(tokens, sums);
    return status;
}

static shard_status_t run_item(worker_stage_t *st, worker_micro_t *m, const worker_item_t *item,
                               const micro_clm_t *clm, shard_outputs_t *outputs,
                               worker_texts_t *texts, shard_error_t *err)
{
    shard_inputs_t in;
    shard_acts_t view;
    shard_status_t status = worker_item_inputs(m, item, &in, err);
    if (status)
        return status;
    const worker_task_t *wt = worker_task(item->task);
    if (!(status = shard_acts_view(m->acts, item->row0, item->rows, item->seq, &view, err))) {
        if (wt && (wt->call == WORKER_CALL_CLM_SCORE || wt->call == WORKER_CALL_MASKED_LOGPROB)) {
            status = score_item(st, item, &view, &in, clm, outputs, err);
            if (!status)
                scored_texts(st, item, &in, texts);
        } else if (wt && wt->call == WORKER_CALL_HEAD) {
            status = shard_head(st->model, st->state, wt->head, &view, &in, outputs, err);
        } else {
            status = shard_error_set(err, SHARD_ERR_HEAD,
                                     "run_item: task %d (%s) is not computed by a head or a "
                                     "scoring call in a micro-batch",
                                     (int)item->task, proto_task_name((proto_task_t)item->task));
        }
    }
    worker_inputs_free(&in);
    return status;
}

worker_status_t worker_finish_micro(worker_stage_t *st, worker_micro_t *m, int64_t *next_token,
                                    worker_error_t *err)
{
    if (m->kind == MICRO_GENERATE) {
        shard_error_t serr = {0};
        *next_token = -1;
        if (m->kv_missed) {
            *next_token = WORKER_TOKEN_REFILL;
            return WORKER_OK;
        }
        if (shard_head_next_token(st->model, st->state, m->acts, 0, m->seq - 1, next_token, &serr)) {
            /* The request is answered INTERNAL at stage 0; the rank goes on. */
            worker_log(st->log, WORKER_LOG_ERROR, "generation step failed: %s", serr.message);
            *next_token = -1;
        }
        return WORKER_OK;
    }
    worker_reply_t *replies = calloc((size_t)(m->n_items ? m->n_items : 1), sizeof *replies);
    if (!replies)
        return worker_error_set(err, WORKER_ERR_NOMEM, "worker_finish_micro: out of memory for "
                                "%d replies", m->n_items);
    const uint64_t batch_tokens = (uint64_t)(m->batch * m->seq);
    micro_clm_t clm;
    micro_clm_run(st, m, &clm);
    for (int i = 0; i < m->n_items; i++) {
        shard_outputs_t outputs;
        worker_texts_t texts = {0};
        shard_error_t serr = {0};
        worker_error_t werr;
        shard_outputs_init(&outputs);
        shard_status_t status = run_item(st, m, &m->items[i], &clm, &outputs, &texts, &serr);
        if (worker_reply_pack(&replies[i], &m->items[i], worker_status_of(status),
                              status ? serr.message : NULL, &outputs, &texts, m->stage_us,
                              m->n_stages, batch_tokens, (uint32_t)m->n_items, &werr) != WORKER_OK)
            worker_log(st->log, WORKER_LOG_ERROR, "%s", werr.message); /* answered INTERNAL */
        worker_texts_clear(&texts);
        shard_outputs_clear(&outputs);
    }
    micro_clm_clear(&clm);
    worker_status_t rc = worker_replies_send(st->link, replies, (size_t)m->n_items, m->stage_us,
                                             m->n_stages, err);
    free(replies);
    return rc;
}

worker_status_t worker_note_progress(worker_stage_t *st, bool replied, worker_error_t *err)
{
    st->progress++;
    const uint64_t now = worker_now_us();
    if (replied) {
        st->progress_sent_us = now; /* the reply said it */
        return WORKER_OK;
    }
    if (now - st->progress_sent_us < (uint64_t)st->options->heartbeat_ms * 500)
        return WORKER_OK;
    st->progress_sent_us = now;
    return worker_link_send_progress(st->link, st->options->heartbeat_ms, st->progress,
                                     st->n_stages > 1, st->instance, err);
}

worker_status_t worker_tail_beat(worker_stage_t *st, worker_error_t *err)
{
    const uint64_t now = worker_now_us();
    if (st->n_stages < 2 || !st->link ||
        (st->progress_sent_us && now - st->progress_sent_us < (uint64_t)st->options->heartbeat_ms * 1000))
        return WORKER_OK;
    st->progress_sent_us = now;
    /* Progress 0: being idle is no progress, whatever came before. */
    return worker_link_send_progress(st->link, st->options->heartbeat_ms, 0, true, st->instance,
                                     err);
}
