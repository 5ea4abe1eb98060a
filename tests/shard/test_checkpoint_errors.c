/* test_checkpoint_errors.c: malformed checkpoints give a clear error, and
 * weight files in other float types load to the values they hold.
 *
 * Each case copies the golden clm-base checkpoint (config.json and
 * model.safetensors) into its own folder under XLM_TEST_TMP, damages one
 * thing and opens it: the status must be the documented one and the message
 * must name the file, the tensor or key, and the bad value.
 *
 * The weight files are written by a small safetensors writer of our own
 * (below), so the same code also produces F16, BF16, F64 and misaligned F32
 * copies of the weights: those must load to exactly the converted values and
 * run the golden cases (bit-identical where the conversion is exact, within
 * the precision of the type otherwise). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cases.h"
#include "engine_internal.h"

enum { MAX_TENSORS = 256, PATH_MAX_LEN = 1024 };

static const char *const source_dir = XLM_GOLDEN_DIR "/clm-base";

/* ------------------------------------------------------------ files */

static void make_dirs(const char *path)
{
    char buf[PATH_MAX_LEN];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                fail_msg("mkdir %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", buf, strerror(errno));
}

static unsigned char *read_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)n + 1);
    assert_non_null(data);
    if (fread(data, 1, (size_t)n, f) != (size_t)n)
        fail_msg("cannot read %s", path);
    fclose(f);
    data[n] = '\0';
    *size = (size_t)n;
    return data;
}

static void write_bytes(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        fail_msg("cannot write %s", path);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* A fresh case folder XLM_TEST_TMP/checkpoint_errors/<name> with clm-base's
 * config.json and no weight file yet. */
static void case_dir(char *out, size_t size, const char *name)
{
    char from[PATH_MAX_LEN], to[PATH_MAX_LEN + 32];
    snprintf(out, size, "%s/checkpoint_errors/%s", XLM_TEST_TMP, name);
    make_dirs(out);
    snprintf(to, sizeof to, "%s/model.safetensors", out);
    unlink(to);
    snprintf(to, sizeof to, "%s/pytorch_model.bin", out);
    unlink(to);
    size_t n;
    snprintf(from, sizeof from, "%s/config.json", source_dir);
    unsigned char *config = read_bytes(from, &n);
    snprintf(to, sizeof to, "%s/config.json", out);
    write_bytes(to, config, n);
    free(config);
}

static void weights_path(char *out, size_t size, const char *dir)
{
    snprintf(out, size, "%s/model.safetensors", dir);
}

/* ------------------------------------------------------------ safetensors */

typedef struct {
    char name[128];
    char dtype[16];
    int ndim;
    int64_t shape[4];
    unsigned char *bytes; /* owned */
    size_t nbytes;
} st_tensor_t;

typedef struct {
    st_tensor_t tensors[MAX_TENSORS];
    int count;
} st_file_t;

static size_t st_numel(const st_tensor_t *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

static st_tensor_t *st_find(st_file_t *file, const char *name)
{
    for (int i = 0; i < file->count; i++)
        if (strcmp(file->tensors[i].name, name) == 0)
            return &file->tensors[i];
    fail_msg("no tensor %s", name);
    return NULL;
}

static void st_free(st_file_t *file)
{
    for (int i = 0; i < file->count; i++)
        free(file->tensors[i].bytes);
    file->count = 0;
}

/* Reads a safetensors file with our own parser (not the engine's). */
static void st_read(const char *path, st_file_t *file)
{
    size_t size;
    unsigned char *raw = read_bytes(path, &size);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | raw[i];
    cJSON *header = cJSON_ParseWithLength((const char *)raw + 8, (size_t)header_len);
    assert_non_null(header);
    const unsigned char *data = raw + 8 + header_len;
    const cJSON *item;
    file->count = 0;
    cJSON_ArrayForEach(item, header) {
        if (strcmp(item->string, "__metadata__") == 0)
            continue;
        assert_true(file->count < MAX_TENSORS);
        st_tensor_t *t = &file->tensors[file->count++];
        snprintf(t->name, sizeof t->name, "%s", item->string);
        snprintf(t->dtype, sizeof t->dtype, "%s",
                 cJSON_GetObjectItemCaseSensitive(item, "dtype")->valuestring);
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
        const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
        t->ndim = cJSON_GetArraySize(shape);
        for (int d = 0; d < t->ndim; d++)
            t->shape[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        size_t begin = (size_t)cJSON_GetArrayItem(offsets, 0)->valuedouble;
        size_t end = (size_t)cJSON_GetArrayItem(offsets, 1)->valuedouble;
        t->nbytes = end - begin;
        t->bytes = malloc(t->nbytes ? t->nbytes : 1);
        assert_non_null(t->bytes);
        memcpy(t->bytes, data + begin, t->nbytes);
    }
    cJSON_Delete(header);
    free(raw);
}

/* Writes file as safetensors. shift bytes of padding start the data block
 * (offsets move with it: shift 2 misaligns every F32 tensor). edit, when
 * given, may change the header just before it is written. */
static void st_write(const char *path, const st_file_t *file, size_t shift,
                     void (*edit)(cJSON *header, size_t data_size))
{
    cJSON *header = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t data_size = shift;
    for (int i = 0; i < file->count; i++) {
        const st_tensor_t *t = &file->tensors[i];
        cJSON *entry = cJSON_AddObjectToObject(header, t->name);
        cJSON_AddStringToObject(entry, "dtype", t->dtype);
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)data_size));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(data_size + t->nbytes)));
        data_size += t->nbytes;
    }
    if (edit)
        edit(header, data_size);
    char *json = cJSON_PrintUnformatted(header);
    assert_non_null(json);
    size_t json_len = strlen(json), padded = (json_len + 7) / 8 * 8;
    unsigned char *out = calloc(8 + padded + data_size, 1);
    assert_non_null(out);
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(out + 8, json, json_len);
    memset(out + 8 + json_len, ' ', padded - json_len);
    size_t at = 8 + padded + shift;
    for (int i = 0; i < file->count; i++) {
        memcpy(out + at, file->tensors[i].bytes, file->tensors[i].nbytes);
        at += file->tensors[i].nbytes;
    }
    write_bytes(path, out, 8 + padded + data_size);
    free(out);
    free(json);
    cJSON_Delete(header);
}

