/* shard_engine.h: the XLM engine.
 *
 * Keeps the weights of a contiguous layer range of an XLM checkpoint (one
 * pipeline stage, or the whole model) and runs the forward pass and heads on
 * OpenBLAS. The only code of the project that calls BLAS. Reads checkpoints
 * through shard_checkpoint.h; knows no tokenizer (text comes in as ids), no
 * MPI, no ZeroMQ, no wire format.
 *
 * Data flow of one batch through a pipeline of stages:
 *
 *   shard_inputs_t --shard_embed--> shard_acts_t --shard_run_layers--> ...
 *        ... --shard_run_layers--> shard_acts_t --shard_head_*--> shard_outputs_t
 *
 * Activations are packed: only the positions that influence the result are
 * computed (no work on padding), see shard_acts_t.
 *
 * Weights apart from state: an opened model is read-only and may be shared
 * by any number of threads; every compute call also takes the caller's
 * shard_state_t (what the call computes into), one per thread.
 *
 * Errors: see shard_common.h.
 */
#ifndef XLM_SHARD_ENGINE_H
#define XLM_SHARD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "shard_checkpoint.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- heads */

/* Heads, in the order of the wire enum: append only. */
typedef enum {
    SHARD_HEAD_BASE = 0,
    SHARD_HEAD_LM,
    SHARD_HEAD_SEQ_CLS,
    SHARD_HEAD_MULTIPLE_CHOICE,
    SHARD_HEAD_TOKEN_CLS,
    SHARD_HEAD_QA_SIMPLE,
    SHARD_HEAD_QA,
    SHARD_HEAD_COUNT_
} shard_head_t;

const char *shard_head_name(shard_head_t head);
/* Every head's name, "base, lm, ... or qa", into out (truncated to size,
 * NUL-terminated): for messages that list the choices. */
void shard_head_names(char *out, size_t size);
/* Returns SHARD_HEAD_COUNT_ when name is not a head. */
shard_head_t shard_head_from_name(const char *name);
/* The head of a HuggingFace class name ("XLMForSequenceClassification");
 * "" (no architectures in the config) is the base model; SHARD_HEAD_COUNT_
 * when the class is not one this engine runs. */
shard_head_t shard_head_of_architecture(const char *architecture);


/* ---------------------------------------------------------------- model */

typedef struct shard_model shard_model_t;

/* Which part of the network a model object holds. Layers [first_layer,
 * last_layer); embeddings (stage 0) and heads (last stage) optional. */
typedef struct {
    int64_t first_layer;
    int64_t last_layer;
    bool embeddings;
    bool heads;
} shard_range_t;

/* The precision of the matrix products (and of the linear weights held).
 * Layer norm, softmax, GELU, residuals and log-softmax are fp32 in all. */
typedef enum {
    SHARD_PRECISION_FP32 = 0, /* the default: fp32 weights, sgemm */
    SHARD_PRECISION_BF16,     /* bf16 weights; bf16 products, fp32 accumulation
                                 (or fp32 products of bf16 weights, logged) */
    SHARD_PRECISION_INT8,     /* int8 weights per output channel, int8
                                 activations per token, int32 accumulation */
    SHARD_PRECISION_COUNT_
} shard_precision_t;

/* "fp32", "bf16", "int8"; NULL for a value out of range. */
const char *shard_precision_name(shard_precision_t precision);
/* The precision named by name, or SHARD_PRECISION_COUNT_ (err set, naming
 * the value and the names expected). */
shard_precision_t shard_precision_parse(const char *name, shard_error_t *err);

/* How to open a checkpoint. A zeroed struct (or NULL) is the default: the
 * whole model in fp32, BLAS threads left as they are. */
typedef struct {
    const shard_range_t *range;  /* borrowed; NULL: the whole model */
    int threads;                 /* > 0: shard_set_threads(threads) (process-wide) */
    shard_precision_t precision; /* of the linear layers' weights and products */
} shard_model_options_t;

/* Opens a checkpoint folder. Only the tensors of the range are touched
 * (mapped pages of other tensors are never read). The model is read-only
 * after this: any number of threads may compute with it at once, each with
 * its own shard_state_t. */
shard_model_t *shard_model_open(const char *dir, const shard_model_options_t *options,
                                shard_error_t *err);
void shard_model_destroy(shard_model_t **self_p);

