/* test_golden.c: every golden case, in process and through xlm-infer.
 *
 * For each checkpoint folder under XLM_GOLDEN_DIR (found by listing the
 * directory, one cmocka test per folder) the whole model is opened, every
 * line of cases.jsonl is parsed with case_parse and run with
 * case_run, and every expected output is compared: shapes (ragged rows
 * included) exactly, ids and indices exactly, floats within the tolerance of
 * tests/golden/README.md (1e-4 + 1e-4 |expected|, 1e-3 absolute for
 * sum_logprob). A last test checks that all the expected folders and cases
 * were seen, so a missing or empty file cannot pass silently.
 *
 * Two folders are also run through the xlm-infer binary: its JSON lines must
 * match the golden outputs and, value for value, the in-process results. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cases.h"
#include "case_files.h"

enum { MAX_DIRS = 96 };

/* The golden sets of tests/golden/README.md, one row per checkpoint format:
 * the folder suffix, the heads it has (as a bit set of shard_head_t; all
 * 7 when 0), and its folders, cases and output values (every number under
 * "outputs"). Fewer means something was skipped. */
typedef struct {
    const char *suffix;
    unsigned heads;
    int dirs, cases;
    long long values;
} golden_family_t;

static const golden_family_t golden_families[] = {
    {"", 0, 14, 123, 196253},        /* model.safetensors (and clm-lm's pytorch_model.bin) */
    {"-legacy", 0, 14, 123, 196253}, /* pytorch_model.bin in torch's legacy format */
    /* tf_model.h5 of HF's TF classes, which have no SQuAD head */
    {"-tf", ((1u << SHARD_HEAD_COUNT_) - 1) & ~(1u << SHARD_HEAD_QA), 12, 103, 194893},
    /* original XLM checkpoints (model.pth, codes, vocab; no config.json) */
    {"-xlmorig", (1u << SHARD_HEAD_BASE) | (1u << SHARD_HEAD_LM), 4, 35, 190020},
};
enum { N_FAMILIES = sizeof golden_families / sizeof golden_families[0] };

static const char *const golden_configs[] = {"mlm_multi", "clm"};

/* Folders run through xlm-infer: the one with the ragged clm_score and the
 * greedy records, and one with integer top-k indices. */
static const char *const cli_dirs[] = {"clm-lm", "mlm_multi-qa"};

typedef struct {
    int dirs;
    int cases;
    long long values;
} golden_totals_t;

/* The family of a folder name: the longest suffix that matches, "" else. */
static size_t family_of(const char *name)
{
    size_t best = 0, best_len = 0, len = strlen(name);
    for (size_t f = 1; f < N_FAMILIES; f++) {
        size_t n = strlen(golden_families[f].suffix);
        if (n > best_len && n < len && strcmp(name + len - n, golden_families[f].suffix) == 0) {
            best = f;
            best_len = n;
        }
    }
    return best;
}

typedef struct {
    char name[256];
    char path[4096];
    golden_totals_t *totals;
} golden_dir_t;

/* ------------------------------------------------------------ files */



/* ------------------------------------------------------------ flattened values
 *
 * Both sides of a comparison are reduced to the same form: the lengths of
 * every list in pre-order (so [[1,2],[3]] gives 2, 2, 1: shape and ragged
 * rows in one sequence) and the leaf values in order. */

typedef struct {
    int64_t *lengths;
    size_t n_lengths, cap_lengths;
    double *values;
    size_t n_values, cap_values;
    bool failed;
} flat_t;

/* Makes room for one more item; false when out of memory. */
static bool flat_grow(void *items_p, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return true;
    void **items = items_p;
    size_t grown_cap = *cap ? 2 * *cap : 64;
    void *grown = realloc(*items, grown_cap * size);
    if (!grown)
        return false;
    *items = grown;
    *cap = grown_cap;
    return true;
}

static void flat_length(flat_t *f, int64_t length)
{
    if (flat_grow(&f->lengths, f->n_lengths, &f->cap_lengths, sizeof length))
        f->lengths[f->n_lengths++] = length;
    else
        f->failed = true;
}

static void flat_value(flat_t *f, double value)
{
    if (flat_grow(&f->values, f->n_values, &f->cap_values, sizeof value))
        f->values[f->n_values++] = value;
    else
        f->failed = true;
}

