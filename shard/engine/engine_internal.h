/* engine_internal.h: what the engine's own files share; not part of the
 * public API (tests of the kernels include it). */
#ifndef XLM_SHARD_ENGINE_INTERNAL_H
#define XLM_SHARD_ENGINE_INTERNAL_H

#include "shard_engine.h"

#include <stdio.h>
#include <string.h>

/* An AVX2 and a default build of a hot loop, chosen at load time. Not
 * under clang: clang 14 (Debian 12's, the fuzz builds') names the
 * dispatcher NAME.ifunc, so calls from other files find no NAME and the
 * engine does not link. */
#if defined(__clang__)
#define SHARD_AVX2_CLONES
#define SHARD_AVX512_CLONES
#else
#define SHARD_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
/* And an AVX-512 build, for elementwise loops whose every element is the
 * same operations whatever the vector width (the same bits on every
 * clone): on the EPYC of 2026-12-03 (512-bit units) it halved GELU's share
 * of an int8 forward pass (4.7% to 2.3%). */
#define SHARD_AVX512_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

/* Elementwise and per-row loops share the engine's threads (OpenMP) from
 * this many floats on: below, a parallel region costs more than it saves. */
enum { SHARD_PARALLEL_MIN_FLOATS = 1 << 14 };

/* ------------------------------------------------------------ weights */

/* y = x W^T + b, W stored [out][in] as in torch.nn.Linear. One of weight,
 * bf16 and i8 holds W, as type says; the kernels dispatch on type. */
typedef struct {
    const float *weight; /* [out][in] fp32, or NULL */
    const float *bias;   /* [out] or NULL (always fp32) */
    int64_t in, out;
    shard_precision_t type; /* SHARD_PRECISION_FP32 (zero) in a positional initialiser */
    const uint16_t *bf16;   /* [out][in] bf16 bits */
    const int8_t *i8;       /* [out][in] W[o][i] = i8[o][i] * scale[o] */
    const float *scale;     /* [out] symmetric per-output-channel scales */
    /* W reordered once for oneDNN (dnnl_matmul.h), or NULL; then bf16 and
     * i8 may be NULL (the copy was replaced) and the products it covers
     * read this instead. */
    const struct shard_packed *packed;
} shard_linear_t;

/* True when the layer's weight is bound, whatever its type. */
static inline bool shard_linear_bound(const shard_linear_t *linear)
{
    return linear->weight || linear->bf16 || linear->i8 || linear->packed;
}

typedef struct {
    const float *weight, *bias; /* [dim] */
} shard_norm_t;

typedef struct {
    shard_linear_t q, k, v, out; /* bf16, int8: q, k and v view their thirds of qkv */
    shard_linear_t qkv;          /* [3d][d]: Q, K and V in one product (bf16, int8; out 0
                                  * in fp32, whose weights stay in place) */
    shard_norm_t norm1;
    shard_linear_t ffn_in, ffn_out;
    shard_norm_t norm2;
} shard_layer_t;

/* A table of rows looked up by id (word, position, language embeddings). */
typedef struct {
    const float *weight; /* [rows][dim] */
    int64_t rows, dim;
} shard_embedding_t;

typedef struct {
    shard_linear_t summary;     /* seq_cls, multiple_choice (weight NULL: identity) */
    shard_linear_t logits_proj; /* multiple_choice */
    bool summary_bound;         /* summary and logits_proj looked up (shared by two heads) */
    shard_linear_t lm_proj;     /* lm: weight tied to the word embeddings if not stored */
    shard_linear_t classifier;  /* token_cls */
    shard_linear_t qa_outputs;  /* qa_simple */
    shard_linear_t qa_start, qa_end_dense0, qa_end_dense1, qa_cls_dense0, qa_cls_dense1;
    shard_norm_t qa_end_norm;
} shard_heads_t;

/* The loaded model: read-only once shard_model_open returns. */
struct shard_model {
    shard_config_t config;
    shard_head_t head; /* the checkpoint's architecture */
    shard_range_t range;
    char dir[4096];
    tensor_file_t *file;
    void **owned; /* converted, computed or quantised tensors */
    size_t n_owned;
    shard_precision_t precision; /* of the linear layers (model->heads included) */
    size_t weight_bytes;         /* of the linear layers, as held for compute */
    int64_t packed_linears;      /* of them reordered for oneDNN at open (model.c) */
    char precision_note[256];    /* how the products run (shard_model_precision_note) */