const shard_config_t *shard_model_config(const shard_model_t *model);
/* The head of the checkpoint's architecture (what runs when none is named). */
shard_head_t shard_model_default_head(const shard_model_t *model);
shard_range_t shard_model_range(const shard_model_t *model);
shard_precision_t shard_model_precision(const shard_model_t *model);
/* Bytes of linear-layer weights the model holds or maps for compute. */
size_t shard_model_weight_bytes(const shard_model_t *model);
/* How the model's products run, for logs: e.g. "int8 weights, int8 products
 * (oneDNN gemm:jit)" or "bf16 weights, fp32 products: this CPU has no
 * AVX512_BF16". */
const char *shard_model_precision_note(const shard_model_t *model);
/* True when the checkpoint has the weights of this head. */
bool shard_model_has_head(const shard_model_t *model, shard_head_t head);
/* Which heads the checkpoint folder has weights for, from one open of its
 * head tensors alone (no layers, no embeddings beyond the tied LM
 * projection): has[h] for every head. For a stage that does not hold the
 * heads itself. */
shard_status_t shard_model_probe_heads(const char *dir, bool has[SHARD_HEAD_COUNT_],
                                       shard_error_t *err);

/* Threads used by BLAS and the engine's own loops (process-wide). */
void shard_set_threads(int threads);

/* Matrix products this process has finished, all states together: it grows
 * every few milliseconds to a second while any compute call runs, so a
 * watchdog thread can tell a long call from a stuck one. */
uint64_t shard_work_count(void);

/* ---------------------------------------------------------------- run state */

/* What a compute call writes into besides its outputs: the per-layer
 * buffers, the heads' and the LM projection's work space, the activations
 * shard_forward reuses. Grown on demand, kept between calls (no fresh pages
 * per batch). One state per caller (thread); a state may serve several
 * models one call at a time. */
typedef struct shard_state shard_state_t;

shard_state_t *shard_state_new(void);
void shard_state_destroy(shard_state_t **self_p);

/* ---------------------------------------------------------------- inputs */

/* One batch, row-major, padded to seq. All arrays but input_ids optional
 * (NULL when not given). For multiple choice, batch = n_rows * n_choices and
 * n_choices > 0; rows of one example are consecutive. */
typedef struct {
    int64_t batch;
    int64_t seq;
    int64_t n_choices;
    const int64_t *input_ids;      /* [batch*seq] */
    const int64_t *attention_mask; /* [batch*seq] 0/1 */
    const int64_t *langs;          /* [batch*seq] */
    const int64_t *token_type_ids; /* [batch*seq] */
    const int64_t *position_ids;   /* [batch*seq] */
    const float *p_mask;           /* [batch*seq], qa only */
} shard_inputs_t;

/* Checks ids, langs, positions, mask values and shapes against the config. */
shard_status_t shard_inputs_check(const shard_config_t *config,
                                  const shard_inputs_t *inputs,
                                  shard_error_t *err);

/* ---------------------------------------------------------------- activations */

/* Packed activations between stages.
 *
 * Only the positions whose hidden state can influence an output are kept:
 * the unmasked positions, plus (causal models only) masked positions before
 * a row's last unmasked one, because causal attention still reads them.
 * Those are carried with is_real = 0 and held at zero after every layer, as
 * the reference implementation does. Every other position's hidden state is
 * exactly zero and is not stored. */
typedef struct {
    int64_t batch, seq, emb_dim;
    int64_t n_tokens;    /* packed positions */
    int64_t *row_start;  /* [batch+1] packed index of each row's first position */
    int32_t *position;   /* [n_tokens] index in the padded row, 0..seq-1 */
    uint8_t *is_real;    /* [n_tokens] 1 = attention_mask on */
    float *hidden;       /* [n_tokens][emb_dim] */
    size_t capacity_tokens; /* allocated rows of hidden */
} shard_acts_t;

shard_acts_t *shard_acts_new(void);
void shard_acts_destroy(shard_acts_t **self_p);
/* Sizes the layout arrays and hidden for batch rows and n_tokens positions. */
shard_status_t shard_acts_reserve(shard_acts_t *acts, int64_t batch, int64_t seq,
                                  int64_t emb_dim, int64_t n_tokens,
                                  shard_error_t *err);
/* A view of rows [first_row, first_row + rows) seen as padded to seq (which
 * may be shorter than acts->seq when those rows were padded further inside
 * a larger batch). Shares acts' arrays; pass it to the heads, never to
 * shard_run_layers or shard_acts_destroy. */
shard_status_t shard_acts_view(const shard_acts_t *acts, int64_t first_row, int64_t rows,
                               int64_t seq, shard_acts_t *view, shard_error_t *err);
/* Fills the padded [batch][seq][emb_dim] tensor (zeros where not packed). */
void shard_acts_unpack(const shard_acts_t *acts, float *padded);

