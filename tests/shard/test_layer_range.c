/* test_layer_range.c: a model split into pipeline stages computes what the
 * whole model computes.
 *
 * For every golden checkpoint (both configs, every head) and every way of
 * cutting its layers into two or three stages, each stage is opened as its
 * own model object ([0,k) with the embeddings, [k,n) with the heads, ...),
 * the golden cases' inputs go through shard_embed on the first stage,
 * shard_run_layers on each stage in turn (the activations copied into a
 * fresh shard_acts_t between stages, as a transport would) and shard_head
 * (or shard_head_clm_score) on the last, and the outputs must be
 * bit-identical to case_run on the whole model: the same kernels run
 * on the same packed activations in the same order.
 *
 * A last stage that batched several requests runs each one's head on a
 * shard_acts_view of its rows: every golden case, run inside a larger and
 * longer micro-batch, must give what it gives alone.
 *
 * Then the refusals: a stage without embeddings or heads, a partial model in
 * shard_forward, invalid layer ranges and views, activations or inputs the
 * receiving stage did not produce itself (width, batch, choices, target
 * ids): a last stage must check what it indexes with. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"
#include "case_files.h"

enum { MAX_STAGES = 3, PAD_ID = 2 };

static const char *const configs[] = {"mlm_multi", "clm"};

/* ------------------------------------------------------------ helpers */

static void golden_path(char *out, size_t size, const char *dir)
{
    snprintf(out, size, "%s/%s", XLM_GOLDEN_DIR, dir);
}

static shard_model_t *open_or_fail(const char *dir, const shard_range_t *range)
{
    char path[1024];
    shard_error_t err = {0};
    golden_path(path, sizeof path, dir);
    shard_model_t *model = shard_model_open(path, &(shard_model_options_t){.range = range}, &err);
    if (!model)
        fail_msg("shard_model_open %s: %s", dir, err.message);
    return model;
}



/* The parsed cases of a golden folder that a pipeline can run (greedy
 * generation needs the whole model and is left out). */
typedef struct {
    case_t cases[32];
    int count;
} case_list_t;

static void load_cases(const char *dir, case_list_t *list)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/cases.jsonl", XLM_GOLDEN_DIR, dir);
    char *text = read_text(path), *cursor = text, *line;
    if (!text)
        fail_msg("cannot read %s", path);
    list->count = 0;
    while ((line = next_line(&cursor)) != NULL) {
        shard_error_t err = {0};
        case_t *c = &list->cases[list->count];
        if (list->count == 32)
            fail_msg("%s: more than 32 cases", path);
        if (case_parse(line, strlen(line), c, &err))
            fail_msg("%s: %s", path, err.message);
        if (c->kind == CASE_GREEDY)
            case_clear(c);
        else
            list->count++;
    }
    free(text);
    if (list->count == 0)
        fail_msg("%s: no cases", path);
}

static void clear_cases(case_list_t *list)
{
    for (int i = 0; i < list->count; i++)
        case_clear(&list->cases[i]);
    list->count = 0;
}

/* The activations as a receiving stage would rebuild them from the wire:
 * a fresh object holding a copy of the layout and hidden states. */
static shard_acts_t *ship(const shard_acts_t *from)
{
    shard_error_t err = {0};
    shard_acts_t *to = shard_acts_new();
    assert_non_null(to);
    if (shard_acts_reserve(to, from->batch, from->seq, from->emb_dim, from->n_tokens, &err))
        fail_msg("shard_acts_reserve: %s", err.message);
    memcpy(to->row_start, from->row_start, (size_t)(from->batch + 1) * sizeof *to->row_start);
    memcpy(to->position, from->position, (size_t)from->n_tokens * sizeof *to->position);
    memcpy(to->is_real, from->is_real, (size_t)from->n_tokens * sizeof *to->is_real);
    memcpy(to->hidden, from->hidden,
           (size_t)(from->n_tokens * from->emb_dim) * sizeof *to->hidden);
    return to;
}

