/* limits.c: what a model's live pipelines accept, and whether a new
 * registration may join them.
 *
 * Two kinds of field in a Ready:
 *   - identity of the checkpoint (vocab_size, languages, layers, width,
 *     attention heads, causal or masked): every pipeline of a model must
 *     agree, since a request checked against one is computed by another; a
 *     registration that contradicts the live pipelines is refused;
 *   - limits (max_position_embeddings, tasks served, the micro-batch
 *     budget): they may differ, the model accepts what all its live
 *     pipelines accept, recomputed whenever one joins or leaves, so one
 *     peer's tiny limits last only as long as that peer.
 * A request admitted under wider limits is checked again against the
 * pipeline it is dispatched to (broker_pipeline_accepts). */
#include "broker_internal.h"

#include <stdio.h>
#include <string.h>

static uint32_t tasks_mask(const Xlm__Ready *ready)
{
    uint32_t mask = 0;
    for (size_t i = 0; i < ready->n_tasks; i++)
        mask |= 1u << (unsigned)ready->tasks[i];
    return mask;
}

void broker_limits_of_ready(broker_pipeline_t *p, const Xlm__Ready *ready)
{
    p->max_positions = ready->max_position_embeddings;
    p->tasks = tasks_mask(ready);
}

/* Compares one field where both sides said it; writes the contradiction. */
static bool differs_i64(const char *name, int64_t mine, int64_t theirs, char *why, size_t size)
{
    if (mine == 0 || theirs == 0 || mine == theirs)
        return false;
    snprintf(why, size, "%s %lld, the model's live pipelines have %lld", name, (long long)mine,
             (long long)theirs);
    return true;
}

bool broker_ready_contradicts(const broker_model_t *m, const Xlm__Ready *ready, char *why,
                              size_t size)
{
    if (m->n_pipelines == 0 || !m->ready)
        return false; /* the first live pipeline says what the model is */
    const Xlm__Ready *live = m->ready->ready;
    if (ready->vocab_size != live->vocab_size) {
        snprintf(why, size, "vocab_size %lld, the model's live pipelines have %lld",
                 (long long)ready->vocab_size, (long long)live->vocab_size);
        return true;
    }
    if (ready->n_langs != live->n_langs) {
        snprintf(why, size, "n_langs %lld, the model's live pipelines have %lld",
                 (long long)ready->n_langs, (long long)live->n_langs);
        return true;
    }
    for (size_t i = 0; ready->n_lang_codes && live->n_lang_codes && i < ready->n_lang_codes; i++)
        if (strcmp(ready->lang_codes[i], live->lang_codes[i]) != 0) {
            snprintf(why, size, "language %zu is '%s', the model's live pipelines have '%s'", i,
                     ready->lang_codes[i], live->lang_codes[i]);
            return true;
        }
    if (differs_i64("n_layers", ready->n_layers, live->n_layers, why, size) ||
        differs_i64("emb_dim", ready->emb_dim, live->emb_dim, why, size) ||
        differs_i64("n_heads", ready->n_heads, live->n_heads, why, size))
        return true;
    if (ready->architecture[0] && live->architecture[0] &&
        strcmp(ready->architecture, live->architecture) != 0) {
        snprintf(why, size, "architecture '%s', the model's live pipelines are '%s'",
                 ready->architecture, live->architecture);
        return true;
    }
    return false;
}

void broker_limits_recompute(broker_model_t *m)
{
    if (m->n_pipelines == 0 || !m->ready)
        return; /* kept: the last live pipelines' limits until one comes back */
    int64_t max_positions = INT64_MAX;
    uint32_t tasks = UINT32_MAX;
    uint64_t budget = 0;
    for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
        const broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
        if (p->max_positions < max_positions)
            max_positions = p->max_positions;
        tasks &= p->tasks;
        if (p->max_batch_tokens > budget)
            budget = p->max_batch_tokens;
    }
    /* The identity fields and the language codes are the same in every
     * live Ready (broker_ready_contradicts): taken from the latest. */
    Xlm__Ready *limits = &m->limits;
    const Xlm__Ready *latest = m->ready->ready;
    xlm__ready__init(limits);
    limits->model = m->name;
    limits->vocab_size = latest->vocab_size;
    limits->n_langs = latest->n_langs;
    limits->n_lang_codes = latest->n_lang_codes;
    limits->lang_codes = latest->lang_codes;
    limits->max_position_embeddings = max_positions;
    limits->n_tasks = 0;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++)
        if (tasks & (1u << t))
            m->limit_tasks[limits->n_tasks++] = (Xlm__Task)t;
    limits->tasks = m->limit_tasks;
    m->max_batch_tokens = budget;
    m->has_limits = true;
}

int64_t broker_request_positions(const Xlm__Request *rq)
{
    if (rq->input_case != XLM__REQUEST__INPUT_TOKENS)
        return 0; /* text: tokenised and checked by the worker */
    const Xlm__TokenInput *in = rq->tokens;
    const proto_task_info_t *info = proto_task_info((proto_task_t)rq->task);
    int64_t extra = info && info->generate && rq->generate ? rq->generate->steps : 0;
    int64_t needed = 0;
    for (size_t r = 0; r < in->n_lengths; r++)
        if (in->lengths[r] + extra > needed)
            needed = in->lengths[r] + extra;
    for (size_t i = 0; i < in->n_position_ids; i++)
        if (in->position_ids[i] + 1 > needed)
            needed = in->position_ids[i] + 1;
    return needed;
}

bool broker_pipeline_accepts(const broker_pipeline_t *p, const broker_req_t *r)
{
    return (p->tasks & (1u << (unsigned)r->task)) && r->positions <= p->max_positions;
}

/* Says why no live pipeline of the model takes r, or false when one does. */
bool broker_model_refuses(const broker_model_t *m, const broker_req_t *r, proto_status_t *status,
                          char *why, size_t size)
{
    bool task_served = false;
    int64_t most_positions = 0;
    for (broker_link_t *l = m->pipelines.next; l != &m->pipelines; l = l->next) {
        const broker_pipeline_t *p = BROKER_CONTAINER(l, broker_pipeline_t, link);
        if (broker_pipeline_accepts(p, r))
            return false;
        if (p->tasks & (1u << (unsigned)r->task)) {
            task_served = true;
            if (p->max_positions > most_positions)
                most_positions = p->max_positions;
        }
    }
    if (m->n_pipelines == 0)
        return false; /* it waits for a pipeline */
    if (!task_served) {
        *status = PROTO_STATUS_UNKNOWN_TASK;
        snprintf(why, size, "task %s is no longer served by model '%s' (its pipelines changed)",
                 proto_task_name(r->task), m->name);
    } else {
        *status = PROTO_STATUS_TOO_LARGE;
        snprintf(why, size, "request needs %lld positions, the live pipelines of model '%s' take "
                 "at most %lld (they changed after it was accepted)", (long long)r->positions,
                 m->name, (long long)most_positions);
    }
    return true;
}
