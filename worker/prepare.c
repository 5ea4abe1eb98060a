/* prepare.c: requests of a Batch -> prepared rows (stage 0).
 *
 * Every request becomes explicit padded arrays: ids, an attention mask (the
 * default one derived as the reference does when none is given), positions
 * (0..n-1 when none are given), and langs / token types when given. Explicit
 * arrays let requests of different lengths share a micro-batch while each
 * still sees exactly its own inputs. */
#include "worker_internal.h"
#include "stage.h"

#include <stdlib.h>
#include <string.h>

void worker_prepared_clear(worker_prepared_t *p)
{
    free(p->ids);
    free(p->mask);
    free(p->positions);
    free(p->langs);
    free(p->types);
    free(p->p_mask);
    free(p->segments);
    free(p->item.windows);
    free(p->item.copies);
    memset(p, 0, sizeof *p);
}

static bool alloc_rows(worker_prepared_t *p, bool langs, bool types, bool p_mask)
{
    size_t n = (size_t)(p->item.rows * p->item.seq);
    p->ids = calloc(n, sizeof *p->ids);
    p->mask = calloc(n, sizeof *p->mask);
    p->positions = calloc(n, sizeof *p->positions);
    p->langs = langs ? calloc(n, sizeof *p->langs) : NULL;
    p->types = types ? calloc(n, sizeof *p->types) : NULL;
    p->p_mask = p_mask ? calloc(n, sizeof *p->p_mask) : NULL;
    return p->ids && p->mask && p->positions && (!langs || p->langs) && (!types || p->types) &&
           (!p_mask || p->p_mask);
}

/* Fills row r (length len) from the flat request arrays at offset. */
static void fill_row(worker_prepared_t *p, const shard_config_t *c, const Xlm__TokenInput *t,
                     int64_t r, size_t offset, int64_t len)
{
    const int64_t seq = p->item.seq, at = r * seq;
    for (int64_t s = 0; s < seq; s++)
        p->ids[at + s] = s < len ? t->input_ids[offset + (size_t)s] : c->pad_index;
    if (t->n_attention_mask) {
        for (int64_t s = 0; s < len; s++)
            p->mask[at + s] = t->attention_mask[offset + (size_t)s];
    } else {
        /* The reference's default: k leading positions, k = non-pad ids of
         * the row as given. */
        int64_t k = 0;
        for (int64_t s = 0; s < len; s++)
            k += t->input_ids[offset + (size_t)s] != c->pad_index;
        for (int64_t s = 0; s < k; s++)
            p->mask[at + s] = 1;
    }
    for (int64_t s = 0; s < seq; s++)
        p->positions[at + s] = t->n_position_ids ? (s < len ? t->position_ids[offset + (size_t)s] : 0)
                                                 : (s < c->max_position_embeddings ? s : 0);
    for (int64_t s = 0; p->langs && s < len; s++)
        p->langs[at + s] = t->langs[offset + (size_t)s];
    for (int64_t s = 0; p->types && s < len; s++)
        p->types[at + s] = t->token_type_ids[offset + (size_t)s];
    for (int64_t s = 0; p->p_mask && s < len; s++)
        p->p_mask[at + s] = t->p_mask[offset + (size_t)s];
}

static proto_status_t prepare_tokens(worker_prepared_t *p, const shard_config_t *c,
                                     const Xlm__TokenInput *t, proto_error_t *perr)
{
    int64_t longest = 0;
    for (size_t r = 0; r < t->n_lengths; r++)
        longest = t->lengths[r] > longest ? t->lengths[r] : longest;
    p->item.rows = (int64_t)t->n_lengths;
    p->item.seq = longest;
    if (!t->n_position_ids && longest > c->max_position_embeddings) {
        return proto_error_set(perr, PROTO_STATUS_TOO_LARGE,
                               "a row of %lld tokens exceeds max_position_embeddings %lld",
                               (long long)longest, (long long)c->max_position_embeddings);
    }
    if (!alloc_rows(p, t->n_langs > 0, t->n_token_type_ids > 0, t->n_p_mask > 0)) {
        return proto_error_set(perr, PROTO_STATUS_INTERNAL, "out of memory");
    }
    size_t offset = 0;
    for (size_t r = 0; r < t->n_lengths; r++) {
        fill_row(p, c, t, (int64_t)r, offset, t->lengths[r]);
        offset += (size_t)t->lengths[r];
    }
    return PROTO_STATUS_OK;
}