/* Embed on stages[0], layers on every stage, head on the last. */
static void run_pipeline(shard_model_t **stages, int n_stages, const case_t *c,
                         shard_outputs_t *outputs)
{
    shard_state_t *run_state = shard_state_new();
    shard_error_t err = {0};
    shard_acts_t *acts = shard_acts_new();
    assert_non_null(acts);
    if (shard_embed(stages[0], run_state, &c->inputs, acts, &err))
        fail_msg("%s: shard_embed: %s", c->name, err.message);
    for (int s = 0; s < n_stages; s++) {
        if (s > 0) {
            shard_acts_t *received = ship(acts);
            shard_acts_destroy(&acts);
            acts = received;
        }
        if (shard_run_layers(stages[s], run_state, acts, &err))
            fail_msg("%s: stage %d: shard_run_layers: %s", c->name, s, err.message);
    }
    shard_model_t *last = stages[n_stages - 1];
    shard_head_t head = c->head == SHARD_HEAD_COUNT_ ? shard_model_default_head(last) : c->head;
    shard_status_t status =
        c->kind == CASE_CLM_SCORE
            ? shard_head_clm_score(last, run_state, acts, &c->inputs, NULL, outputs, &err)
            : shard_head(last, run_state, head, acts, &c->inputs, outputs, &err);
    if (status)
        fail_msg("%s: head: %s", c->name, err.message);
    shard_acts_destroy(&acts);
    shard_state_destroy(&run_state);
}

/* Same names, types, shapes and bit-identical values. */
static void assert_outputs_identical(const char *where, const shard_outputs_t *got,
                                     const shard_outputs_t *want)
{
    if (got->count != want->count || want->count == 0)
        fail_msg("%s: %d outputs, expected %d", where, got->count, want->count);
    for (int i = 0; i < want->count; i++) {
        const shard_tensor_t *w = &want->tensors[i];
        const shard_tensor_t *g = shard_outputs_find(got, w->name);
        if (!g || g->elem != w->elem || g->ndim != w->ndim ||
            memcmp(g->shape, w->shape, (size_t)w->ndim * sizeof *w->shape) != 0 ||
            (g->row_lengths == NULL) != (w->row_lengths == NULL))
            fail_msg("%s: output %s differs in type or shape", where, w->name);
        int64_t n = shard_tensor_numel(w);
        if (w->row_lengths &&
            memcmp(g->row_lengths, w->row_lengths, (size_t)w->shape[0] * sizeof(int64_t)) != 0)
            fail_msg("%s: output %s differs in row lengths", where, w->name);
        for (int64_t j = 0; j < n; j++) {
            if (w->elem == SHARD_I64 && g->i64[j] != w->i64[j])
                fail_msg("%s: %s[%lld] = %lld, whole model %lld", where, w->name, (long long)j,
                         (long long)g->i64[j], (long long)w->i64[j]);
            if (w->elem == SHARD_F32 && memcmp(&g->f32[j], &w->f32[j], sizeof(float)) != 0)
                fail_msg("%s: %s[%lld] = %.9g, whole model %.9g", where, w->name, (long long)j,
                         (double)g->f32[j], (double)w->f32[j]);
        }
    }
}

/* Opens stages cut at cuts[0..n_cuts) and checks every case. Returns the
 * number of cases run. */
static int check_split(const char *dir, const case_list_t *cases,
                       const shard_outputs_t *whole, const int64_t *cuts, int n_cuts,
                       int64_t n_layers)
{
    shard_model_t *stages[MAX_STAGES];
    const int n_stages = n_cuts + 1;
    for (int s = 0; s < n_stages; s++) {
        shard_range_t range = {s == 0 ? 0 : cuts[s - 1], s == n_cuts ? n_layers : cuts[s],
                               s == 0, s == n_cuts};
        stages[s] = open_or_fail(dir, &range);
        shard_range_t got = shard_model_range(stages[s]);
        assert_int_equal(got.first_layer, range.first_layer);
        assert_int_equal(got.last_layer, range.last_layer);
        assert_int_equal(got.embeddings, range.embeddings);
        assert_int_equal(got.heads, range.heads);
    }
    for (int i = 0; i < cases->count; i++) {
        char where[256];
        int at = snprintf(where, sizeof where, "%s %s stages", dir, cases->cases[i].name);
        for (int s = 0; s < n_stages && at > 0 && (size_t)at < sizeof where; s++)
            at += snprintf(where + at, sizeof where - (size_t)at, " [%lld,%lld)",
                           (long long)shard_model_range(stages[s]).first_layer,
                           (long long)shard_model_range(stages[s]).last_layer);
        shard_outputs_t outputs;
        shard_outputs_init(&outputs);
        run_pipeline(stages, n_stages, &cases->cases[i], &outputs);
        assert_outputs_identical(where, &outputs, &whole[i]);
        shard_outputs_clear(&outputs);
    }
    for (int s = 0; s < n_stages; s++)
        shard_model_destroy(&stages[s]);
    return cases->count;
}

