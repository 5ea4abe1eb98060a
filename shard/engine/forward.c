/* forward.c: inputs -> packed activations -> layers.
 *
 * The reference pads every row to seq and zeroes padded positions after each
 * layer. Those positions never change an unmasked one, except under causal
 * attention, which reads every earlier position whatever its mask; so we
 * compute exactly the positions that matter (see shard_acts_t) and nothing on
 * trailing padding. */
#include "engine_internal.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ inputs */

static shard_status_t check_values(const char *what, const int64_t *values, int64_t count,
                                   int64_t seq, int64_t lo, int64_t hi, shard_error_t *err)
{
    for (int64_t i = 0; values && i < count; i++)
        if (values[i] < lo || values[i] > hi)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "%s[%lld][%lld] = %lld, expected %lld..%lld", what,
                                   (long long)(i / seq), (long long)(i % seq),
                                   (long long)values[i], (long long)lo, (long long)hi);
    return SHARD_OK;
}

shard_status_t shard_inputs_check(const shard_config_t *c, const shard_inputs_t *in,
                                  shard_error_t *err)
{
    if (!in->input_ids || in->batch <= 0 || in->seq <= 0)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "empty batch: %lld rows of %lld tokens, expected at least one "
                               "token", (long long)in->batch, (long long)in->seq);
    if (in->batch > ((int64_t)1 << 40) / in->seq)
        return shard_error_set(err, SHARD_ERR_INPUT, "batch of %lld x %lld tokens is too large",
                               (long long)in->batch, (long long)in->seq);
    if (in->n_choices < 0 || (in->n_choices > 0 && in->batch % in->n_choices != 0))
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "%lld rows do not split into examples of %lld choices",
                               (long long)in->batch, (long long)in->n_choices);
    if (!in->position_ids && in->seq > c->max_position_embeddings)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "sequence length %lld exceeds max_position_embeddings %lld",
                               (long long)in->seq, (long long)c->max_position_embeddings);
    const int64_t n = in->batch * in->seq;
    shard_status_t status = SHARD_OK;
    if ((status = check_values("input_ids", in->input_ids, n, in->seq, 0, c->vocab_size - 1, err)) ||
        (status = check_values("attention_mask", in->attention_mask, n, in->seq, 0, 1, err)) ||
        (status = check_values("langs", in->langs, n, in->seq, 0, c->n_langs - 1, err)) ||
        (status = check_values("token_type_ids", in->token_type_ids, n, in->seq, 0,
                               c->vocab_size - 1, err)) ||
        (status = check_values("position_ids", in->position_ids, n, in->seq, 0,
                               c->max_position_embeddings - 1, err)))
        return status;
    for (int64_t i = 0; in->p_mask && i < n; i++)
        if (!isfinite(in->p_mask[i]))
            return shard_error_set(err, SHARD_ERR_INPUT, "p_mask[%lld][%lld] is not finite",
                                   (long long)(i / in->seq), (long long)(i % in->seq));
    return SHARD_OK;
}

/* Mask of position s in row b: the given attention_mask, else the first k
 * positions where k counts the row's ids that are not the pad id. */
static bool mask_at(const shard_inputs_t *in, int64_t b, int64_t s, int64_t default_len)
{
    if (in->attention_mask)
        return in->attention_mask[b * in->seq + s] != 0;
    return s < default_len;
}

static int64_t default_length(const shard_config_t *c, const shard_inputs_t *in, int64_t b)
{
    int64_t k = 0;
    for (int64_t s = 0; s < in->seq; s++)
        k += in->input_ids[b * in->seq + s] != c->pad_index;
    return k;
}

void shard_default_mask(const shard_config_t *c, const int64_t *ids, int64_t seq, int64_t *mask)
{
    int64_t k = 0;
    for (int64_t s = 0; s < seq; s++)
        k += ids[s] != c->pad_index;
    for (int64_t s = 0; s < seq; s++)
        mask[s] = s < k;
}

/* Positions of row b to compute: [0, end) filtered by the mask unless the
 * model is causal. Returns how many. */
static int64_t row_span(const shard_config_t *c, const shard_inputs_t *in, int64_t b,
                        int64_t default_len, int64_t *end_out)
{
    int64_t end = 0, count = 0;
    for (int64_t s = 0; s < in->seq; s++)
        if (mask_at(in, b, s, default_len)) {
            end = s + 1;
            count++;
        }
    *end_out = end;
    return c->causal ? end : count;
}

/* ------------------------------------------------------------ acts */

