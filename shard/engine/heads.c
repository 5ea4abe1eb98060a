/* heads.c: the task heads on the last stage's activations. */
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* What a head's run function gets (see the head table at the end). */
typedef struct {
    const shard_model_t *model;
    shard_state_t *state;
    const shard_acts_t *acts;
    const shard_inputs_t *in;
    const float *zero; /* [emb_dim] zeros */
    shard_outputs_t *outputs;
    shard_error_t *err;
} head_call_t;

static shard_status_t need_head(const shard_model_t *model, shard_head_t head, shard_error_t *err)
{
    if (!model->range.heads)
        return shard_error_set(err, SHARD_ERR_RANGE,
                               "head %s: this model object holds layers [%lld, %lld) without "
                               "the heads", shard_head_name(head),
                               (long long)model->range.first_layer,
                               (long long)model->range.last_layer);
    if (!shard_model_has_head(model, head))
        return shard_error_set(err, SHARD_ERR_HEAD,
                               "head %s: the checkpoint %s has no weights for it (it is a %s "
                               "checkpoint)", shard_head_name(head), model->dir,
                               shard_head_name(model->head));
    return SHARD_OK;
}

/* Hidden state of row b at padded position s, zeros where not computed. */
static const float *hidden_or_zero(const shard_acts_t *acts, int64_t b, int64_t s,
                                   const float *zero)
{
    const float *h = shard_acts_hidden_at(acts, b, s);
    return h ? h : zero;
}

/* out[b][s][:] = linear(hidden[b][s]) for every padded position. Positions
 * not computed hold zeros, so their output is the bias. */
static shard_status_t positionwise(shard_state_t *state, const shard_linear_t *linear,
                                   const shard_acts_t *acts, float *out, shard_error_t *err)
{
    /* acts may be a view of some rows: project only their packed positions. */
    const int64_t o = linear->out, t0 = acts->row_start[0];
    const int64_t T = acts->row_start[acts->batch] - t0;
    float *packed = shard_buffer_get(&state->packed_out, (size_t)(T ? T : 1) * (size_t)o);
    if (!packed)
        return shard_error_set(err, SHARD_ERR_NOMEM, "head: out of memory");
    shard_linear(linear, acts->hidden + t0 * acts->emb_dim, T, packed);
    for (int64_t r = 0; r < acts->batch * acts->seq; r++)
        shard_linear_zero_input(linear, out + r * o);
    for (int64_t b = 0; b < acts->batch; b++)
        for (int64_t t = acts->row_start[b]; t < acts->row_start[b + 1]; t++)
            if (acts->is_real[t])
                memcpy(out + (b * acts->seq + acts->position[t]) * o, packed + (t - t0) * o,
                       (size_t)o * sizeof *out);
    return SHARD_OK;
}

/* The SequenceSummary vector of row b (before projection). */
static void summary_state(const shard_config_t *c, const shard_acts_t *acts, int64_t b,
                          const float *zero, float *out)
{
    const int64_t d = acts->emb_dim;
    switch (c->summary_type) {
    case SHARD_SUMMARY_FIRST:
        memcpy(out, hidden_or_zero(acts, b, 0, zero), (size_t)d * sizeof *out);
        return;
    case SHARD_SUMMARY_MEAN: {
        /* Mean over all seq positions, padding included, as the reference. */
        for (int64_t i = 0; i < d; i++) {
            double sum = 0.0;
            for (int64_t t = acts->row_start[b]; t < acts->row_start[b + 1]; t++)
                sum += acts->is_real[t] ? acts->hidden[t * d + i] : 0.0f;
            out[i] = (float)(sum / (double)acts->seq);
        }
        return;
    }
    case SHARD_SUMMARY_LAST:
    case SHARD_SUMMARY_CLS_INDEX:
    case SHARD_SUMMARY_COUNT_:
        /* cls_index without an index reads the last position, padded or not. */
        memcpy(out, hidden_or_zero(acts, b, acts->seq - 1, zero), (size_t)d * sizeof *out);
        return;
    }
}

/* Summary of every row, projected and activated: out [batch][summary.out]. */
static shard_status_t sequence_summary(const shard_model_t *model, shard_state_t *state,
                                       const shard_acts_t *acts, const float *zero, float *out,
                                       shard_error_t *err)
{
    const shard_config_t *c = &model->config;
    const shard_linear_t *proj = &model->heads.summary;
    const int64_t d = c->emb_dim;
    float *states = shard_buffer_get(&state->summary, (size_t)(acts->batch * d));
    if (!states)
        return shard_error_set(err, SHARD_ERR_NOMEM, "sequence_summary: out of memory");
    for (int64_t b = 0; b < acts->batch; b++)
        summary_state(c, acts, b, zero, states + b * d);
    if (shard_linear_bound(proj))
        shard_linear(proj, states, acts->batch, out);
    else
        memcpy(out, states, (size_t)(acts->batch * d) * sizeof *out);
    shard_activate(out, (size_t)(acts->batch * proj->out), c->summary_activation);
    return SHARD_OK;
}

