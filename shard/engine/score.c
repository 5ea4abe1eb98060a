/* score.c: translation scores (causal LM and masked-LM pseudo-log-likelihood). */
#include "engine_internal.h"

#include <stdint.h>
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

/* ------------------------------------------------------------ windows */

shard_score_layout_t shard_score_layout_of_row(int64_t length)
{
    return (shard_score_layout_t){.offset_a = 1, .length_a = length - 2, .offset_b = -1,
                                  .length_b = 0, .length = length};
}

shard_score_window_t shard_score_window(shard_score_mode_t mode, const shard_score_layout_t *layout)
{
    const bool pair = layout->offset_b >= 0;
    const int64_t first = pair ? layout->offset_b : layout->offset_a;
    const int64_t count = pair ? layout->length_b : layout->length_a;
    if (mode == SHARD_SCORE_CLM) /* the target's tokens, then the final </s> */
        return (shard_score_window_t){first > 1 ? first : 1, layout->length};
    return (shard_score_window_t){first, first + count};
}

bool shard_score_window_fits(shard_score_mode_t mode, shard_score_window_t w, int64_t length)
{
    return w.from >= (mode == SHARD_SCORE_CLM ? 1 : 0) && w.to >= w.from && w.to <= length;
}

/* ------------------------------------------------------------ outputs */

double shard_score_sum(const float *scores, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += scores[i];
    return sum;
}

void shard_score_sum_rows(const shard_tensor_t *tokens, shard_tensor_t *sums)
{
    for (int64_t r = 0, at = 0; r < tokens->shape[0]; r++) {
        sums->f32[r] = (float)shard_score_sum(tokens->f32 + at, tokens->row_lengths[r]);
        at += tokens->row_lengths[r];
    }
}

shard_status_t shard_score_outputs_add(shard_outputs_t *outputs,
                                       const shard_score_window_t *windows, int64_t rows,
                                       shard_tensor_t **tokens_out, shard_tensor_t **sums_out,
                                       shard_error_t *err)
{
    int64_t total = 0, longest = 0;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = windows[r].to - windows[r].from;
        total += n;
        longest = n > longest ? n : longest;
    }
    int64_t shape_sum[1] = {rows};
    shard_tensor_t *tokens = shard_outputs_add(outputs, "token_logprobs", SHARD_F32, 1, &total, err);
    shard_tensor_t *sums = tokens ? shard_outputs_add(outputs, "sum_logprob", SHARD_F32, 1, shape_sum, err)
                                  : NULL;
    if (!sums)
        return err->code;
    if (!(tokens->row_lengths = calloc((size_t)(rows ? rows : 1), sizeof(int64_t))))
        return shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory");
    tokens->ndim = 2;
    tokens->shape[0] = rows;
    tokens->shape[1] = longest;
    for (int64_t r = 0; r < rows; r++)
        tokens->row_lengths[r] = windows[r].to - windows[r].from;
    *tokens_out = tokens;
    *sums_out = sums;
    return SHARD_OK;
}

shard_status_t shard_clm_gather(const shard_tensor_t *head, int64_t row0,
                                const shard_score_window_t *windows, shard_tensor_t *tokens,
                                shard_error_t *err)
{
    const float *src = head->f32;
    for (int64_t b = 0; b < row0; b++)
        src += head->row_lengths[b];
    float *dst = tokens->f32;
    for (int64_t r = 0; r < tokens->shape[0]; r++) {
        const int64_t want = tokens->row_lengths[r], have = head->row_lengths[row0 + r];
        if (have < want)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "score: row %lld scores up to position %lld beyond its "
                                   "%lld unmasked tokens", (long long)r, (long long)windows[r].to,
                                   (long long)(windows[r].from + have));
        memcpy(dst, src, (size_t)want * sizeof *dst);
        dst += want;
        src += have;
    }
    return SHARD_OK;
}

/* ------------------------------------------------------------ pll copies */