shard_acts_t *shard_acts_new(void) { return calloc(1, sizeof(shard_acts_t)); }

void shard_acts_destroy(shard_acts_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    shard_acts_t *acts = *self_p;
    free(acts->row_start);
    free(acts->position);
    free(acts->is_real);
    free(acts->hidden);
    free(acts);
    *self_p = NULL;
}

shard_status_t shard_acts_reserve(shard_acts_t *acts, int64_t batch, int64_t seq,
                                  int64_t emb_dim, int64_t n_tokens, shard_error_t *err)
{
    if (batch < 0 || seq < 0 || emb_dim <= 0 || n_tokens < 0 || n_tokens > batch * seq)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_acts_reserve: %lld positions in %lld rows of %lld",
                               (long long)n_tokens, (long long)batch, (long long)seq);
    int64_t *row_start = realloc(acts->row_start, (size_t)(batch + 1) * sizeof *row_start);
    if (row_start)
        acts->row_start = row_start;
    size_t want = (size_t)(n_tokens ? n_tokens : 1);
    size_t hidden_count = 0;
    if (!row_start || shard_mul_overflows(want, (size_t)emb_dim, &hidden_count))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_acts_reserve: out of memory");
    if (want > acts->capacity_tokens || (size_t)emb_dim != (size_t)acts->emb_dim) {
        int32_t *position = realloc(acts->position, want * sizeof *position);
        if (position)
            acts->position = position;
        uint8_t *is_real = realloc(acts->is_real, want * sizeof *is_real);
        if (is_real)
            acts->is_real = is_real;
        float *hidden = realloc(acts->hidden, hidden_count * sizeof *hidden);
        if (hidden)
            acts->hidden = hidden;
        if (!position || !is_real || !hidden)
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_acts_reserve: out of memory "
                                   "for %lld positions", (long long)n_tokens);
        acts->capacity_tokens = want;
    }
    acts->batch = batch;
    acts->seq = seq;
    acts->emb_dim = emb_dim;
    acts->n_tokens = n_tokens;
    return SHARD_OK;
}

void shard_acts_unpack(const shard_acts_t *acts, float *padded)
{
    const int64_t d = acts->emb_dim;
    memset(padded, 0, (size_t)(acts->batch * acts->seq * d) * sizeof *padded);
    for (int64_t b = 0; b < acts->batch; b++)
        for (int64_t t = acts->row_start[b]; t < acts->row_start[b + 1]; t++)
            if (acts->is_real[t])
                memcpy(padded + (b * acts->seq + acts->position[t]) * d, acts->hidden + t * d,
                       (size_t)d * sizeof *padded);
}

shard_status_t shard_acts_view(const shard_acts_t *acts, int64_t first_row, int64_t rows,
                               int64_t seq, shard_acts_t *view, shard_error_t *err)
{
    if (first_row < 0 || rows < 1 || first_row + rows > acts->batch || seq < 1)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_acts_view: rows [%lld, %lld) of a batch of %lld",
                               (long long)first_row, (long long)(first_row + rows),
                               (long long)acts->batch);
    for (int64_t t = acts->row_start[first_row]; t < acts->row_start[first_row + rows]; t++)
        if (acts->position[t] >= seq)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "shard_acts_view: position %d computed beyond the view's "
                                   "length %lld", acts->position[t], (long long)seq);
    *view = *acts;
    view->batch = rows;
    view->seq = seq;
    view->row_start = acts->row_start + first_row;
    view->capacity_tokens = 0; /* a view owns nothing */
    return SHARD_OK;
}

