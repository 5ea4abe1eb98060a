/* test_tensor_torch.c: the pytorch_model.bin reader.
 *
 * The golden clm-lm checkpoint is checked bit for bit against its
 * model.safetensors, read here by a tiny independent reader (cJSON for the
 * header), so this test does not depend on shard/checkpoint/safetensors.c.
 *
 * Malformed archives are built at test time under XLM_TEST_TMP with libzip:
 * variants of the golden archive (entries dropped or replaced) and small
 * hand-made state dicts written by a pickle builder that mimics torch.save,
 * with one thing broken at a time. Every case must fail with a message, never
 * crash; run under -DXLM_SANITIZE=ON to check the reader's memory too. */
#define _GNU_SOURCE /* memmem */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

#include "shard_checkpoint.h"

#define GOLDEN_BIN XLM_GOLDEN_DIR "/clm-lm/pytorch_model.bin"
#define GOLDEN_ST XLM_GOLDEN_DIR "/clm-lm/model.safetensors"

/* ---------------------------------------------------------------- files */

static const char *tmp_path(const char *name)
{
    static char path[1024];
    int n = snprintf(path, sizeof path, "%s/torch_%s", XLM_TEST_TMP, name);
    assert_true(n > 0 && (size_t)n < sizeof path);
    return path;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return buf;
}

static void write_all(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len > 0)
        assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Opens path and fetches every entry, as a model binding all of them
 * would: storages are read on demand, so a bad storage shows at fetch. On
 * failure the file is destroyed and err names the problem. */
static tensor_file_t *open_loaded(const char *path, shard_error_t *err)
{
    tensor_file_t *tf = tensor_file_open_torch(path, err);
    for (size_t i = 0; tf != NULL && i < tf->count; i++) {
        const tensor_entry_t *e = NULL;
        if (tensor_file_fetch(tf, tf->entries[i].name, &e, err) != SHARD_OK)
            tensor_file_destroy(&tf);
    }
    return tf;
}

/* Opens path, expecting failure with code and a message containing want. */
static void expect_fail(const char *path, shard_status_t code, const char *want)
{
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(path, &err);
    if (tf != NULL || err.code != code || strstr(err.message, want) == NULL)
        print_error("opened=%d code=%d (want %d) message: %s (want '%s')\n",
                    tf != NULL, (int)err.code, (int)code, err.message, want);
    assert_null(tf);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.message, want));
    assert_non_null(strstr(err.message, "tensor_file_open_torch"));
}

/* ---------------------------------------------------------------- zip entries */

typedef struct {
    size_t n;
    char *names[128];
    uint8_t *data[128];
    size_t len[128];
} zentries_t;

static void zentries_set(zentries_t *z, const char *name, const void *data, size_t len)
{
    size_t i = 0;
    while (i < z->n && strcmp(z->names[i], name) != 0)
        i++;
    if (i == z->n) {
        assert_true(z->n < 128);
        z->names[z->n++] = strdup(name);
    } else {
        free(z->data[i]);
    }
    z->data[i] = malloc(len > 0 ? len : 1);
    assert_non_null(z->data[i]);
    if (len > 0)
        memcpy(z->data[i], data, len);
    z->len[i] = len;
}

static void zentries_remove(zentries_t *z, const char *name)
{
    for (size_t i = 0; i < z->n; i++) {
        if (strcmp(z->names[i], name) != 0)
            continue;
        free(z->names[i]);
        free(z->data[i]);
        memmove(&z->names[i], &z->names[i + 1], (z->n - i - 1) * sizeof z->names[0]);
        memmove(&z->data[i], &z->data[i + 1], (z->n - i - 1) * sizeof z->data[0]);
        memmove(&z->len[i], &z->len[i + 1], (z->n - i - 1) * sizeof z->len[0]);
        z->n--;
        return;
    }
    fail_msg("no entry %s", name);
}

static const uint8_t *zentries_get(const zentries_t *z, const char *name, size_t *len)
{
    for (size_t i = 0; i < z->n; i++) {
        if (strcmp(z->names[i], name) == 0) {
            *len = z->len[i];
            return z->data[i];
        }
    }
    fail_msg("no entry %s", name);
    return NULL;
}

static void zentries_clear(zentries_t *z)
{
    for (size_t i = 0; i < z->n; i++) {
        free(z->names[i]);
        free(z->data[i]);
    }
    z->n = 0;
}

static void zentries_load(zentries_t *z, const char *path)
{
    int code = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY, &code);
    assert_non_null(za);
    zip_int64_t n = zip_get_num_entries(za, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        zip_stat_t st;
        assert_int_equal(zip_stat_index(za, (zip_uint64_t)i, 0, &st), 0);
        uint8_t *buf = malloc(st.size + 1);
        assert_non_null(buf);
        zip_file_t *zf = zip_fopen_index(za, (zip_uint64_t)i, 0);
        assert_non_null(zf);
        assert_int_equal(zip_fread(zf, buf, st.size), (zip_int64_t)st.size);
        zip_fclose(zf);
        zentries_set(z, st.name, buf, st.size);
        free(buf);
    }
    zip_discard(za);
}

/* Writes the entries, stored (torch.save does not compress either). */
static void zentries_write(const zentries_t *z, const char *path)
{
    int code = 0;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &code);
    assert_non_null(za);
    for (size_t i = 0; i < z->n; i++) {
        zip_source_t *src = zip_source_buffer(za, z->data[i], z->len[i], 0);
        assert_non_null(src);
        zip_int64_t index = zip_file_add(za, z->names[i], src, ZIP_FL_ENC_UTF_8);
        assert_true(index >= 0);
        assert_int_equal(zip_set_file_compression(za, (zip_uint64_t)index, ZIP_CM_STORE, 0), 0);
    }
    assert_int_equal(zip_close(za), 0);
}

/* ---------------------------------------------------------------- safetensors, independently */

typedef struct {
    uint8_t *bytes;
    size_t len;
    cJSON *header;
    size_t data_start;
} st_file_t;