int64_t shard_pll_count(const shard_score_window_t *windows, int64_t rows)
{
    int64_t n = 0;
    for (int64_t r = 0; r < rows; r++)
        n += windows[r].to - windows[r].from;
    return n;
}

shard_status_t shard_pll_list(const shard_inputs_t *rows, const shard_score_window_t *windows,
                              shard_pll_copy_t *copies, shard_error_t *err)
{
    int64_t n = 0;
    for (int64_t r = 0; r < rows->batch; r++) {
        if (!shard_score_window_fits(SHARD_SCORE_MLM_PLL, windows[r], rows->seq))
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "pll: row %lld scores positions [%lld, %lld) of %lld",
                                   (long long)r, (long long)windows[r].from,
                                   (long long)windows[r].to, (long long)rows->seq);
        for (int64_t pos = windows[r].from; pos < windows[r].to; pos++)
            copies[n++] = (shard_pll_copy_t){r, pos, rows->input_ids[r * rows->seq + pos]};
    }
    return SHARD_OK;
}

void shard_pll_batch_free(shard_inputs_t *batch)
{
    free((void *)batch->input_ids);
    free((void *)batch->attention_mask);
    free((void *)batch->langs);
    free((void *)batch->token_type_ids);
    free((void *)batch->position_ids);
    memset(batch, 0, sizeof *batch);
}

/* Row src of one array into row dst of its copy (arrays NULL together). */
static void copy_row(const int64_t *from, int64_t *to, int64_t src, int64_t dst, int64_t seq)
{
    if (from)
        memcpy(to + dst * seq, from + src * seq, (size_t)seq * sizeof *to);
}

shard_status_t shard_pll_batch(const shard_config_t *config, const shard_inputs_t *rows,
                               const shard_pll_copy_t *copies, int64_t n, shard_inputs_t *out,
                               shard_error_t *err)
{
    const int64_t seq = rows->seq;
    memset(out, 0, sizeof *out);
    if (n < 1 || seq < 1 || n > INT64_MAX / seq)
        return shard_error_set(err, SHARD_ERR_INPUT, "pll: %lld copies of %lld tokens, expected "
                               "at least one of at least one", (long long)n, (long long)seq);
    const size_t cells = (size_t)(n * seq);
    int64_t *ids = malloc(cells * sizeof *ids), *mask = malloc(cells * sizeof *mask);
    int64_t *langs = rows->langs ? malloc(cells * sizeof *langs) : NULL;
    int64_t *types = rows->token_type_ids ? malloc(cells * sizeof *types) : NULL;
    int64_t *positions = rows->position_ids ? malloc(cells * sizeof *positions) : NULL;
    *out = (shard_inputs_t){.batch = n, .seq = seq, .input_ids = ids, .attention_mask = mask,
                            .langs = langs, .token_type_ids = types, .position_ids = positions};
    if (!ids || !mask || (rows->langs && !langs) || (rows->token_type_ids && !types) ||
        (rows->position_ids && !positions)) {
        shard_pll_batch_free(out);
        return shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = copies[i].row, src = r * seq, dst = i * seq;
        int64_t pos, target;
        if (r < 0 || r >= rows->batch) {
            shard_pll_batch_free(out);
            return shard_error_set(err, SHARD_ERR_INPUT, "pll: copy %lld of row %lld, the batch "
                                   "has %lld", (long long)i, (long long)r, (long long)rows->batch);
        }
        shard_status_t status = shard_pll_expand(config, rows->input_ids + src,
                                                 langs ? rows->langs + src : NULL, seq,
                                                 copies[i].pos, 1, ids + dst,
                                                 langs ? langs + dst : NULL, &pos, &target, err);
        if (status) {
            shard_pll_batch_free(out);
            return status;
        }
        if (rows->attention_mask)
            copy_row(rows->attention_mask, mask, r, i, seq);
        else /* from the row as given, not its masked copy */
            shard_default_mask(config, rows->input_ids + src, seq, mask + dst);
        copy_row(rows->token_type_ids, types, r, i, seq);
        copy_row(rows->position_ids, positions, r, i, seq);
    }
    return SHARD_OK;
}

