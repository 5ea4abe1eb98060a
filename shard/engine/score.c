/* score.c: translation scores (causal LM and masked-LM pseudo-log-likelihood). */
#include "engine_internal.h"

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

/* Copies of many positions are run in chunks of about this many tokens:
 * memory stays bounded whatever the rows. */
enum { SCORE_CHUNK_TOKENS = 8192 };

/* clm: every row in one batch (packed: padding costs nothing); row r's
 * scores are the logprobs of positions [from, to). */
static shard_status_t score_clm(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *rows,
                                const int64_t *score_from, const int64_t *score_to,
                                float **row_out, shard_error_t *err)
{
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_acts_t *acts = shard_state_acts(state, err);
    shard_status_t status = acts ? SHARD_OK : SHARD_ERR_NOMEM;
    if (!status && !(status = shard_embed(model, state, rows, acts, err)) &&
        !(status = shard_run_layers(model, state, acts, err)))
        status = shard_head_clm_score(model, state, acts, rows, score_from, &out, err);
    if (!status) {
        const shard_tensor_t *t = shard_outputs_find(&out, "token_logprobs");
        const float *at = t->f32;
        for (int64_t r = 0; r < rows->batch; r++) {
            const int64_t want = score_to[r] - score_from[r];
            if (t->row_lengths[r] < want) {
                status = shard_error_set(err, SHARD_ERR_INPUT,
                                         "score: row %lld scores up to position %lld beyond its "
                                         "%lld unmasked tokens", (long long)r,
                                         (long long)score_to[r],
                                         (long long)(score_from[r] + t->row_lengths[r]));
                break;
            }
            memcpy(row_out[r], at, (size_t)want * sizeof *at);
            at += t->row_lengths[r];
        }
    }
    shard_outputs_clear(&out);
    return status;
}

typedef struct {
    int64_t row, pos; /* the copy of row with pos masked */
} pll_copy_t;

/* One chunk of masked copies: a batch of rows x seq, each copy's mask the
 * row's own, only the masked positions projected. */
static shard_status_t score_pll_chunk(const shard_model_t *model, shard_state_t *state,
                                      const shard_inputs_t *rows,
                                      const int64_t *mask, const pll_copy_t *copies, int64_t n,
                                      float *logprob, shard_error_t *err)
{
    const int64_t seq = rows->seq;
    const size_t cells = (size_t)(n * seq);
    int64_t *ids = malloc(cells * sizeof *ids), *masks = malloc(cells * sizeof *masks);
    int64_t *langs = rows->langs ? malloc(cells * sizeof *langs) : NULL;
    int64_t *types = rows->token_type_ids ? malloc(cells * sizeof *types) : NULL;
    int64_t *positions = rows->position_ids ? malloc(cells * sizeof *positions) : NULL;
    int64_t *mask_pos = malloc((size_t)n * sizeof *mask_pos), *targets = malloc((size_t)n * sizeof *targets);
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_status_t status = SHARD_OK;
    if (!ids || !masks || !mask_pos || !targets || (rows->langs && !langs) ||
        (rows->token_type_ids && !types) || (rows->position_ids && !positions)) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n && !status; i++) {
        const int64_t src = copies[i].row * seq, dst = i * seq;
        status = shard_pll_expand(&model->config, rows->input_ids + src,
                                  langs ? rows->langs + src : NULL, seq, copies[i].pos, 1,
                                  ids + dst, langs ? langs + dst : NULL, mask_pos + i, targets + i, err);
        memcpy(masks + dst, mask + src, (size_t)seq * sizeof *masks);
        if (types)
            memcpy(types + dst, rows->token_type_ids + src, (size_t)seq * sizeof *types);
        if (positions)
            memcpy(positions + dst, rows->position_ids + src, (size_t)seq * sizeof *positions);
    }
    shard_inputs_t batch = {.batch = n, .seq = seq, .input_ids = ids, .attention_mask = masks,
                            .langs = langs, .token_type_ids = types, .position_ids = positions};
    shard_acts_t *acts = status ? NULL : shard_state_acts(state, err);
    if (!status && !acts)
        status = SHARD_ERR_NOMEM;
    if (!status && !(status = shard_embed(model, state, &batch, acts, err)) &&
        !(status = shard_run_layers(model, state, acts, err)) &&
        !(status = shard_head_masked_logprob(model, state, acts, mask_pos, targets, &out, err)))
        memcpy(logprob, out.tensors[0].f32, (size_t)n * sizeof *logprob);
done:
    shard_outputs_clear(&out);
    free(ids);
    free(masks);
    free(langs);
    free(types);
    free(positions);
    free(mask_pos);
    free(targets);
    return status;
}

