/* test_weight_formats.c: a checkpoint read from pytorch_model.bin (zip or
 * legacy) or from a sharded folder gives the same outputs, bit for bit, as
 * read from model.safetensors; a sharded folder's bad index or missing shard
 * is an error naming the file and tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cases.h"
#include "shard_checkpoint.h"

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char from[8400], to[8400];
    snprintf(from, sizeof from, "%s/%s", from_dir, name);
    snprintf(to, sizeof to, "%s/%s", to_dir, name);
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buffer[65536];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, in)) > 0)
        assert_int_equal(fwrite(buffer, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* Runs every case of golden's cases.jsonl on golden and on dir; outputs
 * must be identical. Returns the number of cases. */
static int compare_models(const char *golden, const char *dir)
{
    shard_error_t err = {0};
    shard_model_t *from_safetensors = shard_model_open(golden, NULL, &err);
    assert_non_null(from_safetensors);
    shard_model_t *from_torch = shard_model_open(dir, NULL, &err);
    if (!from_torch)
        fail_msg("%s", err.message);
    shard_state_t *run_state = shard_state_new(); /* one state serving both models */
    assert_non_null(run_state);

    char path[4200];
    snprintf(path, sizeof path, "%s/cases.jsonl", golden);
    FILE *cases = fopen(path, "r");
    assert_non_null(cases);
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;
    int checked = 0;
    while ((len = getline(&line, &capacity, cases)) > 0) {
        case_t c;
        assert_int_equal(case_parse(line, (size_t)len, &c, &err), SHARD_OK);
        shard_outputs_t a, b;
        shard_outputs_init(&a);
        shard_outputs_init(&b);
        assert_int_equal(case_run(from_safetensors, run_state, &c, &a, &err), SHARD_OK);
        assert_int_equal(case_run(from_torch, run_state, &c, &b, &err), SHARD_OK);
        assert_int_equal(a.count, b.count);
        for (int i = 0; i < a.count; i++) {
            const shard_tensor_t *ta = &a.tensors[i], *tb = &b.tensors[i];
            assert_string_equal(ta->name, tb->name);
            int64_t n = shard_tensor_numel(ta);
            assert_int_equal(n, shard_tensor_numel(tb));
            if (ta->elem == SHARD_F32)
                assert_memory_equal(ta->f32, tb->f32, (size_t)n * sizeof(float));
            else
                assert_memory_equal(ta->i64, tb->i64, (size_t)n * sizeof(int64_t));
        }
        shard_outputs_clear(&a);
        shard_outputs_clear(&b);
        case_clear(&c);
        checked++;
    }
    free(line);
    fclose(cases);
    shard_state_destroy(&run_state);
    shard_model_destroy(&from_safetensors);
    shard_model_destroy(&from_torch);
    return checked;
}