static void flat_free(flat_t *f)
{
    free(f->lengths);
    free(f->values);
    memset(f, 0, sizeof *f);
}

/* A JSON value: nested lists of numbers. null (a non-finite float) is NaN. */
static void flat_from_json(flat_t *f, const cJSON *value)
{
    if (cJSON_IsArray(value)) {
        flat_length(f, cJSON_GetArraySize(value));
        const cJSON *item;
        cJSON_ArrayForEach(item, value)
            flat_from_json(f, item);
    } else if (cJSON_IsNumber(value)) {
        flat_value(f, value->valuedouble);
    } else {
        flat_value(f, NAN);
        f->failed = true; /* not a number: never matches */
    }
}

static double tensor_value(const shard_tensor_t *t, int64_t i)
{
    return t->elem == SHARD_F32 ? (double)t->f32[i] : (double)t->i64[i];
}

static void flat_from_dense(flat_t *f, const shard_tensor_t *t, int dim, int64_t *at)
{
    if (dim < 0 || dim >= t->ndim || dim >= SHARD_MAX_DIMS) {
        f->failed = true;
        return;
    }
    flat_length(f, t->shape[dim]);
    for (int64_t i = 0; i < t->shape[dim]; i++) {
        if (dim + 1 == t->ndim)
            flat_value(f, tensor_value(t, (*at)++));
        else
            flat_from_dense(f, t, dim + 1, at);
    }
}

static void flat_from_tensor(flat_t *f, const shard_tensor_t *t)
{
    int64_t at = 0;
    if (!t->row_lengths) {
        flat_from_dense(f, t, 0, &at);
        return;
    }
    flat_length(f, t->shape[0]);
    for (int64_t r = 0; r < t->shape[0]; r++) {
        flat_length(f, t->row_lengths[r]);
        for (int64_t j = 0; j < t->row_lengths[r]; j++)
            flat_value(f, tensor_value(t, at++));
    }
}

/* ------------------------------------------------------------ comparison */

/* Ids and indices are integers compared exactly; the rest are floats. */
static bool is_integer_output(const char *name)
{
    size_t n = strlen(name);
    return (n >= 6 && strcmp(name + n - 6, "_index") == 0) ||
           (n >= 4 && strcmp(name + n - 4, "_ids") == 0);
}

static bool within_tolerance(const char *name, double got, double want)
{
    if (is_integer_output(name))
        return got == want;
    if (strcmp(name, "sum_logprob") == 0)
        return fabs(got - want) <= 1e-3;
    return fabs(got - want) <= 1e-4 + 1e-4 * fabs(want);
}

/* Compares one output; exact demands bit-equal values (CLI against
 * in-process). Returns the number of values compared; fails the test on the
 * first difference. */
static long long compare_flat(const char *where, const char *name, const flat_t *got,
                              const flat_t *want, bool exact)
{
    if (got->failed || want->failed)
        fail_msg("%s: %s: not a nested list of numbers (or out of memory)", where, name);
    if (got->n_lengths != want->n_lengths ||
        memcmp(got->lengths, want->lengths, got->n_lengths * sizeof *got->lengths) != 0) {
        size_t i = 0;
        while (i < got->n_lengths && i < want->n_lengths && got->lengths[i] == want->lengths[i])
            i++;
        fail_msg("%s: %s: shape differs at list %zu: got length %lld, expected %lld", where,
                 name, i, i < got->n_lengths ? (long long)got->lengths[i] : -1LL,
                 i < want->n_lengths ? (long long)want->lengths[i] : -1LL);
    }
    if (got->n_values != want->n_values)
        fail_msg("%s: %s: %zu values, expected %zu", where, name, got->n_values, want->n_values);
    for (size_t i = 0; i < got->n_values; i++) {
        /* Exact: the same float32 (a JSON number reads back to a double
         * that rounds to it). */
        bool ok = exact ? (is_integer_output(name) ? got->values[i] == want->values[i]
                                                   : (float)got->values[i] == (float)want->values[i])
                        : within_tolerance(name, got->values[i], want->values[i]);
        if (!ok)
            fail_msg("%s: %s[%zu] = %.9g, expected %.9g%s", where, name, i, got->values[i],
                     want->values[i], exact ? " exactly" : "");
    }
    return (long long)got->n_values;
}