static shard_status_t head_seq_cls(const head_call_t *call)
{
    const shard_acts_t *acts = call->acts;
    int64_t shape[2] = {acts->batch, call->model->heads.summary.out};
    shard_tensor_t *logits = shard_outputs_add(call->outputs, "logits", SHARD_F32, 2, shape,
                                               call->err);
    return logits ? sequence_summary(call->model, call->state, acts, call->zero, logits->f32,
                                     call->err)
                  : call->err->code;
}

static shard_status_t head_multiple_choice(const head_call_t *call)
{
    const shard_model_t *model = call->model;
    const shard_acts_t *acts = call->acts;
    const shard_inputs_t *in = call->in;
    shard_error_t *err = call->err;
    const int64_t choices = in->n_choices > 0 ? in->n_choices : 1;
    const int64_t labels = model->heads.summary.out;
    float *summary = malloc((size_t)(acts->batch * labels) * sizeof *summary);
    if (!summary)
        return shard_error_set(err, SHARD_ERR_NOMEM, "multiple_choice: out of memory");
    int64_t shape[2] = {acts->batch / choices, choices};
    shard_tensor_t *logits = NULL;
    if (!sequence_summary(model, call->state, acts, call->zero, summary, err) &&
        (logits = shard_outputs_add(call->outputs, "logits", SHARD_F32, 2, shape, err)))
        shard_linear(&model->heads.logits_proj, summary, acts->batch, logits->f32);
    free(summary);
    return logits ? SHARD_OK : err->code;
}

/* logits [batch][seq][out] of a linear layer at every position. */
static shard_status_t head_logits(const head_call_t *call, const shard_linear_t *linear)
{
    const shard_acts_t *acts = call->acts;
    int64_t shape[3] = {acts->batch, acts->seq, linear->out};
    shard_tensor_t *logits = shard_outputs_add(call->outputs, "logits", SHARD_F32, 3, shape,
                                               call->err);
    return logits ? positionwise(call->state, linear, acts, logits->f32, call->err)
                  : call->err->code;
}

static shard_status_t head_lm(const head_call_t *call)
{
    return head_logits(call, &call->model->heads.lm_proj);
}

static shard_status_t head_token_cls(const head_call_t *call)
{
    return head_logits(call, &call->model->heads.classifier);
}

static shard_status_t head_qa_simple(const head_call_t *call)
{
    const shard_acts_t *acts = call->acts;
    shard_error_t *err = call->err;
    int64_t shape[2] = {acts->batch, acts->seq};
    float *both = malloc((size_t)(acts->batch * acts->seq * 2) * sizeof *both);
    shard_tensor_t *start = shard_outputs_add(call->outputs, "start_logits", SHARD_F32, 2, shape, err);
    shard_tensor_t *end = start ? shard_outputs_add(call->outputs, "end_logits", SHARD_F32, 2, shape, err)
                                : NULL;
    shard_status_t status = !both ? shard_error_set(err, SHARD_ERR_NOMEM, "qa_simple: out of memory")
                            : !end ? err->code
                                   : positionwise(call->state, &call->model->heads.qa_outputs,
                                                  acts, both, err);
    for (int64_t i = 0; !status && i < acts->batch * acts->seq; i++) {
        start->f32[i] = both[2 * i];
        end->f32[i] = both[2 * i + 1];
    }
    free(both);
    return status;
}

static shard_status_t head_base(const head_call_t *call)
{
    const shard_acts_t *acts = call->acts;
    int64_t shape[3] = {acts->batch, acts->seq, acts->emb_dim};
    shard_tensor_t *t = shard_outputs_add(call->outputs, "last_hidden_state", SHARD_F32, 3, shape,
                                          call->err);
    if (!t)
        return call->err->code;
    shard_acts_unpack(acts, t->f32);
    return SHARD_OK;
}

static void full_hidden(const shard_acts_t *acts, int64_t b, float *out)
{
    const int64_t d = acts->emb_dim;
    memset(out, 0, (size_t)(acts->seq * d) * sizeof *out);
    for (int64_t t = acts->row_start[b]; t < acts->row_start[b + 1]; t++)
        if (acts->is_real[t])
            memcpy(out + acts->position[t] * d, acts->hidden + t * d, (size_t)d * sizeof *out);
}

