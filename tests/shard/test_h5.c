/* test_h5.c: tf_model.h5 files that are bad in one way each, made from the
 * golden clm-lm-tf/tf_model.h5 with libhdf5: every one is an error naming
 * the file, the tensor and the value, never a crash; and the forms Keras
 * may write (split weight_names0/1 lists, fixed-length strings) load and
 * give the golden outputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard_checkpoint.h"
#include "shard_engine.h"

#define GOLDEN XLM_GOLDEN_DIR "/clm-lm-tf"
#define LAYER "transformer"
#define Q_KERNEL "tfxlm_with_lm_head_model/transformer/attentions_._0/q_lin/kernel:0"

static char dir[1024];

/* A fresh copy of the golden folder; returns the path of its tf_model.h5. */
static const char *fresh_copy(const char *name)
{
    static char h5[4300];
    char cmd[16000];
    snprintf(dir, sizeof dir, "%s/h5-%d-%s", XLM_TEST_TMP, (int)getpid(), name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp '%s'/* '%s'/ && chmod -R u+w '%s'",
             dir, dir, GOLDEN, dir, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(h5, sizeof h5, "%s/tf_model.h5", dir);
    return h5;
}

static void expect_open_fails(const char *const *want, size_t n)
{
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    assert_null(model);
    print_message("%s\n", err.message);
    assert_int_not_equal(err.code, SHARD_OK);
    for (size_t i = 0; i < n; i++)
        if (!strstr(err.message, want[i]))
            fail_msg("message \"%s\" does not name \"%s\"", err.message, want[i]);
}

/* Replaces dataset path of group LAYER with one of type and dims. */
static void replace_dataset(const char *h5, hid_t type, int ndim, const hsize_t *dims)
{
    hid_t f = H5Fopen(h5, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t g = H5Gopen2(f, LAYER, H5P_DEFAULT);
    assert_true(H5Ldelete(g, Q_KERNEL, H5P_DEFAULT) >= 0);
    if (type >= 0) {
        hid_t space = H5Screate_simple(ndim, dims, NULL);
        hid_t d = H5Dcreate2(g, Q_KERNEL, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        assert_true(d >= 0);
        size_t n = 1;
        for (int i = 0; i < ndim; i++)
            n *= dims[i];
        double *zeros = calloc(n, sizeof *zeros);
        assert_true(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros) >= 0);
        free(zeros);
        H5Dclose(d);
        H5Sclose(space);
    }
    H5Gclose(g);
    H5Fclose(f);
}

static void test_wrong_type(void **state)
{
    (void)state;
    hsize_t dims[2] = {32, 32};
    replace_dataset(fresh_copy("type"), H5T_IEEE_F64LE, 2, dims);
    const char *want[] = {"tf_model.h5", Q_KERNEL, "8-byte elements, expected float32"};
    expect_open_fails(want, 3);
}

static void test_wrong_shape(void **state)
{
    (void)state;
    hsize_t dims[2] = {32, 31};
    replace_dataset(fresh_copy("shape"), H5T_IEEE_F32LE, 2, dims);
    /* Named after translation: the engine's name and layout. */
    const char *want[] = {"tf_model.h5", "attentions.0.q_lin.weight", "[31, 32]",
                          "expected [32, 32]"};
    expect_open_fails(want, 4);
}

static void test_missing_weight(void **state)
{
    (void)state;
    replace_dataset(fresh_copy("missing"), -1, 0, NULL);
    const char *want[] = {"tf_model.h5", Q_KERNEL, "no dataset"};
    expect_open_fails(want, 3);
}

static void test_truncated(void **state)
{
    (void)state;
    const char *h5 = fresh_copy("truncated");
    static const long sizes[] = {0, 7, 600, 4096, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        assert_int_equal(truncate(h5, sizes[i]), 0);
        const char *want[] = {"tf_model.h5"};
        expect_open_fails(want, 1);
    }
}

/* Rewrites attribute name of obj as the strings of list (fixed-length
 * strings of width bytes, or variable-length when width is 0). */
static void write_strings(hid_t obj, const char *name, const char *const *list, size_t n,
                          size_t width)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, width ? width : H5T_VARIABLE);
    hsize_t dims[1] = {n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(a >= 0);
    if (width) {
        char *buf = calloc(n, width);
        for (size_t i = 0; i < n; i++)
            strncpy(buf + i * width, list[i], width);
        assert_true(H5Awrite(a, type, buf) >= 0);
        free(buf);
    } else {
        assert_true(H5Awrite(a, type, list) >= 0);
    }
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
}

/* The strings of attribute name of obj (variable-length), malloc'd. */
static char **read_strings(hid_t obj, const char *name, size_t *n)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t space = H5Aget_space(a);
    *n = (size_t)H5Sget_simple_extent_npoints(space);
    char **list = calloc(*n, sizeof *list);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    assert_true(H5Aread(a, type, list) >= 0);
    H5Tclose(type);
    H5Sclose(space);
    H5Aclose(a);
    return list;
}

/* weight_names split in two, layer_names as fixed-length strings: the same
 * outputs as the golden folder. */
static void test_split_and_fixed_strings(void **state)
{
    (void)state;
    const char *h5 = fresh_copy("split");
    hid_t f = H5Fopen(h5, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = H5Gopen2(f, LAYER, H5P_DEFAULT);
    size_t n = 0, n_layers = 0;
    char **names = read_strings(g, "weight_names", &n);
    assert_true(n > 10);
    H5Adelete(g, "weight_names");
    write_strings(g, "weight_names0", (const char *const *)names, n / 2, 0);
    write_strings(g, "weight_names1", (const char *const *)names + n / 2, n - n / 2, 0);
    char **layers = read_strings(f, "layer_names", &n_layers);
    write_strings(f, "layer_names", (const char *const *)layers, n_layers, 40);
    H5Gclose(g);
    H5Fclose(f);
    /* Freed by libhdf5's allocator: they came from H5Aread. */
    for (size_t i = 0; i < n; i++)
        H5free_memory(names[i]);
    for (size_t i = 0; i < n_layers; i++)
        H5free_memory(layers[i]);
    free(names);
    free(layers);
    char cmd[16000];
    snprintf(cmd, sizeof cmd, "'%s/xlm-infer' --model '%s' < '%s/cases.jsonl' > '%s/out.jsonl' && "
             "python3 '%s/tests/tools/compare_golden.py' '%s/cases.jsonl' '%s/out.jsonl' split",
             XLM_BIN_DIR, dir, dir, dir, XLM_SOURCE_DIR, dir, dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_missing_weight),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_split_and_fixed_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