/* ------------------------------------------------------------ conversions */

static float f32_at(const st_tensor_t *t, size_t i)
{
    float v;
    memcpy(&v, t->bytes + 4 * i, 4);
    return v;
}

/* float32 -> IEEE half, round to nearest even. */
static uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    const int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff)
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) { /* subnormal half: value / 2^-24, rounded */
        if (exp < -10)
            return (uint16_t)sign;
        const uint32_t full = mant | 0x800000, shift = (uint32_t)(14 - exp);
        uint32_t m = full >> shift;
        const uint32_t rem = full & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (m & 1)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* a carry moves into the exponent, as it should */
    return (uint16_t)h;
}

static float half_to_float(uint16_t h)
{
    const int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float v = exp == 0    ? ldexpf((float)mant, -24)
              : exp == 31 ? (mant ? NAN : INFINITY)
                          : ldexpf((float)(mant | 0x400), exp - 25);
    return (h & 0x8000) ? -v : v;
}

static uint16_t float_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static float bf16_to_float(uint16_t b)
{
    uint32_t x = (uint32_t)b << 16;
    float v;
    memcpy(&v, &x, 4);
    return v;
}

typedef enum { TO_F16, TO_BF16, TO_F64, ROUND_F16, ROUND_BF16 } conversion_t;

/* Converts one F32 tensor in place. ROUND_* keep F32 but hold the values
 * the 16-bit type would give: what the engine must compute from a 16-bit
 * file, bit for bit. */
static void convert_tensor(st_tensor_t *t, conversion_t how)
{
    const size_t n = st_numel(t);
    assert_string_equal(t->dtype, "F32");
    const size_t elem = how == TO_F16 || how == TO_BF16 ? 2 : how == TO_F64 ? 8 : 4;
    unsigned char *out = malloc(n * elem + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        const float v = f32_at(t, i);
        uint16_t h;
        double d;
        float r;
        switch (how) {
        case TO_F16: h = float_to_half(v); memcpy(out + 2 * i, &h, 2); break;
        case TO_BF16: h = float_to_bf16(v); memcpy(out + 2 * i, &h, 2); break;
        case TO_F64: d = v; memcpy(out + 8 * i, &d, 8); break;
        case ROUND_F16: r = half_to_float(float_to_half(v)); memcpy(out + 4 * i, &r, 4); break;
        case ROUND_BF16: r = bf16_to_float(float_to_bf16(v)); memcpy(out + 4 * i, &r, 4); break;
        }
    }
    free(t->bytes);
    t->bytes = out;
    t->nbytes = n * elem;
    snprintf(t->dtype, sizeof t->dtype, "%s",
             how == TO_F16 ? "F16" : how == TO_BF16 ? "BF16" : how == TO_F64 ? "F64" : "F32");
}

static void convert_all(st_file_t *file, conversion_t how)
{
    for (int i = 0; i < file->count; i++)
        convert_tensor(&file->tensors[i], how);
}

/* ------------------------------------------------------------ fixture */

/* The golden clm-base weights, read once. */
typedef struct {
    st_file_t weights;
} fixture_t;

static int group_setup(void **state)
{
    static fixture_t fixture;
    char path[PATH_MAX_LEN];
    weights_path(path, sizeof path, source_dir);
    st_read(path, &fixture.weights);
    if (fixture.weights.count < 50)
        return -1;
    *state = &fixture;
    return 0;
}

static int group_teardown(void **state)
{
    fixture_t *fixture = *state;
    st_free(&fixture->weights);
    return 0;
}

/* A deep copy of the golden weights to damage. */
static void copy_weights(const fixture_t *fixture, st_file_t *out)
{
    out->count = fixture->weights.count;
    for (int i = 0; i < out->count; i++) {
        out->tensors[i] = fixture->weights.tensors[i];
        out->tensors[i].bytes = malloc(out->tensors[i].nbytes + 1);
        assert_non_null(out->tensors[i].bytes);
        memcpy(out->tensors[i].bytes, fixture->weights.tensors[i].bytes,
               out->tensors[i].nbytes);
    }
}

/* Opening dir must fail with code and a message containing every string of
 * the NULL-terminated list. */
