/* engine_internal.h: what the engine's own files share; not part of the
 * public API (tests of the kernels include it). */
#ifndef XLM_SHARD_ENGINE_INTERNAL_H
#define XLM_SHARD_ENGINE_INTERNAL_H

#include "shard_engine.h"

#include <stdio.h>

/* ------------------------------------------------------------ weights */

/* y = x W^T + b, W stored [out][in] as in torch.nn.Linear. */
typedef struct {
    const float *weight; /* [out][in] */
    const float *bias;   /* [out] or NULL */
    int64_t in, out;
} shard_linear_t;

typedef struct {
    const float *weight, *bias; /* [dim] */
} shard_norm_t;

typedef struct {
    shard_linear_t q, k, v, out;
    shard_norm_t norm1;
    shard_linear_t ffn_in, ffn_out;
    shard_norm_t norm2;
} shard_layer_t;

typedef struct {
    shard_linear_t summary;     /* seq_cls, multiple_choice (weight NULL: identity) */
    shard_linear_t logits_proj; /* multiple_choice */
    shard_linear_t lm_proj;     /* lm: weight tied to the word embeddings if not stored */
    shard_linear_t classifier;  /* token_cls */
    shard_linear_t qa_outputs;  /* qa_simple */
    shard_linear_t qa_start, qa_end_dense0, qa_end_dense1, qa_cls_dense0, qa_cls_dense1;
    shard_norm_t qa_end_norm;
} shard_heads_t;

/* Scratch buffers reused across calls (grown on demand). */
typedef struct {
    float *buffers[8];
    size_t sizes[8];
} shard_scratch_t;

struct shard_model {
    shard_config_t config;
    shard_head_t head; /* the checkpoint's architecture */
    shard_range_t range;
    char dir[4096];
    tensor_file_t *file;
    float **owned; /* converted or computed tensors */
    size_t n_owned;

    const float *word_embeddings;     /* [vocab][emb] */
    const float *position_embeddings; /* [max_pos][emb] */
    const float *lang_embeddings;     /* [n_langs][emb] or NULL */
    shard_norm_t norm_emb;
    shard_layer_t *layers; /* [last_layer - first_layer] */
    shard_heads_t heads;
    bool has_head[SHARD_HEAD_COUNT_];

    shard_scratch_t scratch;
    shard_acts_t *forward_acts; /* reused by shard_forward */
};

/* Returns scratch buffer slot, at least count floats, or NULL. */
float *shard_scratch_get(shard_scratch_t *scratch, int slot, size_t count);
void shard_scratch_free(shard_scratch_t *scratch);

/* ------------------------------------------------------------ kernels */

/* y[rows][out] = x[rows][in] W^T + b */
void shard_linear(const shard_linear_t *linear, const float *x, int64_t rows, float *y);
/* In place over rows of dim. */
void shard_layer_norm(float *x, int64_t rows, int64_t dim, const shard_norm_t *norm, double eps);
void shard_gelu(float *x, size_t count);
void shard_relu(float *x, size_t count);
void shard_activate(float *x, size_t count, shard_activation_t activation);
/* In place softmax of one row; returns nothing. */
void shard_softmax(float *x, int64_t count);
/* sum of exp(x[i] - shift), every x[i] <= shift (vectorised, float terms). */
double shard_sum_exp(const float *x, int64_t count, float shift);
/* log of sum(exp(x)) over count values, computed stably. */
double shard_log_sum_exp(const float *x, int64_t count);
/* out[i] = x[i] + y[i] */
void shard_add(float *x, const float *y, size_t count);

/* ------------------------------------------------------------ acts */

/* Hidden state of padded position pos of row b, or NULL where it is zero. */
const float *shard_acts_hidden_at(const shard_acts_t *acts, int64_t row, int64_t pos);

#endif
