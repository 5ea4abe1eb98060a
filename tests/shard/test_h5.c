/* test_h5.c: tf_model.h5 files that are bad in one way each, made from the
 * golden clm-lm-tf/tf_model.h5 with libhdf5: every one is an error naming
 * the file, the tensor and the value, never a crash; and the forms Keras
 * may write (split weight_names0/1 lists, fixed-length strings) load and
 * give the golden outputs. A stage of an 8-layer tf_model.h5 holds only its
 * share of the weights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <hdf5.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_internal.h"
#include "shard_engine.h"

#define GOLDEN XLM_GOLDEN_DIR "/clm-lm-tf"
#define LAYER "transformer"
#define Q_KERNEL "tfxlm_with_lm_head_model/transformer/attentions_._0/q_lin/kernel:0"

static char dir[1024];

static size_t resident_bytes(void);

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

/* ---------------------------------------------------------------- global heap */

/* The weight names live in a global heap collection ("GCOL": signature,
 * version, 3 reserved bytes, an 8-byte size; then objects of index u16,
 * references u16, 4 reserved, size u64, data). Returns the offset of the
 * second collection's first object header (the first collection holds the
 * layer names and attribute values, the second transformer's weight names). */
static size_t second_heap_object(const uint8_t *bytes, size_t len)
{
    size_t found = 0, at = 0;
    for (size_t i = 0; i + 4 <= len && found < 2; i++)
        if (memcmp(bytes + i, "GCOL", 4) == 0) {
            found++;
            at = i;
        }
    assert_int_equal(found, 2);
    return at + 16;
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    uint8_t *bytes = malloc(*len);
    assert_int_equal(fread(bytes, 1, *len, f), *len);
    fclose(f);
    return bytes;
}

static void write_bytes(const char *path, const uint8_t *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
}

/* A weight name's heap object with a size other than the string's length
 * (libhdf5 1.10.8's H5HG_read would copy that many bytes into a buffer of
 * the string's length), and one whose size runs past its collection: each
 * is refused before libhdf5 follows the reference, naming the attribute.
 * The same checks pass on every golden tf_model.h5 (test_golden). */
