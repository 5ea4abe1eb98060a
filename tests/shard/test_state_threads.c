/* test_state_threads.c: one set of weights, two callers.
 *
 * The weights a model object holds are read-only once shard_model_open
 * returns; everything a call computes into lives in the caller's
 * shard_state_t. So two threads, each with its own run state, running the
 * golden cases of several heads (greedy generation and clm_score included)
 * and shard_score_rows (clm and mlm-pll) on the SAME model objects at once
 * must produce exactly the bytes one thread produces alone; in int8 and
 * bf16 too, whose products keep quantised or rounded rows in work space of
 * the calling thread (under the sanitizer lane, also freed when the
 * threads end).
 *
 * BLAS runs with one thread (shard_set_threads is process-wide): the
 * threads here are the callers', and the engine's own code must hold no
 * shared mutable state for this to pass. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <pthread.h>

#include "case_files.h"
#include "cases.h"
#include "shard_engine.h"

enum { MAX_JOBS = 160, N_THREADS = 2, ROUNDS = 8 };

/* Whole-model folders of several heads; clm-lm holds clm_score and greedy
 * cases, mlm_multi-lm is also scored with mlm-pll. */
static const char *const folders[] = {"mlm_multi-qa",       "mlm_multi-seq_cls",
                                      "mlm_multi-multiple_choice", "mlm_multi-token_cls",
                                      "clm-lm",             "clm-qa_simple",
                                      "mlm_multi-lm"};
enum { N_FOLDERS = sizeof folders / sizeof folders[0], SCORE_ROWS = 12 };
/* tiny-clm-enfr, then it and clm-lm in int8 and in bf16 */
enum { N_MODELS = N_FOLDERS + 5 };

/* One unit of work: a golden case, or one row scored by shard_score_rows. */
typedef struct {
    const shard_model_t *model; /* borrowed */
    const case_t *c;            /* a case, or NULL for a score row */
    shard_score_mode_t mode;
    shard_inputs_t rows;
    int64_t from, to;
    shard_outputs_t reference; /* one thread, one state, before the threads start */
} job_t;

typedef struct {
    shard_model_t *models[N_MODELS]; /* the folders, then tiny-clm-enfr, then reduced ones */
    case_t cases[MAX_JOBS];
    int n_cases;
    int64_t *score_ids[SCORE_ROWS + 1], *score_langs[SCORE_ROWS + 1];
    job_t jobs[MAX_JOBS];
    int n_jobs;
} fixture_t;

typedef struct {
    fixture_t *f;
    int first;       /* job this thread starts at: the two run different heads at once */
    int runs, fails; /* fails: runs whose outputs differ from the reference */
    char first_failure[512];
} worker_t;

static shard_model_t *open_in(const char *dir, shard_precision_t precision)
{
    shard_error_t err = {0};
    shard_model_t *model =
        shard_model_open(dir, &(shard_model_options_t){.precision = precision}, &err);
    if (!model)
        fail_msg("shard_model_open %s: %s", dir, err.message);
    return model;
}

static int64_t *int_array(const cJSON *array, int64_t *n)
{
    *n = cJSON_GetArraySize(array);
    int64_t *values = malloc((size_t)(*n ? *n : 1) * sizeof *values);
    assert_non_null(values);
    for (int64_t i = 0; i < *n; i++)
        values[i] = (int64_t)cJSON_GetArrayItem(array, (int)i)->valuedouble;
    return values;
}

static void add_case_jobs(fixture_t *f, const shard_model_t *model, const char *folder)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/cases.jsonl", XLM_GOLDEN_DIR, folder);
    char *text = read_text(path), *cursor = text, *line;
    if (!text)
        fail_msg("cannot read %s", path);
    while ((line = next_line(&cursor)) != NULL) {
        shard_error_t err = {0};
        assert_true(f->n_cases < MAX_JOBS && f->n_jobs < MAX_JOBS);
        case_t *c = &f->cases[f->n_cases++];
        if (case_parse(line, strlen(line), c, &err))
            fail_msg("%s: %s", path, err.message);
        f->jobs[f->n_jobs++] = (job_t){.model = model, .c = c};
    }
    free(text);
}

/* Pairs of the bundled model as clm rows <s> src </s> tgt </s>, scoring
 * the target; the first of them also as an mlm-pll row on mlm_multi-lm. */