const float *shard_acts_hidden_at(const shard_acts_t *acts, int64_t row, int64_t pos)
{
    /* Positions of a row are packed in increasing order: binary search. */
    int64_t lo = acts->row_start[row], hi = acts->row_start[row + 1];
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (acts->position[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < acts->row_start[row + 1] && acts->position[lo] == pos && acts->is_real[lo])
        return acts->hidden + lo * acts->emb_dim;
    return NULL;
}

/* ------------------------------------------------------------ embeddings */

static shard_status_t pack_rows(const shard_config_t *c, const shard_inputs_t *in,
                                shard_acts_t *acts, shard_error_t *err)
{
    int64_t total = 0;
    for (int64_t b = 0; b < in->batch; b++) {
        int64_t end;
        total += row_span(c, in, b, default_length(c, in, b), &end);
    }
    if (shard_acts_reserve(acts, in->batch, in->seq, c->emb_dim, total, err))
        return err->code;
    int64_t t = 0;
    for (int64_t b = 0; b < in->batch; b++) {
        const int64_t len = default_length(c, in, b);
        int64_t end;
        row_span(c, in, b, len, &end);
        acts->row_start[b] = t;
        for (int64_t s = 0; s < end; s++) {
            bool on = mask_at(in, b, s, len);
            if (!on && !c->causal)
                continue;
            acts->position[t] = (int32_t)s;
            acts->is_real[t] = on;
            t++;
        }
    }
    acts->row_start[in->batch] = t;
    return SHARD_OK;
}

/* Word, position, language and token-type embeddings of acts' packed
 * positions, layer norm, masked positions held at zero. */
static void embed_packed(const shard_model_t *model, const shard_inputs_t *in, shard_acts_t *acts)
{
    const shard_config_t *c = &model->config;
    const int64_t d = c->emb_dim;
    /* Languages only when given, as the reference adds no default language. */
    const bool use_langs = in->langs && model->lang_embeddings.weight;
    for (int64_t b = 0; b < in->batch; b++)
        for (int64_t t = acts->row_start[b]; t < acts->row_start[b + 1]; t++) {
            const int64_t at = b * in->seq + acts->position[t];
            const int64_t pos = in->position_ids ? in->position_ids[at] : acts->position[t];
            float *h = acts->hidden + t * d;
            shard_embedding_copy(&model->word_embeddings, in->input_ids[at], h);
            shard_embedding_add(&model->position_embeddings, pos, h);
            if (use_langs)
                shard_embedding_add(&model->lang_embeddings, in->langs[at], h);
            if (in->token_type_ids) /* looked up in the word embeddings, as the reference does */
                shard_embedding_add(&model->word_embeddings, in->token_type_ids[at], h);
        }
    shard_layer_norm(acts->hidden, acts->n_tokens, d, &model->norm_emb, c->layer_norm_eps);
    for (int64_t t = 0; t < acts->n_tokens; t++)
        if (!acts->is_real[t])
            memset(acts->hidden + t * d, 0, (size_t)d * sizeof(float));
}

static shard_status_t need_embeddings(const shard_model_t *model, const char *what,
                                      shard_error_t *err)
{
    if (model->range.embeddings)
        return SHARD_OK;
    return shard_error_set(err, SHARD_ERR_RANGE,
                           "%s: this model object holds layers [%lld, %lld) without the "
                           "embeddings", what, (long long)model->range.first_layer,
                           (long long)model->range.last_layer);
}

shard_status_t shard_embed(const shard_model_t *model, shard_state_t *state,
                           const shard_inputs_t *in, shard_acts_t *acts, shard_error_t *err)
{
    (void)state; /* the gather needs no work space (yet: other weight types may) */
    shard_status_t status = need_embeddings(model, "shard_embed", err);
    if (status || (status = shard_inputs_check(&model->config, in, err)) ||
        (status = pack_rows(&model->config, in, acts, err)))
        return status;
    embed_packed(model, in, acts);
    return SHARD_OK;
}

shard_status_t shard_embed_from(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *in, int64_t first, shard_acts_t *acts,
                                shard_error_t *err)
{
    (void)state;
    shard_status_t status = need_embeddings(model, "shard_embed_from", err);
    if (status || (status = shard_inputs_check(&model->config, in, err)))
        return status;
    if (in->batch != 1 || first < 0 || first >= in->seq)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_embed_from: position %lld of %lld rows of %lld, expected "
                               "one row and a position inside it", (long long)first,
                               (long long)in->batch, (long long)in->seq);
    if ((status = pack_rows(&model->config, in, acts, err)))
        return status;
    /* The suffix must be every position from first on, all real: what a
     * cache continues (a masked position would change earlier ones' view). */
    const int64_t keep = in->seq - first, skip = acts->n_tokens - keep;
    bool whole = skip >= 0 && skip == first;
    for (int64_t t = 0; whole && t < acts->n_tokens; t++)
        whole = acts->position[t] == t && acts->is_real[t];
    if (!whole)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_embed_from: the row has masked positions: positions "
                               "[%lld, %lld) cannot continue a cache", (long long)first,
                               (long long)in->seq);
    memmove(acts->position, acts->position + skip, (size_t)keep * sizeof *acts->position);
    memmove(acts->is_real, acts->is_real + skip, (size_t)keep * sizeof *acts->is_real);
    acts->n_tokens = keep;
    acts->row_start[1] = keep;
    embed_packed(model, in, acts);
    return SHARD_OK;
}

