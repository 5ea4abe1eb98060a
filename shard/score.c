/* score.c: translation scores (causal LM and masked-LM pseudo-log-likelihood). */
#include "shard_internal.h"

#include <stdlib.h>
#include <string.h>

shard_status_t shard_pll_expand(const shard_config_t *c, const int64_t *ids, const int64_t *langs,
                                int64_t len, int64_t first, int64_t count, int64_t *out_ids,
                                int64_t *out_langs, int64_t *mask_pos, int64_t *targets,
                                shard_error_t *err)
{
    if (len < 1 || first < 0 || count < 0 || first + count > len)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "pll: positions [%lld, %lld) outside a row of %lld tokens",
                               (long long)first, (long long)(first + count), (long long)len);
    for (int64_t i = 0; i < count; i++) {
        int64_t *row = out_ids + i * len;
        memcpy(row, ids, (size_t)len * sizeof *row);
        if (langs && out_langs)
            memcpy(out_langs + i * len, langs, (size_t)len * sizeof *out_langs);
        mask_pos[i] = first + i;
        targets[i] = ids[first + i];
        row[first + i] = c->mask_index;
    }
    return SHARD_OK;
}

/* One row, clm: positions t in [from, to) scored from the logits at t - 1. */
static shard_status_t score_clm_row(shard_model_t *model, const shard_inputs_t *row, int64_t from,
                                    int64_t to, float *logprobs, shard_error_t *err)
{
    shard_outputs_t out;
    shard_outputs_init(&out);
    /* No padding inside a row: the mask is all ones. */
    int64_t *mask = malloc((size_t)row->seq * sizeof *mask);
    if (!mask)
        return shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory");
    for (int64_t s = 0; s < row->seq; s++)
        mask[s] = 1;
    shard_inputs_t in = *row;
    in.attention_mask = mask;
    in.seq = to; /* positions after the last scored one cannot change it */
    shard_acts_t *acts = model->forward_acts ? model->forward_acts : shard_acts_new();
    model->forward_acts = acts;
    shard_status_t status = acts ? SHARD_OK : shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
    if (!status && !(status = shard_embed(model, &in, acts, err)) &&
        !(status = shard_run_layers(model, acts, err)))
        status = shard_head_clm_score(model, acts, &in, &from, &out, err);
    if (!status) {
        const shard_tensor_t *t = shard_outputs_find(&out, "token_logprobs");
        memcpy(logprobs, t->f32, (size_t)(to - from) * sizeof *logprobs);
    }
    shard_outputs_clear(&out);
    free(mask);
    return status;
}

static shard_status_t score_pll_row(shard_model_t *model, const shard_inputs_t *row, int64_t from,
                                    int64_t to, float *logprobs, shard_error_t *err)
{
    const int64_t n = to - from, len = row->seq;
    if (n == 0)
        return SHARD_OK;
    int64_t *ids = malloc((size_t)(n * len) * sizeof *ids);
    int64_t *langs = row->langs ? malloc((size_t)(n * len) * sizeof *langs) : NULL;
    int64_t *mask = malloc((size_t)(n * len) * sizeof *mask);
    int64_t *positions = row->position_ids ? malloc((size_t)(n * len) * sizeof *positions) : NULL;
    int64_t *types = row->token_type_ids ? malloc((size_t)(n * len) * sizeof *types) : NULL;
    int64_t *mask_pos = malloc((size_t)n * sizeof *mask_pos), *targets = malloc((size_t)n * sizeof *targets);
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_status_t status = SHARD_OK;
    if (!ids || !mask || !mask_pos || !targets || (row->langs && !langs) ||
        (row->position_ids && !positions) || (row->token_type_ids && !types)) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
        goto done;
    }
    if ((status = shard_pll_expand(&model->config, row->input_ids, row->langs, len, from, n, ids,
                                   langs, mask_pos, targets, err)))
        goto done;
    for (int64_t i = 0; i < n * len; i++)
        mask[i] = 1;
    for (int64_t i = 0; i < n; i++) {
        if (positions)
            memcpy(positions + i * len, row->position_ids, (size_t)len * sizeof *positions);
        if (types)
            memcpy(types + i * len, row->token_type_ids, (size_t)len * sizeof *types);
    }
    shard_inputs_t batch = {.batch = n, .seq = len, .input_ids = ids, .attention_mask = mask,
                            .langs = langs, .token_type_ids = types, .position_ids = positions};
    if (!model->forward_acts && !(model->forward_acts = shard_acts_new())) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
        goto done;
    }
    if (!(status = shard_embed(model, &batch, model->forward_acts, err)) &&
        !(status = shard_run_layers(model, model->forward_acts, err)) &&
        !(status = shard_head_masked_logprob(model, model->forward_acts, mask_pos, targets, &out, err)))
        memcpy(logprobs, out.tensors[0].f32, (size_t)n * sizeof *logprobs);
