/* local.c: the scoring backend that runs the engine in this process
 * (xlm-score --model DIR). Same tokenizer, same sequences, same engine as
 * the service, so the scores are the same. */
#include "score.h"
#include "errors.h"
#include "shard_engine.h"
#include "shard_tokenizer.h"

#include <stdlib.h>
#include <string.h>

/* Pairs buffered before they are scored together, and the padded tokens of
 * one engine batch: bounded memory whatever the input. */
enum { LOCAL_BLOCK = 128, LOCAL_BATCH_TOKENS = 4096 };

typedef struct {
    score_pair_t pair;
    shard_encoding_t enc;
    int64_t from, to;
    bool ok;
} local_item_t;

typedef struct {
    score_backend_t base;
    score_options_t options;
    shard_model_t *model;
    shard_state_t *state; /* the engine's run state for this backend's calls */
    shard_tokenizer_t *tokenizer;
    local_item_t items[LOCAL_BLOCK];
    size_t n_items;
    score_result_t *done; /* finished, FIFO */
    size_t done_head, done_count, done_capacity;
} local_t;

static int push_result(local_t *l, score_result_t *r)
{
    if (l->done_count == l->done_capacity) {
        size_t capacity = l->done_capacity ? 2 * l->done_capacity : 2 * LOCAL_BLOCK;
        score_result_t *grown = malloc(capacity * sizeof *grown);
        if (!grown)
            return -1;
        for (size_t i = 0; i < l->done_count; i++)
            grown[i] = l->done[(l->done_head + i) % l->done_capacity];
        free(l->done);
        l->done = grown;
        l->done_head = 0;
        l->done_capacity = capacity;
    }
    l->done[(l->done_head + l->done_count++) % l->done_capacity] = *r;
    memset(r, 0, sizeof *r);
    return 0;
}

static shard_score_mode_t engine_mode(const local_t *l)
{
    return l->options.mode == SCORE_MODE_CLM ? SHARD_SCORE_CLM : SHARD_SCORE_MLM_PLL;
}

/* Tokenises a pair into <s> src </s> tgt </s> (or <s> tgt </s>) and the
 * positions to score. */
static void prepare(local_t *l, local_item_t *it, score_result_t *error)
{
    const shard_config_t *c = shard_model_config(l->model);
    if ((!l->options.no_source && !it->pair.src[0]) || !it->pair.tgt[0]) {
        /* As the service: a text segment is never empty. */
        score_result_error(error, it->pair.line, "bad_request", "the %s text is empty",
                           it->pair.tgt[0] ? "source" : "target");
        return;
    }
    shard_tokenizer_segment_t src = {it->pair.src, strlen(it->pair.src), it->pair.src_lang};
    shard_tokenizer_segment_t tgt = {it->pair.tgt, strlen(it->pair.tgt), it->pair.tgt_lang};
    shard_error_t err = {0};
    shard_encoding_init(&it->enc);
    shard_status_t status = shard_tokenizer_encode(
        l->tokenizer, l->options.lang_rules ? SHARD_TOKENIZER_MODE_LANG_RULES : SHARD_TOKENIZER_MODE_HF,
        l->options.no_source ? &tgt : &src, l->options.no_source ? NULL : &tgt, true, &it->enc, &err);
    if (status) {
        score_result_error(error, it->pair.line, tools_code_of(status), "%s", err.message);
        return;
    }
    /* The service's window of the same encoding (the engine's rule). */
    const shard_score_window_t w = shard_score_window(engine_mode(l), &(shard_score_layout_t){
        .offset_a = (int64_t)it->enc.offset_a, .length_a = (int64_t)it->enc.length_a,
        .offset_b = it->enc.has_pair ? (int64_t)it->enc.offset_b : -1,
        .length_b = it->enc.has_pair ? (int64_t)it->enc.length_b : 0,
        .length = (int64_t)it->enc.length});
    it->from = w.from;
    it->to = w.to;
    if ((int64_t)it->enc.length > c->max_position_embeddings) {
        score_result_error(error, it->pair.line, "too_large",
                           "the pair is %zu tokens, the model takes at most %lld",
                           it->enc.length, (long long)c->max_position_embeddings);
        return;
    }
    if (l->options.mode == SCORE_MODE_MLM_PLL && w.to == w.from) {
        score_result_error(error, it->pair.line, "bad_request", "the target has no tokens to score");
        return;
    }
    it->ok = true;
}

static int cmp_length(const void *a, const void *b)
{
    const local_item_t *x = *(local_item_t *const *)a, *y = *(local_item_t *const *)b;
    return (x->enc.length > y->enc.length) - (x->enc.length < y->enc.length);
}