static const char *lang_or_null(const char *lang) { return lang && *lang ? lang : NULL; }

static shard_status_t encode_row(const worker_stage_t *st, const Xlm__TextRow *row,
                                 shard_encoding_t *out, shard_error_t *err)
{
    shard_tokenizer_segment_t a = {row->segments[0]->text, strlen(row->segments[0]->text),
                                   lang_or_null(row->segments[0]->lang)};
    shard_tokenizer_segment_t b = {0};
    if (row->n_segments > 1)
        b = (shard_tokenizer_segment_t){row->segments[1]->text, strlen(row->segments[1]->text),
                                        lang_or_null(row->segments[1]->lang)};
    return shard_tokenizer_encode(st->tokenizer,
                                  st->options->lang_rules ? SHARD_TOKENIZER_MODE_LANG_RULES
                                                          : SHARD_TOKENIZER_MODE_HF,
                                  &a, row->n_segments > 1 ? &b : NULL, true, out, err);
}

static proto_status_t prepare_text(worker_prepared_t *p, const worker_stage_t *st,
                                   const Xlm__TextInput *text, proto_error_t *perr)
{
    const shard_config_t *c = st->config;
    uint64_t start = worker_now_us();
    shard_encoding_t *rows = calloc(text->n_rows ? text->n_rows : 1, sizeof *rows);
    for (size_t r = 0; rows && r < text->n_rows; r++)
        shard_encoding_init(&rows[r]);
    if (!st->tokenizer) {
        free(rows);
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                               "this worker has no tokenizer for text input");
    }
    if (!rows) {
        return proto_error_set(perr, PROTO_STATUS_INTERNAL, "out of memory");
    }
    proto_status_t status = PROTO_STATUS_OK;
    int64_t longest = 0;
    for (size_t r = 0; status == PROTO_STATUS_OK && r < text->n_rows; r++) {
        const Xlm__TextRow *row = text->rows[r];
        shard_error_t err = {0};
        if (row->n_segments < 1 || row->n_segments > 2) {
            status = proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                                     "text row %zu has %zu segments, expected 1 or 2", r,
                                     row->n_segments);
        } else if (encode_row(st, row, &rows[r], &err)) {
            status = proto_error_set(perr, worker_status_of(err.code), "text row %zu: %s", r,
                                     err.message);
        } else {
            longest = (int64_t)rows[r].length > longest ? (int64_t)rows[r].length : longest;
        }
    }
    if (status == PROTO_STATUS_OK && longest > c->max_position_embeddings) {
        status = proto_error_set(perr, PROTO_STATUS_TOO_LARGE,
                                 "a text row of %lld tokens exceeds max_position_embeddings %lld",
                                 (long long)longest, (long long)c->max_position_embeddings);
    }
    /* Languages travel with the tokens when the model embeds them. */
    const bool langs = c->n_langs > 1 && c->use_lang_emb;
    p->item.rows = (int64_t)text->n_rows;
    p->item.seq = longest;
    if (status == PROTO_STATUS_OK && !alloc_rows(p, langs, false, false)) {
        status = proto_error_set(perr, PROTO_STATUS_INTERNAL, "out of memory");
    }
    if (status == PROTO_STATUS_OK &&
        !(p->segments = calloc(text->n_rows ? text->n_rows : 1, sizeof *p->segments))) {
        status = proto_error_set(perr, PROTO_STATUS_INTERNAL, "out of memory");
    }
    for (size_t r = 0; status == PROTO_STATUS_OK && r < text->n_rows; r++) {
        p->segments[r] = (shard_score_layout_t){
            .offset_a = (int64_t)rows[r].offset_a, .length_a = (int64_t)rows[r].length_a,
            .offset_b = rows[r].has_pair ? (int64_t)rows[r].offset_b : -1,
            .length_b = rows[r].has_pair ? (int64_t)rows[r].length_b : 0,
            .length = (int64_t)rows[r].length};
        const int64_t at = (int64_t)r * longest;
        for (int64_t s = 0; s < longest; s++) {
            const bool real = s < (int64_t)rows[r].length;
            p->ids[at + s] = real ? rows[r].input_ids[s] : c->pad_index;
            p->mask[at + s] = real; /* text rows are never padded inside */
            p->positions[at + s] = s;
            if (p->langs)
                p->langs[at + s] = real ? rows[r].langs[s] : 0;
        }
    }
    for (size_t r = 0; r < text->n_rows; r++)
        shard_encoding_clear(&rows[r]);
    free(rows);
    p->item.tokenize_us = worker_now_us() - start;
    return status;
}