    shard_embedding_t word_embeddings;     /* [vocab][emb] */
    shard_embedding_t position_embeddings; /* [max_pos][emb] */
    shard_embedding_t lang_embeddings;     /* [n_langs][emb], weight NULL when unused */
    shard_norm_t norm_emb;
    shard_layer_t *layers; /* [last_layer - first_layer] */
    shard_heads_t heads;
    bool has_head[SHARD_HEAD_COUNT_];
};

/* ------------------------------------------------------------ run state */

/* The LM projection of scored positions runs in tiles: PROJECT_POSITIONS
 * positions against PROJECT_VOCAB vocabulary rows at a time, with an
 * online log-sum-exp. The weights are read once per tile of positions and
 * the logits buffer stays at 16 MiB whatever the vocabulary. */
enum { PROJECT_POSITIONS = 1024, PROJECT_VOCAB = 4096 };

/* Every matrix product runs on a multiple of this many rows (the last ones
 * padded with zeros): kernels.c says why (batch invariance). */
enum { SHARD_ROW_TILE = 32 };

/* A float buffer of a run state, grown on demand (contents not kept). */
typedef struct {
    float *data;
    size_t count;
} shard_buffer_t;

/* Returns the buffer with room for count floats, or NULL. */
float *shard_buffer_get(shard_buffer_t *buffer, size_t count);
/* The same, zero-filled. */
float *shard_buffer_zeros(shard_buffer_t *buffer, size_t count);

/* Shapes: T packed positions of a batch, B rows, d = emb_dim, h =
 * hidden_dim, n = the longest packed row, o = a head's outputs, V = vocab,
 * P = PROJECT_POSITIONS. */
struct shard_state {
    /* layers */
    shard_buffer_t qkv;    /* [T][3d]; reused for the out and ffn_out projections */
    shard_buffer_t ctx;    /* [T][d] attention context */
    shard_buffer_t ffn;    /* [T][h] */
    shard_buffer_t scores; /* [threads][shard_attention_work_floats] attention work space */
    /* heads */
    shard_buffer_t zero;       /* [d] zeros: the hidden state of positions not computed */
    shard_buffer_t packed_out; /* [T][o] a positionwise head over the packed positions */
    shard_buffer_t summary;    /* [B][d] sequence summary states before projection */
    /* LM projection */
    shard_buffer_t proj_x;      /* [P][d] hidden states of scored positions */
    shard_buffer_t proj_logits; /* [P][PROJECT_VOCAB] one tile, or [V] for next_token */
    /* whole model */
    shard_acts_t *acts; /* reused by shard_forward, shard_score_rows, generation */
    /* Seconds spent in attention by this state's calls (bench-engine's
     * share of attention; two clock reads a layer). */
    double attention_seconds;
};

/* Unmasked positions of row b (its mask's ones, or its ids that are not
 * pad_index without a mask): the length the LM scores see. */
int64_t shard_row_unmasked(const shard_config_t *c, const shard_inputs_t *in, int64_t b);

/* The state's reusable activations, created on first use; NULL (err set)
 * when out of memory. */
shard_acts_t *shard_state_acts(shard_state_t *state, shard_error_t *err);

/* ------------------------------------------------------------ binding */

/* model.c's binder: looks tensors up by name, checks shapes, converts. */
typedef struct shard_binder shard_binder_t;

/* Binds a linear layer [out][in] under prefix (".weight", ".bias" when
 * has_bias); weight stays NULL when absent and not required. */
shard_status_t shard_bind_linear(shard_binder_t *b, shard_linear_t *linear, bool required,
                                 bool has_bias, const char *prefix, int64_t out, int64_t in);
/* Binds a linear layer whose weight is an fp32 table already bound (the LM
 * projection tied to the word embeddings), in the model's precision. */