static void expect_open_error(const char *dir, shard_status_t code, ...)
{
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    if (model)
        fail_msg("%s opened; expected %s", dir, shard_status_str(code));
    if (err.code != code)
        fail_msg("%s: status %s (%s), expected %s", dir, shard_status_str(err.code), err.message,
                 shard_status_str(code));
    va_list args;
    va_start(args, code);
    for (const char *want = va_arg(args, const char *); want; want = va_arg(args, const char *))
        if (!strstr(err.message, want))
            fail_msg("%s: message \"%s\" does not mention \"%s\"", dir, err.message, want);
    va_end(args);
}

/* Writes the golden weights, changed by edit, to a fresh case folder. */
static void write_case(const fixture_t *fixture, const char *name, char *dir, size_t size,
                       void (*edit)(cJSON *header, size_t data_size))
{
    char path[PATH_MAX_LEN + 32];
    case_dir(dir, size, name);
    weights_path(path, sizeof path, dir);
    st_write(path, &fixture->weights, 0, edit);
}

/* ------------------------------------------------------------ weight file */

static void test_copy_of_golden_opens(void **state)
{
    /* The control: the writer's untouched copy opens and matches config. */
    char dir[PATH_MAX_LEN];
    write_case(*state, "control", dir, sizeof dir, NULL);
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    if (!model)
        fail_msg("control copy: %s", err.message);
    assert_int_equal(shard_model_config(model)->n_layers, 3);
    shard_model_destroy(&model);
}

static void test_truncated_below_header_length(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "truncated_5", dir, sizeof dir, NULL);
    weights_path(path, sizeof path, dir);
    assert_int_equal(truncate(path, 5), 0);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, "5 bytes", "too short", NULL);
}

static void test_truncated_data(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "truncated_half", dir, sizeof dir, NULL);
    weights_path(path, sizeof path, dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size / 2), 0);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, "tensor ", "data_offsets",
                      "outside the data block", NULL);
}

static void test_header_length_past_end(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "header_past_end", dir, sizeof dir, NULL);
    weights_path(path, sizeof path, dir);
    size_t size;
    unsigned char *raw = read_bytes(path, &size);
    uint64_t len = (uint64_t)size; /* 8 more than what follows the length */
    for (int i = 0; i < 8; i++)
        raw[i] = (unsigned char)(len >> (8 * i));
    write_bytes(path, raw, size);
    free(raw);
    char shown[64];
    snprintf(shown, sizeof shown, "header length %zu", size);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, shown, NULL);
}

static void test_header_not_json(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "header_not_json", dir, sizeof dir, NULL);
    weights_path(path, sizeof path, dir);
    size_t size;
    unsigned char *raw = read_bytes(path, &size);
    memcpy(raw + 8, "{\"oops\": [1, 2", 14); /* unterminated */
    write_bytes(path, raw, size);
    free(raw);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, "header is not a JSON object", NULL);
}

static void offsets_past_end(cJSON *header, size_t data_size)
{
    cJSON *offsets = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(header, "attentions.1.v_lin.weight"), "data_offsets");
    cJSON_ReplaceItemInArray(offsets, 0, cJSON_CreateNumber((double)data_size));
    cJSON_ReplaceItemInArray(offsets, 1, cJSON_CreateNumber((double)(data_size + 4096)));
}

static void test_data_offsets_past_end(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "offsets_past_end", dir, sizeof dir, offsets_past_end);
    expect_open_error(dir, SHARD_ERR_FORMAT, "model.safetensors", "attentions.1.v_lin.weight",
                      "data_offsets", "outside the data block", NULL);
}

static void offsets_short(cJSON *header, size_t data_size)
{
    (void)data_size;
    cJSON *offsets = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(header, "layer_norm1.0.bias"), "data_offsets");
    double begin = cJSON_GetArrayItem(offsets, 0)->valuedouble;
    cJSON_ReplaceItemInArray(offsets, 1, cJSON_CreateNumber(begin + 100));
}

static void test_data_offsets_disagree_with_shape(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "offsets_short", dir, sizeof dir, offsets_short);
    /* 32 floats need 128 bytes; the offsets span 100. */
    expect_open_error(dir, SHARD_ERR_FORMAT, "layer_norm1.0.bias", "100 bytes", "need 128",
                      NULL);
}

static void test_wrong_dtype_i64(void **state)
{
    fixture_t *fixture = *state;
    st_file_t file;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    copy_weights(fixture, &file);
    st_tensor_t *t = st_find(&file, "ffns.2.lin1.weight");
    const size_t n = st_numel(t);
    unsigned char *ints = malloc(8 * n);
    assert_non_null(ints);
    for (size_t i = 0; i < n; i++) {
        int64_t v = (int64_t)(f32_at(t, i) * 1000.0f);
        memcpy(ints + 8 * i, &v, 8);
    }
    free(t->bytes);
    t->bytes = ints;
    t->nbytes = 8 * n;
    snprintf(t->dtype, sizeof t->dtype, "I64");
    case_dir(dir, sizeof dir, "dtype_i64");
    weights_path(path, sizeof path, dir);
    st_write(path, &file, 0, NULL);
    st_free(&file);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, "ffns.2.lin1.weight", "I64", "expected F32",
                      NULL);
}