shard_status_t shard_pll_logprob(const shard_model_t *model, shard_state_t *state,
                                 const shard_acts_t *acts, const shard_pll_copy_t *copies,
                                 int64_t n, float *logprob, shard_error_t *err)
{
    int64_t *mask_pos = malloc((size_t)(n ? n : 1) * sizeof *mask_pos);
    int64_t *targets = malloc((size_t)(n ? n : 1) * sizeof *targets);
    shard_outputs_t out;
    shard_outputs_init(&out);
    shard_status_t status = SHARD_OK;
    if (!mask_pos || !targets)
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
    for (int64_t i = 0; !status && i < n; i++) {
        mask_pos[i] = copies[i].pos;
        targets[i] = copies[i].target;
    }
    if (!status && !(status = shard_head_masked_logprob(model, state, acts, mask_pos, targets, &out, err)))
        memcpy(logprob, out.tensors[0].f32, (size_t)n * sizeof *logprob);
    shard_outputs_clear(&out);
    free(mask_pos);
    free(targets);
    return status;
}

shard_status_t shard_pll_gather(const shard_pll_copy_t *copies, int64_t n, const float *logprob,
                                const shard_score_window_t *windows, shard_tensor_t *tokens,
                                shard_error_t *err)
{
    /* Copies come row by row: the start of their row moves forward. */
    int64_t row = 0, at = 0;
    for (int64_t i = 0; i < n; i++) {
        const shard_pll_copy_t *c = &copies[i];
        if (c->row < 0 || c->row >= tokens->shape[0] || c->pos < windows[c->row].from ||
            c->pos >= windows[c->row].to)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "pll: copy %lld (row %lld, position %lld) is outside the "
                                   "scored windows of %lld rows", (long long)i, (long long)c->row,
                                   (long long)c->pos, (long long)tokens->shape[0]);
        if (c->row < row)
            row = at = 0;
        for (; row < c->row; row++)
            at += tokens->row_lengths[row];
        tokens->f32[at + c->pos - windows[c->row].from] = logprob[i];
    }
    return SHARD_OK;
}

/* ------------------------------------------------------------ whole model */

/* Copies of many positions are run in chunks of about this many tokens:
 * memory stays bounded whatever the rows. */
enum { SCORE_CHUNK_TOKENS = 8192 };

/* clm: every row in one batch (packed: padding costs nothing); row r's
 * scores are the logprobs of its window. */
static shard_status_t score_clm(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *rows, const shard_score_window_t *windows,
                                shard_tensor_t *tokens, shard_error_t *err)
{
    shard_outputs_t out;
    shard_outputs_init(&out);
    int64_t *from = malloc((size_t)rows->batch * sizeof *from);
    shard_acts_t *acts = shard_state_acts(state, err);
    shard_status_t status = acts ? SHARD_OK : SHARD_ERR_NOMEM;
    if (!status && !from)
        status = shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory");
    for (int64_t r = 0; !status && r < rows->batch; r++)
        from[r] = windows[r].from;
    if (!status && !(status = shard_embed(model, state, rows, acts, err)) &&
        !(status = shard_run_layers(model, state, acts, err)) &&
        !(status = shard_head_clm_score(model, state, acts, rows, from, &out, err)))
        status = shard_clm_gather(shard_outputs_find(&out, "token_logprobs"), 0, windows, tokens, err);
    shard_outputs_clear(&out);
    free(from);
    return status;
}

/* One chunk of masked copies: a batch of n x seq, only the masked positions
 * projected. */