/* Stage 0: embeddings (words, positions, languages, token types), layer norm,
 * mask. Needs a model with embeddings. */
shard_status_t shard_embed(const shard_model_t *model, shard_state_t *state,
                           const shard_inputs_t *inputs, shard_acts_t *acts,
                           shard_error_t *err);

/* Runs the model's layer range over acts in place. */
shard_status_t shard_run_layers(const shard_model_t *model, shard_state_t *state,
                                shard_acts_t *acts, shard_error_t *err);

/* Stage 0 of a cached generation step: positions [first, seq) of a single
 * row (every one of them real: no attention mask zero, no pad id in the
 * default mask's range), as shard_embed would compute them. */
shard_status_t shard_embed_from(const shard_model_t *model, shard_state_t *state,
                                const shard_inputs_t *inputs, int64_t first, shard_acts_t *acts,
                                shard_error_t *err);

/* ---------------------------------------------------------------- key/value cache */

/* The keys and values of one row's positions in every layer of a model
 * range, for greedy generation on causal models: a step runs only the new
 * positions through the layers and gets the bits the whole prefix would
 * give them. One cache per generation (and per stage of a pipeline, for its
 * own layers); shard_kv_cache_reset starts the next. */
typedef struct shard_kv_cache shard_kv_cache_t;

shard_kv_cache_t *shard_kv_cache_new(void);
void shard_kv_cache_destroy(shard_kv_cache_t **self_p);
void shard_kv_cache_reset(shard_kv_cache_t *cache);
/* Positions cached so far. */
int64_t shard_kv_cache_length(const shard_kv_cache_t *cache);

/* Runs the model's layer range over acts in place, acts being one row's
 * positions [length, length + n) (length = shard_kv_cache_length, every
 * position real), each attending to the cached positions and the new ones
 * up to itself; then the cache holds [0, length + n). Causal models only. */
shard_status_t shard_run_layers_cached(const shard_model_t *model, shard_state_t *state,
                                       shard_kv_cache_t *cache, shard_acts_t *acts,
                                       shard_error_t *err);

/* ---------------------------------------------------------------- outputs */

typedef enum { SHARD_F32 = 0, SHARD_I64 = 1 } shard_elem_t;

enum { SHARD_MAX_DIMS = 4, SHARD_MAX_OUTPUTS = 8, SHARD_OUTPUT_NAME_MAX = 32 };

/* A named output tensor. When row_lengths is set the tensor is ragged: shape
 * [shape[0]][row_lengths[i]] with the rows stored back to back. */
typedef struct {
    char name[SHARD_OUTPUT_NAME_MAX];
    shard_elem_t elem;
    int ndim;
    int64_t shape[SHARD_MAX_DIMS];
    int64_t *row_lengths; /* [shape[0]] or NULL */
    float *f32;           /* owned, when elem == SHARD_F32 */
    int64_t *i64;         /* owned, when elem == SHARD_I64 */
} shard_tensor_t;

typedef struct {
    int count;
    shard_tensor_t tensors[SHARD_MAX_OUTPUTS];
} shard_outputs_t;

void shard_outputs_init(shard_outputs_t *outputs);
void shard_outputs_clear(shard_outputs_t *outputs);
/* Adds a tensor with allocated, zeroed data; returns it or NULL. */
shard_tensor_t *shard_outputs_add(shard_outputs_t *outputs, const char *name,
                                  shard_elem_t elem, int ndim,
                                  const int64_t *shape, shard_error_t *err);
const shard_tensor_t *shard_outputs_find(const shard_outputs_t *outputs,
                                         const char *name);
int64_t shard_tensor_numel(const shard_tensor_t *tensor);

/* ---------------------------------------------------------------- heads */

/* Last stage: computes a head from the final activations. inputs is the
 * batch the activations came from (p_mask, n_choices and ids are read). */
shard_status_t shard_head(const shard_model_t *model, shard_state_t *state, shard_head_t head,
                          const shard_acts_t *acts, const shard_inputs_t *inputs,
                          shard_outputs_t *outputs, shard_error_t *err);

/* Causal LM scoring: for each row b and each position t with t+1 < length_b
 * (length_b = unmasked positions), log p(input_ids[b][t+1] | ...) under
 * log_softmax of the LM logits at t. Outputs "token_logprobs" (ragged
 * [batch][length_b-1]) and "sum_logprob" [batch] (summed in double).
 * Only the scored positions are projected onto the vocabulary.
 * If score_from is not NULL, row b only scores targets at t+1 >=
 * score_from[b] (the other positions are skipped, not projected). */