/* Every two-stage cut k in [0, n] and three-stage cut i <= j of one folder. */
static void check_folder(const char *dir, int *two_stage, int *three_stage)
{
    shard_state_t *run_state = shard_state_new();
    static case_list_t cases;
    static shard_outputs_t whole[32];
    load_cases(dir, &cases);
    shard_model_t *model = open_or_fail(dir, NULL);
    const int64_t n = shard_model_config(model)->n_layers;
    for (int i = 0; i < cases.count; i++) {
        shard_error_t err = {0};
        shard_outputs_init(&whole[i]);
        if (case_run(model, run_state, &cases.cases[i], &whole[i], &err))
            fail_msg("%s %s: whole model: %s", dir, cases.cases[i].name, err.message);
    }
    shard_model_destroy(&model);
    for (int64_t k = 0; k <= n; k++)
        *two_stage += check_split(dir, &cases, whole, &k, 1, n);
    for (int64_t i = 0; i <= n; i++)
        for (int64_t j = i; j <= n; j++) {
            int64_t cuts[2] = {i, j};
            *three_stage += check_split(dir, &cases, whole, cuts, 2, n);
        }
    for (int i = 0; i < cases.count; i++)
        shard_outputs_clear(&whole[i]);
    clear_cases(&cases);
    shard_state_destroy(&run_state);
}

/* ------------------------------------------------------------ equivalence */

static void check_config(const char *config)
{
    int two = 0, three = 0, folders = 0;
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++) {
        char dir[128];
        snprintf(dir, sizeof dir, "%s-%s", config, shard_head_name((shard_head_t)h));
        check_folder(dir, &two, &three);
        folders++;
    }
    print_message("%s: %d folders, %d two-stage and %d three-stage case runs\n", config,
                  folders, two, three);
    assert_int_equal(folders, SHARD_HEAD_COUNT_);
    /* mlm_multi: 2 layers, 3 two-stage and 6 three-stage cuts; clm: 3 layers,
     * 4 and 10; over 60 (mlm_multi) or 62 (clm, greedy left out) cases. */
    const bool clm = strcmp(config, "clm") == 0;
    assert_int_equal(two, clm ? 4 * 62 : 3 * 60);
    assert_int_equal(three, clm ? 10 * 62 : 6 * 60);
}

static void test_stages_match_whole_model_mlm_multi(void **state)
{
    (void)state;
    check_config(configs[0]);
}

static void test_stages_match_whole_model_clm(void **state)
{
    (void)state;
    check_config(configs[1]);
}

/* ------------------------------------------------------------ acts views
 *
 * A stage batches several requests into one micro-batch; the last stage runs
 * each request's head on a view of its rows. A request's result must not
 * depend on the rows around it or on the micro-batch's longer padding. */

enum { VIEW_PRE = 1, VIEW_POST = 1, VIEW_EXTRA_SEQ = 3 };

typedef struct {
    int64_t batch, seq;
    int64_t *ids, *mask, *langs, *types, *positions;
} micro_batch_t;

static int64_t *micro_array(const micro_batch_t *m)
{
    int64_t *a = calloc((size_t)(m->batch * m->seq), sizeof *a);
    assert_non_null(a);
    return a;
}

/* One row before the request (as long as the micro-batch), its rows padded
 * further, one short row after. Optional inputs are present when the
 * request has them, so the request's rows are embedded as it asked. */