static void fill_result(local_t *l, const local_item_t *it, const shard_tensor_t *tokens,
                        int64_t offset, score_result_t *r)
{
    memset(r, 0, sizeof *r);
    r->line = it->pair.line;
    r->ok = true;
    r->n_target_tokens = it->to - it->from;
    r->n_tokens = (int64_t)it->enc.length;
    r->tokens_bytes = (int64_t)(strlen(it->pair.src) + strlen(it->pair.tgt));
    r->score = shard_score_sum(tokens->f32 + offset, r->n_target_tokens);
    if (!l->options.token_scores)
        return;
    r->token_scores = malloc((size_t)(r->n_target_tokens ? r->n_target_tokens : 1) * sizeof(float));
    r->tokens = calloc((size_t)(r->n_target_tokens ? r->n_target_tokens : 1), sizeof(char *));
    for (int64_t i = 0; r->token_scores && r->tokens && i < r->n_target_tokens; i++) {
        r->token_scores[i] = tokens->f32[offset + i];
        r->tokens[i] = strdup(shard_encoding_token(&it->enc, (size_t)(it->from + i)));
    }
}

/* Scores items [0, n) (all ok, sorted by length) as one padded batch. */
static int score_batch(local_t *l, local_item_t **items, size_t n)
{
    const int64_t seq = (int64_t)items[n - 1]->enc.length;
    const shard_config_t *c = shard_model_config(l->model);
    int64_t *ids = calloc((size_t)n * (size_t)seq, sizeof *ids);
    int64_t *langs = calloc((size_t)n * (size_t)seq, sizeof *langs);
    int64_t *mask = calloc((size_t)n * (size_t)seq, sizeof *mask);
    int64_t *from = calloc(n, sizeof *from), *to = calloc(n, sizeof *to);
    int rc = 0;
    if (!ids || !langs || !mask || !from || !to) {
        snprintf(l->base.error, sizeof l->base.error, "out of memory");
        rc = -1;
        goto done;
    }
    for (size_t r = 0; r < n; r++) {
        const shard_encoding_t *e = &items[r]->enc;
        for (int64_t s = 0; s < seq; s++) {
            const bool real = s < (int64_t)e->length;
            ids[(int64_t)r * seq + s] = real ? e->input_ids[s] : c->pad_index;
            langs[(int64_t)r * seq + s] = real ? e->langs[s] : 0;
            mask[(int64_t)r * seq + s] = real;
        }
        from[r] = items[r]->from;
        to[r] = items[r]->to;
    }
    shard_inputs_t rows = {.batch = (int64_t)n, .seq = seq, .input_ids = ids,
                           .attention_mask = mask, .langs = langs};
    shard_outputs_t out;
    shard_error_t err = {0};
    shard_outputs_init(&out);
    if (shard_score_rows(l->model, l->state, engine_mode(l), &rows, from, to, &out, &err) != SHARD_OK) {
        /* The inputs were checked per pair: this is the engine's failure. */
        for (size_t r = 0; r < n && rc == 0; r++) {
            score_result_t res = {0};
            score_result_error(&res, items[r]->pair.line, tools_code_of(err.code), "%s", err.message);
            rc = push_result(l, &res);
        }
    } else {
        const shard_tensor_t *tokens = shard_outputs_find(&out, "token_logprobs");
        int64_t offset = 0;
        for (size_t r = 0; r < n && rc == 0; r++) {
            score_result_t res;
            fill_result(l, items[r], tokens, offset, &res);
            offset += tokens->row_lengths[r];
            rc = push_result(l, &res);
        }
    }
    shard_outputs_clear(&out);
done:
    free(ids);
    free(langs);
    free(mask);
    free(from);
    free(to);
    return rc;
}

/* Scores every buffered pair, by increasing length, in batches. */
static int flush_block(local_t *l)
{
    local_item_t *ready[LOCAL_BLOCK];
    size_t n_ready = 0;
    int rc = 0;
    for (size_t i = 0; i < l->n_items && rc == 0; i++) {
        local_item_t *it = &l->items[i];
        score_result_t error = {0};
        if (it->pair.error_code[0])
            score_result_error(&error, it->pair.line, it->pair.error_code, "%s", it->pair.error_message);
        else
            prepare(l, it, &error);
        if (it->ok)
            ready[n_ready++] = it;
        else
            rc = push_result(l, &error);
    }
    qsort(ready, n_ready, sizeof *ready, cmp_length);
    for (size_t first = 0; first < n_ready && rc == 0;) {
        size_t end = first + 1;
        while (end < n_ready &&
               (int64_t)(end + 1 - first) * (int64_t)ready[end]->enc.length <= LOCAL_BATCH_TOKENS)
            end++;
        rc = score_batch(l, ready + first, end - first);
        first = end;
    }
    for (size_t i = 0; i < l->n_items; i++) {
        score_pair_clear(&l->items[i].pair);
        shard_encoding_clear(&l->items[i].enc);
        memset(&l->items[i], 0, sizeof l->items[i]);
    }
    l->n_items = 0;
    return rc;
}