static void add_score_jobs(fixture_t *f, const shard_model_t *clm, const shard_model_t *mlm)
{
    char *text = read_text(XLM_MODELS_DIR "/tiny-clm-enfr/examples/pairs_scores.jsonl");
    char *cursor = text, *line;
    assert_non_null(text);
    for (int r = 0; r < SCORE_ROWS && (line = next_line(&cursor)) != NULL; r++) {
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        int64_t n = 0, n_langs = 0;
        f->score_ids[r] = int_array(cJSON_GetObjectItem(o, "input_ids"), &n);
        f->score_langs[r] = int_array(cJSON_GetObjectItem(o, "langs"), &n_langs);
        assert_int_equal(n, n_langs);
        const int64_t src = cJSON_GetArraySize(cJSON_GetObjectItem(o, "src_tokens"));
        f->jobs[f->n_jobs++] = (job_t){
            .model = clm, .mode = SHARD_SCORE_CLM, .from = src + 2, .to = n,
            .rows = {.batch = 1, .seq = n, .input_ids = f->score_ids[r],
                     .langs = f->score_langs[r]}};
        cJSON_Delete(o);
    }
    free(text);
    /* The row of test_score's pll check: ids of mlm_multi-lm's vocabulary. */
    static const int64_t ids[] = {0, 170, 182, 27, 50, 188, 1, 57, 156, 385, 35, 321, 52, 1};
    static const int64_t langs[] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
    f->jobs[f->n_jobs++] = (job_t){
        .model = mlm, .mode = SHARD_SCORE_MLM_PLL, .from = 7, .to = 13,
        .rows = {.batch = 1, .seq = 14, .input_ids = ids, .langs = langs}};
}

static shard_status_t run_job(const job_t *job, shard_state_t *run_state, shard_outputs_t *out,
                              shard_error_t *err)
{
    if (job->c)
        return case_run(job->model, run_state, job->c, out, err);
    return shard_score_rows(job->model, run_state, job->mode, &job->rows, &job->from, &job->to,
                            out, err);
}

/* Same names, types, shapes, row lengths and bytes; NULL when equal. */
static const char *outputs_differ(const shard_outputs_t *got, const shard_outputs_t *want)
{
    if (got->count != want->count)
        return "output count";
    for (int i = 0; i < want->count; i++) {
        const shard_tensor_t *a = &got->tensors[i], *b = &want->tensors[i];
        if (strcmp(a->name, b->name) || a->elem != b->elem || a->ndim != b->ndim ||
            memcmp(a->shape, b->shape, sizeof a->shape))
            return "name, type or shape";
        if (!a->row_lengths != !b->row_lengths ||
            (a->row_lengths &&
             memcmp(a->row_lengths, b->row_lengths, (size_t)a->shape[0] * sizeof(int64_t))))
            return "row lengths";
        const size_t n = (size_t)shard_tensor_numel(b);
        if (a->elem == SHARD_F32 ? memcmp(a->f32, b->f32, n * sizeof(float))
                                 : memcmp(a->i64, b->i64, n * sizeof(int64_t)))
            return "values";
    }
    return NULL;
}

/* cmocka is not thread-safe: a worker only counts and records. */
static void *worker_main(void *arg)
{
    worker_t *w = arg;
    const fixture_t *f = w->f;
    shard_state_t *run_state = shard_state_new();
    for (int k = 0; run_state && k < ROUNDS * f->n_jobs; k++) {
        const int j = (w->first + k) % f->n_jobs;
        shard_outputs_t out;
        shard_error_t err = {0};
        shard_outputs_init(&out);
        const char *problem = run_job(&f->jobs[j], run_state, &out, &err) ? err.message
                              : outputs_differ(&out, &f->jobs[j].reference);
        w->runs++;
        if (problem && w->fails++ == 0)
            snprintf(w->first_failure, sizeof w->first_failure, "job %d (%.40s): %.400s", j,
                     f->jobs[j].c ? f->jobs[j].c->name : "score row", problem);
        shard_outputs_clear(&out);
    }
    if (!run_state)
        snprintf(w->first_failure, sizeof w->first_failure, "no run state");
    shard_state_destroy(&run_state);
    return NULL;
}