/* Indices of the k largest values of x[i*stride], descending. */
static void top_k(const float *x, int64_t n, int64_t stride, int64_t k, int64_t *index)
{
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < n; i++) {
            bool taken = false;
            for (int64_t m = 0; m < j && !taken; m++)
                taken = index[m] == i;
            if (!taken && (best < 0 || x[i * stride] > x[best * stride]))
                best = i;
        }
        index[j] = best;
    }
}

static float apply_p_mask(float x, float p)
{
    return x * (1.0f - p) - 1e30f * p;
}

typedef struct {
    float *hidden;      /* [seq][d] */
    float *start;       /* [seq] start logits, then probabilities */
    float *end_base;    /* [seq][d] end dense_0 applied to each position's half */
    float *end_logits;  /* [seq][start_n_top] */
    float *work;        /* [2d] */
    int64_t *top;       /* [end_n_top] */
} qa_buffers_t;

/* The SQuAD head of one row: start top-k, end top-k per start, cls logit. */
static void qa_row(const shard_model_t *model, const shard_acts_t *acts, const shard_inputs_t *in,
                   int64_t b, qa_buffers_t *buf, float *start_top, int64_t *start_index,
                   float *end_top, int64_t *end_index, float *cls_logit)
{
    const shard_config_t *c = &model->config;
    const shard_heads_t *h = &model->heads;
    const int64_t d = c->emb_dim, S = acts->seq, ks = c->start_n_top, ke = c->end_n_top;
    const float *p_mask = in->p_mask ? in->p_mask + b * S : NULL;
    full_hidden(acts, b, buf->hidden);
    shard_linear(&h->qa_start, buf->hidden, S, buf->start);
    for (int64_t s = 0; p_mask && s < S; s++)
        buf->start[s] = apply_p_mask(buf->start[s], p_mask[s]);
    shard_softmax(buf->start, S);
    top_k(buf->start, S, 1, ks, start_index);
    for (int64_t j = 0; j < ks; j++)
        start_top[j] = buf->start[start_index[j]];

    /* dense_0 over [hidden_s ; start_state]: the hidden half once per
     * position, the start half once per candidate. */
    const shard_linear_t *d0 = &h->qa_end_dense0;
    shard_linear_columns(d0, 0, d, buf->hidden, S, false, buf->end_base);
    float *start_part = buf->work, *x = buf->work + d;
    for (int64_t j = 0; j < ks; j++) {
        shard_linear_columns(d0, d, d, buf->hidden + start_index[j] * d, 1, true, start_part);
        for (int64_t s = 0; s < S; s++) {
            for (int64_t i = 0; i < d; i++)
                x[i] = tanhf(buf->end_base[s * d + i] + start_part[i]);
            shard_layer_norm(x, 1, d, &h->qa_end_norm, c->layer_norm_eps);
            float logit;
            shard_linear(&h->qa_end_dense1, x, 1, &logit);
            buf->end_logits[s * ks + j] = p_mask ? apply_p_mask(logit, p_mask[s]) : logit;
        }
    }
    /* Softmax over positions for each start candidate, then top-k; flat
     * index e * start_n_top + j as the reference lays it out. end_base is
     * free again and holds one column at a time. */
    float *probs = buf->end_base;
    for (int64_t j = 0; j < ks; j++) {
        for (int64_t s = 0; s < S; s++)
            probs[s] = buf->end_logits[s * ks + j];
        shard_softmax(probs, S);
        top_k(probs, S, 1, ke, buf->top);
        for (int64_t e = 0; e < ke; e++) {
            end_top[e * ks + j] = probs[buf->top[e]];
            end_index[e * ks + j] = buf->top[e];
        }
    }
    /* Answer class: probability-weighted hidden state and the last position. */
    float *cat = buf->work; /* [2d] */
    for (int64_t i = 0; i < d; i++) {
        double sum = 0.0;
        for (int64_t s = 0; s < S; s++)
            sum += (double)buf->hidden[s * d + i] * buf->start[s];
        cat[i] = (float)sum;
    }
    memcpy(cat + d, buf->hidden + (S - 1) * d, (size_t)d * sizeof *cat);
    float *y = buf->end_base; /* [d] */
    shard_linear(&h->qa_cls_dense0, cat, 1, y);
    for (int64_t i = 0; i < d; i++)
        y[i] = tanhf(y[i]);
    shard_linear(&h->qa_cls_dense1, y, 1, cls_logit);
}