static shard_status_t score_pll_chunk(const shard_model_t *model, shard_state_t *state,
                                      const shard_inputs_t *rows, const shard_pll_copy_t *copies,
                                      int64_t n, float *logprob, shard_error_t *err)
{
    shard_inputs_t batch;
    shard_status_t status = shard_pll_batch(&model->config, rows, copies, n, &batch, err);
    shard_acts_t *acts = status ? NULL : shard_state_acts(state, err);
    if (!status && !acts)
        status = SHARD_ERR_NOMEM;
    if (!status && !(status = shard_embed(model, state, &batch, acts, err)) &&
        !(status = shard_run_layers(model, state, acts, err)))
        status = shard_pll_logprob(model, state, acts, copies, n, logprob, err);
    shard_pll_batch_free(&batch);
    return status;
}

static shard_status_t score_pll(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *rows, const shard_score_window_t *windows,
                                shard_tensor_t *tokens, shard_error_t *err)
{
    const int64_t seq = rows->seq, total = shard_pll_count(windows, rows->batch);
    const int64_t per_chunk = SCORE_CHUNK_TOKENS / seq > 0 ? SCORE_CHUNK_TOKENS / seq : 1;
    shard_pll_copy_t *copies = malloc((size_t)(total ? total : 1) * sizeof *copies);
    float *logprob = malloc((size_t)per_chunk * sizeof *logprob);
    shard_status_t status = SHARD_OK;
    if (!copies || !logprob)
        status = shard_error_set(err, SHARD_ERR_NOMEM, "pll: out of memory");
    if (!status)
        status = shard_pll_list(rows, windows, copies, err);
    /* Copies of consecutive rows fill each chunk; results go back by row. */
    for (int64_t first = 0; !status && first < total; first += per_chunk) {
        const int64_t n = total - first < per_chunk ? total - first : per_chunk;
        if (!(status = score_pll_chunk(model, state, rows, copies + first, n, logprob, err)))
            status = shard_pll_gather(copies + first, n, logprob, windows, tokens, err);
    }
    free(copies);
    free(logprob);
    return status;
}

/* The windows of score_from / score_to, or the default ones of token rows
 * ([1, unmasked) for clm, [1, unmasked - 1) for mlm-pll) when they are NULL. */
static shard_score_window_t *score_windows(const shard_config_t *c, shard_score_mode_t mode,
                                           const shard_inputs_t *rows, const int64_t *score_from,
                                           const int64_t *score_to, shard_error_t *err)
{
    shard_score_window_t *w = malloc((size_t)(rows->batch ? rows->batch : 1) * sizeof *w);
    if (!w) {
        shard_error_set(err, SHARD_ERR_NOMEM, "score: out of memory");
        return NULL;
    }
    for (int64_t r = 0; r < rows->batch; r++) {
        const int64_t len = shard_row_unmasked(c, rows, r);
        const int64_t to = mode == SHARD_SCORE_CLM ? len : len - 1;
        w[r].from = score_from ? score_from[r] : 1;
        w[r].to = score_to ? score_to[r] : (to > 1 ? to : 1);
    }
    return w;
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
    shard_score_window_t *windows = score_windows(&model->config, mode, rows, score_from, score_to, err);
    if (!windows)
        return err->code;
    for (int64_t r = 0; r < rows->batch && !status; r++)
        if (!shard_score_window_fits(mode, windows[r], rows->seq))
            status = shard_error_set(err, SHARD_ERR_INPUT,
                                     "score: row %lld scores positions [%lld, %lld) of %lld",
                                     (long long)r, (long long)windows[r].from,
                                     (long long)windows[r].to, (long long)rows->seq);
    shard_tensor_t *tokens = NULL, *sums = NULL;
    if (!status)
        status = shard_score_outputs_add(outputs, windows, rows->batch, &tokens, &sums, err);
    if (!status)
        status = mode == SHARD_SCORE_CLM ? score_clm(model, state, rows, windows, tokens, err)
                                         : score_pll(model, state, rows, windows, tokens, err);
    if (!status)
        shard_score_sum_rows(tokens, sums);
    free(windows);
    return status;
}