shard_status_t shard_bind_tied(shard_binder_t *b, shard_linear_t *linear, const float *weight);
shard_status_t shard_bind_norm(shard_binder_t *b, shard_norm_t *norm, const char *prefix,
                               int64_t dim);
/* A vector of count floats; *out stays NULL when absent and not required. */
shard_status_t shard_bind_vector(shard_binder_t *b, const float **out, bool required,
                                 const char *name, int64_t count);
/* Binds each head of the head table (heads.c) whose weights the checkpoint
 * holds and sets model->has_head from the table's rows. */
shard_status_t shard_heads_bind(shard_binder_t *b, shard_model_t *model);
/* True when name (without "transformer.") is a tensor of some head, bound
 * or not: a stage without the heads accepts a checkpoint that has them. */
bool shard_heads_know_tensor(const char *name);

/* ------------------------------------------------------------ kernels */

/* The linear/embedding seam: the only code that reads weight memory while
 * computing. A new weight type (precision) changes these and nothing else. */

/* y[rows][out] = x[rows][in] W^T + b */
void shard_linear(const shard_linear_t *linear, const float *x, int64_t rows, float *y);
/* qkv[rows][3d] = [q ; k ; v] of x: the fused matrix where the layer has one
 * (bf16, int8), else three products from the weights in place (fp32: the
 * mapped checkpoint, no copy). */
void shard_linear_qkv(const shard_layer_t *layer, const float *x, int64_t rows, float *qkv);
/* y[out] = x[in] W^T + b for one row: for the LM projection of greedy
 * decoding, whose one position every path projects with this same call
 * (oneDNN's one-row product, or OpenBLAS's gemv where fp32 stays there). */
void shard_linear_single(const shard_linear_t *linear, const float *x, float *y);
/* y[out] = the layer's output for a zero input: the bias, or zeros. */
void shard_linear_zero_input(const shard_linear_t *linear, float *y);
/* Outputs [first, first + count) only (a tile of the LM projection):
 * y[rows][count] = x[rows][in] W[first:first+count]^T + b[first:first+count]. */
void shard_linear_outputs(const shard_linear_t *linear, int64_t first, int64_t count,
                          const float *x, int64_t rows, float *y);
/* Input columns [first, first + cols) of a layer whose input is a
 * concatenation (the SQuAD head's [hidden ; start] products):
 * y[rows][out] = x[rows][cols] W[:, first:first+cols]^T, plus the bias when
 * with_bias. */
void shard_linear_columns(const shard_linear_t *linear, int64_t first, int64_t cols,
                          const float *x, int64_t rows, bool with_bias, float *y);
/* *buffer grown to need bytes (contents kept) for the calling thread, which
 * frees it when it ends; *buffer NULL and *have 0 at first use. NULL when
 * out of memory. */
void *shard_thread_buffer(void **buffer, size_t *have, size_t need);
/* Rows that one or more products of a layer read whole (the LM
 * projection's vocabulary panels; a layer's output projection followed by
 * its norm): an int8 layer quantises them once, here, instead of at each
 * product. A thread holds one prepared set at a time: the next prepare on
 * that thread reuses its memory. */
typedef struct {
    const float *x; /* [rows][cols], or NULL where only q holds them */
    int64_t rows, cols;
    int8_t *q;      /* int8: [padded][cols], rows past `rows` zero; else NULL */
    float *scales;  /* int8: [rows] */
    uint16_t *bf16; /* bf16 on bf16 instructions: [padded][cols] rounded, the same */
    int64_t padded; /* rows rounded up to SHARD_ROW_TILE (1 stays 1) */
} shard_linear_rows_t;
void shard_linear_rows_prepare(const shard_linear_t *linear, const float *x, int64_t rows,
                               shard_linear_rows_t *prepared);
/* The rows a feed-forward block's second layer reads: act(ffn_in(x)). In
 * int8 the hidden activations never exist in fp32 memory: each row is
 * dequantised, activated and quantised again while it is in cache (the
 * bits of the steps apart). Else they are computed into ffn [rows][hidden]. */
void shard_linear_hidden_rows(const shard_linear_t *ffn_in, const shard_linear_t *ffn_out,
                              shard_activation_t activation, const float *x, int64_t rows,
                              float *ffn, shard_linear_rows_t *prepared);