static void dtype_unknown(cJSON *header, size_t data_size)
{
    (void)data_size;
    cJSON *entry = cJSON_GetObjectItemCaseSensitive(header, "embeddings.weight");
    cJSON_ReplaceItemInObject(entry, "dtype", cJSON_CreateString("F8_E4M3"));
}

static void test_unknown_dtype(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "dtype_unknown", dir, sizeof dir, dtype_unknown);
    expect_open_error(dir, SHARD_ERR_FORMAT, "embeddings.weight", "unknown dtype", "F8_E4M3",
                      NULL);
}

static void shape_transposed(cJSON *header, size_t data_size)
{
    (void)data_size;
    /* ffns.0.lin1.weight is [128, 32]; [32, 128] has the same size. */
    cJSON *entry = cJSON_GetObjectItemCaseSensitive(header, "ffns.0.lin1.weight");
    cJSON *shape = cJSON_CreateArray();
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(32));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(128));
    cJSON_ReplaceItemInObject(entry, "shape", shape);
}

static void test_wrong_shape(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "shape_transposed", dir, sizeof dir, shape_transposed);
    expect_open_error(dir, SHARD_ERR_FORMAT, "model.safetensors", "ffns.0.lin1.weight",
                      "[32, 128]", "expected [128, 32]", NULL);
}

static void test_missing_tensor(void **state)
{
    fixture_t *fixture = *state;
    st_file_t file;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    copy_weights(fixture, &file);
    st_tensor_t *t = st_find(&file, "layer_norm2.2.bias");
    free(t->bytes);
    *t = file.tensors[--file.count];
    case_dir(dir, sizeof dir, "missing_tensor");
    weights_path(path, sizeof path, dir);
    st_write(path, &file, 0, NULL);
    st_free(&file);
    expect_open_error(dir, SHARD_ERR_FORMAT, path, "layer_norm2.2.bias", "missing", NULL);
}

static void extra_unknown(cJSON *header, size_t data_size)
{
    (void)data_size;
    cJSON *copy = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(header, "layer_norm1.0.bias"),
                                  true);
    cJSON_AddItemToObject(header, "adapter.scale", copy);
}

static void test_extra_unknown_tensor(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "extra_unknown", dir, sizeof dir, extra_unknown);
    expect_open_error(dir, SHARD_ERR_FORMAT, "model.safetensors", "unexpected tensor",
                      "adapter.scale", NULL);
}

/* Named like a head's tensor, but no row of the head table has it. */
static void extra_head_like(cJSON *header, size_t data_size)
{
    (void)data_size;
    cJSON *copy = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(header, "layer_norm1.0.bias"),
                                  true);
    cJSON_AddItemToObject(header, "classifier.scale", copy);
}

static void test_extra_head_like_tensor(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "extra_head_like", dir, sizeof dir, extra_head_like);
    expect_open_error(dir, SHARD_ERR_FORMAT, "unexpected tensor", "classifier.scale", NULL);
}

static void extra_layer(cJSON *header, size_t data_size)
{
    (void)data_size;
    cJSON *copy = cJSON_Duplicate(
        cJSON_GetObjectItemCaseSensitive(header, "attentions.2.q_lin.weight"), true);
    cJSON_AddItemToObject(header, "attentions.3.q_lin.weight", copy);
}

static void test_tensor_of_a_layer_the_config_lacks(void **state)
{
    char dir[PATH_MAX_LEN];
    write_case(*state, "extra_layer", dir, sizeof dir, extra_layer);
    expect_open_error(dir, SHARD_ERR_FORMAT, "unexpected tensor", "attentions.3.q_lin.weight",
                      "3 layers", NULL);
}

static void test_no_weight_file(void **state)
{
    (void)state;
    char dir[PATH_MAX_LEN];
    case_dir(dir, sizeof dir, "no_weights");
    expect_open_error(dir, SHARD_ERR_IO, dir, "no model.safetensors or pytorch_model.bin", NULL);
}

/* ------------------------------------------------------------ config.json */

/* clm-base's config.json with the text of key replaced by value (the
 * original line "key": ..., is swapped for "key": value,). */
static void write_config_with(const char *dir, const char *key, const char *value)
{
    char path[PATH_MAX_LEN + 32], needle[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t size;
    char *text = (char *)read_bytes(path, &size);
    snprintf(needle, sizeof needle, "\"%s\": ", key);
    char *at = strstr(text, needle);
    if (!at)
        fail_msg("config.json has no key %s", key);
    char *value_start = at + strlen(needle), *value_end = strpbrk(value_start, ",\n");
    char *out = malloc(size + strlen(value) + 1);
    assert_non_null(out);
    sprintf(out, "%.*s%s%s", (int)(value_start - text), text, value, value_end);
    write_text(path, out);
    free(out);
    free(text);
}

/* A case folder with good weights and config.json changed. */
static void config_case(const fixture_t *fixture, const char *name, char *dir, size_t size,
                        const char *key, const char *value)
{
    write_case(fixture, name, dir, size, NULL);
    write_config_with(dir, key, value);
}

static void test_config_bad_json(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "config_bad_json", dir, sizeof dir, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\n  \"n_layers\": 3,\n  \"emb_dim\": 32,,\n}\n");
    expect_open_error(dir, SHARD_ERR_CONFIG, path, "not a JSON object", "parse error", NULL);
}