static void st_open(st_file_t *st, const char *path)
{
    st->bytes = read_all(path, &st->len);
    assert_true(st->len >= 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | st->bytes[i];
    assert_true(n <= st->len - 8);
    st->header = cJSON_ParseWithLength((const char *)st->bytes + 8, (size_t)n);
    assert_non_null(st->header);
    st->data_start = 8 + (size_t)n;
}

static void st_close(st_file_t *st)
{
    cJSON_Delete(st->header);
    free(st->bytes);
}

/* Checks entry e against the safetensors tensor st_name, bit for bit. */
static void st_expect_equal(const st_file_t *st, const char *st_name, const tensor_entry_t *e)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(st->header, st_name);
    if (t == NULL)
        fail_msg("%s not in model.safetensors", st_name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    assert_true(cJSON_IsString(dtype) && cJSON_IsArray(shape) && cJSON_IsArray(offsets));
    assert_string_equal(tensor_dtype_name(e->dtype), dtype->valuestring);
    assert_int_equal(e->ndim, cJSON_GetArraySize(shape));
    for (int d = 0; d < e->ndim; d++)
        assert_int_equal(e->shape[d], (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble);
    size_t begin = (size_t)cJSON_GetArrayItem(offsets, 0)->valuedouble;
    size_t end = (size_t)cJSON_GetArrayItem(offsets, 1)->valuedouble;
    assert_true(begin <= end && st->data_start + end <= st->len);
    assert_int_equal(e->nbytes, end - begin);
    assert_non_null(e->data);
    assert_memory_equal(e->data, st->bytes + st->data_start + begin, e->nbytes);
}

/* ---------------------------------------------------------------- pickle builder */

typedef struct {
    uint8_t buf[1 << 14];
    size_t len;
} pk_t;

static void pk_bytes(pk_t *p, const void *data, size_t n)
{
    assert_true(p->len + n <= sizeof p->buf);
    memcpy(p->buf + p->len, data, n);
    p->len += n;
}

static void pk_op(pk_t *p, uint8_t op)
{
    pk_bytes(p, &op, 1);
}

static void pk_le(pk_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pk_op(p, (uint8_t)(v >> (8 * i)));
}

static void pk_str(pk_t *p, const char *s, bool short_form)
{
    size_t n = strlen(s);
    if (short_form && n < 256) {
        pk_op(p, 0x8c);
        pk_le(p, n, 1);
    } else {
        pk_op(p, 'X');
        pk_le(p, n, 4);
    }
    pk_bytes(p, s, n);
}

/* The smallest encoding, as Python's pickler picks it. */
static void pk_int(pk_t *p, int64_t v)
{
    if (v >= 0 && v < 256) {
        pk_op(p, 'K');
        pk_le(p, (uint64_t)v, 1);
    } else if (v >= 0 && v < 65536) {
        pk_op(p, 'M');
        pk_le(p, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        pk_op(p, 'J');
        pk_le(p, (uint64_t)v, 4);
    } else {
        pk_op(p, 0x8a);
        pk_op(p, 8);
        pk_le(p, (uint64_t)v, 8);
    }
}

static void pk_global(pk_t *p, const char *module, const char *name)
{
    pk_op(p, 'c');
    pk_bytes(p, module, strlen(module));
    pk_op(p, '\n');
    pk_bytes(p, name, strlen(name));
    pk_op(p, '\n');
}

/* ---------------------------------------------------------------- fake archives */

typedef enum {
    MUT_NONE = 0,
    MUT_OFFSET_STR,      /* storage_offset is a str */
    MUT_KEY_INT,         /* persistent id key is an int */
    MUT_PID_TAG,         /* persistent id starts with 'strage' */
    MUT_PID_SHORT,       /* persistent id of 4 items */
    MUT_SHAPE_STR,       /* a size item is a str */
    MUT_STRIDE_SHORT,    /* stride has one dimension less than size */
    MUT_GRAD_INT,        /* requires_grad is an int */
    MUT_ARGS_SHORT,      /* _rebuild_tensor_v2 with 5 arguments */
    MUT_VALUE_INT,       /* a state dict value is an int */
    MUT_NAME_INT,        /* a state dict key is an int */
    MUT_EVIL_GLOBAL,     /* os.system instead of the rebuild function */
    MUT_ROOT_LIST,       /* the pickle holds a list, not a dict */
} mutation_t;

typedef struct {
    const char *name;
    const char *storage_type; /* "FloatStorage", ... */
    const char *key;
    int64_t numel; /* of the storage, as the persistent id says */
    int64_t offset;
    int ndim;
    int64_t shape[4];
    int64_t stride[4];
} fake_tensor_t;

typedef struct {
    fake_tensor_t t[8];
    size_t count;
    mutation_t mutation;
    bool as_parameter; /* wrap tensors in _rebuild_parameter */
    bool proto4;       /* FRAME, SHORT_BINUNICODE, MEMOIZE */
    const char *byteorder; /* NULL: no entry */
} fake_t;

static size_t storage_elem(const char *type)
{
    static const struct { const char *name; size_t size; } sizes[] = {
        {"FloatStorage", 4}, {"HalfStorage", 2}, {"BFloat16Storage", 2},
        {"DoubleStorage", 8}, {"LongStorage", 8}, {"IntStorage", 4},
        {"CharStorage", 1}, {"ByteStorage", 1}, {"BoolStorage", 1},
        {"ShortStorage", 2},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (strcmp(sizes[i].name, type) == 0)
            return sizes[i].size;
    }
    fail_msg("storage type %s", type);
    return 0;
}

/* A state dict of three tensors over three storages: two views of one
 * float storage (tied, at different offsets), a half vector, a long scalar,
 * and an empty float tensor. */
static fake_t fake_default(void)
{
    fake_t f = {
        .t = {
            {"a.weight", "FloatStorage", "0", 12, 0, 2, {3, 4}, {4, 1}},
            {"a.tied", "FloatStorage", "0", 12, 4, 2, {2, 4}, {4, 1}},
            {"b.half", "HalfStorage", "1", 6, 0, 1, {6}, {1}},
            {"c.scalar", "LongStorage", "2", 1, 0, 0, {0}, {0}},
            {"d.empty", "FloatStorage", "3", 0, 0, 2, {0, 5}, {5, 1}},
        },
        .count = 5,
        .byteorder = "little",
    };
    return f;
}

static void pk_memo(pk_t *p, const fake_t *f, uint32_t *memo)
{
    if (f->proto4) {
        pk_op(p, 0x94);
    } else {
        pk_op(p, 'r');
        pk_le(p, *memo, 4);
    }
    (*memo)++;
}

static void pk_pid(pk_t *p, const fake_t *f, const fake_tensor_t *t)
{
    pk_op(p, '(');
    pk_str(p, f->mutation == MUT_PID_TAG ? "strage" : "storage", f->proto4);
    pk_global(p, "torch", t->storage_type);
    if (f->mutation == MUT_KEY_INT)
        pk_int(p, atoi(t->key));
    else
        pk_str(p, t->key, f->proto4);
    pk_str(p, "cpu", f->proto4);
    if (f->mutation != MUT_PID_SHORT)
        pk_int(p, t->numel);
    pk_op(p, 't');
    pk_op(p, 'Q');
}

static void pk_dims(pk_t *p, const int64_t *dims, int n, bool str_first)
{
    pk_op(p, '(');
    for (int d = 0; d < n; d++) {
        if (d == 0 && str_first)
            pk_str(p, "3", false);
        else
            pk_int(p, dims[d]);
    }
    pk_op(p, 't');
}

static void pk_tensor(pk_t *p, const fake_t *f, const fake_tensor_t *t, uint32_t *memo)
{
    if (f->as_parameter)
        pk_global(p, "torch._utils", "_rebuild_parameter");
    if (f->mutation == MUT_EVIL_GLOBAL)
        pk_global(p, "os", "system");
    else
        pk_global(p, "torch._utils", "_rebuild_tensor_v2");
    pk_memo(p, f, memo);
    pk_op(p, '(');
    pk_pid(p, f, t);
    if (f->mutation == MUT_OFFSET_STR)
        pk_str(p, "0", false);
    else
        pk_int(p, t->offset);
    pk_dims(p, t->shape, t->ndim, f->mutation == MUT_SHAPE_STR && t->ndim > 0);
    pk_dims(p, t->stride, f->mutation == MUT_STRIDE_SHORT ? t->ndim - 1 : t->ndim, false);
    if (f->mutation == MUT_GRAD_INT)
        pk_int(p, 0);
    else
        pk_op(p, 0x89);
    if (f->mutation != MUT_ARGS_SHORT) {
        pk_global(p, "collections", "OrderedDict");
        pk_op(p, ')');
        pk_op(p, 'R');
    }
    pk_op(p, 't');
    pk_op(p, 'R');
    if (f->as_parameter) {
        pk_op(p, 0x88);
        pk_op(p, 'N');
        pk_op(p, 0x87);
        pk_op(p, 'R');
    }
}

/* The state dict as torch.save writes it: OrderedDict() filled by SETITEMS,
 * then BUILD with a _metadata attribute. */
static void pk_state_dict(pk_t *p, const fake_t *f)
{
    uint32_t memo = 0;
    pk_op(p, 0x80);
    pk_op(p, f->proto4 ? 4 : 2);
    if (f->proto4) {
        pk_op(p, 0x95);
        pk_le(p, 0, 8); /* an empty frame: only a hint */
    }
    if (f->mutation == MUT_ROOT_LIST) {
        pk_op(p, ']');
        pk_op(p, '.');
        return;
    }
    pk_global(p, "collections", "OrderedDict");
    pk_op(p, ')');
    pk_op(p, 'R');
    pk_memo(p, f, &memo);
    pk_op(p, '(');
    for (size_t i = 0; i < f->count; i++) {
        if (i == 0 && f->mutation == MUT_NAME_INT)
            pk_int(p, 5);
        else
            pk_str(p, f->t[i].name, f->proto4);
        if (i == 0 && f->mutation == MUT_VALUE_INT)
            pk_int(p, 7);
        else
            pk_tensor(p, f, &f->t[i], &memo);
    }
    pk_op(p, 'u');
    /* BUILD state: {'_metadata': OrderedDict({'': {'version': 1}})} */
    pk_op(p, '}');
    pk_str(p, "_metadata", f->proto4);
    pk_global(p, "collections", "OrderedDict");
    pk_op(p, ')');
    pk_op(p, 'R');
    pk_str(p, "", f->proto4);
    pk_op(p, '}');
    pk_str(p, "version", f->proto4);
    pk_int(p, 1);
    pk_op(p, 's');
    pk_op(p, 's');
    pk_op(p, 's');
    pk_op(p, 'b');
    pk_op(p, '.');
}

/* Storage byte j of key k: distinct per storage, so views can be checked. */
static uint8_t storage_byte(const char *key, size_t j)
{
    return (uint8_t)(atoi(key) * 53 + (int)j * 7 + 1);
}

static void fake_storages(zentries_t *z, const fake_t *f)
{
    for (size_t i = 0; i < f->count; i++) {
        const fake_tensor_t *t = &f->t[i];
        char name[64];
        snprintf(name, sizeof name, "archive/data/%s", t->key);
        size_t n = (size_t)t->numel * storage_elem(t->storage_type);
        /* Absurd sizes are refused before the entry is read: keep it small. */
        if (t->numel < 0 || t->numel > (1 << 24))
            n = 16;
        uint8_t *bytes = malloc(n + 1);
        assert_non_null(bytes);
        for (size_t j = 0; j < n; j++)
            bytes[j] = storage_byte(t->key, j);
        zentries_set(z, name, bytes, n);
        free(bytes);
    }
}

static void fake_entries(zentries_t *z, const fake_t *f)
{
    static pk_t p;
    p.len = 0;
    pk_state_dict(&p, f);
    zentries_set(z, "archive/data.pkl", p.buf, p.len);
    fake_storages(z, f);
    zentries_set(z, "archive/version", "3\n", 2);
    if (f->byteorder != NULL)
        zentries_set(z, "archive/byteorder", f->byteorder, strlen(f->byteorder));
}

static const char *fake_write(const fake_t *f, const char *name)
{
    zentries_t z = {0};
    fake_entries(&z, f);
    const char *path = tmp_path(name);
    zentries_write(&z, path);
    zentries_clear(&z);
    return path;
}

static void expect_fake_fail(const fake_t *f, shard_status_t code, const char *want)
{
    expect_fail(fake_write(f, "fake.bin"), code, want);
}

/* ---------------------------------------------------------------- setup */

static int setup_tmp(void **state)
{
    if (mkdir(XLM_TEST_TMP, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- generic helpers */

static void test_dtype_helpers(void **state)
{
    static const char *const names[TENSOR_DTYPE_COUNT_] = {
        "F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL"};
    static const size_t sizes[TENSOR_DTYPE_COUNT_] = {4, 2, 2, 8, 8, 4, 1, 1, 1};
    for (int d = 0; d < TENSOR_DTYPE_COUNT_; d++) {
        assert_string_equal(tensor_dtype_name((tensor_dtype_t)d), names[d]);
        assert_int_equal(tensor_dtype_size((tensor_dtype_t)d), sizes[d]);
    }
    assert_string_equal(tensor_dtype_name(TENSOR_DTYPE_COUNT_), "unknown");
    assert_int_equal(tensor_dtype_size(TENSOR_DTYPE_COUNT_), 0);
    assert_int_equal(tensor_dtype_size((tensor_dtype_t)-1), 0);
}

static void test_destroy_and_find_accept_null(void **state)
{
    tensor_file_t *tf = NULL;
    tensor_file_destroy(NULL);
    tensor_file_destroy(&tf);
    assert_null(tensor_file_find(NULL, "x"));
}

/* ---------------------------------------------------------------- golden */

static void test_golden_equals_safetensors(void **state)
{
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(GOLDEN_BIN, &err);
    if (tf == NULL)
        fail_msg("%s", err.message);
    st_file_t st;
    st_open(&st, GOLDEN_ST);

    size_t st_count = 0;
    for (const cJSON *t = st.header->child; t != NULL; t = t->next) {
        if (strcmp(t->string, "__metadata__") == 0)
            continue;
        st_count++;
        const tensor_entry_t *e = tensor_file_find(tf, t->string);
        if (e == NULL)
            fail_msg("%s missing from pytorch_model.bin", t->string);
        st_expect_equal(&st, t->string, e);
    }
    /* The .bin also holds the tied projection the safetensors file drops. */
    assert_int_equal(tf->count, st_count + 1);
    for (size_t i = 0; i < tf->count; i++) {
        const tensor_entry_t *e = &tf->entries[i];
        bool tied = strcmp(e->name, "pred_layer.proj.weight") == 0;
        st_expect_equal(&st, tied ? "transformer.embeddings.weight" : e->name, e);
    }
    assert_string_equal(tf->path, GOLDEN_BIN);
    assert_null(tensor_file_find(tf, "transformer.embeddings"));
    assert_null(tensor_file_find(tf, "_metadata"));
    st_close(&st);
    tensor_file_destroy(&tf);
    assert_null(tf);
}

static void test_golden_shared_storage(void **state)
{
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(GOLDEN_BIN, &err);
    assert_non_null(tf);
    const tensor_entry_t *proj = tensor_file_find(tf, "pred_layer.proj.weight");
    const tensor_entry_t *emb = tensor_file_find(tf, "transformer.embeddings.weight");
    assert_non_null(proj);
    assert_non_null(emb);
    assert_ptr_equal(proj->data, emb->data);
    assert_int_equal(proj->nbytes, emb->nbytes);
    assert_int_equal(proj->nbytes, 1044 * 32 * 4);
    /* Only the tied pair shares bytes: every other tensor has its own. */
    size_t shared = 0;
    for (size_t i = 0; i < tf->count; i++) {
        for (size_t j = i + 1; j < tf->count; j++) {
            if (tf->entries[i].data == tf->entries[j].data)
                shared++;
        }
    }
    assert_int_equal(shared, 1);
    tensor_file_destroy(&tf);
}

/* ---------------------------------------------------------------- hand-made archives that are fine */

static void check_fake_entries(const tensor_file_t *tf, const fake_t *f)
{
    assert_int_equal(tf->count, f->count);
    for (size_t i = 0; i < f->count; i++) {
        const fake_tensor_t *t = &f->t[i];
        const tensor_entry_t *e = &tf->entries[i];
        size_t elem = storage_elem(t->storage_type);
        assert_string_equal(e->name, t->name); /* state dict order kept */
        assert_int_equal(tensor_dtype_size(e->dtype), elem);
        assert_int_equal(e->ndim, t->ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(e->shape[d], t->shape[d]);
            numel *= (size_t)t->shape[d];
        }
        assert_int_equal(e->nbytes, numel * elem);
        assert_non_null(e->data);
        const uint8_t *bytes = e->data;
        for (size_t j = 0; j < e->nbytes; j++)
            assert_int_equal(bytes[j], storage_byte(t->key, (size_t)t->offset * elem + j));
    }
}

static void test_fake_state_dict(void **state)
{
    fake_t f = fake_default();
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(fake_write(&f, "ok.bin"), &err);
    if (tf == NULL)
        fail_msg("%s", err.message);
    check_fake_entries(tf, &f);
    assert_int_equal(tf->entries[0].dtype, TENSOR_F32);
    assert_int_equal(tf->entries[2].dtype, TENSOR_F16);
    assert_int_equal(tf->entries[3].dtype, TENSOR_I64);
    /* a.tied is a view 4 floats into a.weight's storage. */
    assert_ptr_equal((const uint8_t *)tf->entries[1].data,
                     (const uint8_t *)tf->entries[0].data + 16);
    assert_int_equal(tf->backing_size, 12 * 4 + 6 * 2 + 8 + 0);
    tensor_file_destroy(&tf);
}

/* torch.save(..., pickle_protocol=4), nn.Parameter values, no byteorder
 * entry (torch < 1.13), strides of size-1 dimensions that torch ignores. */
static void test_fake_variants(void **state)
{
    fake_t f = fake_default();
    f.proto4 = true;
    f.as_parameter = true;
    f.byteorder = NULL;
    f.t[f.count++] = (fake_tensor_t){"e.col", "BFloat16Storage", "4", 3, 0, 2,
                                     {3, 1}, {1, 7}};
    f.t[f.count++] = (fake_tensor_t){"f.bytes", "ByteStorage", "5", 70000, 69990, 1,
                                     {10}, {1}};
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(fake_write(&f, "variants.bin"), &err);
    if (tf == NULL)
        fail_msg("%s", err.message);
    check_fake_entries(tf, &f);
    assert_int_equal(tf->entries[5].dtype, TENSOR_BF16);
    assert_int_equal(tf->entries[6].dtype, TENSOR_U8);
    tensor_file_destroy(&tf);
}

/* ---------------------------------------------------------------- bad files */

static void test_bad_arguments(void **state)
{
    shard_error_t err = {0};
    assert_null(tensor_file_open_torch(NULL, &err));
    assert_int_equal(err.code, SHARD_ERR_INPUT);
    assert_null(tensor_file_open_torch(NULL, NULL)); /* no error to fill */
    expect_fail(tmp_path("does_not_exist.bin"), SHARD_ERR_IO, "does_not_exist");
}

static void test_not_a_zip(void **state)
{
    const char *path = tmp_path("text.bin");
    const char text[] = "this is not a zip archive, it is a sentence.\n";
    write_all(path, text, sizeof text - 1);
    expect_fail(path, SHARD_ERR_FORMAT, "not a readable zip archive");
    /* A safetensors file handed to the wrong reader. */
    expect_fail(GOLDEN_ST, SHARD_ERR_FORMAT, "not a readable zip archive");
}

/* Cut anywhere, the central directory is gone or wrong: never a crash. */
static void test_truncated_file(void **state)
{
    size_t len = 0;
    uint8_t *bytes = read_all(GOLDEN_BIN, &len);
    const size_t cuts[] = {len / 2, len - 1, len - 22, len - 100, 100, 4};
    const char *path = tmp_path("truncated.bin");
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, bytes, cuts[i]);
        expect_fail(path, SHARD_ERR_FORMAT, "truncated.bin");
    }
    write_all(path, bytes, 0); /* empty */
    expect_fail(path, SHARD_ERR_FORMAT, "truncated.bin");
    free(bytes);
}

static void test_missing_data_pkl(void **state)
{
    zentries_t z = {0};
    zentries_load(&z, GOLDEN_BIN);
    zentries_remove(&z, "pytorch_model/data.pkl");
    zentries_write(&z, tmp_path("no_pkl.bin"));
    expect_fail(tmp_path("no_pkl.bin"), SHARD_ERR_FORMAT, "<archive>/data.pkl");
    /* data.pkl at the root, not inside an archive folder. */
    size_t n = 0;
    const uint8_t *version = zentries_get(&z, "pytorch_model/version", &n);
    zentries_set(&z, "data.pkl", version, n);
    zentries_write(&z, tmp_path("no_pkl.bin"));
    expect_fail(tmp_path("no_pkl.bin"), SHARD_ERR_FORMAT, "<archive>/data.pkl");
    zentries_clear(&z);
}

static void test_storage_key_missing(void **state)
{
    zentries_t z = {0};
    zentries_load(&z, GOLDEN_BIN);
    zentries_remove(&z, "pytorch_model/data/5");
    zentries_write(&z, tmp_path("no_storage.bin"));
    expect_fail(tmp_path("no_storage.bin"), SHARD_ERR_FORMAT,
                "storage '5' has no entry 'pytorch_model/data/5'");
    zentries_clear(&z);
}

static void test_storage_too_small(void **state)
{
    /* The entry is shorter than the persistent id's numel says. */
    zentries_t z = {0};
    zentries_load(&z, GOLDEN_BIN);
    size_t n = 0;
    const uint8_t *bytes = zentries_get(&z, "pytorch_model/data/2", &n);
    uint8_t *shorter = malloc(n);
    assert_non_null(shorter);
    memcpy(shorter, bytes, n);
    zentries_set(&z, "pytorch_model/data/2", shorter, n - 4);
    free(shorter);
    zentries_write(&z, tmp_path("short_storage.bin"));
    expect_fail(tmp_path("short_storage.bin"), SHARD_ERR_FORMAT,
                "entry 'pytorch_model/data/2' holds 133628 bytes, expected 133632");
    zentries_clear(&z);

    /* The tensor's offset runs past its storage. */
    fake_t f = fake_default();
    f.t[1].offset = 5;
    expect_fake_fail(&f, SHARD_ERR_FORMAT,
                     "tensor 'a.tied': offset 5 + 8 elements runs past storage '0' "
                     "of 12 elements");
    f.t[1].offset = 13;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "offset 13 + 8 elements");
    f = fake_default();
    f.t[0].shape[0] = 4; /* 16 elements in a 12-element storage */
    f.t[0].stride[0] = 4;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "runs past storage '0'");
}

/* Bytes of a stored storage entry flipped in the archive: libzip's CRC. */
static void test_storage_crc(void **state)
{
    fake_t f = fake_default();
    const char *path = fake_write(&f, "crc.bin");
    size_t len = 0;
    uint8_t *bytes = read_all(path, &len);
    uint8_t pattern[12];
    for (size_t j = 0; j < sizeof pattern; j++)
        pattern[j] = storage_byte("1", j);
    uint8_t *at = NULL;
    for (size_t i = 0; i + sizeof pattern <= len && at == NULL; i++) {
        if (memcmp(bytes + i, pattern, sizeof pattern) == 0)
            at = bytes + i;
    }
    assert_non_null(at);
    at[3] ^= 0x40;
    write_all(path, bytes, len);
    free(bytes);
    expect_fail(path, SHARD_ERR_FORMAT, "archive/data/1");
}

static void test_storage_inconsistent(void **state)
{
    /* One key named with two dtypes. */
    fake_t f = fake_default();
    f.t[1].storage_type = "IntStorage";
    expect_fake_fail(&f, SHARD_ERR_FORMAT,
                     "storage '0' is a IntStorage of 12 elements here and a "
                     "FloatStorage of 12 elements before");
    /* A key that would leave the data folder. */
    f = fake_default();
    f.t[2].key = "../data.pkl";
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "persistent id key '../data.pkl'");
}

static void test_byteorder(void **state)
{
    fake_t f = fake_default();
    f.byteorder = "big";
    expect_fake_fail(&f, SHARD_ERR_UNSUPPORTED, "big-endian");
    f.byteorder = "little\n";
    zentries_t z = {0};
    fake_entries(&z, &f);
    zentries_write(&z, tmp_path("le.bin"));
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(tmp_path("le.bin"), &err);
    assert_non_null(tf);
    tensor_file_destroy(&tf);
    zentries_set(&z, "archive/byteorder", "middle", 6);
    zentries_write(&z, tmp_path("le.bin"));
    expect_fail(tmp_path("le.bin"), SHARD_ERR_FORMAT, "expected 'little' or 'big'");
    zentries_set(&z, "archive/byteorder", "little", 6);
    zentries_set(&z, "archive/version", "three", 5);
    zentries_write(&z, tmp_path("le.bin"));
    expect_fail(tmp_path("le.bin"), SHARD_ERR_FORMAT, "version entry");
    zentries_clear(&z);
}

static void test_non_contiguous(void **state)
{
    fake_t f = fake_default();
    f.t[0].stride[0] = 1; /* a transposed view: (3,4) with strides (1,3) */
    f.t[0].stride[1] = 3;
    expect_fake_fail(&f, SHARD_ERR_UNSUPPORTED, "tensor 'a.weight' is not contiguous");
}

static void test_bad_shapes(void **state)
{
    fake_t f = fake_default();
    f.t[2].shape[0] = -6;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "tensor size[0] is a int < 0");
    f = fake_default();
    f.t[2].stride[0] = -1;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "tensor stride[0] is a int < 0");
    f = fake_default();
    f.t[0].shape[0] = INT64_C(1) << 40;
    f.t[0].shape[1] = INT64_C(1) << 40;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "tensor 'a.weight': element count overflows");
    f = fake_default();
    f.t[2].offset = -1;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "storage_offset is a int");
    f = fake_default();
    f.t[0].numel = INT64_MAX / 2;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "storage '0' of 4611686018427387903 elements overflows");
    f = fake_default();
    f.t[3].numel = -1;
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "numel is a int, expected an int >= 0");
}