/* Outputs [first, first + count) of each prepared row, as
 * shard_linear_outputs computes them, handed to use(context, row, values):
 * the rows spread over the engine's threads, each row once, its values
 * (count floats, in scratch [rows][count]) valid during the call. */
typedef void shard_row_use_fn(void *context, int64_t row, const float *values);
void shard_linear_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                               const shard_linear_rows_t *prepared, float *scratch,
                               shard_row_use_fn *use, void *context);
/* x = LayerNorm(x + linear(prepared rows)), row by row, y [rows][out] the
 * products' work space: shard_linear then shard_add_layer_norm, each row
 * normed while its product is in cache. */
void shard_linear_add_layer_norm(const shard_linear_t *linear,
                                 const shard_linear_rows_t *prepared, float *y, float *x,
                                 const shard_norm_t *norm, double eps);
/* The bf16 parts of the above (kernels_bf16.c), on bf16 instructions only. */
void shard_bf16_rows_prepare(const float *x, int64_t rows, int64_t cols,
                             shard_linear_rows_t *prepared);
bool shard_bf16_hidden_rows(const shard_linear_t *ffn_in, shard_activation_t activation,
                            const float *x, int64_t rows, shard_linear_rows_t *prepared);
bool shard_bf16_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                             const shard_linear_rows_t *prepared, shard_row_use_fn *use,
                             void *context);
/* The int8 parts of the above (kernels_int8.c). */
void shard_int8_rows_prepare(const float *x, int64_t rows, int64_t cols,
                             shard_linear_rows_t *prepared);
/* false (nothing prepared) where ffn_in is not int8 or memory ran out */
bool shard_int8_hidden_rows(const shard_linear_t *ffn_in, shard_activation_t activation,
                            const float *x, int64_t rows, shard_linear_rows_t *prepared);
/* false (nothing done) where the rows were not quantised for this layer */
bool shard_int8_outputs_each(const shard_linear_t *linear, int64_t first, int64_t count,
                             const shard_linear_rows_t *prepared, float *scratch,
                             shard_row_use_fn *use, void *context);
/* Reduced-precision products (kernels_int8.c, kernels_bf16.c), for the
 * sub-matrix W[o0:o0+no, c0:c0+nc] of a layer of that type:
 * y[rows][no] = x[rows][nc] W[o0:o0+no, c0:c0+nc]^T (+ b[o0:o0+no] when
 * bias). */
void shard_linear_int8(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                       int64_t nc, const float *x, int64_t rows, bool bias, float *y);
void shard_linear_bf16(const shard_linear_t *linear, int64_t o0, int64_t no, int64_t c0,
                       int64_t nc, const float *x, int64_t rows, bool bias, float *y);
/* Makes ready (at load) what products of a layer of this type with
 * K = in and N = out need (oneDNN primitives, cached per shape); the
 * seam's products then cannot fail but for memory. */
shard_status_t shard_int8_prepare(int64_t k, int64_t n, int64_t ldw, shard_error_t *err);
shard_status_t shard_bf16_prepare(int64_t k, int64_t n, int64_t ldw, shard_error_t *err);
/* The largest |q| of an int8 weight on this CPU: 127 with VNNI, 63
 * without (kernels_int8.c says why). */
int shard_int8_weight_max(void);
/* True when bf16 products run on the CPU's bf16 instructions (oneDNN,
 * AVX512_BF16 or newer); false: bf16 weights, fp32 products. */
bool shard_bf16_native(void);
/* True when fp32 products run on oneDNN rather than OpenBLAS (kernels.c
 * says when), and the reason as the log gives it. */
bool shard_fp32_onednn(void);
const char *shard_fp32_products_reason(void);
/* True when fp32 products run on the engine's own ordered kernel
 * (sgemm_ordered.c): CPUs with AVX2 but without AVX-512. */
bool shard_fp32_ordered(void);
/* y[rows][no] (rows ldy apart) = x[rows][nc] (ldx) W[no][nc]^T (W rows ldw
 * apart) + bias (NULL: none); each output summed in an order fixed by nc
 * alone, so a row's bits depend on nothing else in the call. Needs AVX2
 * and FMA (shard_sgemm_ordered_available). */