static void build_micro_batch(const shard_config_t *config, const shard_inputs_t *req,
                              micro_batch_t *m)
{
    m->batch = VIEW_PRE + req->batch + VIEW_POST;
    m->seq = req->seq + VIEW_EXTRA_SEQ <= config->max_position_embeddings
                 ? req->seq + VIEW_EXTRA_SEQ : req->seq;
    m->ids = micro_array(m);
    m->mask = micro_array(m);
    m->langs = req->langs ? micro_array(m) : NULL;
    m->types = req->token_type_ids ? micro_array(m) : NULL;
    m->positions = req->position_ids ? micro_array(m) : NULL;
    for (int64_t r = 0; r < m->batch; r++) {
        const int64_t q = r - VIEW_PRE; /* row of the request, if inside */
        const bool inside = q >= 0 && q < req->batch;
        const int64_t extra_len = r < VIEW_PRE ? m->seq : 2;
        int64_t row_mask[64];
        assert_true(req->seq <= 64);
        if (inside && !req->attention_mask)
            shard_default_mask(config, req->input_ids + q * req->seq, req->seq, row_mask);
        for (int64_t s = 0; s < m->seq; s++) {
            const int64_t at = r * m->seq + s, from = q * req->seq + s;
            const bool in_req = inside && s < req->seq;
            m->ids[at] = in_req ? req->input_ids[from]
                         : (!inside && s < extra_len) ? 14 + (r * 31 + s * 7) % 1000
                                                      : config->pad_index;
            m->mask[at] = in_req ? (req->attention_mask ? req->attention_mask[from] : row_mask[s])
                                 : (!inside && s < extra_len);
            if (m->langs)
                m->langs[at] = in_req ? req->langs[from] : 0;
            if (m->types)
                m->types[at] = in_req ? req->token_type_ids[from] : 0;
            if (m->positions)
                m->positions[at] = in_req ? req->position_ids[from] : s;
        }
    }
}

static void free_micro_batch(micro_batch_t *m)
{
    free(m->ids);
    free(m->mask);
    free(m->langs);
    free(m->types);
    free(m->positions);
}

/* Same shapes and ids; floats within 1e-5 + 1e-5 |x| (a micro-batch runs
 * its matrix products over more rows, which may round differently). */
static void assert_outputs_close(const char *where, const shard_outputs_t *got,
                                 const shard_outputs_t *want)
{
    if (got->count != want->count || want->count == 0)
        fail_msg("%s: %d outputs, expected %d", where, got->count, want->count);
    for (int i = 0; i < want->count; i++) {
        const shard_tensor_t *w = &want->tensors[i];
        const shard_tensor_t *g = shard_outputs_find(got, w->name);
        if (!g || g->elem != w->elem || g->ndim != w->ndim ||
            memcmp(g->shape, w->shape, (size_t)w->ndim * sizeof *w->shape) != 0 ||
            (g->row_lengths == NULL) != (w->row_lengths == NULL) ||
            (w->row_lengths && memcmp(g->row_lengths, w->row_lengths,
                                      (size_t)w->shape[0] * sizeof(int64_t)) != 0))
            fail_msg("%s: output %s differs in type or shape", where, w->name);
        for (int64_t j = 0; j < shard_tensor_numel(w); j++) {
            if (w->elem == SHARD_I64 && g->i64[j] != w->i64[j])
                fail_msg("%s: %s[%lld] = %lld, alone %lld", where, w->name, (long long)j,
                         (long long)g->i64[j], (long long)w->i64[j]);
            if (w->elem == SHARD_F32 &&
                !(fabsf(g->f32[j] - w->f32[j]) <= 1e-5f + 1e-5f * fabsf(w->f32[j])))
                fail_msg("%s: %s[%lld] = %.9g, alone %.9g", where, w->name, (long long)j,
                         (double)g->f32[j], (double)w->f32[j]);
        }
    }
}

/* Runs case c inside a micro-batch and its head on a view of its rows. */
static void run_in_micro_batch(shard_model_t *model, const case_t *c,
                               shard_outputs_t *outputs)
{
    shard_state_t *run_state = shard_state_new();
    const shard_config_t *config = shard_model_config(model);
    micro_batch_t m;
    build_micro_batch(config, &c->inputs, &m);
    shard_inputs_t in = {.batch = m.batch, .seq = m.seq, .input_ids = m.ids,
                         .attention_mask = m.mask, .langs = m.langs, .token_type_ids = m.types,
                         .position_ids = m.positions};
    shard_error_t err = {0};
    shard_acts_t *acts = shard_acts_new(), view;
    assert_non_null(acts);
    if (shard_embed(model, run_state, &in, acts, &err) ||
        shard_run_layers(model, run_state, acts, &err) ||
        shard_acts_view(acts, VIEW_PRE, c->inputs.batch, c->inputs.seq, &view, &err))
        fail_msg("%s: micro-batch: %s", c->name, err.message);
    shard_head_t head = c->head == SHARD_HEAD_COUNT_ ? shard_head_of_architecture(config->architecture) : c->head;
    shard_status_t status =
        c->kind == CASE_CLM_SCORE
            ? shard_head_clm_score(model, run_state, &view, &c->inputs, NULL, outputs, &err)
            : shard_head(model, run_state, head, &view, &c->inputs, outputs, &err);
    if (status)
        fail_msg("%s: head on the view: %s", c->name, err.message);
    shard_acts_destroy(&acts);
    free_micro_batch(&m);
    shard_state_destroy(&run_state);
}