static void test_config_wrong_type(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_wrong_type", dir, sizeof dir, "n_layers", "\"two\"");
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "\"n_layers\"", "integer", NULL);
}

static void test_config_bool_of_wrong_type(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_bool_type", dir, sizeof dir, "causal", "1");
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "\"causal\"", "true or false", NULL);
}

static void test_config_not_an_integer(void **state)
{
    const char *values[] = {"3.5", "1e300", "-1e300", "[3]"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char dir[PATH_MAX_LEN];
        config_case(*state, "config_not_integer", dir, sizeof dir, "n_layers", values[i]);
        expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "\"n_layers\"", "integer", NULL);
    }
}

/* A null where a number or bool belongs names the key instead of running
 * with the default ("n_heads": null once ran with 16 heads). */
static void test_config_null_value(void **state)
{
    static const struct { const char *key, *want; } cases[] = {
        {"n_heads", "an integer"}, {"layer_norm_eps", "a number"}, {"causal", "true or false"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[PATH_MAX_LEN], key[64];
        config_case(*state, "config_null", dir, sizeof dir, cases[i].key, "null");
        snprintf(key, sizeof key, "\"%s\" is null", cases[i].key);
        expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", key, cases[i].want, NULL);
    }
}

/* Control bytes are not JSON whitespace: "1e-1\x0f" is not 0.1. */
static void test_config_control_byte(void **state)
{
    static const char *const values[] = {"1e-1\x0f", "\x01" "1e-12", "1e-12\x7f"};
    for (size_t i = 0; i < 2; i++) {
        char dir[PATH_MAX_LEN];
        config_case(*state, "config_control", dir, sizeof dir, "layer_norm_eps", values[i]);
        expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "control byte",
                          "in the value of \"layer_norm_eps\"", NULL);
    }
    /* DEL is not a control byte for JSON, but it is no number either. */
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_control", dir, sizeof dir, "layer_norm_eps", values[2]);
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", NULL);
}

/* A language id far outside any range (fuzz_config found the cast of
 * 1e100 to an integer undefined). */
static void test_config_lang_id_huge(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "config_lang_id", dir, sizeof dir, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t size = 0;
    char *text = (char *)read_bytes(path, &size);
    cJSON *root = cJSON_ParseWithLength(text, size);
    assert_non_null(root);
    cJSON_DeleteItemFromObject(root, "lang2id");
    cJSON *langs = cJSON_AddObjectToObject(root, "lang2id");
    cJSON_AddNumberToObject(langs, "en", 1e100);
    char *out = cJSON_Print(root);
    write_text(path, out);
    free(out);
    cJSON_Delete(root);
    free(text);
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "lang2id[\"en\"]",
                      "integer language id", NULL);
}

static void test_config_special_index_outside_vocab(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_pad_index", dir, sizeof dir, "pad_index", "5000");
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "pad_index = 5000",
                      "below vocab_size 1044", NULL);
}

static void test_config_value_out_of_range(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_out_of_range", dir, sizeof dir, "n_heads", "0");
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "\"n_heads\" = 0", "expected 1..",
                      NULL);
}

static void test_config_emb_dim_not_divisible(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_heads_3", dir, sizeof dir, "n_heads", "3");
    expect_open_error(dir, SHARD_ERR_CONFIG, "config.json", "emb_dim 32",
                      "not a multiple of n_heads 3", NULL);
}

static void test_config_asm_unsupported(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_asm", dir, sizeof dir, "asm", "true");
    expect_open_error(dir, SHARD_ERR_UNSUPPORTED, "config.json", "asm", NULL);
}

static void test_config_more_layers_than_weights(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_4_layers", dir, sizeof dir, "n_layers", "4");
    expect_open_error(dir, SHARD_ERR_FORMAT, "model.safetensors", "attentions.3.q_lin.weight",
                      "missing", NULL);
}

static void test_config_other_emb_dim_than_weights(void **state)
{
    char dir[PATH_MAX_LEN];
    config_case(*state, "config_emb_dim_64", dir, sizeof dir, "emb_dim", "64");
    /* The first tensor bound is the word embeddings: [1044, 32] on file. */
    expect_open_error(dir, SHARD_ERR_FORMAT, "embeddings.weight", "[1044, 32]",
                      "expected [1044, 64]", NULL);
}