/* Every expected output present with the right element type and values, and
 * nothing else. Returns the number of values compared. */
static long long compare_outputs(const char *where, const shard_outputs_t *got,
                                 const cJSON *expected)
{
    if (!cJSON_IsObject(expected))
        fail_msg("%s: the golden line has no \"outputs\" object", where);
    long long values = 0;
    int fields = 0;
    const cJSON *field;
    cJSON_ArrayForEach(field, expected) {
        fields++;
        const shard_tensor_t *t = shard_outputs_find(got, field->string);
        if (!t)
            fail_msg("%s: output %s is missing", where, field->string);
        shard_elem_t want_elem = is_integer_output(field->string) ? SHARD_I64 : SHARD_F32;
        if (t->elem != want_elem)
            fail_msg("%s: output %s has element type %d, expected %d", where, field->string,
                     (int)t->elem, (int)want_elem);
        flat_t g = {0}, w = {0};
        flat_from_tensor(&g, t);
        flat_from_json(&w, field);
        values += compare_flat(where, field->string, &g, &w, false);
        flat_free(&g);
        flat_free(&w);
    }
    if (got->count != fields)
        fail_msg("%s: %d outputs, the golden line has %d", where, got->count, fields);
    if (values == 0)
        fail_msg("%s: no values compared", where);
    return values;
}

/* ------------------------------------------------------------ in process */

/* Runs one golden line on model; compares; returns the values compared. */
static long long run_golden_line(const shard_model_t *model, shard_state_t *run_state,
                                  const char *dir_name, const char *line,
                                 int line_no)
{
    char where[512];
    snprintf(where, sizeof where, "%s line %d", dir_name, line_no);
    cJSON *golden = cJSON_Parse(line);
    if (!golden)
        fail_msg("%s: not JSON", where);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(golden, "name");
    if (cJSON_IsString(name))
        snprintf(where, sizeof where, "%s %s", dir_name, name->valuestring);

    case_t c;
    shard_error_t err = {0};
    shard_outputs_t outputs;
    shard_outputs_init(&outputs);
    shard_status_t status = case_parse(line, strlen(line), &c, &err);
    if (status)
        fail_msg("%s: case_parse: %s (%s)", where, err.message, shard_status_str(status));
    assert_string_equal(c.name, cJSON_IsString(name) ? name->valuestring : "");
    status = case_run(model, run_state, &c, &outputs, &err);
    if (status)
        fail_msg("%s: case_run: %s (%s)", where, err.message, shard_status_str(status));
    long long values = compare_outputs(where, &outputs,
                                       cJSON_GetObjectItemCaseSensitive(golden, "outputs"));
    shard_outputs_clear(&outputs);
    case_clear(&c);
    cJSON_Delete(golden);
    return values;
}

static void test_golden_dir(void **state)
{
    golden_dir_t *dir = *state;
    char path[4200];
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir->path, NULL, &err);
    if (!model)
        fail_msg("%s: shard_model_open: %s", dir->name, err.message);
    shard_state_t *run_state = shard_state_new();
    assert_non_null(run_state);
    snprintf(path, sizeof path, "%s/cases.jsonl", dir->path);
    char *text = read_text(path);
    assert_non_null(text);
    char *cursor = text, *line;
    int cases = 0;
    long long values = 0;
    while ((line = next_line(&cursor)) != NULL)
        values += run_golden_line(model, run_state, dir->name, line, ++cases);
    free(text);
    shard_state_destroy(&run_state);
    assert_null(run_state);
    shard_model_destroy(&model);
    assert_null(model);
    if (cases == 0)
        fail_msg("%s: cases.jsonl has no cases", dir->name);
    golden_totals_t *totals = &dir->totals[family_of(dir->name)];
    totals->dirs++;
    totals->cases += cases;
    totals->values += values;
    print_message("%s: %d cases, %lld values\n", dir->name, cases, values);
}

/* ------------------------------------------------------------ xlm-infer */

/* The in-process result of a golden line, as a parsed case and outputs. */
static void run_in_process(const shard_model_t *model, shard_state_t *run_state, const char *line,
                           shard_outputs_t *outputs)
{
    case_t c;
    shard_error_t err = {0};
    shard_outputs_init(outputs);
    if (case_parse(line, strlen(line), &c, &err) ||
        case_run(model, run_state, &c, outputs, &err))
        fail_msg("in-process run failed: %s", err.message);
    case_clear(&c);
}