static shard_status_t head_qa(const head_call_t *call)
{
    const shard_model_t *model = call->model;
    const shard_acts_t *acts = call->acts;
    const shard_inputs_t *in = call->in;
    shard_outputs_t *outputs = call->outputs;
    shard_error_t *err = call->err;
    const shard_config_t *c = &model->config;
    const int64_t B = acts->batch, S = acts->seq, d = c->emb_dim;
    const int64_t ks = c->start_n_top, ke = c->end_n_top;
    if (S < ks || S < ke)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "qa: sequence length %lld is shorter than start_n_top %lld or "
                               "end_n_top %lld", (long long)S, (long long)ks, (long long)ke);
    int64_t shape_start[2] = {B, ks}, shape_end[2] = {B, ks * ke}, shape_cls[1] = {B};
    shard_tensor_t *st = shard_outputs_add(outputs, "start_top_log_probs", SHARD_F32, 2, shape_start, err);
    shard_tensor_t *si = st ? shard_outputs_add(outputs, "start_top_index", SHARD_I64, 2, shape_start, err) : NULL;
    shard_tensor_t *et = si ? shard_outputs_add(outputs, "end_top_log_probs", SHARD_F32, 2, shape_end, err) : NULL;
    shard_tensor_t *ei = et ? shard_outputs_add(outputs, "end_top_index", SHARD_I64, 2, shape_end, err) : NULL;
    shard_tensor_t *cl = ei ? shard_outputs_add(outputs, "cls_logits", SHARD_F32, 1, shape_cls, err) : NULL;
    if (!cl)
        return err->code;
    qa_buffers_t buf;
    size_t sd = (size_t)(S * d);
    buf.hidden = malloc(sd * sizeof(float));
    buf.start = malloc((size_t)S * sizeof(float));
    buf.end_base = malloc((sd + (size_t)S) * sizeof(float));
    buf.end_logits = malloc((size_t)(S * ks) * sizeof(float));
    buf.work = malloc((size_t)(2 * d) * sizeof(float));
    buf.top = malloc((size_t)ke * sizeof(int64_t));
    shard_status_t status = SHARD_OK;
    if (!buf.hidden || !buf.start || !buf.end_base || !buf.end_logits || !buf.work ||
        !buf.top)
        status = shard_error_set(err, SHARD_ERR_NOMEM, "qa: out of memory");
    for (int64_t b = 0; !status && b < B; b++)
        qa_row(model, acts, in, b, &buf, st->f32 + b * ks, si->i64 + b * ks,
               et->f32 + b * ks * ke, ei->i64 + b * ks * ke, cl->f32 + b);
    free(buf.hidden);
    free(buf.start);
    free(buf.end_base);
    free(buf.end_logits);
    free(buf.work);
    free(buf.top);
    return status;
}

static shard_status_t run_head(shard_head_t head, const head_call_t *call);

shard_status_t shard_head(const shard_model_t *model, shard_state_t *state, shard_head_t head,
                          const shard_acts_t *acts, const shard_inputs_t *in,
                          shard_outputs_t *outputs, shard_error_t *err)
{
    if ((int)head < 0 || head >= SHARD_HEAD_COUNT_)
        return shard_error_set(err, SHARD_ERR_HEAD, "shard_head: unknown head %d, expected "
                               "0..%d", (int)head, SHARD_HEAD_COUNT_ - 1);
    shard_status_t status = need_head(model, head, err);
    if (status)
        return status;
    if (acts->batch != in->batch || acts->seq != in->seq)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_head: activations of %lld x %lld, inputs of %lld x %lld",
                               (long long)acts->batch, (long long)acts->seq,
                               (long long)in->batch, (long long)in->seq);
    if (acts->emb_dim != model->config.emb_dim)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_head: activations of width %lld, the model has emb_dim %lld",
                               (long long)acts->emb_dim, (long long)model->config.emb_dim);
    /* The last stage never embedded these inputs: check what the heads read. */
    if ((status = shard_inputs_check(&model->config, in, err)))
        return status;
    const float *zero = shard_buffer_zeros(&state->zero, (size_t)acts->emb_dim);
    if (!zero)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_head: out of memory");
    const head_call_t call = {model, state, acts, in, zero, outputs, err};
    return run_head(head, &call);
}

/* ------------------------------------------------------------ LM scoring */

typedef struct {
    int64_t row, pos, target;
} scored_t;

/* The online log-sum-exp of a group of scored positions over the
 * vocabulary panels: each position's row is folded in by one thread. */
typedef struct {
    const scored_t *items; /* the group's */
    int64_t v0, vb;        /* the panel: vocabulary rows [v0, v0 + vb) */
    float *max, *target;
    double *sum;
} fold_t;