static void test_head_on_view_matches_request_alone(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    static case_list_t cases;
    int checked = 0;
    for (size_t k = 0; k < sizeof configs / sizeof configs[0]; k++)
        for (int h = 0; h < SHARD_HEAD_COUNT_; h++) {
            char dir[128];
            snprintf(dir, sizeof dir, "%s-%s", configs[k], shard_head_name((shard_head_t)h));
            load_cases(dir, &cases);
            shard_model_t *model = open_or_fail(dir, NULL);
            for (int i = 0; i < cases.count; i++) {
                char where[256];
                shard_outputs_t alone, viewed;
                shard_error_t err = {0};
                snprintf(where, sizeof where, "%s %s in a micro-batch", dir,
                         cases.cases[i].name);
                shard_outputs_init(&alone);
                shard_outputs_init(&viewed);
                if (case_run(model, run_state, &cases.cases[i], &alone, &err))
                    fail_msg("%s: %s", where, err.message);
                run_in_micro_batch(model, &cases.cases[i], &viewed);
                assert_outputs_close(where, &viewed, &alone);
                shard_outputs_clear(&alone);
                shard_outputs_clear(&viewed);
                checked++;
            }
            shard_model_destroy(&model);
            clear_cases(&cases);
        }
    /* 123 golden cases but the greedy one. */
    assert_int_equal(checked, 122);
    shard_state_destroy(&run_state);
}

static void test_view_refuses_bad_rows_and_lengths(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_model_t *model = open_or_fail("clm-lm", NULL);
    const int64_t ids[2][4] = {{0, 35, 96, 1}, {0, 35, PAD_ID, PAD_ID}};
    const int64_t mask[2][4] = {{1, 1, 1, 1}, {1, 1, 0, 0}};
    shard_inputs_t in = {.batch = 2, .seq = 4, .input_ids = &ids[0][0],
                         .attention_mask = &mask[0][0]};
    shard_acts_t *acts = shard_acts_new(), view;
    shard_error_t err = {0};
    assert_int_equal(shard_embed(model, run_state, &in, acts, &err), SHARD_OK);
    const struct {
        int64_t first, rows, seq;
    } bad[] = {{-1, 1, 4}, {1, 2, 4}, {0, 0, 4}, {2, 1, 4}, {0, 1, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        if (shard_acts_view(acts, bad[i].first, bad[i].rows, bad[i].seq, &view, &err) !=
            SHARD_ERR_INPUT)
            fail_msg("view of rows [%lld, +%lld) seq %lld was accepted", (long long)bad[i].first,
                     (long long)bad[i].rows, (long long)bad[i].seq);
        assert_non_null(strstr(err.message, "shard_acts_view"));
    }
    /* Row 0 has position 3 computed: a view of length 3 would lose it. */
    assert_int_equal(shard_acts_view(acts, 0, 1, 3, &view, &err), SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "position 3"));
    /* Row 1 stops at position 1: length 2 is enough. */
    assert_int_equal(shard_acts_view(acts, 1, 1, 2, &view, &err), SHARD_OK);
    assert_int_equal(view.batch, 1);
    assert_int_equal(view.seq, 2);
    shard_acts_destroy(&acts);
    shard_model_destroy(&model);
    shard_state_destroy(&run_state);
}

/* ------------------------------------------------------------ refusals */

static const int64_t one_row[4] = {0, 35, 96, 1};

static shard_inputs_t small_inputs(void)
{
    return (shard_inputs_t){.batch = 1, .seq = 4, .input_ids = one_row};
}

