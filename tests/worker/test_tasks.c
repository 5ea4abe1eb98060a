/* test_tasks.c: the worker's task map (worker/tasks.c) reaches the engine
 * call each wire task names.
 *
 * Every value of the schema's Task enum is found from protobuf-c's enum
 * descriptor, so a task appended to xlm.proto cannot be forgotten: it must
 * have a proto_task_info row, a worker map entry, and a golden case here.
 * Each task then runs on a golden tiny checkpoint through its map entry (the
 * engine call the entry names, dispatched as the last stage does) and the
 * outputs are compared with the engine called directly for that task: a
 * head task with the head its golden folder is named after (clm-<task>), the
 * scoring and generation tasks with the whole-model calls (clm_score,
 * greedy generation, masked-LM pseudo-log-likelihood). */
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
#include "shard_common.h"
#include "worker_internal.h"

/* ------------------------------------------------------------ golden cases */

/* The first line of dir/cases.jsonl of that kind, parsed into c. */
static void golden_case(const char *dir, case_kind_t kind, case_t *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/cases.jsonl", XLM_GOLDEN_DIR, dir);
    char *text = NULL;
    size_t size = 0;
    shard_error_t err = {0};
    if (shard_read_file(path, (size_t)1 << 30, &text, &size, &err))
        fail_msg("%s: %s", path, err.message);
    for (char *line = text, *end; line && *line; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if (case_line_is_blank(line))
            continue;
        memset(c, 0, sizeof *c);
        if (case_parse(line, strlen(line), c, &err))
            fail_msg("%s: %s", path, err.message);
        if (c->kind == kind) {
            free(text);
            return;
        }
        case_clear(c);
    }
    free(text);
    fail_msg("%s: no case of kind %d", path, (int)kind);
}

/* One run state for every engine call of this single-threaded test. */
static shard_state_t *run_state(void)
{
    static shard_state_t *state;
    if (!state)
        state = shard_state_new();
    assert_non_null(state);
    return state;
}

static shard_model_t *open_model(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", XLM_GOLDEN_DIR, dir);
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(path, NULL, &err); /* the whole model */
    if (!model)
        fail_msg("%s: %s", path, err.message);
    return model;
}

/* ------------------------------------------------------------ through the map */

static shard_status_t forward(const shard_model_t *model, const shard_inputs_t *in, shard_acts_t *acts,
                              shard_error_t *err)
{
    shard_status_t status = shard_embed(model, run_state(), in, acts, err);
    return status ? status : shard_run_layers(model, run_state(), acts, err);
}

/* Generation as stage 0 drives it: one pass per token over the sequence so
 * far (default mask, positions 0..len-1), the next token from the last
 * position. Output "new_ids" [1][steps]. */
static shard_status_t next_tokens(const shard_model_t *model, const case_t *c, shard_outputs_t *out,
                                  shard_error_t *err)
{
    const int64_t len0 = c->inputs.seq, total = len0 + c->steps;
    int64_t *ids = calloc((size_t)total, sizeof *ids), *langs = calloc((size_t)total, sizeof *langs);
    int64_t *mask = calloc((size_t)total, sizeof *mask), *pos = calloc((size_t)total, sizeof *pos);
    int64_t shape[2] = {1, c->steps};
    shard_tensor_t *t = shard_outputs_add(out, "new_ids", SHARD_I64, 2, shape, err);
    assert_true(ids && langs && mask && pos && t);
    memcpy(ids, c->inputs.input_ids, (size_t)len0 * sizeof *ids);
    for (int64_t i = 0; i < total; i++) {
        langs[i] = c->inputs.langs && i < len0 ? c->inputs.langs[i] : c->langs_fill;
        pos[i] = i;
    }
    shard_status_t status = SHARD_OK;
    for (int64_t len = len0; !status && len < total; len++) {
        shard_default_mask(shard_model_config(model), ids, len, mask);
        shard_inputs_t in = {.batch = 1, .seq = len, .input_ids = ids, .attention_mask = mask,
                             .langs = c->inputs.langs ? langs : NULL, .position_ids = pos};
        shard_acts_t *acts = shard_acts_new();
        if (!(status = forward(model, &in, acts, err)))
            status = shard_head_next_token(model, run_state(), acts, 0, len - 1, &ids[len], err);
        t->i64[len - len0] = ids[len];
        shard_acts_destroy(&acts);
    }
    free(ids);
    free(langs);
    free(mask);
    free(pos);
    return status;
}

/* Pseudo-log-likelihood as the worker computes it: one masked copy of row 0
 * per position in [1, len - 1), the masked position projected. Output
 * "token_logprobs" [copies]. */