static int local_submit(score_backend_t *self, score_pair_t *pair)
{
    local_t *l = (local_t *)self;
    if (l->n_items == LOCAL_BLOCK && flush_block(l) != 0)
        return -1;
    l->items[l->n_items].pair = *pair;
    memset(pair, 0, sizeof *pair);
    l->n_items++;
    return 0;
}

static int local_collect(score_backend_t *self, score_result_t *result, int timeout_ms, bool flush)
{
    (void)timeout_ms;
    local_t *l = (local_t *)self;
    if (l->done_count == 0 && l->n_items > 0 && (flush || l->n_items == LOCAL_BLOCK) &&
        flush_block(l) != 0)
        return -1;
    if (l->done_count == 0)
        return 0;
    *result = l->done[l->done_head];
    l->done_head = (l->done_head + 1) % l->done_capacity;
    l->done_count--;
    return 1;
}

static size_t local_pending(score_backend_t *self)
{
    local_t *l = (local_t *)self;
    return l->n_items + l->done_count;
}

static void local_destroy(score_backend_t *self)
{
    local_t *l = (local_t *)self;
    for (size_t i = 0; i < l->n_items; i++) {
        score_pair_clear(&l->items[i].pair);
        shard_encoding_clear(&l->items[i].enc);
    }
    for (size_t i = 0; i < l->done_count; i++)
        score_result_clear(&l->done[(l->done_head + i) % l->done_capacity]);
    free(l->done);
    shard_tokenizer_destroy(&l->tokenizer);
    shard_state_destroy(&l->state);
    shard_model_destroy(&l->model);
    free(l);
}

score_backend_t *score_backend_local(const score_options_t *options, char *error, size_t size)
{
    local_t *l = calloc(1, sizeof *l);
    shard_error_t err = {0};
    if (!l) {
        snprintf(error, size, "out of memory");
        return NULL;
    }
    l->options = *options;
    l->base.submit = local_submit;
    l->base.collect = local_collect;
    l->base.pending = local_pending;
    l->base.destroy = local_destroy;
    l->base.max_pending = 2 * LOCAL_BLOCK;
    snprintf(l->base.model_name, sizeof l->base.model_name, "%s", options->model);
    shard_set_threads(options->threads > 0 ? options->threads : 1);
    l->model = shard_model_open(
        options->model,
        &(shard_model_options_t){.precision = (shard_precision_t)options->precision}, &err);
    if (l->model && options->precision != SHARD_PRECISION_FP32)
        fprintf(stderr, "xlm-score: precision %s: %s\n",
                shard_precision_name((shard_precision_t)options->precision),
                shard_model_precision_note(l->model));
    if (l->model && !(l->state = shard_state_new())) {
        shard_error_set(&err, SHARD_ERR_NOMEM, "out of memory");
        shard_model_destroy(&l->model);
    }
    if (l->model)
        l->tokenizer = shard_tokenizer_open(options->model, &err);
    /* An original XLM folder's languages come from its checkpoint's params. */
    const shard_config_t *config = l->model ? shard_model_config(l->model) : NULL;
    if (l->tokenizer && shard_tokenizer_adopt_langs(l->tokenizer, config->lang_names,
                                                    config->n_langs, &err) != SHARD_OK)
        shard_tokenizer_destroy(&l->tokenizer);
    if (l->model && l->tokenizer && !shard_model_has_head(l->model, SHARD_HEAD_LM)) {
        shard_error_set(&err, SHARD_ERR_HEAD, "%s has no LM head to score with", options->model);
        shard_tokenizer_destroy(&l->tokenizer);
    }
    if (l->model && l->tokenizer && options->mode == SCORE_MODE_CLM &&
        !shard_model_config(l->model)->causal) {
        shard_error_set(&err, SHARD_ERR_UNSUPPORTED,
                        "%s is a masked LM (causal: false): score it with --mode mlm-pll",
                        options->model);
        shard_tokenizer_destroy(&l->tokenizer);
    }
    if (l->model && l->tokenizer && options->mode == SCORE_MODE_MLM_PLL &&
        shard_model_config(l->model)->causal) {
        shard_error_set(&err, SHARD_ERR_UNSUPPORTED,
                        "%s is a causal LM: score it with --mode clm", options->model);
        shard_tokenizer_destroy(&l->tokenizer);
    }
    if (!l->model || !l->tokenizer) {
        snprintf(error, size, "%s", err.message);
        local_destroy(&l->base);
        return NULL;
    }
    return &l->base;
}