static void test_stage_without_embeddings_refuses_embed(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_range_t range = {1, 3, false, true};
    shard_model_t *stage = open_or_fail("clm-lm", &range);
    shard_acts_t *acts = shard_acts_new();
    shard_inputs_t in = small_inputs();
    shard_error_t err = {0};
    assert_int_equal(shard_embed(stage, run_state, &in, acts, &err), SHARD_ERR_RANGE);
    assert_int_equal(err.code, SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "shard_embed"));
    assert_non_null(strstr(err.message, "[1, 3)"));
    assert_non_null(strstr(err.message, "without the embeddings"));
    shard_acts_destroy(&acts);
    shard_model_destroy(&stage);
    shard_state_destroy(&run_state);
}

static void test_stage_without_heads_refuses_head(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_range_t range = {0, 1, true, false};
    shard_model_t *stage = open_or_fail("clm-lm", &range);
    shard_acts_t *acts = shard_acts_new();
    shard_inputs_t in = small_inputs();
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_embed(stage, run_state, &in, acts, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(stage, run_state, acts, &err), SHARD_OK);
    assert_false(shard_model_has_head(stage, SHARD_HEAD_LM));

    assert_int_equal(shard_head(stage, run_state, SHARD_HEAD_LM, acts, &in, &outputs, &err),
                     SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "lm"));
    assert_non_null(strstr(err.message, "without the heads"));
    memset(&err, 0, sizeof err);
    assert_int_equal(shard_head_clm_score(stage, run_state, acts, &in, NULL, &outputs, &err),
                     SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "without the heads"));
    assert_int_equal(outputs.count, 0);
    shard_acts_destroy(&acts);
    shard_model_destroy(&stage);
    shard_state_destroy(&run_state);
}

static void test_partial_model_refuses_whole_model_calls(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    /* Embeddings and heads but only layer 0 of 3: not the whole model. */
    shard_range_t range = {0, 1, true, true};
    shard_model_t *stage = open_or_fail("clm-lm", &range);
    shard_inputs_t in = small_inputs();
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_forward(stage, run_state, SHARD_HEAD_LM, &in, &outputs, &err), SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "shard_forward"));
    assert_non_null(strstr(err.message, "[0, 1)"));
    memset(&err, 0, sizeof err);
    assert_int_equal(shard_generate_greedy(stage, run_state, &in, 2, 0, &outputs, &err), SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "whole model"));
    assert_int_equal(outputs.count, 0);
    shard_model_destroy(&stage);
    shard_state_destroy(&run_state);
}

static void test_invalid_ranges(void **state)
{
    (void)state;
    char path[1024];
    golden_path(path, sizeof path, "clm-lm"); /* 3 layers */
    const struct {
        shard_range_t range;
        const char *shown;
    } bad[] = {
        {{-1, 2, true, true}, "[-1, 2)"},
        {{2, 1, true, true}, "[2, 1)"},
        {{0, 4, true, true}, "[0, 4)"},
        {{4, 4, false, true}, "[4, 4)"},
        {{3, 2, false, false}, "[3, 2)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(path, &(shard_model_options_t){.range = &bad[i].range},
                                                &err);
        if (model)
            fail_msg("range %s was accepted", bad[i].shown);
        assert_int_equal(err.code, SHARD_ERR_RANGE);
        if (!strstr(err.message, bad[i].shown) || !strstr(err.message, "[0, 3)") ||
            !strstr(err.message, "clm-lm"))
            fail_msg("range %s: message \"%s\" does not name the range, the layers and the "
                     "checkpoint", bad[i].shown, err.message);
    }
}

/* Stage 0 of a pipeline learns the checkpoint's heads from one probe: the
 * same heads as the whole model reports, for every golden folder. */