static int64_t lang_of_code(const shard_config_t *c, const char *code)
{
    return shard_config_lang_id(c, code);
}

static proto_status_t prepare_generate(worker_prepared_t *p, const shard_config_t *c,
                                       const Xlm__Request *req, proto_error_t *perr)
{
    const Xlm__Generate *g = req->generate;
    if (!g || g->steps < 1 || p->item.rows != 1) {
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                               "generate takes one row and steps > 0");
    }
    if (p->item.seq + g->steps > c->max_position_embeddings) {
        return proto_error_set(perr, PROTO_STATUS_TOO_LARGE,
                               "%lld tokens plus %lld steps exceed max_position_embeddings %lld",
                               (long long)p->item.seq, (long long)g->steps, (long long)c->max_position_embeddings);
    }
    p->steps = g->steps;
    p->lang_fill = p->langs ? p->langs[p->item.seq - 1] : 0;
    if (g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_ID)
        p->lang_fill = g->lang_fill_id;
    else if (g->lang_fill_case == XLM__GENERATE__LANG_FILL_LANG_FILL_CODE)
        p->lang_fill = lang_of_code(c, g->lang_fill_code);
    if (p->langs && (p->lang_fill < 0 || p->lang_fill >= c->n_langs)) {
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                               "generate: lang_fill is not a language of the model");
    }
    return PROTO_STATUS_OK;
}

/* Length of row r as given (its last unmasked position + 1). */
static int64_t row_length(const worker_prepared_t *p, int64_t r)
{
    int64_t len = 0;
    for (int64_t s = 0; s < p->item.seq; s++)
        if (p->mask[r * p->item.seq + s])
            len = s + 1;
    return len;
}

/* Masked copies replace the rows: one per scored position. */
static proto_status_t expand_pll(worker_prepared_t *p, const worker_stage_t *st, proto_error_t *perr)
{
    const int64_t seq = p->item.seq;
    const int64_t copies = shard_pll_count(p->item.windows, p->item.orig_rows);
    if (copies == 0) {
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST, "mlm_pll: no position to score");
    }
    if (copies * seq > (int64_t)st->batch_tokens) { /* copies are unpadded rows */
        return proto_error_set(perr, PROTO_STATUS_TOO_LARGE,
                               "mlm_pll: %lld masked copies of %lld tokens exceed the worker's %llu tokens per "
                 "micro-batch (xlm-worker --max-batch-tokens)", (long long)copies, (long long)seq,
                               (unsigned long long)st->batch_tokens);
    }
    const shard_inputs_t rows = {.batch = p->item.orig_rows, .seq = seq, .input_ids = p->ids,
                                 .attention_mask = p->mask, .langs = p->langs,
                                 .token_type_ids = p->types, .position_ids = p->positions};
    worker_pll_copy_t *copy = calloc((size_t)copies, sizeof *copy);
    shard_inputs_t batch = {0};
    shard_error_t err = {0};
    shard_status_t status = copy ? shard_pll_list(&rows, p->item.windows, copy, &err)
                                 : shard_error_set(&err, SHARD_ERR_NOMEM, "out of memory");
    if (!status)
        status = shard_pll_batch(st->config, &rows, copy, copies, &batch, &err);
    if (status) {
        free(copy);
        return proto_error_set(perr, worker_status_of(status), "mlm_pll: %s", err.message);
    }
    free(p->ids);
    free(p->mask);
    free(p->positions);
    free(p->langs);
    free(p->types);
    /* The batch's arrays are malloc'd: the prepared request owns them now. */
    p->ids = (int64_t *)batch.input_ids;
    p->mask = (int64_t *)batch.attention_mask;
    p->positions = (int64_t *)batch.position_ids;
    p->langs = (int64_t *)batch.langs;
    p->types = (int64_t *)batch.token_type_ids;
    p->item.rows = copies;
    p->item.copies = copy;
    p->item.n_copies = copies;
    return PROTO_STATUS_OK;
}