bool shard_sgemm_ordered_available(void);
void shard_sgemm_ordered(int64_t rows, int64_t no, int64_t nc, const float *x, int64_t ldx,
                         const float *w, int64_t ldw, const float *bias, float *y, int64_t ldy);
/* fp32 -> bf16, rounding to nearest even (NaN kept a NaN). */
static inline uint16_t shard_float_to_bf16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}
static inline float shard_bf16_to_float(uint16_t value)
{
    const uint32_t bits = (uint32_t)value << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* out[dim] = row id of the table; out[dim] += row id of the table. */
void shard_embedding_copy(const shard_embedding_t *table, int64_t id, float *out);
void shard_embedding_add(const shard_embedding_t *table, int64_t id, float *out);

/* Attention of one head (attention.c): n_queries queries, rows ldq apart,
 * over keys and values rows ld apart (each pointer at the head's first
 * column, dh of them). Query i attends to keys [0, first_keys + i) when
 * causal, to all n_keys otherwise; ctx row i (ldctx apart) gets
 * softmax(q k^T / sqrt(dh)) v. work holds shard_attention_work_floats
 * floats. Each query's bits depend on its own q, keys and values only. */
size_t shard_attention_work_floats(int64_t n_keys, int64_t dh);
void shard_attention_head(const float *q, int64_t ldq, int64_t n_queries, const float *k,
                          const float *v, int64_t ld, int64_t n_keys, int64_t first_keys,
                          bool causal, int64_t dh, float *work, float *ctx, int64_t ldctx);
/* In place over rows of dim. */
void shard_layer_norm(float *x, int64_t rows, int64_t dim, const shard_norm_t *norm, double eps);
/* x = LayerNorm(x + y), row by row (the residual and the norm in one pass). */
void shard_add_layer_norm(float *x, const float *y, int64_t rows, int64_t dim,
                          const shard_norm_t *norm, double eps);
void shard_gelu(float *x, size_t count);
void shard_relu(float *x, size_t count);
void shard_activate(float *x, size_t count, shard_activation_t activation);
/* The same on the calling thread alone (a row inside a parallel loop). */
void shard_activate_serial(float *x, size_t count, shard_activation_t activation);
/* The largest of count >= 1 values (a NaN first value: NaN; later NaNs
 * skipped), and the largest |x| of count >= 0 values (0 for none). */
float shard_max(const float *x, int64_t count);
float shard_max_abs(const float *x, int64_t count);
/* In place softmax of one row; returns nothing. */
void shard_softmax(float *x, int64_t count);
/* sum of exp(x[i] - shift), every x[i] <= shift (vectorised, float terms). */
double shard_sum_exp(const float *x, int64_t count, float shift);
/* log of sum(exp(x)) over count values, computed stably. */
double shard_log_sum_exp(const float *x, int64_t count);
/* out[i] = x[i] + y[i] */
void shard_add(float *x, const float *y, size_t count);

/* ------------------------------------------------------------ layers */

/* The rest of a layer once ctx [T][d] holds the attention context of acts'
 * positions: out projection, residual, norm, FFN, residual, norm (y [T][d]
 * and ffn [T][hidden] work space). */
void shard_layer_finish(const shard_model_t *model, const shard_layer_t *layer,
                        shard_acts_t *acts, const float *ctx, float *y, float *ffn);

/* Greedy generation recomputing the whole sequence at every step (what
 * shard_generate_greedy did before its cache): the reference the cached
 * path is tested and benchmarked against. */
shard_status_t shard_generate_greedy_recompute(const shard_model_t *model, shard_state_t *state,
                                               const shard_inputs_t *inputs, int64_t steps,
                                               int64_t lang_fill, shard_outputs_t *outputs,
                                               shard_error_t *err);

/* ------------------------------------------------------------ acts */

/* Hidden state of padded position pos of row b, or NULL where it is zero. */
const float *shard_acts_hidden_at(const shard_acts_t *acts, int64_t row, int64_t pos);

#endif