static void test_unsupported_globals(void **state)
{
    fake_t f = fake_default();
    f.t[2].storage_type = "ShortStorage";
    expect_fake_fail(&f, SHARD_ERR_UNSUPPORTED, "global torch.ShortStorage");
    f = fake_default();
    f.mutation = MUT_EVIL_GLOBAL;
    expect_fake_fail(&f, SHARD_ERR_UNSUPPORTED, "global os.system is not part");
}

static void test_wrong_types(void **state)
{
    static const struct {
        mutation_t mutation;
        const char *want;
    } cases[] = {
        {MUT_OFFSET_STR, "storage_offset is a str, expected an int >= 0"},
        {MUT_KEY_INT, "persistent id key is a int, expected a str"},
        {MUT_PID_TAG, "persistent id starts with a str, expected 'storage'"},
        {MUT_PID_SHORT, "persistent id is a tuple of 4 items"},
        {MUT_SHAPE_STR, "tensor size[0] is a str"},
        {MUT_STRIDE_SHORT, "tensor size has 2 dimensions, stride 1"},
        {MUT_GRAD_INT, "requires_grad is a int, expected a bool"},
        {MUT_ARGS_SHORT, "_rebuild_tensor_v2 takes 6 or 7 arguments, got 5"},
        {MUT_VALUE_INT, "state dict entry 'a.weight' is a int, expected a tensor"},
        {MUT_NAME_INT, "dict key is a int, expected a str"},
        {MUT_ROOT_LIST, "data.pkl holds a list, expected a state dict"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake_t f = fake_default();
        f.mutation = cases[i].mutation;
        expect_fake_fail(&f, SHARD_ERR_FORMAT, cases[i].want);
    }
}

static void test_duplicate_name(void **state)
{
    fake_t f = fake_default();
    f.t[2].name = "a.weight";
    expect_fake_fail(&f, SHARD_ERR_FORMAT, "tensor 'a.weight' appears twice");
}

/* A byte string literal and its length (it may hold NUL bytes). */
#define PKL(s) s, sizeof(s) - 1

/* Writes an archive whose data.pkl is the given bytes (no storages). */
static const char *pickle_write(const void *pkl, size_t len, const char *name)
{
    zentries_t z = {0};
    zentries_set(&z, "archive/data.pkl", pkl, len);
    zentries_set(&z, "archive/version", "3", 1);
    const char *path = tmp_path(name);
    zentries_write(&z, path);
    zentries_clear(&z);
    return path;
}

static void test_unknown_opcode(void **state)
{
    static const uint8_t string_op[] = "\x80\x02S'x'\n.";
    expect_fail(pickle_write(string_op, sizeof string_op - 1, "op.bin"),
                SHARD_ERR_FORMAT, "data.pkl offset 2, opcode STRING (0x53)");
    static const uint8_t bytes_op[] = "\x80\x02}q\x00" "C\x01x.";
    expect_fail(pickle_write(bytes_op, sizeof bytes_op - 1, "op.bin"),
                SHARD_ERR_FORMAT, "offset 5, opcode SHORT_BINBYTES (0x43)");
    static const uint8_t junk_op[] = "\x80\x02\xff.";
    expect_fail(pickle_write(junk_op, sizeof junk_op - 1, "op.bin"),
                SHARD_ERR_FORMAT, "offset 2, opcode <not a pickle opcode> (0xff)");
    static const uint8_t proto9[] = "\x80\x09}.";
    expect_fail(pickle_write(proto9, sizeof proto9 - 1, "op.bin"),
                SHARD_ERR_UNSUPPORTED, "pickle protocol 9");
}

static void test_bad_machine_states(void **state)
{
    static const struct {
        const char *pkl;
        size_t len;
        const char *want;
    } cases[] = {
        {PKL("\x80\x02R."), "offset 2, opcode REDUCE (0x52): stack underflow"},
        {PKL("\x80\x02h\x01."), "memo index 1 was never set"},
        {PKL("\x80\x02}j\xff\xff\xff\x7f."), "memo index 2147483647, expected below"},
        {PKL("\x80\x02}K\x01K\x02."), "3 values and 0 open MARKs left"},
        {PKL("\x80\x02}(."), "1 values and 1 open MARKs left"},
        {PKL("\x80\x02}.}"), "1 bytes after STOP"},
        {PKL("\x80\x02t."), "no MARK to close"},
        {PKL("\x80\x02(K\x01K\x02u."), "no dict below the MARK"},
        {PKL("\x80\x02}(K\x01u."), "odd number of values (1)"},
        {PKL("\x80\x02]K\x01K\x02s."), "sets an item of a list"},
        {PKL("\x80\x02}K\x01" "a."), "appends to a dict"},
        {PKL("\x80\x02}\x8c\x02\xc3\x28."), "not UTF-8"},
        /* A NUL is a valid str (numpy bytes in .pth files) but not a name. */
        {PKL("\x80\x02}\x8c\x03" "a\x00" "bK\x01s."), "state dict key 'a' holds a NUL at byte 1"},
        {PKL("\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."),
         "integer of 9 bytes"},
        {PKL("\x80\x02" "ccollections\nOrderedDict\n" "K\x01\x85R."),
         "OrderedDict called with 1 arguments"},
        {PKL("\x80\x02" "ctorch\nFloatStorage\n)R."), "calls a storage type"},
        {PKL("\x80\x02" "ccollections\nOrderedDict\n" "K\x01R."),
         "arguments are a int, expected a tuple"},
        {PKL("\x80\x02}K\x01" "b."), "builds a dict from a int"},
        {PKL("\x80\x02" "c\nOrderedDict\n."), "global name of 0 bytes"},
        {PKL("\x80\x02Q."), "offset 2, opcode BINPERSID (0x51): stack underflow"},
        {PKL("\x80\x02" "G\x3f\xf0\x00\x00\x00\x00\x00\x00" "Q."),
         "persistent id is a float of 0 items"},
        {PKL("\x80\x02" "ctorch._utils\n_rebuild_parameter\n" "K\x01\x88N\x87R."),
         "_rebuild_parameter takes (tensor, bool, dict or None)"},
        {PKL("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n" "(K\x01K\x00)(t\x89NtR."),
         "_rebuild_tensor_v2 storage is a int, expected a storage"},
        {PKL("\x80\x02\x95\x10\x00\x00\x00\x00\x00\x00\x00}."),
         "truncated pickle: frame of 16 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = pickle_write(cases[i].pkl, cases[i].len, "state.bin");
        shard_error_t err = {0};
        tensor_file_t *tf = open_loaded(path, &err);
        if (tf != NULL || strstr(err.message, cases[i].want) == NULL)
            fail_msg("case %zu: got '%s', want '%s'", i, err.message, cases[i].want);
        assert_true(err.code == SHARD_ERR_FORMAT || err.code == SHARD_ERR_UNSUPPORTED);
    }
}

/* Every prefix of the golden data.pkl: each must say it is truncated. */
static void test_truncated_pickle(void **state)
{
    zentries_t z = {0};
    zentries_load(&z, GOLDEN_BIN);
    size_t len = 0;
    const uint8_t *pkl = zentries_get(&z, "pytorch_model/data.pkl", &len);
    assert_true(len > 1000);
    for (size_t cut = 1; cut < len; cut++) {
        const char *path = pickle_write(pkl, cut, "cut.bin");
        shard_error_t err = {0};
        tensor_file_t *tf = open_loaded(path, &err);
        if (tf != NULL || err.code != SHARD_ERR_FORMAT
            || strstr(err.message, "truncated pickle") == NULL)
            fail_msg("cut at %zu: %s", cut, err.message);
    }
    expect_fail(pickle_write(pkl, 0, "cut.bin"), SHARD_ERR_FORMAT, "of 0 bytes");
    zentries_clear(&z);
}

/* Each byte of a small state dict pickle replaced by a few values and every
 * prefix: any outcome but a crash is acceptable; a success must still give
 * readable entries (touched here so that ASan sees every byte). */
static void test_pickle_mutations(void **state)
{
    fake_t f = fake_default();
    f.as_parameter = true;
    zentries_t z = {0};
    fake_entries(&z, &f);
    size_t len = 0;
    const uint8_t *orig = zentries_get(&z, "archive/data.pkl", &len);
    uint8_t *pkl = malloc(len);
    assert_non_null(pkl);
    memcpy(pkl, orig, len);
    static const uint8_t values[] = {0x00, 0x01, 0x7f, 0xff, 'R', 't', 'h', 0x86};
    const char *path = tmp_path("mutated.bin");
    size_t opened = 0, failed = 0;
    for (size_t pos = 0; pos < len; pos++) {
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            uint8_t saved = pkl[pos];
            pkl[pos] = values[v];
            zentries_set(&z, "archive/data.pkl", pkl, len);
            zentries_write(&z, path);
            pkl[pos] = saved;
            shard_error_t err = {0};
            tensor_file_t *tf = open_loaded(path, &err);
            if (tf == NULL) {
                assert_true(err.code != SHARD_OK && err.message[0] != '\0');
                failed++;
                continue;
            }
            unsigned sum = 0;
            for (size_t i = 0; i < tf->count; i++) {
                const uint8_t *b = tf->entries[i].data;
                for (size_t j = 0; j < tf->entries[i].nbytes; j++)
                    sum += b[j];
            }
            (void)sum;
            opened++;
            tensor_file_destroy(&tf);
        }
    }
    print_message("mutations: %zu opened, %zu refused\n", opened, failed);
    assert_true(failed > 0);
    free(pkl);
    zentries_clear(&z);
}

/* ---------------------------------------------------------------- legacy files */

#define LEGACY_BIN XLM_GOLDEN_DIR "/clm-base-legacy/pytorch_model.bin"

/* Offset just after the five pickles of a legacy file, where the first
 * storage's element count is: 8 bytes before the storage the reader maps
 * lowest, found in the file by its first bytes. */
/* Where the first storage's count is: found by content, since a storage
 * whose elements are not aligned in the file is handed out as an aligned
 * copy rather than a pointer into the mapping. */
static size_t legacy_data_start(const char *path, const uint8_t *bytes, size_t len)
{
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(path, &err);
    assert_non_null(tf);
    const uint8_t *lowest = NULL;
    for (size_t i = 0; i < tf->count; i++) {
        if (tf->entries[i].nbytes < 16)
            continue;
        const uint8_t *at = memmem(bytes, len, tf->entries[i].data, 16);
        assert_non_null(at);
        if (lowest == NULL || at < lowest)
            lowest = at;
    }
    assert_non_null(lowest);
    size_t offset = (size_t)(lowest - bytes) - 8;
    tensor_file_destroy(&tf);
    return offset;
}

static void test_legacy_golden(void **state)
{
    (void)state;
    shard_error_t err = {0};
    tensor_file_t *tf = open_loaded(LEGACY_BIN, &err);
    if (tf == NULL)
        fail_msg("%s", err.message);
    /* Layer 0's q, k and v weights are views into one storage. */
    const tensor_entry_t *q = tensor_file_find(tf, "attentions.0.q_lin.weight");
    const tensor_entry_t *k = tensor_file_find(tf, "attentions.0.k_lin.weight");
    assert_non_null(q);
    assert_non_null(k);
    assert_ptr_equal((const uint8_t *)k->data, (const uint8_t *)q->data + 32 * 32 * 4);
    tensor_file_destroy(&tf);
}

static void test_legacy_bad_files(void **state)
{
    (void)state;
    size_t len = 0;
    uint8_t *bytes = read_all(LEGACY_BIN, &len);
    size_t data = legacy_data_start(LEGACY_BIN, bytes, len);
    const char *path = tmp_path("legacy.bin");
    /* Truncated anywhere: inside the pickles, at a count, inside data. */
    const size_t cuts[] = {1, 3, 20, data - 3, data, data + 4, data + 100, len - 1};
    const char *want[] = {"truncated", "truncated", "truncated", "truncated",
                          "truncated: storage", "truncated: storage", "runs past the end",
                          "runs past the end"};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, bytes, cuts[i]);
        expect_fail(path, SHARD_ERR_FORMAT, want[i]);
    }
    /* The first storage's count says one element more than its pid. */
    uint8_t *bad = malloc(len);
    memcpy(bad, bytes, len);
    bad[data] ^= 1;
    write_all(path, bad, len);
    expect_fail(path, SHARD_ERR_FORMAT, "elements in the file, its persistent id says");
    /* A key in the key list that no tensor names: the last digit of the
     * last key changed (the list ends "...<digit>q/e.": BINPUT, APPENDS,
     * STOP). */
    memcpy(bad, bytes, len);
    assert_true(bad[data - 5] >= '0' && bad[data - 5] <= '9');
    bad[data - 5] = bad[data - 5] == '9' ? '8' : '9';
    write_all(path, bad, len);
    expect_fail(path, SHARD_ERR_FORMAT, "in the key list is named by no tensor");
    /* The magic number off by one bit. */
    memcpy(bad, bytes, len);
    bad[4] ^= 1;
    write_all(path, bad, len);
    expect_fail(path, SHARD_ERR_FORMAT, "expected torch's magic number");
    free(bad);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_helpers),
        cmocka_unit_test(test_destroy_and_find_accept_null),
        cmocka_unit_test(test_golden_equals_safetensors),
        cmocka_unit_test(test_golden_shared_storage),
        cmocka_unit_test(test_fake_state_dict),
        cmocka_unit_test(test_fake_variants),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_not_a_zip),
        cmocka_unit_test(test_truncated_file),
        cmocka_unit_test(test_missing_data_pkl),
        cmocka_unit_test(test_storage_key_missing),
        cmocka_unit_test(test_storage_too_small),
        cmocka_unit_test(test_storage_crc),
        cmocka_unit_test(test_legacy_golden),
        cmocka_unit_test(test_legacy_bad_files),
        cmocka_unit_test(test_storage_inconsistent),
        cmocka_unit_test(test_byteorder),
        cmocka_unit_test(test_non_contiguous),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_unsupported_globals),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_duplicate_name),
        cmocka_unit_test(test_unknown_opcode),
        cmocka_unit_test(test_bad_machine_states),
        cmocka_unit_test(test_truncated_pickle),
        cmocka_unit_test(test_pickle_mutations),
    };
    return cmocka_run_group_tests(tests, setup_tmp, NULL);
}