static void fold_panel_row(void *context, int64_t i, const float *row)
{
    const fold_t *f = context;
    const float block_max = shard_max(row, f->vb);
    if (block_max > f->max[i]) { /* rescale what was summed so far */
        f->sum[i] = f->sum[i] * exp((double)f->max[i] - (double)block_max);
        f->max[i] = block_max;
    }
    f->sum[i] += shard_sum_exp(row, f->vb, f->max[i]);
    const int64_t t = f->items[i].target - f->v0;
    if (t >= 0 && t < f->vb)
        f->target[i] = row[t];
}

/* log p(target) at each scored position, projecting only those positions. */
static shard_status_t score_positions(const shard_model_t *model, shard_state_t *state,
                                      const shard_acts_t *acts, const scored_t *items,
                                      int64_t count, float *logprob, shard_error_t *err)
{
    const shard_linear_t *proj = &model->heads.lm_proj;
    const int64_t d = acts->emb_dim, V = proj->out;
    float *x = shard_buffer_get(&state->proj_x, (size_t)(PROJECT_POSITIONS * d));
    float *logits = shard_buffer_get(&state->proj_logits, (size_t)(PROJECT_POSITIONS * PROJECT_VOCAB));
    const float *zero = shard_buffer_zeros(&state->zero, (size_t)d);
    float *max = malloc(PROJECT_POSITIONS * sizeof *max), *target = malloc(PROJECT_POSITIONS * sizeof *target);
    double *sum = malloc(PROJECT_POSITIONS * sizeof *sum);
    shard_status_t status = SHARD_OK;
    if (!x || !logits || !zero || !max || !target || !sum) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "LM scoring: out of memory");
        goto done;
    }
    for (int64_t first = 0; first < count; first += PROJECT_POSITIONS) {
        const int64_t n = count - first < PROJECT_POSITIONS ? count - first : PROJECT_POSITIONS;
        for (int64_t i = 0; i < n; i++) {
            memcpy(x + i * d, hidden_or_zero(acts, items[first + i].row, items[first + i].pos, zero),
                   (size_t)d * sizeof *x);
            max[i] = -INFINITY;
            sum[i] = 0.0;
        }
        shard_linear_rows_t rows;
        shard_linear_rows_prepare(proj, x, n, &rows);
        for (int64_t v0 = 0; v0 < V; v0 += PROJECT_VOCAB) {
            fold_t fold = {items + first, v0, V - v0 < PROJECT_VOCAB ? V - v0 : PROJECT_VOCAB,
                           max, target, sum};
            shard_linear_outputs_each(proj, v0, fold.vb, &rows, logits, fold_panel_row, &fold);
        }
        for (int64_t i = 0; i < n; i++)
            logprob[first + i] = (float)((double)target[i] - (double)max[i] - log(sum[i]));
    }
done:
    free(max);
    free(target);
    free(sum);
    return status;
}

int64_t shard_row_unmasked(const shard_config_t *c, const shard_inputs_t *in, int64_t b)
{
    int64_t len = 0;
    for (int64_t s = 0; s < in->seq; s++)
        len += in->attention_mask ? in->attention_mask[b * in->seq + s] != 0
                                  : in->input_ids[b * in->seq + s] != c->pad_index;
    return len;
}

shard_status_t shard_head_clm_score(const shard_model_t *model, shard_state_t *state,
                                    const shard_acts_t *acts, const shard_inputs_t *in,
                                    const int64_t *score_from, shard_outputs_t *outputs,
                                    shard_error_t *err)
{
    shard_status_t status = need_head(model, SHARD_HEAD_LM, err);
    if (status || (status = shard_inputs_check(&model->config, in, err)))
        return status;
    if (acts->batch != in->batch || acts->seq < in->seq || acts->emb_dim != model->config.emb_dim)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "clm_score: activations of %lld x %lld x %lld for inputs of %lld x %lld",
                               (long long)acts->batch, (long long)acts->seq, (long long)acts->emb_dim,
                               (long long)in->batch, (long long)in->seq);
    const int64_t B = in->batch, S = in->seq;
    int64_t *lengths = calloc((size_t)B, sizeof *lengths);
    scored_t *items = malloc((size_t)(B * S) * sizeof *items);
    float *logprob = malloc((size_t)(B * S) * sizeof *logprob);
    int64_t count = 0;
    if (!lengths || !items || !logprob) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "clm_score: out of memory");
        goto done;
    }
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = shard_row_unmasked(&model->config, in, b);
        int64_t from = score_from ? score_from[b] : 1;
        if (from < 1)
            from = 1;
        for (int64_t t = from - 1; t + 1 < len; t++)
            items[count++] = (scored_t){b, t, in->input_ids[b * S + t + 1]};
        lengths[b] = len > from ? len - from : 0;
    }
    if ((status = score_positions(model, state, acts, items, count, logprob, err)))
        goto done;
    int64_t shape_tokens[2] = {B, 0}, shape_sum[1] = {B};
    shard_tensor_t *tokens = shard_outputs_add(outputs, "token_logprobs", SHARD_F32, 2, shape_tokens, err);
    shard_tensor_t *sums = tokens ? shard_outputs_add(outputs, "sum_logprob", SHARD_F32, 1, shape_sum, err) : NULL;
    if (!sums) {
        status = err->code;
        goto done;
    }
    free(tokens->f32);
    tokens->f32 = logprob;
    tokens->row_lengths = lengths;
    int64_t longest = 0;
    for (int64_t b = 0, i = 0; b < B; b++) {
        sums->f32[b] = (float)shard_score_sum(logprob + i, lengths[b]);
        i += lengths[b];
        longest = lengths[b] > longest ? lengths[b] : longest;
    }
    tokens->shape[1] = longest;
    logprob = NULL;
    lengths = NULL;