shard_status_t shard_head_clm_score(const shard_model_t *model, shard_state_t *state,
                                    const shard_acts_t *acts,
                                    const shard_inputs_t *inputs,
                                    const int64_t *score_from,
                                    shard_outputs_t *outputs, shard_error_t *err);

/* Masked-LM pseudo-log-likelihood helper: for each row b, log p(target_ids[b])
 * at position mask_pos[b], projecting only that position. Output
 * "token_logprob" [batch]. */
shard_status_t shard_head_masked_logprob(const shard_model_t *model, shard_state_t *state,
                                         const shard_acts_t *acts,
                                         const int64_t *mask_pos,
                                         const int64_t *target_ids,
                                         shard_outputs_t *outputs,
                                         shard_error_t *err);

/* Greedy decoding step: the argmax of the LM logits at position pos of row
 * (the bias alone where that position was not computed). */
shard_status_t shard_head_next_token(const shard_model_t *model, shard_state_t *state,
                                     const shard_acts_t *acts,
                                     int64_t row, int64_t pos, int64_t *token,
                                     shard_error_t *err);

/* Default attention mask of a row of ids, as the reference derives it when
 * none is given: the first k positions, k = ids that are not pad_index. */
void shard_default_mask(const shard_config_t *config, const int64_t *ids, int64_t seq,
                        int64_t *mask);

/* ---------------------------------------------------------------- whole model */

/* Embed + all layers + head, on a model that holds everything. */
shard_status_t shard_forward(const shard_model_t *model, shard_state_t *state, shard_head_t head,
                             const shard_inputs_t *inputs, shard_outputs_t *outputs,
                             shard_error_t *err);

/* Greedy generation from one row: steps times, append the argmax of the last
 * position's LM logits (langs extended with lang_fill when langs given).
 * Outputs "generated_ids" [1][len+steps] and "new_ids" [1][steps]. On a
 * causal model each step runs only the new position (a key/value cache in
 * the call), with the outputs of recomputing the whole sequence; the whole
 * sequence is recomputed where the cache cannot continue (a non-causal
 * model, a pad id in the sequence). */
shard_status_t shard_generate_greedy(const shard_model_t *model, shard_state_t *state,
                                     const shard_inputs_t *inputs,
                                     int64_t steps, int64_t lang_fill,
                                     shard_outputs_t *outputs, shard_error_t *err);


/* ---------------------------------------------------------------- scoring */

/* Masked copies of one row for pseudo-log-likelihood (Salazar et al.
 * 2020): copy i is the row with position first + i replaced by the config's
 * mask_index. out_ids/out_langs hold count * len values (out_langs may be
 * NULL when langs is); mask_pos and targets get each copy's masked position
 * and original id. */
shard_status_t shard_pll_expand(const shard_config_t *config, const int64_t *ids,
                                const int64_t *langs, int64_t len, int64_t first,
                                int64_t count, int64_t *out_ids, int64_t *out_langs,
                                int64_t *mask_pos, int64_t *targets, shard_error_t *err);

typedef enum {
    SHARD_SCORE_CLM = 0, /* causal: log p(token_t | tokens before t) */
    SHARD_SCORE_MLM_PLL, /* masked LM pseudo-log-likelihood */
    SHARD_SCORE_COUNT_
} shard_score_mode_t;

/* Scores rows on a whole model. rows is a padded batch (attention_mask
 * given, or the default one from pad ids). Row r scores positions
 * [score_from[r], score_to[r]): clm, each token given the ones before it
 * (all rows run as one batch); mlm-pll, each token masked in its own copy of
 * the row (copies run together, only the masked position projected onto
 * the vocabulary). Outputs "token_logprobs" (ragged [rows][n]) and
 * "sum_logprob" [rows] (the float32 values summed in double). A row's scores
 * do not depend on the other rows. score_from and score_to NULL: every token
 * after the first (clm: [1, n), mlm-pll: [1, n - 1), n the row's unmasked
 * positions), as the reference's clm_score cases. */
shard_status_t shard_score_rows(const shard_model_t *model, shard_state_t *state,
                                shard_score_mode_t mode,
                                const shard_inputs_t *rows, const int64_t *score_from,
                                const int64_t *score_to, shard_outputs_t *outputs,
                                shard_error_t *err);

/* ---------------------------------------------------------------- scoring pieces
 *
 * What every scorer does the same way: xlm-score in process (through
 * shard_score_rows) and the worker's stages (stage 0 prepares rows and
 * copies, the last stage gathers the scores) call these, so that both give
 * the same numbers for the same pair. */