/* One CLI result line against the golden line and the in-process outputs. */
static long long check_cli_line(const char *where, const cJSON *result, const cJSON *golden,
                                const shard_outputs_t *in_process)
{
    const cJSON *got_name = cJSON_GetObjectItemCaseSensitive(result, "name");
    const cJSON *want_name = cJSON_GetObjectItemCaseSensitive(golden, "name");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(result, "error");
    if (error)
        fail_msg("%s: xlm-infer reported an error: %s", where, cJSON_PrintUnformatted(error));
    if (!cJSON_IsString(got_name) || !cJSON_IsString(want_name) ||
        strcmp(got_name->valuestring, want_name->valuestring) != 0)
        fail_msg("%s: result line out of order or unnamed", where);
    const cJSON *got = cJSON_GetObjectItemCaseSensitive(result, "outputs");
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(golden, "outputs");
    if (!cJSON_IsObject(got) || cJSON_GetArraySize(got) != cJSON_GetArraySize(want))
        fail_msg("%s: xlm-infer outputs differ in number from the golden line", where);
    long long values = 0;
    const cJSON *field;
    cJSON_ArrayForEach(field, want) {
        const cJSON *got_field = cJSON_GetObjectItemCaseSensitive(got, field->string);
        const shard_tensor_t *t = shard_outputs_find(in_process, field->string);
        if (!got_field || !t)
            fail_msg("%s: output %s missing from xlm-infer's line", where, field->string);
        flat_t g = {0}, w = {0}, p = {0};
        flat_from_json(&g, got_field);
        flat_from_json(&w, field);
        flat_from_tensor(&p, t);
        values += compare_flat(where, field->string, &g, &w, false);
        /* %.9g reads back to the same float32: the CLI prints exactly what
         * the engine computed. */
        compare_flat(where, field->string, &g, &p, true);
        flat_free(&g);
        flat_free(&w);
        flat_free(&p);
    }
    return values;
}

static void test_cli_matches_golden(void **state)
{
    (void)state;
    char infer[4096];
    snprintf(infer, sizeof infer, "%s/xlm-infer", XLM_BIN_DIR);
    struct stat st;
    if (stat(infer, &st) != 0)
        fail_msg("%s is missing: build the xlm-infer target", infer);
    int checked = 0;
    for (size_t d = 0; d < sizeof cli_dirs / sizeof cli_dirs[0]; d++) {
        char dir[2048], cases_path[2100], command[10240];
        snprintf(dir, sizeof dir, "%s/%s", XLM_GOLDEN_DIR, cli_dirs[d]);
        snprintf(cases_path, sizeof cases_path, "%s/cases.jsonl", dir);
        snprintf(command, sizeof command, "'%s' --model '%s' --threads 1 < '%s'", infer, dir,
                 cases_path);
        FILE *pipe = popen(command, "r");
        assert_non_null(pipe);
        char *golden_text = read_text(cases_path);
        assert_non_null(golden_text);
        shard_error_t err = {0};
        shard_model_t *model = shard_model_open(dir, NULL, &err);
        if (!model)
            fail_msg("%s: %s", dir, err.message);
        shard_state_t *run_state = shard_state_new();
        assert_non_null(run_state);

        char *cursor = golden_text, *line, *result_line = NULL;
        size_t cap = 0;
        int n = 0;
        while ((line = next_line(&cursor)) != NULL) {
            char where[512];
            snprintf(where, sizeof where, "xlm-infer %s line %d", cli_dirs[d], ++n);
            if (getline(&result_line, &cap, pipe) < 0)
                fail_msg("%s: xlm-infer wrote fewer lines than cases.jsonl has", where);
            cJSON *result = cJSON_Parse(result_line), *golden = cJSON_Parse(line);
            if (!result || !golden)
                fail_msg("%s: a line is not JSON: %.200s", where, result_line);
            shard_outputs_t outputs;
            run_in_process(model, run_state, line, &outputs);
            if (check_cli_line(where, result, golden, &outputs) == 0)
                fail_msg("%s: no values compared", where);
            shard_outputs_clear(&outputs);
            cJSON_Delete(result);
            cJSON_Delete(golden);
            checked++;
        }
        if (getline(&result_line, &cap, pipe) >= 0)
            fail_msg("xlm-infer %s: more result lines than cases", cli_dirs[d]);
        free(result_line);
        free(golden_text);
        shard_state_destroy(&run_state);
        shard_model_destroy(&model);
        int rc = pclose(pipe);
        if (rc != 0)
            fail_msg("xlm-infer %s exited with status %d", cli_dirs[d], rc);
    }
    /* clm-lm has 9 lines, mlm_multi-qa 10. */
    assert_int_equal(checked, 19);
}