static shard_status_t masked_copies(const shard_model_t *model, const case_t *c, shard_outputs_t *out,
                                    shard_error_t *err)
{
    const int64_t seq = c->inputs.seq, copies = seq - 2;
    int64_t *ids = calloc((size_t)(copies * seq), sizeof *ids);
    int64_t *langs = c->inputs.langs ? calloc((size_t)(copies * seq), sizeof *langs) : NULL;
    int64_t *mask = calloc((size_t)(copies * seq), sizeof *mask);
    int64_t *mask_pos = calloc((size_t)copies, sizeof *mask_pos);
    int64_t *targets = calloc((size_t)copies, sizeof *targets);
    assert_true(ids && mask && mask_pos && targets && (!c->inputs.langs || langs));
    shard_status_t status = shard_pll_expand(shard_model_config(model), c->inputs.input_ids,
                                             c->inputs.langs, seq, 1, copies, ids, langs,
                                             mask_pos, targets, err);
    for (int64_t i = 0; i < copies * seq; i++)
        mask[i] = c->inputs.attention_mask ? c->inputs.attention_mask[i % seq] : 1;
    shard_inputs_t in = {.batch = copies, .seq = seq, .input_ids = ids, .attention_mask = mask,
                         .langs = langs};
    shard_acts_t *acts = shard_acts_new();
    if (!status && !(status = forward(model, &in, acts, err)))
        status = shard_head_masked_logprob(model, run_state(), acts, mask_pos, targets, out, err);
    shard_acts_destroy(&acts);
    free(ids);
    free(langs);
    free(mask);
    free(mask_pos);
    free(targets);
    return status;
}

/* The engine call the map's entry names, dispatched as the last stage
 * (worker/stage.c, run_item) and stage 0 (generation) do. */
static shard_status_t run_via_map(const shard_model_t *model, const worker_task_t *wt, const case_t *c,
                                  shard_outputs_t *out, shard_error_t *err)
{
    if (wt->call == WORKER_CALL_NEXT_TOKEN)
        return next_tokens(model, c, out, err);
    if (wt->call == WORKER_CALL_MASKED_LOGPROB)
        return masked_copies(model, c, out, err);
    shard_acts_t *acts = shard_acts_new();
    shard_status_t status = forward(model, &c->inputs, acts, err);
    if (!status && wt->call == WORKER_CALL_HEAD)
        status = shard_head(model, run_state(), wt->head, acts, &c->inputs, out, err);
    else if (!status && wt->call == WORKER_CALL_CLM_SCORE)
        status = shard_head_clm_score(model, run_state(), acts, &c->inputs, NULL, out, err);
    else if (!status)
        status = shard_error_set(err, SHARD_ERR_HEAD, "call %d is not known", (int)wt->call);
    shard_acts_destroy(&acts);
    return status;
}

/* ------------------------------------------------------------ directly */

/* Row 0's pseudo-log-likelihood over [1, len - 1) on the whole model, as
 * tokens of "token_logprobs". */
static shard_status_t pll_direct(const shard_model_t *model, const case_t *c, shard_outputs_t *out,
                                 shard_error_t *err)
{
    shard_inputs_t row = c->inputs;
    row.batch = 1;
    int64_t from[1] = {1}, to[1] = {c->inputs.seq - 1};
    return shard_score_rows(model, run_state(), SHARD_SCORE_MLM_PLL, &row, from, to, out, err);
}

/* What the direct engine call of each non-head task is and where its
 * golden case lives. A wire task missing here fails the test. */
typedef struct {
    const char *task, *dir;
    case_kind_t kind;
    shard_status_t (*direct)(const shard_model_t *, const case_t *, shard_outputs_t *, shard_error_t *);
    const char *output, *mapped; /* compared output: directly, through the map */
} direct_t;

static shard_status_t case_direct(const shard_model_t *model, const case_t *c, shard_outputs_t *out,
                                  shard_error_t *err)
{
    return case_run(model, run_state(), c, out, err);
}

static const direct_t directs[] = {
    {"clm_score", "clm-lm", CASE_CLM_SCORE, case_direct, "token_logprobs", "token_logprobs"},
    {"generate", "clm-lm", CASE_GREEDY, case_direct, "new_ids", "new_ids"},
    /* the worker gathers the copies' "token_logprob" into the reply's
     * "token_logprobs" */
    {"mlm_pll", "mlm_multi-lm", CASE_HEAD, pll_direct, "token_logprobs", "token_logprob"},
};

/* ------------------------------------------------------------ comparison */