static void test_bad_heap_references(void **state)
{
    (void)state;
    /* The first name of the list is the collection's last object, the
     * fifth its object 1: a bad size fails that string alone, a size past
     * the collection fails the collection, at the first string in it. */
    static const struct { uint64_t size; const char *string, *want; } cases[] = {
        {59, "string 4", "global heap object's size is not the string's length"},
        {1u << 20, "string 0", "runs past the collection"},
        {4096 - 32 + 8, "string 0", "runs past the collection"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *h5 = fresh_copy("heap");
        size_t len = 0;
        uint8_t *bytes = read_bytes(h5, &len);
        size_t object = second_heap_object(bytes, len);
        assert_int_equal(bytes[object], 1); /* object 1: the first weight name, 58 bytes */
        assert_int_equal(bytes[object + 8], 58);
        for (int i = 0; i < 8; i++)
            bytes[object + 8 + (size_t)i] = (uint8_t)(cases[c].size >> (8 * i));
        write_bytes(h5, bytes, len);
        free(bytes);
        const char *want[] = {"tf_model.h5", "weight_names of transformer", cases[c].string,
                              cases[c].want};
        expect_open_fails(want, 4);
    }
}

/* A name longer than any layer or weight path is refused before libhdf5
 * reads it (many references to one long object would make H5Aread
 * allocate their product: fuzz_h5 made one input ask for gigabytes). */
static void test_name_too_long(void **state)
{
    (void)state;
    const char *h5 = fresh_copy("long-name");
    char *name = malloc(2000);
    memset(name, 'a', 1999);
    name[1999] = '\0';
    const char *layers[] = {"transformer", name};
    hid_t f = H5Fopen(h5, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    write_strings(f, "layer_names", layers, 2, 0);
    H5Fclose(f);
    free(name);
    const char *want[] = {"tf_model.h5", "layer_names of /", "string 1 (1999 bytes",
                          "longer than any layer or weight name"};
    expect_open_fails(want, 4);
}

/* The reader over a file image (as the fuzz target feeds it) gives the
 * file reader's entries, and its errors name the same things. */
static void test_image_reader(void **state)
{
    (void)state;
    size_t len = 0;
    uint8_t *bytes = read_bytes(GOLDEN "/tf_model.h5", &len);
    shard_error_t err = {0};
    tensor_file_t *from_file = tensor_file_open_h5(GOLDEN "/tf_model.h5", &err);
    tensor_file_t *from_image = tensor_file_open_h5_image("tf_model.h5", bytes, len, &err);
    assert_non_null(from_file);
    assert_non_null(from_image);
    assert_int_equal(from_file->count, from_image->count);
    for (size_t i = 0; i < from_file->count; i++) {
        const tensor_entry_t *a = NULL, *b = NULL;
        assert_int_equal(tensor_file_fetch(from_file, from_file->entries[i].name, &a, &err), SHARD_OK);
        assert_int_equal(tensor_file_fetch(from_image, from_file->entries[i].name, &b, &err), SHARD_OK);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    tensor_file_destroy(&from_file);
    tensor_file_destroy(&from_image);
    size_t object = second_heap_object(bytes, len);
    bytes[object + 8] = 59;
    assert_null(tensor_file_open_h5_image("tf_model.h5", bytes, len, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "global heap object's size is not the string's length"));
    free(bytes);
}

/* A kernel is handed out in the engine's [out, in] layout, element by
 * element the transpose of the stored [in, out] dataset. */
static void test_kernel_transposed(void **state)
{
    (void)state;
    shard_error_t err = {0};
    hid_t f = H5Fopen(GOLDEN "/tf_model.h5", H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t g = H5Gopen2(f, LAYER, H5P_DEFAULT);
    hid_t d = H5Dopen2(g, Q_KERNEL, H5P_DEFAULT);
    hsize_t dims[2];
    hid_t space = H5Dget_space(d);
    assert_int_equal(H5Sget_simple_extent_dims(space, dims, NULL), 2);
    float *stored = malloc(dims[0] * dims[1] * sizeof *stored);
    assert_true(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, stored) >= 0);
    H5Sclose(space);
    H5Dclose(d);
    H5Gclose(g);
    H5Fclose(f);
    tensor_file_t *tf = tensor_file_open_h5(GOLDEN "/tf_model.h5", &err);
    assert_non_null(tf);
    const tensor_entry_t *e = NULL;
    assert_int_equal(tensor_file_fetch(tf, "transformer.attentions.0.q_lin.weight", &e, &err),
                     SHARD_OK);
    assert_non_null(e);
    assert_int_equal(e->shape[0], (int64_t)dims[1]);
    assert_int_equal(e->shape[1], (int64_t)dims[0]);
    const float *w = e->data;
    for (hsize_t o = 0; o < dims[1]; o++)
        for (hsize_t i = 0; i < dims[0]; i++)
            if (w[o * dims[0] + i] != stored[i * dims[1] + o])
                fail_msg("weight[%llu][%llu] = %g, stored kernel[%llu][%llu] = %g",
                         (unsigned long long)o, (unsigned long long)i, w[o * dims[0] + i],
                         (unsigned long long)i, (unsigned long long)o, stored[i * dims[1] + o]);
    tensor_file_destroy(&tf);
    free(stored);
}

/* ---------------------------------------------------------------- libhdf5's own failures */

/* Inputs fuzz_h5 found that break libhdf5 1.10.8 itself (kept in
 * tests/fuzz/regressions/): two make its attribute message decoding read
 * past the object header (from H5Aexists), which in xlm-infer's process
 * crashes with SIGSEGV every time (what the garbage it reads is depends
 * on the heap, so the crash is checked in that fresh process); one
 * declares a 17 GB metadata cache entry that H5Gopen2 allocates and fills.
 * Each is read in the checking child and comes back as an error naming the
 * file; the process neither crashes nor grows. */
/* Under AddressSanitizer the child's SIGSEGV is ASan's report and exit
 * status 1, which the parent names as a failure rather than a crash. */
#ifdef __SANITIZE_ADDRESS__
#define CHILD_CRASH_TEXT "libhdf5 failed reading the file's structure (exit status 1"
#else
#define CHILD_CRASH_TEXT "libhdf5 crashed reading the file's structure (signal 11"
#endif

static void test_libhdf5_failures_contained(void **state)
{
    (void)state;
    static const char *const crashing[] = {"h5_attribute_decode_segv.h5",
                                           "h5_attribute_decode_segv2.h5"};
    for (size_t c = 0; c < sizeof crashing / sizeof crashing[0]; c++) {
        char cmd[20000];
        const char *h5 = fresh_copy("libhdf5");
        snprintf(cmd, sizeof cmd, "cp '%s/tests/fuzz/regressions/%s' '%s' && head -1 '%s/cases.jsonl' "
                 "| '%s/xlm-infer' --model '%s' > '%s/out.jsonl' 2>&1; status=$?; cat '%s/out.jsonl'; "
                 "[ $status -lt 128 ] && grep -q -F \"" CHILD_CRASH_TEXT "\" '%s/out.jsonl'",
                 XLM_SOURCE_DIR, crashing[c], h5, dir, XLM_BIN_DIR,
                 dir, dir, dir, dir);
        assert_int_equal(system(cmd), 0);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/fuzz/regressions/h5_object_header_17gb.h5",
             XLM_SOURCE_DIR);
    shard_error_t err = {0};
    size_t before = resident_bytes();
    tensor_file_t *tf = tensor_file_open_h5(path, &err);
    size_t growth = resident_bytes() - before;
    print_message("%s (resident growth %zu KiB)\n", err.message, growth / 1024);
    assert_null(tf);
    assert_int_equal(err.code, SHARD_ERR_FORMAT);
    assert_non_null(strstr(err.message, "h5_object_header_17gb.h5"));
    assert_true(growth < (size_t)64 * 1024 * 1024);
}

/* ---------------------------------------------------------------- stage memory */

/* TF's name of a PyTorch weight of an LM checkpoint without the
 * "transformer." prefix (modeling_tf_pytorch_utils.py's rules backwards);
 * *group the top-level layer; *transpose for Dense kernels. */
static void tf_name(const char *torch, char *out, size_t size, const char **group, bool *transpose)
{
    char path[512] = "", copy[512];
    snprintf(copy, sizeof copy, "%s", torch);
    char *parts[16] = {copy};
    int n = 0;
    for (char *p = strtok(copy, "."); p && n < 16; p = strtok(NULL, "."))
        parts[n++] = p;
    assert_true(n > 0);
    const char *last = parts[n - 1], *parent = n > 1 ? parts[n - 2] : "";
    bool norm = strncmp(parts[0], "layer_norm", 10) == 0;
    *transpose = false;
    size_t used = 0;
    for (int i = 0; i < n - 1; i++) {
        bool index = parts[i][0] >= '0' && parts[i][0] <= '9';
        used += (size_t)snprintf(path + used, sizeof path - used, "%s%s",
                                 i == 0 ? "" : index ? "_._" : "/", parts[i]);
    }
    if (strcmp(last, "bias") == 0)
        last = norm ? "beta" : "bias";
    else if (norm)
        last = "gamma";
    else if (strcmp(parent, "position_embeddings") == 0 || strcmp(parent, "lang_embeddings") == 0)
        last = "embeddings";
    else if (strcmp(parent, "embeddings") != 0) {
        last = "kernel";
        *transpose = true;
    }
    if (strncmp(torch, "pred_layer.proj.", 16) == 0) {
        *group = "pred_layer_._proj";
        snprintf(out, size, "tfxlm_with_lm_head_model/pred_layer_._proj/%s:0", last);
    } else {
        *group = "transformer";
        snprintf(out, size, "tfxlm_with_lm_head_model/transformer/%s/%s:0", path, last);
    }
}

/* Writes the weights of safetensors folder src as dst/tf_model.h5 in the
 * layout of HF's TF classes. */
/* A check child that never gets going (a lock held at fork by another
 * thread: AddressSanitizer's allocator hung a sanitized worker so) is
 * killed after 10 s without CPU and the check forked again. Here a thread
 * stops the first child the process forks. */
static volatile pid_t stopped_child;

static void *stop_first_child(void *unused)
{
    (void)unused;
    const pid_t self = getpid();
    for (int polls = 0; polls < 20000 && !stopped_child; polls++) {
        for (pid_t pid = self + 1; pid < self + 4096 && !stopped_child; pid++) {
            char path[64], stat[512];
            snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
            FILE *f = fopen(path, "r");
            if (!f)
                continue;
            size_t n = fread(stat, 1, sizeof stat - 1, f);
            fclose(f);
            stat[n] = '\0';
            const char *after = strrchr(stat, ')');
            int ppid = 0;
            if (after && sscanf(after + 1, " %*c %d", &ppid) == 1 && ppid == self &&
                kill(pid, SIGSTOP) == 0)
                stopped_child = pid;
        }
        usleep(200);
    }
    return NULL;
}

static void test_stalled_check_child_is_forked_again(void **state)
{
    (void)state;
    pthread_t watcher;
    stopped_child = 0;
    assert_int_equal(pthread_create(&watcher, NULL, stop_first_child, NULL), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    shard_error_t err = {0};
    tensor_file_t *tf = tensor_file_open_h5(GOLDEN "/tf_model.h5", &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(watcher, NULL);
    const double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (!tf)
        fail_msg("%s", err.message);
    assert_true(stopped_child > 0);
    assert_true(kill(stopped_child, 0) != 0); /* killed and reaped */
    print_message("stalled check child %d: opened after %.1f s\n", (int)stopped_child, seconds);
    assert_true(seconds >= 9.5);
    tensor_file_destroy(&tf);
}

static void write_keras_h5(const char *src, const char *dst)
{
    char path[4200];
    shard_error_t err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    tensor_file_t *tf = tensor_file_open_safetensors(path, &err);
    assert_non_null(tf);
    snprintf(path, sizeof path, "%s/tf_model.h5", dst);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    const char *groups[] = {"transformer", "pred_layer_._proj"};
    hid_t g[2];
    char **names[2];
    size_t n_names[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        g[i] = H5Gcreate2(f, groups[i], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        names[i] = calloc(tf->count, sizeof *names[i]);
    }
    for (size_t i = 0; i < tf->count; i++) {
        const tensor_entry_t *e = &tf->entries[i];
        char name[600];
        const char *group = NULL;
        bool transpose = false;
        tf_name(e->name, name, sizeof name, &group, &transpose);
        int k = strcmp(group, "transformer") == 0 ? 0 : 1;
        names[k][n_names[k]++] = strdup(name);
        hsize_t dims[2] = {(hsize_t)e->shape[0], e->ndim > 1 ? (hsize_t)e->shape[1] : 1};
        const float *data = e->data;
        float *t = NULL;
        if (transpose) {
            dims[0] = (hsize_t)e->shape[1];
            dims[1] = (hsize_t)e->shape[0];
            t = malloc(e->nbytes);
            for (int64_t r = 0; r < e->shape[0]; r++)
                for (int64_t c = 0; c < e->shape[1]; c++)
                    t[c * e->shape[0] + r] = data[r * e->shape[1] + c];
            data = t;
        }
        hid_t space = H5Screate_simple(e->ndim, dims, NULL);
        hid_t d = H5Dcreate2(g[k], name, H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        assert_true(d >= 0);
        assert_true(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
        H5Dclose(d);
        H5Sclose(space);
        free(t);
    }
    for (int i = 0; i < 2; i++) {
        write_strings(g[i], "weight_names", (const char *const *)names[i], n_names[i], 0);
        for (size_t j = 0; j < n_names[i]; j++)
            free(names[i][j]);
        free(names[i]);
        H5Gclose(g[i]);
    }
    write_strings(f, "layer_names", groups, 2, 0);
    H5Pclose(lcpl);
    H5Fclose(f);
    tensor_file_destroy(&tf);
}

static size_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%lu %lu", &size, &resident), 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Resident growth of opening a range and running its layers once (which
 * brings mapped weights in), measured in a forked child so that
 * memory the allocator kept from an earlier open cannot hide it. */
static size_t growth_of(const char *model_dir, const shard_range_t *range)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        shard_error_t err = {0};
        size_t before = resident_bytes();
        shard_model_t *model =
            shard_model_open(model_dir, &(shard_model_options_t){.range = range}, &err);
        /* The layers run once, so mapped weights are brought in as well. */
        shard_state_t *run_state = shard_state_new();
        shard_acts_t *acts = shard_acts_new();
        const int64_t d = model ? shard_model_config(model)->emb_dim : 0;
        bool ran = model && shard_acts_reserve(acts, 1, 64, d, 64, &err) == SHARD_OK;
        if (ran) {
            acts->row_start[0] = 0;
            acts->row_start[1] = 64;
            for (int64_t t = 0; t < 64; t++) {
                acts->position[t] = (int32_t)t;
                acts->is_real[t] = 1;
                for (int64_t i = 0; i < d; i++)
                    acts->hidden[t * d + i] = (float)((t * 7 + i * 3) % 11) / 11.0f - 0.5f;
            }
            ran = shard_run_layers(model, run_state, acts, &err) == SHARD_OK;
        }
        size_t growth = ran ? resident_bytes() - before : 0;
        ssize_t w = write(fds[1], &growth, sizeof growth);
        _exit(ran && w == (ssize_t)sizeof growth ? 0 : 1);
    }
    close(fds[1]);
    size_t growth = 0;
    assert_int_equal(read(fds[0], &growth, sizeof growth), (ssize_t)sizeof growth);
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return growth;
}

/* An 8-layer checkpoint as tf_model.h5 alone: the stage [3, 4) reads
 * about an eighth of what the whole model does (as test_stage_memory
 * checks for the other formats). Layers of 28 MiB (emb 768), so that the
 * share is what is measured: libhdf5 keeps about 2.5 MiB per open file
 * whatever its size, which on 3 MiB layers was most of the difference. */
static void test_stage_holds_its_share(void **state)
{
    (void)state;
    char base[1024], h5dir[1024], cmd[16000];
    snprintf(base, sizeof base, "%s/h5-%d-stage-src", XLM_TEST_TMP, (int)getpid());
    snprintf(h5dir, sizeof h5dir, "%s/h5-%d-stage", XLM_TEST_TMP, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' && python3 '%s/tests/tools/make_checkpoint.py' '%s' "
             "'%s/tiny-clm-enfr' --emb 768 --layers 8 --heads 4 --causal && mkdir -p '%s' && "
             "cp '%s'/*.json '%s'/merges.txt '%s'/", base, h5dir, XLM_SOURCE_DIR, base,
             XLM_MODELS_DIR, h5dir, base, base, h5dir);
    assert_int_equal(system(cmd), 0);
    write_keras_h5(base, h5dir);
    shard_range_t stage = {3, 4, false, false}, whole = {0, 8, false, false};
    size_t one = growth_of(h5dir, &stage), all = growth_of(h5dir, &whole);
    size_t mapped = growth_of(base, &stage); /* the same stage from model.safetensors */
    print_message("tf_model.h5: resident growth: stage [3, 4) %zu KiB, layers [0, 8) %zu KiB; "
                  "model.safetensors stage %zu KiB\n", one / 1024, all / 1024, mapped / 1024);
    assert_true(all >= 7 * (size_t)3 * 1024 * 1024);
    assert_true(one <= all / 4);
    /* Its share and no more: within 1.3 times what the mapped safetensors
     * stage holds (no [in, out] copy beside the transposed kernels). */
    if (one * 10 > mapped * 13)
        fail_msg("tf_model.h5 stage holds %zu KiB, safetensors %zu KiB: over 1.3 times",
                 one / 1024, mapped / 1024);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", base, h5dir);
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
        cmocka_unit_test(test_bad_heap_references),
        cmocka_unit_test(test_name_too_long),
        cmocka_unit_test(test_image_reader),
        cmocka_unit_test(test_kernel_transposed),
        cmocka_unit_test(test_libhdf5_failures_contained),
        cmocka_unit_test(test_stalled_check_child_is_forked_again),
        cmocka_unit_test(test_stage_holds_its_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