static void test_probe_heads_matches_whole_model(void **state)
{
    (void)state;
    static const char *const dirs[] = {"clm-base", "clm-lm", "clm-qa", "mlm_multi-multiple_choice",
                                       "mlm_multi-seq_cls", "mlm_multi-qa_simple",
                                       "mlm_multi-token_cls"};
    int heads_seen = 0;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char path[1024];
        golden_path(path, sizeof path, dirs[i]);
        shard_model_t *model = open_or_fail(dirs[i], NULL);
        bool has[SHARD_HEAD_COUNT_];
        shard_error_t err = {0};
        assert_int_equal(shard_model_probe_heads(path, has, &err), SHARD_OK);
        for (int h = 0; h < SHARD_HEAD_COUNT_; h++) {
            if (has[h] != shard_model_has_head(model, (shard_head_t)h))
                fail_msg("%s: probe says %s %s", dirs[i], shard_head_name((shard_head_t)h),
                         has[h] ? "present" : "absent");
            heads_seen += has[h];
        }
        assert_true(has[SHARD_HEAD_BASE]);
        assert_true(has[shard_model_default_head(model)]);
        shard_model_destroy(&model);
    }
    assert_true(heads_seen > (int)(sizeof dirs / sizeof dirs[0])); /* more than base alone */
    /* A folder that is not a checkpoint: an error naming it, no head. */
    bool has[SHARD_HEAD_COUNT_];
    shard_error_t err = {0};
    assert_int_not_equal(shard_model_probe_heads(XLM_GOLDEN_DIR "/no-such-model", has, &err),
                         SHARD_OK);
    assert_non_null(strstr(err.message, "no-such-model"));
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
        assert_false(has[h]);
}

static void test_empty_stages_are_valid(void **state)
{
    (void)state;
    /* [0,0) with embeddings only and [3,3) with heads only are real
     * stages (the embeddings or the heads on their own machine). */
    shard_range_t first = {0, 0, true, false}, last = {3, 3, false, true};
    shard_model_t *a = open_or_fail("clm-lm", &first);
    shard_model_t *b = open_or_fail("clm-lm", &last);
    assert_true(shard_model_has_head(b, SHARD_HEAD_LM));
    assert_false(shard_model_has_head(a, SHARD_HEAD_LM));
    shard_model_destroy(&a);
    shard_model_destroy(&b);
    assert_null(a);
    assert_null(b);
}

static void test_activations_of_another_width_are_refused(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    /* mlm_multi's activations (emb_dim 64) sent to a clm stage (32). */
    shard_range_t first = {0, 1, true, false}, second = {1, 3, false, true};
    shard_model_t *mlm = open_or_fail("mlm_multi-base", &first);
    shard_model_t *clm = open_or_fail("clm-lm", &second);
    shard_acts_t *acts = shard_acts_new();
    shard_inputs_t in = small_inputs();
    shard_error_t err = {0};
    assert_int_equal(shard_embed(mlm, run_state, &in, acts, &err), SHARD_OK);
    shard_status_t status = shard_run_layers(clm, run_state, acts, &err);
    assert_int_equal(status, SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "64"));
    assert_non_null(strstr(err.message, "32"));
    shard_acts_destroy(&acts);
    shard_model_destroy(&mlm);
    shard_model_destroy(&clm);
    shard_state_destroy(&run_state);
}

static void test_head_refuses_activations_of_another_batch(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_model_t *model = open_or_fail("clm-lm", NULL);
    shard_acts_t *acts = shard_acts_new();
    shard_inputs_t in = small_inputs();
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_embed(model, run_state, &in, acts, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(model, run_state, acts, &err), SHARD_OK);
    shard_inputs_t other = in;
    other.seq = 3;
    assert_int_equal(shard_head(model, run_state, SHARD_HEAD_LM, acts, &other, &outputs, &err),
                     SHARD_ERR_INPUT);
    assert_non_null(strstr(err.message, "1 x 4"));
    assert_non_null(strstr(err.message, "1 x 3"));
    assert_int_equal(outputs.count, 0);
    shard_acts_destroy(&acts);
    shard_model_destroy(&model);
    shard_state_destroy(&run_state);
}

/* The last stage reads the request's inputs (n_choices, ids, p_mask) and
 * the activations it was sent, neither of which it embedded itself: it must
 * check them, not index with them. */
static void test_head_refuses_activations_of_another_width(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_range_t first = {0, 1, true, false};
    shard_model_t *mlm = open_or_fail("mlm_multi-base", &first);
    shard_model_t *clm = open_or_fail("clm-lm", NULL);
    shard_acts_t *acts = shard_acts_new();
    shard_inputs_t in = small_inputs();
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    assert_int_equal(shard_embed(mlm, run_state, &in, acts, &err), SHARD_OK);
    assert_int_equal(acts->emb_dim, 64);
    shard_status_t status = shard_head(clm, run_state, SHARD_HEAD_LM, acts, &in, &outputs, &err);
    if (status != SHARD_ERR_INPUT)
        fail_msg("shard_head on activations of width 64 with emb_dim 32: status %s, %d "
                 "outputs; expected bad_input", shard_status_str(status), outputs.count);
    shard_outputs_clear(&outputs);
    shard_acts_destroy(&acts);
    shard_model_destroy(&mlm);
    shard_model_destroy(&clm);
    shard_state_destroy(&run_state);
}