done:
    free(lengths);
    free(items);
    free(logprob);
    return status;
}

shard_status_t shard_head_masked_logprob(const shard_model_t *model, shard_state_t *state,
                                         const shard_acts_t *acts, const int64_t *mask_pos,
                                         const int64_t *target_ids, shard_outputs_t *outputs,
                                         shard_error_t *err)
{
    shard_status_t status = need_head(model, SHARD_HEAD_LM, err);
    if (status)
        return status;
    const int64_t B = acts->batch;
    scored_t *items = malloc((size_t)B * sizeof *items);
    int64_t shape[1] = {B};
    shard_tensor_t *out = items ? shard_outputs_add(outputs, "token_logprob", SHARD_F32, 1, shape, err)
                                : NULL;
    if (!out) {
        free(items);
        return items ? err->code : shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
    }
    for (int64_t b = 0; b < B; b++) {
        if (mask_pos[b] < 0 || mask_pos[b] >= acts->seq || target_ids[b] < 0 ||
            target_ids[b] >= model->config.vocab_size) {
            free(items);
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "masked_logprob: row %lld: position %lld or target %lld out "
                                   "of range", (long long)b, (long long)mask_pos[b],
                                   (long long)target_ids[b]);
        }
        items[b] = (scored_t){b, mask_pos[b], target_ids[b]};
    }
    status = score_positions(model, state, acts, items, B, out->f32, err);
    free(items);
    return status;
}

shard_status_t shard_head_next_token(const shard_model_t *model, shard_state_t *state,
                                     const shard_acts_t *acts, int64_t row, int64_t pos,
                                     int64_t *token, shard_error_t *err)
{
    shard_status_t status = need_head(model, SHARD_HEAD_LM, err);
    if (status)
        return status;
    if (row < 0 || row >= acts->batch || pos < 0 || pos >= acts->seq)
        return shard_error_set(err, SHARD_ERR_INPUT, "next_token: row %lld position %lld outside "
                               "%lld x %lld", (long long)row, (long long)pos,
                               (long long)acts->batch, (long long)acts->seq);
    const shard_linear_t *proj = &model->heads.lm_proj;
    float *logits = shard_buffer_get(&state->proj_logits, (size_t)proj->out);
    const float *zero = shard_buffer_zeros(&state->zero, (size_t)acts->emb_dim);
    if (!logits || !zero)
        return shard_error_set(err, SHARD_ERR_NOMEM, "next_token: out of memory");
    shard_linear_single(proj, hidden_or_zero(acts, row, pos, zero), logits);
    int64_t best = 0; /* the first maximum, as argmax breaks ties */
    for (int64_t v = 1; v < proj->out; v++)
        if (logits[v] > logits[best])
            best = v;
    *token = best;
    return SHARD_OK;
}

/* ------------------------------------------------------------ binding */

/* Each head's binding looks up its tensors and says whether the checkpoint
 * holds them (*has); absent optional tensors are not an error. */

static shard_status_t bind_base(shard_binder_t *b, shard_model_t *m, bool *has)
{
    (void)b;
    (void)m;
    *has = true;
    return SHARD_OK;
}

static shard_status_t bind_lm(shard_binder_t *b, shard_model_t *m, bool *has)
{
    const shard_config_t *c = &m->config;
    shard_linear_t *proj = &m->heads.lm_proj;
    shard_status_t status;
    if ((status = shard_bind_linear(b, proj, false, false, "pred_layer.proj", c->vocab_size,
                                    c->emb_dim)) ||
        (status = shard_bind_vector(b, &proj->bias, false, "pred_layer.proj.bias",
                                    c->vocab_size)))
        return status;
    /* The projection weight is tied to the word embeddings when absent. */
    if (proj->bias && !shard_linear_bound(proj) &&
        (status = shard_bind_tied(b, proj, m->word_embeddings.weight)))
        return status;
    *has = proj->bias != NULL;
    return SHARD_OK;
}