static void assert_tensors_match(const char *task, const shard_tensor_t *got,
                                 const shard_tensor_t *want)
{
    if (!got || !want)
        fail_msg("%s: output %s missing %s", task, want ? want->name : "?",
                 want ? "through the map" : "directly");
    assert_int_equal(got->elem, want->elem);
    const int64_t n = shard_tensor_numel(want);
    if (shard_tensor_numel(got) != n)
        fail_msg("%s: %s has %lld values through the map, %lld directly", task, want->name,
                 (long long)shard_tensor_numel(got), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        if (want->elem == SHARD_I64) {
            if (got->i64[i] != want->i64[i])
                fail_msg("%s: %s[%lld] = %lld through the map, %lld directly", task, want->name,
                         (long long)i, (long long)got->i64[i], (long long)want->i64[i]);
        } else if (!(fabsf(got->f32[i] - want->f32[i]) <= 1e-5f + 1e-5f * fabsf(want->f32[i]))) {
            fail_msg("%s: %s[%lld] = %.9g through the map, %.9g directly", task, want->name,
                     (long long)i, (double)got->f32[i], (double)want->f32[i]);
        }
    }
}

/* Runs task t through the map and directly; every output of the direct
 * call (or the named one) must match. */
static void check_task(proto_task_t t)
{
    const proto_task_info_t *info = proto_task_info(t);
    const worker_task_t *wt = worker_task(t);
    char dir[128];
    const direct_t *d = NULL;
    case_t c;
    if (wt->call == WORKER_CALL_HEAD) {
        snprintf(dir, sizeof dir, "clm-%s", info->name);
        golden_case(dir, CASE_HEAD, &c);
        /* The direct side runs the head the golden folder is for. */
        assert_int_equal(c.head, shard_head_from_name(info->name));
    } else {
        for (size_t i = 0; i < sizeof directs / sizeof directs[0]; i++)
            if (strcmp(directs[i].task, info->name) == 0)
                d = &directs[i];
        if (!d)
            fail_msg("wire task %s has no direct engine call in this test", info->name);
        snprintf(dir, sizeof dir, "%s", d->dir);
        golden_case(dir, d->kind, &c);
    }
    shard_model_t *model = open_model(dir);
    shard_outputs_t mapped, direct;
    shard_outputs_init(&mapped);
    shard_outputs_init(&direct);
    shard_error_t err = {0};
    if (run_via_map(model, wt, &c, &mapped, &err))
        fail_msg("%s through the map: %s", info->name, err.message);
    if ((d ? d->direct : case_direct)(model, &c, &direct, &err))
        fail_msg("%s directly: %s", info->name, err.message);
    if (d) {
        assert_tensors_match(info->name, shard_outputs_find(&mapped, d->mapped),
                             shard_outputs_find(&direct, d->output));
    } else {
        assert_int_equal(mapped.count, direct.count);
        for (int i = 0; i < direct.count; i++)
            assert_tensors_match(info->name, shard_outputs_find(&mapped, direct.tensors[i].name),
                                 &direct.tensors[i]);
    }
    shard_outputs_clear(&mapped);
    shard_outputs_clear(&direct);
    shard_model_destroy(&model);
    case_clear(&c);
}

/* ------------------------------------------------------------ tests */

static void every_wire_task_is_mapped(void **state)
{
    (void)state;
    const ProtobufCEnumDescriptor *d = &xlm__task__descriptor;
    for (unsigned i = 0; i < d->n_values; i++) {
        const int v = d->values[i].value;
        const proto_task_info_t *info = proto_task_info((proto_task_t)v);
        const worker_task_t *wt = worker_task(v);
        if (!info)
            fail_msg("wire task %s has no proto_task_info row", d->values[i].name);
        if (!wt)
            fail_msg("wire task %s has no worker map entry", d->values[i].name);
        assert_int_equal((int)wt->task, v);
        assert_true(wt->call >= WORKER_CALL_HEAD && wt->call < WORKER_CALL_COUNT_);
        assert_true(wt->head >= SHARD_HEAD_BASE && wt->head < SHARD_HEAD_COUNT_);
        /* The map agrees with proto's table. */
        assert_int_equal(wt->call == WORKER_CALL_HEAD, info->kind == PROTO_TASK_KIND_HEAD);
        assert_int_equal(wt->call == WORKER_CALL_NEXT_TOKEN,
                         info->kind == PROTO_TASK_KIND_GENERATE);
        assert_int_equal(wt->head == SHARD_HEAD_LM, info->needs_lm);
    }
    assert_null(worker_task(PROTO_TASK_COUNT_));
    assert_null(worker_task(-1));
}

static void every_wire_task_reaches_its_engine_call(void **state)
{
    (void)state;
    const ProtobufCEnumDescriptor *d = &xlm__task__descriptor;
    for (unsigned i = 0; i < d->n_values; i++)
        check_task((proto_task_t)d->values[i].value);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_wire_task_is_mapped),
        cmocka_unit_test(every_wire_task_reaches_its_engine_call),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