done:
    shard_outputs_clear(&out);
    free(ids);
    free(langs);
    free(mask);
    free(positions);
    free(types);
    free(mask_pos);
    free(targets);
    return status;
}

shard_status_t shard_score_rows(shard_model_t *model, shard_score_mode_t mode,
                                const shard_inputs_t *rows, const int64_t *score_from,
                                const int64_t *score_to, shard_outputs_t *outputs,
                                shard_error_t *err)
{
    if (!shard_model_has_head(model, SHARD_HEAD_LM) || model->range.first_layer != 0 ||
        model->range.last_layer != model->config.n_layers || !model->range.embeddings)
        return shard_error_set(err, SHARD_ERR_HEAD,
                               "score: needs a whole model with an LM head (%s has %s)", model->dir,
                               shard_head_name(model->config.head));
    shard_status_t status = shard_inputs_check(&model->config, rows, err);
    if (status)
        return status;
    int64_t total = 0;
    for (int64_t r = 0; r < rows->batch; r++) {
        const int64_t lo = mode == SHARD_SCORE_CLM ? 1 : 0;
        if (score_from[r] < lo || score_to[r] < score_from[r] || score_to[r] > rows->seq)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "score: row %lld scores positions [%lld, %lld) of %lld",
                                   (long long)r, (long long)score_from[r], (long long)score_to[r],
                                   (long long)rows->seq);
        total += score_to[r] - score_from[r];
    }
    int64_t shape_tokens[2] = {rows->batch, 0}, shape_sum[1] = {rows->batch};
    shard_tensor_t *tokens = shard_outputs_add(outputs, "token_logprobs", SHARD_F32, 1, &total, err);
    shard_tensor_t *sums = tokens ? shard_outputs_add(outputs, "sum_logprob", SHARD_F32, 1, shape_sum, err)
                                  : NULL;
    if (!sums)
        return err->code;
    tokens->ndim = 2;
    tokens->shape[0] = rows->batch;
    tokens->shape[1] = 0;
    (void)shape_tokens;
    tokens->row_lengths = calloc((size_t)rows->batch, sizeof *tokens->row_lengths);
    if (!tokens->row_lengths)
        return shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory");
    float *at = tokens->f32;
    for (int64_t r = 0; r < rows->batch && !status; r++) {
        shard_inputs_t row = {.batch = 1, .seq = rows->seq, .input_ids = rows->input_ids + r * rows->seq};
        row.langs = rows->langs ? rows->langs + r * rows->seq : NULL;
        row.token_type_ids = rows->token_type_ids ? rows->token_type_ids + r * rows->seq : NULL;
        row.position_ids = rows->position_ids ? rows->position_ids + r * rows->seq : NULL;
        const int64_t n = score_to[r] - score_from[r];
        status = mode == SHARD_SCORE_CLM
                     ? score_clm_row(model, &row, score_from[r], score_to[r], at, err)
                     : score_pll_row(model, &row, score_from[r], score_to[r], at, err);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += at[i];
        sums->f32[r] = (float)sum;
        tokens->row_lengths[r] = n;
        tokens->shape[1] = n > tokens->shape[1] ? n : tokens->shape[1];
        at += n;
    }
    return status;
}