/* Scored positions [from, to) of one row. */
typedef struct {
    int64_t from, to;
} shard_score_window_t;

/* Where the segments of an encoded row are (the tokenizer's encoding as
 * plain numbers): the first at [offset_a, offset_a + length_a), the second
 * at [offset_b, offset_b + length_b) (offset_b < 0 when there is none);
 * length: the row's tokens, specials included. */
typedef struct {
    int64_t offset_a, length_a, offset_b, length_b, length;
} shard_score_layout_t;

/* The layout of a row of token ids given as such: one segment between its
 * first token (<s>) and its last (</s>). */
shard_score_layout_t shard_score_layout_of_row(int64_t length);

/* The default window of a row: the second segment when there is one (the
 * target of a source-target pair), else the first (a target alone,
 * --no-source). clm scores the segment's tokens and the final </s> (to =
 * length; never from position 0, which has no context); mlm-pll the
 * segment's tokens only. */
shard_score_window_t shard_score_window(shard_score_mode_t mode, const shard_score_layout_t *layout);

/* True when w lies in a row of length tokens: to <= length, from <= to and
 * from >= 1 for clm (position 0 has no context), >= 0 for mlm-pll. */
bool shard_score_window_fits(shard_score_mode_t mode, shard_score_window_t w, int64_t length);

/* One masked copy of mlm-pll: the row it copies, the masked position and
 * the id the mask hides (the scored target). */
typedef struct {
    int64_t row, pos, target;
} shard_pll_copy_t;

/* Masked copies of rows' windows: one per scored position. */
int64_t shard_pll_count(const shard_score_window_t *windows, int64_t rows);

/* Lists the copies of rows' windows (shard_pll_count of them) in order, row
 * by row, position by position: the order of the ragged token_logprobs. */
shard_status_t shard_pll_list(const shard_inputs_t *rows, const shard_score_window_t *windows,
                              shard_pll_copy_t *copies, shard_error_t *err);

/* The batch of copies[0, n) of rows: copy i is row copies[i].row with
 * copies[i].pos replaced by mask_index, its attention mask (the default one
 * from pad ids when rows has none), langs, token types and positions the
 * row's own. Allocates out's arrays (attention_mask always, the others where
 * rows has them); free them with shard_pll_batch_free. */
shard_status_t shard_pll_batch(const shard_config_t *config, const shard_inputs_t *rows,
                               const shard_pll_copy_t *copies, int64_t n, shard_inputs_t *out,
                               shard_error_t *err);
void shard_pll_batch_free(shard_inputs_t *batch);

/* logprob[i] = log p(copies[i].target | copy i) from the activations of the
 * copies' batch (acts row i is copy i): only the masked positions are
 * projected onto the vocabulary. */
shard_status_t shard_pll_logprob(const shard_model_t *model, shard_state_t *state,
                                 const shard_acts_t *acts, const shard_pll_copy_t *copies,
                                 int64_t n, float *logprob, shard_error_t *err);

/* Puts the log-probs of copies[0, n) in their rows' places in tokens, the
 * ragged token_logprobs of windows (from shard_score_outputs_add). */
shard_status_t shard_pll_gather(const shard_pll_copy_t *copies, int64_t n, const float *logprob,
                                const shard_score_window_t *windows, shard_tensor_t *tokens,
                                shard_error_t *err);

/* Keeps the windows of rows [row0, row0 + rows) of head, the ragged
 * token_logprobs of shard_head_clm_score (row b from its score_from to its
 * end), in tokens (ragged by windows); an error when a window runs past what
 * the head scored. */
shard_status_t shard_clm_gather(const shard_tensor_t *head, int64_t row0,
                                const shard_score_window_t *windows, shard_tensor_t *tokens,
                                shard_error_t *err);

/* Adds "token_logprobs" (ragged [rows][to - from] of windows, zeroed) and
 * "sum_logprob" [rows] to outputs; *tokens and *sums point at them. */
shard_status_t shard_score_outputs_add(shard_outputs_t *outputs,
                                       const shard_score_window_t *windows, int64_t rows,
                                       shard_tensor_t **tokens, shard_tensor_t **sums,
                                       shard_error_t *err);

/* The sum of n float32 scores, in double: one rounding, whatever n. */
double shard_score_sum(const float *scores, int64_t n);

/* sums->f32[r] = shard_score_sum of row r of the ragged tokens (rounded to
 * float32). */
void shard_score_sum_rows(const shard_tensor_t *tokens, shard_tensor_t *sums);

#ifdef __cplusplus
}
#endif


#endif /* XLM_SHARD_ENGINE_H */
