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

shard_status_t shard_generate_greedy(const shard_model_t *model, shard_state_t *state,
                                     const shard_inputs_t *inputs, int64_t steps,
                                     int64_t lang_fill, shard_outputs_t *outputs,
                                     shard_error_t *err)
{
    const shard_config_t *c = &model->config;
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
    const int64_t total = inputs->seq + steps;
    int64_t *ids = calloc((size_t)total, sizeof *ids);
    int64_t *langs = inputs->langs ? calloc((size_t)total, sizeof *langs) : NULL;
    shard_acts_t *acts = shard_state_acts(state, err);
    if (!ids || !acts || (inputs->langs && !langs)) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    memcpy(ids, inputs->input_ids, (size_t)inputs->seq * sizeof *ids);
    for (int64_t i = 0; langs && i < total; i++)
        langs[i] = i < inputs->seq ? inputs->langs[i] : lang_fill;
    for (int64_t len = inputs->seq; len < total; len++) {
        /* The sequence is run as given, like the reference's plain call: no
         * attention mask, so the default one applies. */
        shard_inputs_t step = {.batch = 1, .seq = len, .input_ids = ids, .langs = langs,
                               .token_type_ids = NULL, .position_ids = NULL};
        if ((status = shard_embed(model, state, &step, acts, err)) ||
            (status = shard_run_layers(model, state, acts, err)))
            goto done;
        int64_t best = 0;
        if ((status = shard_head_next_token(model, state, acts, 0, len - 1, &best, err)))
            goto done;
        ids[len] = best;
    }
    int64_t shape_all[2] = {1, total}, shape_new[2] = {1, steps};
    shard_tensor_t *all = shard_outputs_add(outputs, "generated_ids", SHARD_I64, 2, shape_all, err);
    shard_tensor_t *fresh = all ? shard_outputs_add(outputs, "new_ids", SHARD_I64, 2, shape_new, err)
                                : NULL;
    if (!fresh) {
        status = err->code;
        goto done;
    }
    memcpy(all->i64, ids, (size_t)total * sizeof *ids);
    memcpy(fresh->i64, ids + inputs->seq, (size_t)steps * sizeof *ids);
done:
    free(ids);
    free(langs);
    return status;
}