static void torch_bin_equals_safetensors(void **state)
{
    (void)state;
    const char *golden = XLM_GOLDEN_DIR "/clm-lm";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/weight-formats-%d", XLM_TEST_TMP, (int)getpid());
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    assert_int_equal(system(cmd), 0);
    const char *files[] = {"config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                           "pytorch_model.bin"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        copy_file(golden, dir, files[i]);
    /* every record of clm-lm, scoring and greedy included */
    assert_int_equal(compare_models(golden, dir), 9);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Writes golden/<name> rewritten --to format (and --shards 3) into out. */
static void rewrite(const char *name, const char *format, char *out, size_t size)
{
    char cmd[12000];
    snprintf(out, size, "%s/weight-formats-%d-%s-%s", XLM_TEST_TMP, (int)getpid(), name,
             format);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && python3 '%s/tests/tools/rewrite_checkpoint.py' "
             "'%s/%s' '%s' --to %s --shards 3", out, XLM_SOURCE_DIR, XLM_GOLDEN_DIR, name, out,
             format);
    assert_int_equal(system(cmd), 0);
}

static void remove_dir(const char *dir)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Every format rewrite_checkpoint.py writes, on a causal LM (tied output
 * projection) and a multilingual SQuAD head. */
static void every_format_equals_safetensors(void **state)
{
    (void)state;
    static const char *const formats[] = {"torch", "torch-legacy", "sharded", "sharded-torch"};
    static const struct { const char *name; int cases; } models[] = {
        {"clm-lm", 9}, {"mlm_multi-qa", 10}};
    for (size_t m = 0; m < 2; m++)
        for (size_t f = 0; f < 4; f++) {
            char dir[4096], golden[4096];
            rewrite(models[m].name, formats[f], dir, sizeof dir);
            snprintf(golden, sizeof golden, "%s/%s", XLM_GOLDEN_DIR, models[m].name);
            print_message("%s as %s\n", models[m].name, formats[f]);
            assert_int_equal(compare_models(golden, dir), models[m].cases);
            remove_dir(dir);
        }
}

/* Opens dir, expecting failure with a message holding every one of want. */
static void expect_open_fails(const char *dir, const char *const *want, size_t n)
{
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    assert_null(model);
    print_message("%s\n", err.message);
    for (size_t i = 0; i < n; i++)
        if (!strstr(err.message, want[i]))
            fail_msg("message \"%s\" does not name \"%s\"", err.message, want[i]);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void sharded_bad_folders(void **state)
{
    (void)state;
    char dir[4096], path[4300];
    rewrite("clm-lm", "sharded", dir, sizeof dir);
    /* A shard the index names is gone. */
    snprintf(path, sizeof path, "%s/model-00002-of-00003.safetensors", dir);
    assert_int_equal(unlink(path), 0);
    const char *missing[] = {"model.safetensors.index.json", "model-00002-of-00003.safetensors",
                             "missing", "tensor "};
    expect_open_fails(dir, missing, 4);
    /* The index puts a tensor in a shard that lacks it. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"transformer.embeddings.weight\": "
               "\"model-00003-of-00003.safetensors\"}}");
    const char *lacks[] = {"transformer.embeddings.weight", "model-00003-of-00003.safetensors",
                           "does not hold it"};
    expect_open_fails(dir, lacks, 3);
    /* A shard name that leaves the folder, a non-string, no weight_map, not JSON. */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"../model-00001-of-00003.safetensors\"}}");
    const char *outside[] = {"tensor a", "../model-00001-of-00003.safetensors",
                             "not a file name inside the folder"};
    expect_open_fails(dir, outside, 3);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 7}}");
    const char *number[] = {"tensor a", "not a file name string"};
    expect_open_fails(dir, number, 2);
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    const char *no_map[] = {"model.safetensors.index.json", "no weight_map"};
    expect_open_fails(dir, no_map, 2);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
    const char *not_json[] = {"model.safetensors.index.json", "not JSON"};
    expect_open_fails(dir, not_json, 2);
    remove_dir(dir);
}

/* xlm-convert of one folder of each format: the safetensors folder it
 * writes gives the same outputs bit for bit, its float32 tensors are
 * aligned in the mapping (so they are used in place), and an original XLM
 * folder's fastBPE files become its HF twin's vocab.json. */
static void convert_equals_original(void **state)
{
    (void)state;
    static const struct { const char *name; int cases; } dirs[] = {
        {"clm-lm-tf", 9}, {"mlm_multi-qa-legacy", 10}, {"mlm_multi-lm-xlmorig", 6}, {"clm-lm", 9}};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char src[2048], out[2048], cmd[12000], path[4200];
        snprintf(src, sizeof src, "%s/%s", XLM_GOLDEN_DIR, dirs[i].name);
        snprintf(out, sizeof out, "%s/convert-%d-%s", XLM_TEST_TMP, (int)getpid(), dirs[i].name);
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s/xlm-convert' --model '%s' --output '%s'",
                 out, XLM_BIN_DIR, src, out);
        assert_int_equal(system(cmd), 0);
        print_message("%s converted\n", dirs[i].name);
        assert_int_equal(compare_models(src, out), dirs[i].cases);
        shard_error_t err = {0};
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        tensor_file_t *tf = tensor_file_open_safetensors(path, &err);
        if (!tf)
            fail_msg("%s", err.message);
        for (size_t e = 0; e < tf->count; e++)
            if (tf->entries[e].dtype == TENSOR_F32)
                assert_int_equal((uintptr_t)tf->entries[e].data % sizeof(float), 0);
        tensor_file_destroy(&tf);
        remove_dir(out);
    }
    /* The vocabulary written from fastBPE's vocab is the HF twin's. */
    char out[2048], cmd[12000], a_path[4200], b_path[4200];
    snprintf(out, sizeof out, "%s/convert-%d-vocab", XLM_TEST_TMP, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s/xlm-convert' --model '%s/mlm_multi-base-xlmorig' "
             "--output '%s'", out, XLM_BIN_DIR, XLM_GOLDEN_DIR, out);
    assert_int_equal(system(cmd), 0);
    snprintf(a_path, sizeof a_path, "%s/vocab.json", out);
    snprintf(b_path, sizeof b_path, "%s/mlm_multi-base/vocab.json", XLM_GOLDEN_DIR);
    snprintf(cmd, sizeof cmd, "python3 -c 'import json,sys; "
             "sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' '%s' '%s'",
             a_path, b_path);
    assert_int_equal(system(cmd), 0);
    remove_dir(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(torch_bin_equals_safetensors),
        cmocka_unit_test(every_format_equals_safetensors),
        cmocka_unit_test(sharded_bad_folders),
        cmocka_unit_test(convert_equals_original),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