static proto_status_t prepare_scoring(worker_prepared_t *p, const worker_stage_t *st,
                                      const Xlm__Request *req, proto_error_t *perr)
{
    const bool pll = worker_task(req->task)->call == WORKER_CALL_MASKED_LOGPROB;
    const int64_t rows = p->item.rows;
    p->item.orig_rows = rows;
    p->item.return_tokens = req->return_tokens;
    p->item.windows = calloc((size_t)rows, sizeof *p->item.windows);
    if (!p->item.windows) {
        return proto_error_set(perr, PROTO_STATUS_INTERNAL, "out of memory");
    }
    const shard_score_mode_t mode = pll ? SHARD_SCORE_MLM_PLL : SHARD_SCORE_CLM;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t len = row_length(p, r);
        /* Text rows: the tokenizer's segments; token rows: <s> ... </s>. */
        const shard_score_layout_t layout = p->segments ? p->segments[r] : shard_score_layout_of_row(len);
        shard_score_window_t w = shard_score_window(mode, &layout);
        if (req->n_score_from)
            w.from = req->score_from[r];
        if (req->n_score_to)
            w.to = req->score_to[r];
        const int64_t from = w.from, to = w.to;
        if (!shard_score_window_fits(mode, w, len)) {
            return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                                   "row %lld: scored positions [%lld, %lld) are not "
                     "inside its %lld tokens%s", (long long)r, (long long)from, (long long)to,
                                   (long long)len, pll ? "" : " (clm_score starts at 1 or later)");
        }
        p->item.windows[r] = w;
    }
    return pll ? expand_pll(p, st, perr) : PROTO_STATUS_OK;
}

proto_status_t worker_prepare(worker_prepared_t *p, const worker_stage_t *st,
                              const Xlm__Request *req, proto_error_t *perr)
{
    const shard_config_t *c = st->config;
    const proto_task_info_t *info = proto_task_info((proto_task_t)req->task);
    proto_status_t status;
    if (!info || !worker_task(req->task)) {
        return proto_error_set(perr, PROTO_STATUS_UNKNOWN_TASK,
                               "worker_prepare: task %d, expected a wire task the "
                 "worker maps (0 to %d)", (int)req->task, PROTO_TASK_COUNT_ - 1);
    }
    p->item.task = (int32_t)req->task;
    p->item.n_choices = info->n_choices ? req->n_choices : 0;
    snprintf(p->item.id, sizeof p->item.id, "%s", req->id);
    if (req->input_case == XLM__REQUEST__INPUT_TOKENS)
        status = prepare_tokens(p, c, req->tokens, perr);
    else if (req->input_case == XLM__REQUEST__INPUT_TEXT)
        status = prepare_text(p, st, req->text, perr);
    else {
        status = proto_error_set(perr, PROTO_STATUS_BAD_REQUEST, "the request has no input");
    }
    if (status != PROTO_STATUS_OK)
        return status;
    if (p->item.rows < 1 || p->item.seq < 1) {
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                               "empty input: %lld rows of %lld tokens",
                               (long long)p->item.rows, (long long)p->item.seq);
    }
    if (p->item.n_choices > 0 && p->item.rows % p->item.n_choices != 0) {
        return proto_error_set(perr, PROTO_STATUS_BAD_REQUEST,
                               "%lld rows do not split into examples of %lld choices",
                               (long long)p->item.rows, (long long)p->item.n_choices);
    }
    if (info->kind == PROTO_TASK_KIND_SCORE &&
        (status = prepare_scoring(p, st, req, perr)) != PROTO_STATUS_OK)
        return status;
    if (info->kind == PROTO_TASK_KIND_GENERATE &&
        (status = prepare_generate(p, c, req, perr)) != PROTO_STATUS_OK)
        return status;
    p->tokens = 0;
    for (int64_t i = 0; i < p->item.rows * p->item.seq; i++)
        p->tokens += p->mask[i] != 0;
    /* The engine's own checks: ids, langs, positions against the model. */
    shard_inputs_t in = {.batch = p->item.rows, .seq = p->item.seq, .n_choices = p->item.n_choices,
                         .input_ids = p->ids, .attention_mask = p->mask, .langs = p->langs,
                         .token_type_ids = p->types, .position_ids = p->positions,
                         .p_mask = p->p_mask};
    shard_error_t err = {0};
    if (shard_inputs_check(c, &in, &err)) {
        return proto_error_set(perr, worker_status_of(err.code), "%s", err.message);
    }
    return PROTO_STATUS_OK;
}