static shard_status_t score_pll(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *rows,
                                const int64_t *score_from, const int64_t *score_to,
                                float **row_out, shard_error_t *err)
{
    const int64_t seq = rows->seq;
    int64_t *mask = malloc((size_t)(rows->batch * seq) * sizeof *mask);
    const int64_t per_chunk = SCORE_CHUNK_TOKENS / seq > 0 ? SCORE_CHUNK_TOKENS / seq : 1;
    pll_copy_t *copies = malloc((size_t)per_chunk * sizeof *copies);
    float *logprob = malloc((size_t)per_chunk * sizeof *logprob);
    shard_status_t status = SHARD_OK;
    if (!mask || !copies || !logprob) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows->batch; r++) {
        if (rows->attention_mask)
            memcpy(mask + r * seq, rows->attention_mask + r * seq, (size_t)seq * sizeof *mask);
        else
            shard_default_mask(&model->config, rows->input_ids + r * seq, seq, mask + r * seq);
    }
    /* Copies of consecutive rows fill each chunk; results go back by row. */
    int64_t n = 0;
    for (int64_t r = 0; r < rows->batch && !status; r++)
        for (int64_t pos = score_from[r]; pos < score_to[r] && !status; pos++) {
            copies[n++] = (pll_copy_t){r, pos};
            const bool last = r == rows->batch - 1 && pos == score_to[r] - 1;
            if (n < per_chunk && !last)
                continue;
            status = score_pll_chunk(model, state, rows, mask, copies, n, logprob, err);
            for (int64_t i = 0; i < n && !status; i++)
                row_out[copies[i].row][copies[i].pos - score_from[copies[i].row]] = logprob[i];
            n = 0;
        }
done:
    free(mask);
    free(copies);
    free(logprob);
    return status;
}

shard_status_t shard_score_rows(const shard_model_t *model, shard_state_t *state,
                                shard_score_mode_t mode,
                                const shard_inputs_t *rows, const int64_t *score_from,
                                const int64_t *score_to, shard_outputs_t *outputs,
                                shard_error_t *err)
{
    if (!shard_model_has_head(model, SHARD_HEAD_LM) || model->range.first_layer != 0 ||
        model->range.last_layer != model->config.n_layers || !model->range.embeddings)
        return shard_error_set(err, SHARD_ERR_HEAD,
                               "score: needs a whole model with an LM head (%s has %s)", model->dir,
                               shard_head_name(model->head));
    shard_status_t status = shard_inputs_check(&model->config, rows, err);
    if (status)
        return status;
    int64_t total = 0, longest = 0;
    for (int64_t r = 0; r < rows->batch; r++) {
        const int64_t lo = mode == SHARD_SCORE_CLM ? 1 : 0;
        if (score_from[r] < lo || score_to[r] < score_from[r] || score_to[r] > rows->seq)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "score: row %lld scores positions [%lld, %lld) of %lld",
                                   (long long)r, (long long)score_from[r], (long long)score_to[r],
                                   (long long)rows->seq);
        total += score_to[r] - score_from[r];
        longest = score_to[r] - score_from[r] > longest ? score_to[r] - score_from[r] : longest;
    }
    int64_t shape_sum[1] = {rows->batch};
    shard_tensor_t *tokens = shard_outputs_add(outputs, "token_logprobs", SHARD_F32, 1, &total, err);
    shard_tensor_t *sums = tokens ? shard_outputs_add(outputs, "sum_logprob", SHARD_F32, 1, shape_sum, err)
                                  : NULL;
    float **row_out = calloc((size_t)rows->batch, sizeof *row_out);
    if (!sums || !row_out || !(tokens->row_lengths = calloc((size_t)rows->batch, sizeof(int64_t)))) {
        free(row_out);
        return sums ? shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory") : err->code;
    }
    tokens->ndim = 2;
    tokens->shape[0] = rows->batch;
    tokens->shape[1] = longest;
    for (int64_t r = 0, at = 0; r < rows->batch; r++) {
        row_out[r] = tokens->f32 + at;
        tokens->row_lengths[r] = score_to[r] - score_from[r];
        at += tokens->row_lengths[r];
    }
    status = mode == SHARD_SCORE_CLM
                 ? score_clm(model, state, rows, score_from, score_to, row_out, err)
                 : score_pll(model, state, rows, score_from, score_to, row_out, err);
    for (int64_t r = 0; r < rows->batch && !status; r++) {
        double sum = 0.0;
        for (int64_t i = 0; i < tokens->row_lengths[r]; i++)
            sum += row_out[r][i];
        sums->f32[r] = (float)sum;
    }
    free(row_out);
    return status;
}