static void test_config_missing(void **state)
{
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    write_case(*state, "config_missing", dir, sizeof dir, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(unlink(path), 0);
    expect_open_error(dir, SHARD_ERR_IO, path, NULL);
}

/* ------------------------------------------------------------ heads */

static void test_head_not_in_checkpoint(void **state)
{
    shard_state_t *run_state = shard_state_new();
    (void)state;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(source_dir, NULL, &err);
    assert_non_null(model);
    assert_false(shard_model_has_head(model, SHARD_HEAD_QA));
    const int64_t ids[4] = {0, 35, 96, 1};
    shard_inputs_t in = {.batch = 1, .seq = 4, .input_ids = ids};
    shard_outputs_t outputs;
    shard_outputs_init(&outputs);
    assert_int_equal(shard_forward(model, run_state, SHARD_HEAD_QA, &in, &outputs, &err), SHARD_ERR_HEAD);
    assert_non_null(strstr(err.message, "head qa"));
    assert_non_null(strstr(err.message, "clm-base"));
    assert_non_null(strstr(err.message, "base checkpoint"));
    memset(&err, 0, sizeof err);
    assert_int_equal(shard_forward(model, run_state, SHARD_HEAD_LM, &in, &outputs, &err), SHARD_ERR_HEAD);
    assert_non_null(strstr(err.message, "head lm"));
    memset(&err, 0, sizeof err);
    assert_int_equal(shard_forward(model, run_state, SHARD_HEAD_COUNT_, &in, &outputs, &err),
                     SHARD_ERR_HEAD);
    assert_int_equal(outputs.count, 0);
    shard_model_destroy(&model);
    shard_state_destroy(&run_state);
}

static void test_case_line_with_unknown_head(void **state)
{
    (void)state;
    const char *line = "{\"name\": \"x\", \"head\": \"summarize\", "
                       "\"inputs\": {\"input_ids\": [[0, 1]]}}";
    case_t c;
    shard_error_t err = {0};
    assert_int_equal(case_parse(line, strlen(line), &c, &err), SHARD_ERR_HEAD);
    assert_string_equal(c.name, "x");
    assert_non_null(strstr(err.message, "summarize"));
    /* The choices come from the head table. */
    assert_non_null(strstr(err.message, "(expected base, lm, seq_cls, multiple_choice, "
                                        "token_cls, qa_simple or qa)"));
    case_clear(&c);
}

/* ------------------------------------------------------------ other float types */

typedef struct {
    case_t cases[16];
    shard_outputs_t outputs[16];
    int count;
} golden_runs_t;

/* Runs every clm-base case on the checkpoint folder dir. */
static void run_cases(const char *dir, golden_runs_t *runs)
{
    shard_state_t *run_state = shard_state_new();
    char path[PATH_MAX_LEN];
    size_t size;
    snprintf(path, sizeof path, "%s/cases.jsonl", source_dir);
    char *text = (char *)read_bytes(path, &size), *cursor = text, *line;
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    if (!model)
        fail_msg("%s: %s", dir, err.message);
    runs->count = 0;
    while ((line = strtok_r(cursor, "\n", &cursor)) != NULL) {
        assert_true(runs->count < 16);
        case_t *c = &runs->cases[runs->count];
        shard_outputs_init(&runs->outputs[runs->count]);
        if (case_parse(line, strlen(line), c, &err) ||
            case_run(model, run_state, c, &runs->outputs[runs->count], &err))
            fail_msg("%s: %s", dir, err.message);
        runs->count++;
    }
    shard_model_destroy(&model);
    free(text);
    assert_int_equal(runs->count, 10);
    shard_state_destroy(&run_state);
}

static void clear_runs(golden_runs_t *runs)
{
    for (int i = 0; i < runs->count; i++) {
        shard_outputs_clear(&runs->outputs[i]);
        case_clear(&runs->cases[i]);
    }
    runs->count = 0;
}

/* max |got - want| over max |want|, across every output of every case;
 * tolerance 0 demands bit-identical values. */
static double compare_runs(const golden_runs_t *got, const golden_runs_t *want, double tolerance)
{
    double worst = 0;
    assert_int_equal(got->count, want->count);
    for (int i = 0; i < want->count; i++) {
        const shard_tensor_t *g = &got->outputs[i].tensors[0], *w = &want->outputs[i].tensors[0];
        assert_int_equal(got->outputs[i].count, 1);
        assert_string_equal(g->name, w->name);
        const int64_t n = shard_tensor_numel(w);
        assert_int_equal(shard_tensor_numel(g), n);
        double scale = 0, diff = 0;
        for (int64_t j = 0; j < n; j++) {
            scale = fmax(scale, fabs((double)w->f32[j]));
            diff = fmax(diff, fabs((double)g->f32[j] - (double)w->f32[j]));
            if (tolerance == 0 && memcmp(&g->f32[j], &w->f32[j], 4) != 0)
                fail_msg("%s: %s[%lld] = %.9g, expected exactly %.9g", want->cases[i].name,
                         w->name, (long long)j, (double)g->f32[j], (double)w->f32[j]);
        }
        assert_true(scale > 0);
        worst = fmax(worst, diff / scale);
    }
    if (worst > tolerance && tolerance > 0)
        fail_msg("outputs differ by %.3g of their largest value, tolerance %.3g", worst,
                 tolerance);
    return worst;
}

/* Writes the golden weights converted by how into case folder name. */
static void converted_case(const fixture_t *fixture, const char *name, conversion_t how,
                           size_t shift, char *dir, size_t size)
{
    st_file_t file;
    char path[PATH_MAX_LEN + 32];
    copy_weights(fixture, &file);
    convert_all(&file, how);
    case_dir(dir, size, name);
    weights_path(path, sizeof path, dir);
    st_write(path, &file, shift, NULL);
    st_free(&file);
}

/* A 16-bit copy runs the golden cases: bit-identical to an F32 file of the
 * same rounded values, close to the original F32 weights. */
static void check_16_bit(const fixture_t *fixture, conversion_t to, conversion_t round,
                         const char *name, double tolerance)
{
    static golden_runs_t original, rounded, converted;
    char dir[PATH_MAX_LEN], round_name[64];
    run_cases(source_dir, &original);
    converted_case(fixture, name, to, 0, dir, sizeof dir);
    run_cases(dir, &converted);
    snprintf(round_name, sizeof round_name, "%s_rounded_f32", name);
    converted_case(fixture, round_name, round, 0, dir, sizeof dir);
    run_cases(dir, &rounded);
    compare_runs(&converted, &rounded, 0);
    double loss = compare_runs(&converted, &original, tolerance);
    print_message("%s: outputs within %.3g of their scale of the F32 weights'\n", name, loss);
    /* The conversion did change the weights: a loader that ignored the
     * dtype and read the bytes as F32 would not get here, and one that
     * returned the F32 originals would show no loss at all. */
    assert_true(loss > 0);
    clear_runs(&original);
    clear_runs(&converted);
    clear_runs(&rounded);
}

static void test_f16_weights(void **state)
{
    /* Measured: 9e-4 (11 significant bits). */
    check_16_bit(*state, TO_F16, ROUND_F16, "f16", 5e-3);
}

static void test_bf16_weights(void **state)
{
    /* Measured: 9e-3 (8 significant bits). */
    check_16_bit(*state, TO_BF16, ROUND_BF16, "bf16", 2e-2);
}

static void test_f64_weights_are_exact(void **state)
{
    static golden_runs_t original, converted;
    char dir[PATH_MAX_LEN];
    converted_case(*state, "f64", TO_F64, 0, dir, sizeof dir);
    run_cases(source_dir, &original);
    run_cases(dir, &converted);
    compare_runs(&converted, &original, 0);
    clear_runs(&original);
    clear_runs(&converted);
}

static void test_misaligned_f32_weights_are_exact(void **state)
{
    /* Two bytes before the data: every F32 tensor starts off a 4-byte
     * boundary, so the loader must copy instead of pointing into the map. */
    static golden_runs_t original, shifted;
    char dir[PATH_MAX_LEN];
    st_file_t file;
    char path[PATH_MAX_LEN + 32];
    case_dir(dir, sizeof dir, "misaligned");
    copy_weights(*state, &file);
    weights_path(path, sizeof path, dir);
    st_write(path, &file, 2, NULL);
    st_free(&file);
    run_cases(source_dir, &original);
    run_cases(dir, &shifted);
    compare_runs(&shifted, &original, 0);
    clear_runs(&original);
    clear_runs(&shifted);
}

/* One tensor of 16-bit patterns with known values; the rest F32. */
static shard_model_t *open_with_patterns(const fixture_t *fixture, const char *name,
                                         const char *dtype, const uint16_t *bits, int n_bits)
{
    st_file_t file;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    copy_weights(fixture, &file);
    st_tensor_t *t = st_find(&file, "layer_norm_emb.weight");
    const size_t n = st_numel(t);
    assert_true((size_t)n_bits <= n);
    uint16_t *half = calloc(n, 2);
    assert_non_null(half);
    for (size_t i = 0; i < n; i++)
        half[i] = i < (size_t)n_bits ? bits[i] : bits[0];
    free(t->bytes);
    t->bytes = (unsigned char *)half;
    t->nbytes = 2 * n;
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    case_dir(dir, sizeof dir, name);
    weights_path(path, sizeof path, dir);
    st_write(path, &file, 0, NULL);
    st_free(&file);
    shard_error_t err = {0};
    shard_model_t *model = shard_model_open(dir, NULL, &err);
    if (!model)
        fail_msg("%s: %s", name, err.message);
    return model;
}

static void expect_weights(const shard_model_t *model, const float *want, int n,
                           const char *dtype)
{
    const float *got = model->norm_emb.weight;
    for (int i = 0; i < n; i++) {
        bool same = isnan(want[i]) ? isnan(got[i])
                                   : got[i] == want[i] && !signbit(got[i]) == !signbit(want[i]);
        if (!same)
            fail_msg("%s pattern %d loads as %.9g, expected %.9g", dtype, i, (double)got[i],
                     (double)want[i]);
    }
}

static void test_f16_known_values(void **state)
{
    const uint16_t bits[] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                             0x3555, 0x8000, 0xFC00, 0x7E00, 0xBC01};
    const float want[] = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-08f,
                          6.0975551605224609e-05f, 6.103515625e-05f, 0.333251953125f, -0.0f,
                          -INFINITY, NAN, -1.0009765625f};
    enum { N = sizeof bits / sizeof bits[0] };
    shard_model_t *model = open_with_patterns(*state, "f16_patterns", "F16", bits, N);
    expect_weights(model, want, N, "F16");
    shard_model_destroy(&model);
    /* Our own writer's rounding agrees on the same values. */
    for (int i = 0; i < N; i++)
        if (!isnan(want[i]))
            assert_int_equal(float_to_half(want[i]), bits[i]);
    assert_int_equal(float_to_half(65519.0f), 0x7BFF); /* rounds down to the max */
    assert_int_equal(float_to_half(65520.0f), 0x7C00); /* rounds up to infinity */
}

