/* run.c: the whole model in one call, and greedy generation. */
#include "engine_internal.h"

#include <stdlib.h>
#include <string.h>

static shard_status_t need_whole(const shard_model_t *model, const char *what, shard_error_t *err)
{
    const shard_range_t r = model->range;
    if (!r.embeddings || !r.heads || r.first_layer != 0 || r.last_layer != model->config.n_layers)
        return shard_error_set(err, SHARD_ERR_RANGE,
                               "%s: needs the whole model, this object holds layers [%lld, %lld)",
                               what, (long long)r.first_layer, (long long)r.last_layer);
    return SHARD_OK;
}

shard_status_t shard_forward(const shard_model_t *model, shard_state_t *state, shard_head_t head,
                             const shard_inputs_t *inputs, shard_outputs_t *outputs,
                             shard_error_t *err)
{
    shard_status_t status = need_whole(model, "shard_forward", err);
    if (status)
        return status;
    if (!shard_model_has_head(model, head))
        return shard_head(model, state, head, NULL, inputs, outputs, err); /* names the problem */
    /* The state keeps its activations between calls: no fresh pages to
     * fault in for every batch. */
    shard_acts_t *acts = shard_state_acts(state, err);
    if (!acts)
        return err ? err->code : SHARD_ERR_NOMEM;
    if (!(status = shard_embed(model, state, inputs, acts, err)) &&
        !(status = shard_run_layers(model, state, acts, err)))
        status = shard_head(model, state, head, acts, inputs, outputs, err);
    return status;
}

/* What both generation paths check and set up: ids and langs of the whole
 * sequence to be (the prompt copied, langs filled). */
typedef struct {
    int64_t *ids, *langs;
    int64_t prompt, total;
} generation_t;

static shard_status_t generation_begin(const shard_model_t *model, const shard_inputs_t *inputs,
                                       int64_t steps, int64_t lang_fill, generation_t *g,
                                       shard_error_t *err)
{
    const shard_config_t *c = &model->config;
    *g = (generation_t){0};
    shard_status_t status = need_whole(model, "generate", err);
    if (status || (status = shard_inputs_check(c, inputs, err)))
        return status;
    if (!shard_model_has_head(model, SHARD_HEAD_LM))
        return shard_error_set(err, SHARD_ERR_HEAD, "generate: %s has no LM head", model->dir);
    if (inputs->batch != 1 || steps < 0 || inputs->seq + steps > c->max_position_embeddings)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "generate: one row of %lld tokens plus %lld steps must fit in "
                               "max_position_embeddings %lld (got %lld rows)",
                               (long long)inputs->seq, (long long)steps,
                               (long long)c->max_position_embeddings, (long long)inputs->batch);
    if (inputs->langs && (lang_fill < 0 || lang_fill >= c->n_langs))
        return shard_error_set(err, SHARD_ERR_INPUT, "generate: langs_fill %lld, expected 0..%lld",
                               (long long)lang_fill, (long long)c->n_langs - 1);
    g->prompt = inputs->seq;
    g->total = inputs->seq + steps;
    g->ids = calloc((size_t)g->total, sizeof *g->ids);
    g->langs = inputs->langs ? calloc((size_t)g->total, sizeof *g->langs) : NULL;
    if (!g->ids || (inputs->langs && !g->langs))
        return shard_error_set(err, SHARD_ERR_NOMEM, "generate: out of memory");
    memcpy(g->ids, inputs->input_ids, (size_t)inputs->seq * sizeof *g->ids);
    for (int64_t i = 0; g->langs && i < g->total; i++)
        g->langs[i] = i < inputs->seq ? inputs->langs[i] : lang_fill;
    return SHARD_OK;
}

/* The sequence's first len tokens, run as given, like the reference's plain
 * call: no attention mask, so the default one applies. */
static shard_inputs_t generation_inputs(const generation_t *g, int64_t len)
{
    return (shard_inputs_t){.batch = 1, .seq = len, .input_ids = g->ids, .langs = g->langs};
}