static int setup(void **state)
{
    static fixture_t fixture;
    fixture_t *f = &fixture;
    memset(f, 0, sizeof *f);
    shard_set_threads(1);
    char dir[1024];
    for (int i = 0; i < N_FOLDERS; i++) {
        snprintf(dir, sizeof dir, "%s/%s", XLM_GOLDEN_DIR, folders[i]);
        f->models[i] = open_in(dir, SHARD_PRECISION_FP32);
        add_case_jobs(f, f->models[i], folders[i]);
    }
    f->models[N_FOLDERS] = open_in(XLM_MODELS_DIR "/tiny-clm-enfr", SHARD_PRECISION_FP32);
    const int first_score = f->n_jobs;
    add_score_jobs(f, f->models[N_FOLDERS], f->models[N_FOLDERS - 1]);
    /* The score rows and clm-lm's cases again in int8 and in bf16. */
    const shard_precision_t reduced[] = {SHARD_PRECISION_INT8, SHARD_PRECISION_BF16};
    snprintf(dir, sizeof dir, "%s/clm-lm", XLM_GOLDEN_DIR);
    for (int p = 0; p < 2; p++) {
        shard_model_t *tiny = open_in(XLM_MODELS_DIR "/tiny-clm-enfr", reduced[p]);
        shard_model_t *clm = open_in(dir, reduced[p]);
        f->models[N_FOLDERS + 1 + 2 * p] = tiny;
        f->models[N_FOLDERS + 2 + 2 * p] = clm;
        for (int r = 0; r < SCORE_ROWS; r++) {
            assert_true(f->n_jobs < MAX_JOBS);
            f->jobs[f->n_jobs] = f->jobs[first_score + r];
            f->jobs[f->n_jobs++].model = tiny;
        }
        add_case_jobs(f, clm, "clm-lm");
    }
    /* The reference: every job once, in order, on one state. */
    shard_state_t *run_state = shard_state_new();
    assert_non_null(run_state);
    for (int j = 0; j < f->n_jobs; j++) {
        shard_error_t err = {0};
        shard_outputs_init(&f->jobs[j].reference);
        if (run_job(&f->jobs[j], run_state, &f->jobs[j].reference, &err))
            fail_msg("job %d: %s", j, err.message);
    }
    shard_state_destroy(&run_state);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    for (int j = 0; j < f->n_jobs; j++)
        shard_outputs_clear(&f->jobs[j].reference);
    for (int i = 0; i < f->n_cases; i++)
        case_clear(&f->cases[i]);
    for (int r = 0; r < SCORE_ROWS; r++) {
        free(f->score_ids[r]);
        free(f->score_langs[r]);
    }
    for (int i = 0; i < N_MODELS; i++)
        shard_model_destroy(&f->models[i]);
    return 0;
}

static void test_two_states_on_one_model_match_one_thread(void **state)
{
    fixture_t *f = *state;
    worker_t workers[N_THREADS];
    pthread_t threads[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        workers[t] = (worker_t){.f = f, .first = t * f->n_jobs / N_THREADS};
        assert_int_equal(pthread_create(&threads[t], NULL, worker_main, &workers[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);
    for (int t = 0; t < N_THREADS; t++) {
        if (workers[t].fails || workers[t].runs != ROUNDS * f->n_jobs)
            fail_msg("thread %d: %d of %d runs differ from one thread alone; first: %s", t,
                     workers[t].fails, workers[t].runs, workers[t].first_failure);
    }
    print_message("%d jobs (%d golden cases of %d folders, %d score rows) x %d rounds x %d "
                  "threads: bit-identical\n", f->n_jobs, f->n_cases, N_FOLDERS,
                  f->n_jobs - f->n_cases, ROUNDS, N_THREADS);
}

/* A state serves several models one call at a time, and a fresh state
 * gives what a used one gives. */
static void test_fresh_state_matches_reference(void **state)
{
    fixture_t *f = *state;
    for (int j = f->n_jobs - 1; j >= 0; j--) {
        shard_state_t *fresh = shard_state_new();
        shard_outputs_t out;
        shard_error_t err = {0};
        shard_outputs_init(&out);
        if (run_job(&f->jobs[j], fresh, &out, &err))
            fail_msg("job %d: %s", j, err.message);
        const char *problem = outputs_differ(&out, &f->jobs[j].reference);
        if (problem)
            fail_msg("job %d on a fresh state: %s differ", j, problem);
        shard_outputs_clear(&out);
        shard_state_destroy(&fresh);
        assert_null(fresh);
    }
    shard_state_destroy(NULL); /* NULL-safe */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_states_on_one_model_match_one_thread),
        cmocka_unit_test(test_fresh_state_matches_reference),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