static void test_bf16_known_values(void **state)
{
    const uint16_t bits[] = {0x3F80, 0xC020, 0x7F7F, 0x0001, 0x3EAB, 0x8000, 0xFF80};
    const float want[] = {1.0f, -2.5f, 3.3895313892515355e38f, 9.183549615799121e-41f,
                          0.333984375f, -0.0f, -INFINITY};
    enum { N = sizeof bits / sizeof bits[0] };
    shard_model_t *model = open_with_patterns(*state, "bf16_patterns", "BF16", bits, N);
    expect_weights(model, want, N, "BF16");
    shard_model_destroy(&model);
    for (int i = 0; i < N; i++)
        assert_int_equal(float_to_bf16(want[i]), bits[i]);
}

/* ------------------------------------------------------------ partial files */

static void test_stage_opens_file_with_only_its_tensors(void **state)
{
    shard_state_t *run_state = shard_state_new();
    /* A stage's own weight file: layer 1 of clm-base and nothing else. It
     * opens as [1,2) and computes what the same stage of the full file
     * computes; as a whole model it names the first tensor it lacks. */
    fixture_t *fixture = *state;
    st_file_t file;
    char dir[PATH_MAX_LEN], path[PATH_MAX_LEN + 32];
    copy_weights(fixture, &file);
    int kept = 0;
    for (int i = 0; i < file.count; i++) {
        if (strstr(file.tensors[i].name, ".1.") != NULL)
            file.tensors[kept++] = file.tensors[i];
        else
            free(file.tensors[i].bytes);
    }
    file.count = kept;
    assert_int_equal(kept, 16); /* 4 attention linears, 2 FFN linears, 2 norms: x2 */
    case_dir(dir, sizeof dir, "stage_1_only");
    weights_path(path, sizeof path, dir);
    st_write(path, &file, 0, NULL);
    st_free(&file);

    shard_error_t err = {0};
    shard_range_t first = {0, 1, true, false}, middle = {1, 2, false, false};
    shard_model_t *embed = shard_model_open(source_dir, &(shard_model_options_t){.range = &first}, &err);
    shard_model_t *full = shard_model_open(source_dir, &(shard_model_options_t){.range = &middle}, &err);
    shard_model_t *own = shard_model_open(dir, &(shard_model_options_t){.range = &middle}, &err);
    if (!embed || !full || !own)
        fail_msg("open: %s", err.message);
    const int64_t ids[6] = {0, 35, 96, 100, 394, 1};
    shard_inputs_t in = {.batch = 1, .seq = 6, .input_ids = ids};
    shard_acts_t *a = shard_acts_new(), *b = shard_acts_new();
    assert_int_equal(shard_embed(embed, run_state, &in, a, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(embed, run_state, a, &err), SHARD_OK);
    assert_int_equal(shard_embed(embed, run_state, &in, b, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(embed, run_state, b, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(full, run_state, a, &err), SHARD_OK);
    assert_int_equal(shard_run_layers(own, run_state, b, &err), SHARD_OK);
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_memory_equal(a->hidden, b->hidden, (size_t)(a->n_tokens * a->emb_dim) * 4);
    shard_acts_destroy(&a);
    shard_acts_destroy(&b);
    shard_model_destroy(&embed);
    shard_model_destroy(&full);
    shard_model_destroy(&own);
    expect_open_error(dir, SHARD_ERR_FORMAT, "embeddings.weight", "missing", NULL);
    shard_state_destroy(&run_state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_of_golden_opens),
        cmocka_unit_test(test_truncated_below_header_length),
        cmocka_unit_test(test_truncated_data),
        cmocka_unit_test(test_header_length_past_end),
        cmocka_unit_test(test_header_not_json),
        cmocka_unit_test(test_data_offsets_past_end),
        cmocka_unit_test(test_data_offsets_disagree_with_shape),
        cmocka_unit_test(test_wrong_dtype_i64),
        cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_extra_unknown_tensor),
        cmocka_unit_test(test_tensor_of_a_layer_the_config_lacks),
        cmocka_unit_test(test_no_weight_file),
        cmocka_unit_test(test_config_bad_json),
        cmocka_unit_test(test_config_wrong_type),
        cmocka_unit_test(test_config_bool_of_wrong_type),
        cmocka_unit_test(test_config_not_an_integer),
        cmocka_unit_test(test_config_null_value),
        cmocka_unit_test(test_config_lang_id_huge),
        cmocka_unit_test(test_config_control_byte),
        cmocka_unit_test(test_config_special_index_outside_vocab),
        cmocka_unit_test(test_config_value_out_of_range),
        cmocka_unit_test(test_config_emb_dim_not_divisible),
        cmocka_unit_test(test_config_asm_unsupported),
        cmocka_unit_test(test_config_more_layers_than_weights),
        cmocka_unit_test(test_config_other_emb_dim_than_weights),
        cmocka_unit_test(test_config_missing),
        cmocka_unit_test(test_head_not_in_checkpoint),
        cmocka_unit_test(test_case_line_with_unknown_head),
        cmocka_unit_test(test_extra_head_like_tensor),
        cmocka_unit_test(test_f16_weights),
        cmocka_unit_test(test_bf16_weights),
        cmocka_unit_test(test_f64_weights_are_exact),
        cmocka_unit_test(test_misaligned_f32_weights_are_exact),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_bf16_known_values),
        cmocka_unit_test(test_stage_opens_file_with_only_its_tensors),
    };
    shard_set_threads(1);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