/* Three rows with the multiple-choice model, embedded and run. */
static const int64_t three_rows[3][4] = {{0, 35, 96, 1}, {0, 36, 97, 1}, {0, 37, 98, 1}};

static shard_acts_t *run_three_rows(shard_model_t *model)
{
    shard_state_t *run_state = shard_state_new();
    shard_inputs_t in = {.batch = 3, .seq = 4, .input_ids = &three_rows[0][0]};
    shard_acts_t *acts = shard_acts_new();
    shard_error_t err = {0};
    assert_non_null(acts);
    assert_int_equal(shard_embed(model, run_state, &in, acts, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(model, run_state, acts, &err), SHARD_OK);
    shard_state_destroy(&run_state);
    return acts;
}

static void test_multiple_choice_head_checks_choices(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    /* 3 rows are not examples of 2 choices: the logits are sized [1][2]
     * but the projection writes one value per row, 3. */
    shard_model_t *mc = open_or_fail("clm-multiple_choice", NULL);
    shard_acts_t *acts = run_three_rows(mc);
    shard_inputs_t in = {.batch = 3, .seq = 4, .n_choices = 2,
                         .input_ids = &three_rows[0][0]};
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    shard_status_t status = shard_head(mc, run_state, SHARD_HEAD_MULTIPLE_CHOICE, acts, &in, &outputs,
                                       &err);
    if (status != SHARD_ERR_INPUT)
        fail_msg("multiple_choice head on 3 rows of 2 choices: status %s; expected bad_input",
                 shard_status_str(status));
    shard_outputs_clear(&outputs);
    shard_acts_destroy(&acts);
    shard_model_destroy(&mc);
    shard_state_destroy(&run_state);
}

static void test_clm_score_checks_target_ids(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    /* The scorer indexes each position's logits with the next input id. */
    shard_model_t *lm = open_or_fail("clm-lm", NULL);
    shard_acts_t *acts = run_three_rows(lm);
    int64_t ids[3][4];
    memcpy(ids, three_rows, sizeof ids);
    ids[1][2] = 300000; /* vocab 1044; past the whole logits buffer too */
    shard_inputs_t in = {.batch = 3, .seq = 4, .input_ids = &ids[0][0]};
    shard_outputs_t outputs;
    shard_error_t err = {0};
    shard_outputs_init(&outputs);
    shard_status_t status = shard_head_clm_score(lm, run_state, acts, &in, NULL, &outputs, &err);
    if (status != SHARD_ERR_INPUT)
        fail_msg("clm_score with target id 300000 (vocab 1044): status %s; expected bad_input",
                 shard_status_str(status));
    shard_outputs_clear(&outputs);
    shard_acts_destroy(&acts);
    shard_model_destroy(&lm);
    shard_state_destroy(&run_state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages_match_whole_model_mlm_multi),
        cmocka_unit_test(test_stages_match_whole_model_clm),
        cmocka_unit_test(test_head_on_view_matches_request_alone),
        cmocka_unit_test(test_view_refuses_bad_rows_and_lengths),
        cmocka_unit_test(test_stage_without_embeddings_refuses_embed),
        cmocka_unit_test(test_stage_without_heads_refuses_head),
        cmocka_unit_test(test_partial_model_refuses_whole_model_calls),
        cmocka_unit_test(test_invalid_ranges),
        cmocka_unit_test(test_empty_stages_are_valid),
        cmocka_unit_test(test_probe_heads_matches_whole_model),
        cmocka_unit_test(test_activations_of_another_width_are_refused),
        cmocka_unit_test(test_head_refuses_activations_of_another_batch),
        cmocka_unit_test(test_head_refuses_activations_of_another_width),
        cmocka_unit_test(test_multiple_choice_head_checks_choices),
        cmocka_unit_test(test_clm_score_checks_target_ids),
    };
    shard_set_threads(1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