/* SequenceSummary and logits_proj, shared by seq_cls and multiple_choice:
 * looked up once, by whichever row comes first. */
static shard_status_t bind_summary(shard_binder_t *b, shard_model_t *m)
{
    const shard_config_t *c = &m->config;
    shard_heads_t *heads = &m->heads;
    if (heads->summary_bound)
        return SHARD_OK;
    heads->summary_bound = true;
    shard_status_t status = SHARD_OK;
    if (!c->summary_use_proj) {
        heads->summary.in = heads->summary.out = c->emb_dim; /* identity */
    } else {
        int64_t out = c->emb_dim;
        if (c->summary_proj_to_labels && c->num_labels > 0)
            out = c->num_labels;
        status = shard_bind_linear(b, &heads->summary, false, true, "sequence_summary.summary",
                                   out, c->emb_dim);
    }
    if (!status)
        status = shard_bind_linear(b, &heads->logits_proj, false, true, "logits_proj", 1,
                                   heads->summary.out);
    return status;
}

static shard_status_t bind_seq_cls(shard_binder_t *b, shard_model_t *m, bool *has)
{
    shard_status_t status = bind_summary(b, m);
    if (status)
        return status;
    const bool use_proj = m->config.summary_use_proj;
    /* Without a projection the summary alone is a seq_cls head only in a
     * seq_cls checkpoint, and never in a multiple-choice one. */
    *has = shard_linear_bound(&m->heads.summary) || (!use_proj && m->head == SHARD_HEAD_SEQ_CLS);
    if (shard_linear_bound(&m->heads.logits_proj) && !use_proj)
        *has = false;
    return SHARD_OK;
}

static shard_status_t bind_multiple_choice(shard_binder_t *b, shard_model_t *m, bool *has)
{
    shard_status_t status = bind_summary(b, m);
    if (status)
        return status;
    const bool summary_ok = shard_linear_bound(&m->heads.summary) || !m->config.summary_use_proj;
    *has = summary_ok && shard_linear_bound(&m->heads.logits_proj);
    return SHARD_OK;
}

static shard_status_t bind_token_cls(shard_binder_t *b, shard_model_t *m, bool *has)
{
    shard_status_t status = shard_bind_linear(b, &m->heads.classifier, false, true, "classifier",
                                              m->config.num_labels, m->config.emb_dim);
    *has = shard_linear_bound(&m->heads.classifier);
    return status;
}

static shard_status_t bind_qa_simple(shard_binder_t *b, shard_model_t *m, bool *has)
{
    shard_status_t status = shard_bind_linear(b, &m->heads.qa_outputs, false, true, "qa_outputs",
                                              2, m->config.emb_dim);
    *has = shard_linear_bound(&m->heads.qa_outputs);
    return status;
}

static shard_status_t bind_qa(shard_binder_t *b, shard_model_t *m, bool *has)
{
    shard_heads_t *h = &m->heads;
    const int64_t d = m->config.emb_dim;
    shard_status_t status =
        shard_bind_linear(b, &h->qa_start, false, true, "qa_outputs.start_logits.dense", 1, d);
    if (status || !shard_linear_bound(&h->qa_start))
        return status;
    /* The start logits are there: the rest of the SQuAD head must be. */
    if ((status = shard_bind_linear(b, &h->qa_end_dense0, true, true,
                                    "qa_outputs.end_logits.dense_0", d, 2 * d)) ||
        (status = shard_bind_norm(b, &h->qa_end_norm, "qa_outputs.end_logits.LayerNorm", d)) ||
        (status = shard_bind_linear(b, &h->qa_end_dense1, true, true,
                                    "qa_outputs.end_logits.dense_1", 1, d)) ||
        (status = shard_bind_linear(b, &h->qa_cls_dense0, true, true,
                                    "qa_outputs.answer_class.dense_0", d, 2 * d)) ||
        (status = shard_bind_linear(b, &h->qa_cls_dense1, true, false,
                                    "qa_outputs.answer_class.dense_1", 1, d)))
        return status;
    *has = true;
    return SHARD_OK;
}

/* ------------------------------------------------------------ head table */

/* One row per head: its name on the command line and in results, the
 * HuggingFace classes (PyTorch and TensorFlow) whose checkpoints carry it,
 * how its weights are bound and how it runs. Adding a head is one row and
 * its two functions. */