/* ------------------------------------------------------------ layers */

/* Self-attention of every packed position: one task per (row, head), the
 * tasks of all rows sharing the engine's threads (a long row alone still
 * has a task per head for each core). qkv rows hold [q ; k ; v], 3d floats.
 * A causal query attends to its row's positions up to itself, others to
 * the whole row. */
static void attend(const shard_config_t *c, const shard_acts_t *acts, const float *qkv,
                   float *ctx, float *work, size_t work_per_thread)
{
    const int64_t d = c->emb_dim, ld = 3 * d, heads = c->n_heads, dh = d / heads;
    const int64_t tasks = acts->batch * heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t b = task / heads, h = task % heads, r0 = acts->row_start[b];
        const int64_t n = acts->row_start[b + 1] - r0;
        if (n == 0)
            continue;
        const float *q = qkv + r0 * ld + h * dh;
        shard_attention_head(q, ld, n, q + d, q + 2 * d, ld, n, 1, c->causal, dh,
                             work + (size_t)omp_get_thread_num() * work_per_thread,
                             ctx + r0 * d + h * dh, d);
    }
}

static shard_status_t run_layer(const shard_model_t *model, shard_state_t *state,
                                const shard_layer_t *layer, shard_acts_t *acts,
                                shard_error_t *err)
{
    const shard_config_t *c = &model->config;
    const int64_t d = c->emb_dim, T = acts->n_tokens;
    if (T == 0)
        return SHARD_OK; /* every row fully masked: nothing to compute */
    int64_t longest = 0;
    for (int64_t b = 0; b < acts->batch; b++) {
        int64_t n = acts->row_start[b + 1] - acts->row_start[b];
        longest = n > longest ? n : longest;
    }
    const int64_t threads = omp_get_max_threads();
    size_t td = (size_t)T * (size_t)d;
    float *qkv = shard_buffer_get(&state->qkv, 3 * td);
    float *ctx = shard_buffer_get(&state->ctx, td);
    float *ffn = shard_buffer_get(&state->ffn, (size_t)T * (size_t)c->hidden_dim);
    const size_t work_per_thread = shard_attention_work_floats(longest, d / c->n_heads);
    float *work = shard_buffer_get(&state->scores, (size_t)threads * work_per_thread);
    if (!qkv || !ctx || !ffn || !work)
        return shard_error_set(err, SHARD_ERR_NOMEM, "run_layer: out of memory for %lld positions",
                               (long long)T);
    shard_linear_qkv(layer, acts->hidden, T, qkv);
    const double start = omp_get_wtime();
    attend(c, acts, qkv, ctx, work, work_per_thread);
    state->attention_seconds += omp_get_wtime() - start;
    shard_layer_finish(model, layer, acts, ctx, qkv, ffn);
    return SHARD_OK;
}

void shard_layer_finish(const shard_model_t *model, const shard_layer_t *layer,
                        shard_acts_t *acts, const float *ctx, float *y, float *ffn)
{
    const shard_config_t *c = &model->config;
    const int64_t d = c->emb_dim, T = acts->n_tokens;
    float *x = acts->hidden;
    shard_linear_rows_t rows;
    shard_linear_rows_prepare(&layer->out, ctx, T, &rows);
    shard_linear_add_layer_norm(&layer->out, &rows, y, x, &layer->norm1, c->layer_norm_eps);
    shard_linear_hidden_rows(&layer->ffn_in, &layer->ffn_out,
                             c->gelu_activation ? SHARD_ACT_GELU : SHARD_ACT_RELU, x, T, ffn,
                             &rows);
    shard_linear_add_layer_norm(&layer->ffn_out, &rows, y, x, &layer->norm2, c->layer_norm_eps);
    for (int64_t t = 0; t < T; t++)
        if (!acts->is_real[t])
            memset(x + t * d, 0, (size_t)d * sizeof *x);
}

shard_status_t shard_run_layers(const shard_model_t *model, shard_state_t *state,
                                shard_acts_t *acts, shard_error_t *err)
{
    if (acts->emb_dim != model->config.emb_dim)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_run_layers: activations of width %lld, model has emb_dim %lld",
                               (long long)acts->emb_dim, (long long)model->config.emb_dim);
    const int64_t n = model->range.last_layer - model->range.first_layer;
    for (int64_t i = 0; i < n; i++) {
        shard_status_t status = run_layer(model, state, &model->layers[i], acts, err);
        if (status)
            return status;
    }
    return SHARD_OK;
}