/* Step len of the recomputing path: the whole sequence [0, len). */
static shard_status_t step_recompute(const shard_model_t *model, shard_state_t *state,
                                     shard_acts_t *acts, const generation_t *g, int64_t len,
                                     shard_error_t *err)
{
    const shard_inputs_t step = generation_inputs(g, len);
    shard_status_t status = shard_embed(model, state, &step, acts, err);
    if (!status)
        status = shard_run_layers(model, state, acts, err);
    if (!status)
        status = shard_head_next_token(model, state, acts, 0, len - 1, &g->ids[len], err);
    return status;
}

/* The cache continues while every position is real: no pad id in the
 * sequence (the default mask would mask it and change the positions). */
static bool cache_can_continue(const shard_config_t *c, const generation_t *g, int64_t len)
{
    if (!c->causal)
        return false;
    for (int64_t i = 0; i < len; i++)
        if (g->ids[i] == c->pad_index)
            return false;
    return true;
}

static shard_status_t generation_end(const generation_t *g, shard_outputs_t *outputs,
                                     shard_error_t *err)
{
    int64_t shape_all[2] = {1, g->total}, shape_new[2] = {1, g->total - g->prompt};
    shard_tensor_t *all = shard_outputs_add(outputs, "generated_ids", SHARD_I64, 2, shape_all, err);
    shard_tensor_t *fresh = all ? shard_outputs_add(outputs, "new_ids", SHARD_I64, 2, shape_new, err)
                                : NULL;
    if (!fresh)
        return err->code;
    memcpy(all->i64, g->ids, (size_t)g->total * sizeof *g->ids);
    memcpy(fresh->i64, g->ids + g->prompt, (size_t)(g->total - g->prompt) * sizeof *g->ids);
    return SHARD_OK;
}

shard_status_t shard_generate_greedy_recompute(const shard_model_t *model, shard_state_t *state,
                                               const shard_inputs_t *inputs, int64_t steps,
                                               int64_t lang_fill, shard_outputs_t *outputs,
                                               shard_error_t *err)
{
    generation_t g;
    shard_status_t status = generation_begin(model, inputs, steps, lang_fill, &g, err);
    shard_acts_t *acts = status ? NULL : shard_state_acts(state, err);
    if (!status && !acts)
        status = SHARD_ERR_NOMEM;
    for (int64_t len = g.prompt; !status && len < g.total; len++)
        status = step_recompute(model, state, acts, &g, len, err);
    if (!status)
        status = generation_end(&g, outputs, err);
    free(g.ids);
    free(g.langs);
    return status;
}

shard_status_t shard_generate_greedy(const shard_model_t *model, shard_state_t *state,
                                     const shard_inputs_t *inputs, int64_t steps,
                                     int64_t lang_fill, shard_outputs_t *outputs,
                                     shard_error_t *err)
{
    generation_t g;
    shard_status_t status = generation_begin(model, inputs, steps, lang_fill, &g, err);
    shard_acts_t *acts = status ? NULL : shard_state_acts(state, err);
    shard_kv_cache_t *cache = status ? NULL : shard_kv_cache_new();
    if (!status && (!acts || !cache))
        status = shard_error_set(err, SHARD_ERR_NOMEM, "generate: out of memory");
    bool cached = !status && cache_can_continue(&model->config, &g, g.prompt);
    for (int64_t len = g.prompt; !status && len < g.total; len++) {
        if (cached && !cache_can_continue(&model->config, &g, len))
            cached = false; /* a pad id was generated: recompute from here on */
        if (!cached) {
            status = step_recompute(model, state, acts, &g, len, err);
            continue;
        }
        /* The positions the cache lacks: the prompt first, then one a step. */
        const shard_inputs_t step = generation_inputs(&g, len);
        const int64_t first = shard_kv_cache_length(cache);
        if (!(status = shard_embed_from(model, state, &step, first, acts, err)) &&
            !(status = shard_run_layers_cached(model, state, cache, acts, err)))
            status = shard_head_next_token(model, state, acts, 0, len - 1, &g.ids[len], err);
    }
    if (!status)
        status = generation_end(&g, outputs, err);
    shard_kv_cache_destroy(&cache);
    free(g.ids);
    free(g.langs);
    return status;
}