struct head_row {
    const char *name;
    const char *architecture;
    const char *tf_architecture;
    shard_status_t (*bind)(shard_binder_t *b, shard_model_t *model, bool *has);
    shard_status_t (*run)(const head_call_t *call);
    /* Its tensors' names (a name ending in '.' is a prefix), NULL-ended:
     * what a checkpoint may hold for it. */
    const char *const *tensors;
};

static const char *const lm_tensors[] = {"pred_layer.proj.weight", "pred_layer.proj.bias", NULL};
static const char *const summary_tensors[] = {
    "sequence_summary.summary.weight", "sequence_summary.summary.bias", "logits_proj.weight",
    "logits_proj.bias", NULL};
static const char *const token_cls_tensors[] = {"classifier.weight", "classifier.bias", NULL};
static const char *const qa_simple_tensors[] = {"qa_outputs.weight", "qa_outputs.bias", NULL};
/* The SQuAD head's parts are bound by name in bind_qa. */
static const char *const qa_tensors[] = {"qa_outputs.", NULL};
static const char *const no_tensors[] = {NULL};

static const struct head_row head_table[SHARD_HEAD_COUNT_] = {
    [SHARD_HEAD_BASE] = {"base", "XLMModel", "TFXLMModel", bind_base, head_base, no_tensors},
    [SHARD_HEAD_LM] = {"lm", "XLMWithLMHeadModel", "TFXLMWithLMHeadModel", bind_lm, head_lm,
                       lm_tensors},
    [SHARD_HEAD_SEQ_CLS] = {"seq_cls", "XLMForSequenceClassification",
                            "TFXLMForSequenceClassification", bind_seq_cls, head_seq_cls,
                            summary_tensors},
    [SHARD_HEAD_MULTIPLE_CHOICE] = {"multiple_choice", "XLMForMultipleChoice",
                                    "TFXLMForMultipleChoice", bind_multiple_choice,
                                    head_multiple_choice, summary_tensors},
    [SHARD_HEAD_TOKEN_CLS] = {"token_cls", "XLMForTokenClassification",
                              "TFXLMForTokenClassification", bind_token_cls, head_token_cls,
                              token_cls_tensors},
    [SHARD_HEAD_QA_SIMPLE] = {"qa_simple", "XLMForQuestionAnsweringSimple",
                              "TFXLMForQuestionAnsweringSimple", bind_qa_simple, head_qa_simple,
                              qa_simple_tensors},
    [SHARD_HEAD_QA] = {"qa", "XLMForQuestionAnswering", NULL, bind_qa, head_qa, qa_tensors},
};

static shard_status_t run_head(shard_head_t head, const head_call_t *call)
{
    return head_table[head].run(call);
}

shard_status_t shard_heads_bind(shard_binder_t *b, shard_model_t *model)
{
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++) {
        bool has = false;
        shard_status_t status = head_table[h].bind(b, model, &has);
        if (status)
            return status;
        model->has_head[h] = has;
    }
    return SHARD_OK;
}

bool shard_heads_know_tensor(const char *name)
{
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
        for (const char *const *t = head_table[h].tensors; *t; t++) {
            const size_t len = strlen(*t);
            if ((*t)[len - 1] == '.' ? strncmp(name, *t, len) == 0 : strcmp(name, *t) == 0)
                return true;
        }
    return false;
}

void shard_head_names(char *out, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return;
    out[0] = '\0';
    for (int h = 0; h < SHARD_HEAD_COUNT_ && used < size; h++) {
        const char *sep = h == 0 ? "" : h == SHARD_HEAD_COUNT_ - 1 ? " or " : ", ";
        int n = snprintf(out + used, size - used, "%s%s", sep, head_table[h].name);
        used += n > 0 ? (size_t)n : 0;
    }
}

const char *shard_head_name(shard_head_t head)
{
    if ((int)head < 0 || head >= SHARD_HEAD_COUNT_)
        return "unknown";
    return head_table[head].name;
}

shard_head_t shard_head_from_name(const char *name)
{
    for (int h = 0; name && h < SHARD_HEAD_COUNT_; h++)
        if (strcmp(name, head_table[h].name) == 0)
            return (shard_head_t)h;
    return SHARD_HEAD_COUNT_;
}

shard_head_t shard_head_of_architecture(const char *architecture)
{
    if (!architecture || !architecture[0])
        return SHARD_HEAD_BASE;
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
        if (strcmp(architecture, head_table[h].architecture) == 0 ||
            (head_table[h].tf_architecture &&
             strcmp(architecture, head_table[h].tf_architecture) == 0))
            return (shard_head_t)h;
    return SHARD_HEAD_COUNT_;
}