/* ------------------------------------------------------------ totals */

static void test_all_golden_cases_checked(void **state)
{
    golden_dir_t *first = *state;
    for (size_t f = 0; f < N_FAMILIES; f++) {
        const golden_totals_t *totals = &first->totals[f];
        const golden_family_t *want = &golden_families[f];
        print_message("golden%s: %d folders, %d cases, %lld values\n", want->suffix,
                      totals->dirs, totals->cases, totals->values);
        assert_int_equal(totals->dirs, want->dirs);
        assert_int_equal(totals->cases, want->cases);
        assert_int_equal(totals->values, want->values);
    }
}

/* ------------------------------------------------------------ discovery */

static int compare_dirs(const void *a, const void *b)
{
    return strcmp(((const golden_dir_t *)a)->name, ((const golden_dir_t *)b)->name);
}

/* Folders <config>-<head> holding a cases.jsonl, sorted by name. */
static int list_golden_dirs(golden_dir_t *dirs, int max, golden_totals_t *totals)
{
    DIR *listing = opendir(XLM_GOLDEN_DIR);
    if (!listing) {
        fprintf(stderr, "cannot list %s\n", XLM_GOLDEN_DIR);
        return -1;
    }
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL && n < max) {
        char cases[4400];
        struct stat st;
        if (entry->d_name[0] == '.')
            continue;
        snprintf(dirs[n].name, sizeof dirs[n].name, "%s", entry->d_name);
        snprintf(dirs[n].path, sizeof dirs[n].path, "%s/%s", XLM_GOLDEN_DIR, entry->d_name);
        snprintf(cases, sizeof cases, "%s/cases.jsonl", dirs[n].path);
        if (stat(cases, &st) != 0)
            continue;
        dirs[n].totals = totals;
        n++;
    }
    closedir(listing);
    qsort(dirs, (size_t)n, sizeof *dirs, compare_dirs);
    return n;
}

/* Every config x head folder of the README is present (by name), in every
 * format that has the head. */
static bool has_every_head(const golden_dir_t *dirs, int n)
{
    bool ok = true;
    for (size_t f = 0; f < N_FAMILIES; f++)
    for (size_t c = 0; c < sizeof golden_configs / sizeof golden_configs[0]; c++)
        for (int h = 0; h < SHARD_HEAD_COUNT_; h++) {
            char want[128];
            bool found = false;
            if (golden_families[f].heads != 0 && !(golden_families[f].heads & (1u << h)))
                continue;
            snprintf(want, sizeof want, "%s-%s%s", golden_configs[c],
                     shard_head_name((shard_head_t)h), golden_families[f].suffix);
            for (int i = 0; i < n && !found; i++)
                found = strcmp(dirs[i].name, want) == 0;
            if (!found) {
                fprintf(stderr, "golden folder %s is missing\n", want);
                ok = false;
            }
        }
    return ok;
}

int main(void)
{
    static golden_dir_t dirs[MAX_DIRS];
    static struct CMUnitTest tests[MAX_DIRS + 2];
    static golden_totals_t totals[N_FAMILIES];
    shard_set_threads(1);
    int n = list_golden_dirs(dirs, MAX_DIRS, totals);
    if (n <= 0 || !has_every_head(dirs, n))
        return 1;
    for (int i = 0; i < n; i++)
        tests[i] = (struct CMUnitTest){dirs[i].name, test_golden_dir, NULL, NULL, &dirs[i]};
    tests[n] = (struct CMUnitTest){"test_cli_matches_golden", test_cli_matches_golden, NULL,
                                   NULL, NULL};
    tests[n + 1] = (struct CMUnitTest){"test_all_golden_cases_checked",
                                       test_all_golden_cases_checked, NULL, NULL, &dirs[0]};
    return _cmocka_run_group_tests("golden", tests, (size_t)n + 2, NULL, NULL);
}
