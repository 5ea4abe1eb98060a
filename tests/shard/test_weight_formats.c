/* test_weight_formats.c: a checkpoint read from pytorch_model.bin gives the
 * same outputs, bit for bit, as read from model.safetensors. */
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

/* Runs every case of cases.jsonl on both models; outputs must be identical. */
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
    assert_int_equal(checked, 9); /* every record of clm-lm, scoring and greedy included */
    shard_state_destroy(&run_state);
    shard_model_destroy(&from_safetensors);
    shard_model_destroy(&from_torch);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(torch_bin_equals_safetensors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
