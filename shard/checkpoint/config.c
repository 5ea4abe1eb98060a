/* config.c: config.json -> shard_config_t, every field type- and range-checked. */
#include "checkpoint_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *root;
    const char *path;
    shard_error_t *err;
} config_reader_t;

/* A null where a number or bool belongs is an error, as Python's
 * XLMConfig would fail on it: falling back to the default would run a
 * different model than the file describes. */
static shard_status_t refuse_null(config_reader_t *r, const char *key, const char *expected)
{
    return shard_error_set(r->err, SHARD_ERR_CONFIG,
                           "shard_config_load: %s: \"%s\" is null, expected %s", r->path, key,
                           expected);
}

/* Reads an integer key, or leaves *out at its default when absent. */
static shard_status_t read_int(config_reader_t *r, const char *key, int64_t lo,
                               int64_t hi, int64_t *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!item)
        return SHARD_OK;
    if (cJSON_IsNull(item))
        return refuse_null(r, key, "an integer");
    /* Range first, in double: casting an out-of-range double is undefined. */
    const double number = cJSON_IsNumber(item) ? item->valuedouble : 0.5;
    if (!cJSON_IsNumber(item) || number != floor(number))
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: \"%s\" must be an integer", r->path, key);
    if (number < (double)lo || number > (double)hi)
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: \"%s\" = %.17g, expected %lld..%lld",
                               r->path, key, number, (long long)lo, (long long)hi);
    *out = (int64_t)number;
    return SHARD_OK;
}

static shard_status_t read_bool(config_reader_t *r, const char *key, bool *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!item)
        return SHARD_OK;
    if (cJSON_IsNull(item))
        return refuse_null(r, key, "true or false");
    if (!cJSON_IsBool(item))
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: \"%s\" must be true or false", r->path, key);
    *out = cJSON_IsTrue(item);
    return SHARD_OK;
}

static shard_status_t read_double(config_reader_t *r, const char *key, double lo,
                                  double hi, double *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!item)
        return SHARD_OK;
    if (cJSON_IsNull(item))
        return refuse_null(r, key, "a number");
    if (!cJSON_IsNumber(item) || !(item->valuedouble >= lo && item->valuedouble <= hi))
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: \"%s\" must be a number in [%g, %g]",
                               r->path, key, lo, hi);
    *out = item->valuedouble;
    return SHARD_OK;
}

/* String key; *out stays NULL when absent or null. */
static shard_status_t read_string(config_reader_t *r, const char *key, const char **out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->root, key);
    *out = NULL;
    if (!item || cJSON_IsNull(item))
        return SHARD_OK;
    if (!cJSON_IsString(item))
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: \"%s\" must be a string", r->path, key);
    *out = item->valuestring;
    return SHARD_OK;
}

static shard_status_t read_summary(config_reader_t *r, shard_config_t *c)
{
    static const char *const types[SHARD_SUMMARY_COUNT_] = {
        [SHARD_SUMMARY_FIRST] = "first", [SHARD_SUMMARY_LAST] = "last",
        [SHARD_SUMMARY_MEAN] = "mean", [SHARD_SUMMARY_CLS_INDEX] = "cls_index"};
    static const char *const acts[SHARD_ACT_COUNT_] = {
        [SHARD_ACT_NONE] = "linear", [SHARD_ACT_TANH] = "tanh", [SHARD_ACT_RELU] = "relu",
        [SHARD_ACT_GELU] = "gelu", [SHARD_ACT_SIGMOID] = "sigmoid"};
    const char *type = NULL, *act = NULL;
    if (read_string(r, "summary_type", &type) || read_string(r, "summary_activation", &act))
        return r->err->code;
    if (type) {
        int found = -1;
        for (int i = 0; i < SHARD_SUMMARY_COUNT_; i++)
            if (strcmp(type, types[i]) == 0)
                found = i;
        if (found < 0)
            return shard_error_set(r->err, SHARD_ERR_UNSUPPORTED,
                                   "shard_config_load: %s: summary_type \"%s\" not supported "
                                   "(expected first, last, mean or cls_index)", r->path, type);
        c->summary_type = (shard_summary_type_t)found;
    }
    if (act) {
        int found = -1;
        for (int i = 0; i < SHARD_ACT_COUNT_; i++)
            if (strcmp(act, acts[i]) == 0)
                found = i;
        if (found < 0)
            return shard_error_set(r->err, SHARD_ERR_UNSUPPORTED,
                                   "shard_config_load: %s: summary_activation \"%s\" not supported "
                                   "(expected null, linear, tanh, relu, gelu or sigmoid)",
                                   r->path, act);
        c->summary_activation = (shard_activation_t)found;
    }
    return SHARD_OK;
}

static shard_status_t set_lang_name(config_reader_t *r, shard_config_t *c, int64_t id,
                                    const char *name)
{
    if (id < 0 || id >= c->n_langs)
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: language \"%s\" has id %lld, expected 0..%lld",
                               r->path, name, (long long)id, (long long)c->n_langs - 1);
    if (strlen(name) == 0 || strlen(name) >= SHARD_LANG_NAME_MAX)
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: language code \"%s\" must be 1..%d bytes",
                               r->path, name, SHARD_LANG_NAME_MAX - 1);
    snprintf(c->lang_names[id], SHARD_LANG_NAME_MAX, "%s", name);
    return SHARD_OK;
}

static shard_status_t read_langs(config_reader_t *r, shard_config_t *c)
{
    const cJSON *lang2id = cJSON_GetObjectItemCaseSensitive(r->root, "lang2id");
    const cJSON *id2lang = cJSON_GetObjectItemCaseSensitive(r->root, "id2lang");
    const cJSON *item;
    if (lang2id && !cJSON_IsNull(lang2id)) {
        if (!cJSON_IsObject(lang2id))
            return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                   "shard_config_load: %s: lang2id must be an object", r->path);
        cJSON_ArrayForEach(item, lang2id) {
            /* Range in double first: casting an out-of-range double is
             * undefined (found by fuzz_config). */
            if (!cJSON_IsNumber(item) || item->valuedouble != floor(item->valuedouble)
                || !(fabs(item->valuedouble) <= (double)SHARD_MAX_LANGS))
                return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                       "shard_config_load: %s: lang2id[\"%s\"] must be an "
                                       "integer language id", r->path, item->string);
            if (set_lang_name(r, c, (int64_t)item->valuedouble, item->string))
                return r->err->code;
        }
    }
    if (id2lang && !cJSON_IsNull(id2lang)) {
        if (!cJSON_IsObject(id2lang))
            return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                   "shard_config_load: %s: id2lang must be an object", r->path);
        cJSON_ArrayForEach(item, id2lang) {
            char *end = NULL;
            long long id = strtoll(item->string, &end, 10);
            if (!cJSON_IsString(item) || end == item->string || *end)
                return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                       "shard_config_load: %s: id2lang entry \"%s\" must map an "
                                       "integer key to a language code", r->path, item->string);
            if (set_lang_name(r, c, id, item->valuestring))
                return r->err->code;
        }
    }
    return SHARD_OK;
}

static shard_status_t read_labels(config_reader_t *r, shard_config_t *c)
{
    const cJSON *id2label = cJSON_GetObjectItemCaseSensitive(r->root, "id2label");
    const cJSON *label2id = cJSON_GetObjectItemCaseSensitive(r->root, "label2id");
    const cJSON *labels = cJSON_IsObject(id2label) ? id2label
                          : cJSON_IsObject(label2id) ? label2id : NULL;
    c->num_labels = 2; /* XLMConfig's default when no label map is stored */
    if (labels) {
        int n = cJSON_GetArraySize(labels);
        if (n < 1 || n > SHARD_MAX_LABELS)
            return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                   "shard_config_load: %s: %d labels, expected 1..%d",
                                   r->path, n, SHARD_MAX_LABELS);
        c->num_labels = n;
    }
    return read_int(r, "num_labels", 1, SHARD_MAX_LABELS, &c->num_labels);
}

static shard_status_t read_architecture(config_reader_t *r, shard_config_t *c)
{
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(r->root, "architectures");
    c->architecture[0] = '\0';
    if (!archs || cJSON_IsNull(archs))
        return SHARD_OK;
    const cJSON *first = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(first))
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: architectures must be a list of class names",
                               r->path);
    size_t length = strlen(first->valuestring);
    if (length == 0 || length >= sizeof c->architecture)
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: architecture name of %zu bytes, expected "
                               "1..%zu", r->path, length, sizeof c->architecture - 1);
    /* HF's TF classes (TFXLMWithLMHeadModel, ...) have the same heads and
     * weights as their PyTorch twins, whose names the engine knows. */
    const char *name = first->valuestring;
    if (strncmp(name, "TFXLM", 5) == 0) {
        name += 2;
        length -= 2;
    }
    memcpy(c->architecture, name, length + 1);
    return SHARD_OK;
}

static void set_defaults(shard_config_t *c)
{
    /* XLMConfig's defaults, for keys a config.json leaves out. */
    memset(c, 0, sizeof *c);
    c->vocab_size = 30145;
    c->emb_dim = 2048;
    c->n_layers = 12;
    c->n_heads = 16;
    c->n_langs = 1;
    c->max_position_embeddings = 512;
    c->use_lang_emb = true;
    c->gelu_activation = true;
    c->layer_norm_eps = 1e-12;
    c->bos_index = 0;
    c->eos_index = 1;
    c->pad_index = 2;
    c->unk_index = 3;
    c->mask_index = 5;
    c->summary_type = SHARD_SUMMARY_FIRST;
    c->summary_use_proj = true;
    c->summary_activation = SHARD_ACT_NONE;
    c->summary_proj_to_labels = true;
    c->start_n_top = 5;
    c->end_n_top = 5;
}

static shard_status_t read_fields(config_reader_t *r, shard_config_t *c)
{
    const int64_t big = (int64_t)1 << 31;
    bool asm_head = false;
    if (read_int(r, "n_words", 1, big, &c->vocab_size) ||
        read_int(r, "vocab_size", 1, big, &c->vocab_size) ||
        read_int(r, "emb_dim", 1, 1 << 16, &c->emb_dim) ||
        read_int(r, "n_layers", 0, 1024, &c->n_layers) ||
        read_int(r, "n_heads", 1, 1024, &c->n_heads) ||
        read_int(r, "n_langs", 1, SHARD_MAX_LANGS, &c->n_langs) ||
        read_int(r, "max_position_embeddings", 1, 1 << 20, &c->max_position_embeddings) ||
        read_bool(r, "use_lang_emb", &c->use_lang_emb) ||
        read_bool(r, "causal", &c->causal) ||
        read_bool(r, "gelu_activation", &c->gelu_activation) ||
        read_bool(r, "sinusoidal_embeddings", &c->sinusoidal_embeddings) ||
        read_bool(r, "asm", &asm_head) ||
        read_double(r, "layer_norm_eps", 0.0, 1.0, &c->layer_norm_eps) ||
        read_int(r, "pad_index", 0, big, &c->pad_index) ||
        read_int(r, "eos_index", 0, big, &c->eos_index) ||
        read_int(r, "bos_index", 0, big, &c->bos_index) ||
        read_int(r, "unk_index", 0, big, &c->unk_index) ||
        read_int(r, "mask_index", 0, big, &c->mask_index) ||
        read_bool(r, "summary_use_proj", &c->summary_use_proj) ||
        read_bool(r, "summary_proj_to_labels", &c->summary_proj_to_labels) ||
        read_int(r, "start_n_top", 1, 1 << 16, &c->start_n_top) ||
        read_int(r, "end_n_top", 1, 1 << 16, &c->end_n_top) ||
        read_summary(r, c) || read_langs(r, c) || read_labels(r, c) ||
        read_architecture(r, c))
        return r->err->code;
    if (asm_head)
        return shard_error_set(r->err, SHARD_ERR_UNSUPPORTED,
                               "shard_config_load: %s: asm = true (adaptive softmax output) is "
                               "not supported; expected asm = false", r->path);
    if (c->emb_dim % c->n_heads != 0)
        return shard_error_set(r->err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: emb_dim %lld is not a multiple of n_heads %lld",
                               r->path, (long long)c->emb_dim, (long long)c->n_heads);
    const struct { const char *name; int64_t value; } indices[] = {
        {"pad_index", c->pad_index}, {"eos_index", c->eos_index}, {"bos_index", c->bos_index},
        {"unk_index", c->unk_index}, {"mask_index", c->mask_index}};
    for (size_t i = 0; i < sizeof indices / sizeof indices[0]; i++)
        if (indices[i].value >= c->vocab_size)
            return shard_error_set(r->err, SHARD_ERR_CONFIG,
                                   "shard_config_load: %s: %s = %lld, expected below vocab_size %lld",
                                   r->path, indices[i].name, (long long)indices[i].value,
                                   (long long)c->vocab_size);
    c->hidden_dim = 4 * c->emb_dim;
    return SHARD_OK;
}

shard_status_t shard_config_from_json(const cJSON *root, const char *path,
                                      shard_config_t *config, shard_error_t *err)
{
    config_reader_t reader = {root, path, err};
    set_defaults(config);
    return read_fields(&reader, config);
}

/* JSON allows only space, tab, newline and carriage return between
 * tokens, and no raw control byte inside a string; cJSON skips every byte
 * below 0x21 as whitespace, so "1e-1\x0f" would read as 0.1. This scan
 * refuses them as Python's json does, naming the key whose value (or name)
 * holds the byte: the last string followed by ':' before it. */
shard_status_t shard_config_check_bytes(const char *text, size_t size, const char *path,
                                        shard_error_t *err)
{
    bool in_string = false, escaped = false;
    size_t str_start = 0, str_len = 0, key_start = 0, key_len = 0;
    bool have_key = false, have_str = false;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 && (in_string || (c != ' ' && c != '\t' && c != '\n' && c != '\r'))) {
            return shard_error_set(err, SHARD_ERR_CONFIG,
                                   "shard_config_load: %s: control byte 0x%02x at offset %zu "
                                   "%s\"%.*s\"%s", path, c, i,
                                   have_key ? "in the value of " : "(after ",
                                   have_key ? (int)key_len : (int)(have_str ? str_len : 0),
                                   text + (have_key ? key_start : str_start),
                                   have_key ? "" : ")");
        }
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"') {
                in_string = false;
                str_len = i - str_start;
                have_str = true;
            }
        } else if (c == '"') {
            in_string = true;
            str_start = i + 1;
        } else if (c == ':' && have_str) {
            key_start = str_start;
            key_len = str_len;
            have_key = true;
        }
    }
    return SHARD_OK;
}

shard_status_t shard_config_load(const char *path, shard_config_t *config, shard_error_t *err)
{
    size_t size = 0;
    char *text = NULL;
    shard_status_t status = shard_read_file(path, 1 << 24, &text, &size, err);
    if (status)
        return status;
    status = shard_config_check_bytes(text, size, path, err);
    if (status) {
        free(text);
        return status;
    }
    cJSON *root = cJSON_ParseWithLength(text, size);
    if (!root || !cJSON_IsObject(root)) {
        const char *where = cJSON_GetErrorPtr();
        long offset = (root || !where) ? 0 : (long)(where - text);
        cJSON_Delete(root);
        free(text);
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_config_load: %s: not a JSON object (parse error near byte %ld)",
                               path, offset);
    }
    config_reader_t reader = {root, path, err};
    set_defaults(config);
    status = read_fields(&reader, config);
    cJSON_Delete(root);
    free(text);
    return status;
}

int64_t shard_config_lang_id(const shard_config_t *config, const char *code)
{
    for (int64_t i = 0; code && i < config->n_langs; i++)
        if (strcmp(config->lang_names[i], code) == 0)
            return i;
    return -1;
}

/* Names of the summary enums in config.json's spelling; indexed by value. */
static const char *const summary_type_names[SHARD_SUMMARY_COUNT_] = {
    [SHARD_SUMMARY_FIRST] = "first", [SHARD_SUMMARY_LAST] = "last",
    [SHARD_SUMMARY_MEAN] = "mean", [SHARD_SUMMARY_CLS_INDEX] = "cls_index"};
static const char *const activation_names[SHARD_ACT_COUNT_] = {
    [SHARD_ACT_NONE] = "linear", [SHARD_ACT_TANH] = "tanh", [SHARD_ACT_RELU] = "relu",
    [SHARD_ACT_GELU] = "gelu", [SHARD_ACT_SIGMOID] = "sigmoid"};

static bool add_config_fields(cJSON *j, const shard_config_t *c)
{
    const struct { const char *key; int64_t value; } ints[] = {
        {"vocab_size", c->vocab_size}, {"emb_dim", c->emb_dim}, {"n_layers", c->n_layers},
        {"n_heads", c->n_heads}, {"n_langs", c->n_langs},
        {"max_position_embeddings", c->max_position_embeddings}, {"pad_index", c->pad_index},
        {"eos_index", c->eos_index}, {"bos_index", c->bos_index}, {"unk_index", c->unk_index},
        {"mask_index", c->mask_index}, {"start_n_top", c->start_n_top},
        {"end_n_top", c->end_n_top}, {"num_labels", c->num_labels}};
    const struct { const char *key; bool value; } bools[] = {
        {"use_lang_emb", c->use_lang_emb}, {"causal", c->causal},
        {"gelu_activation", c->gelu_activation},
        {"sinusoidal_embeddings", c->sinusoidal_embeddings}, {"asm", false},
        {"summary_use_proj", c->summary_use_proj},
        {"summary_proj_to_labels", c->summary_proj_to_labels}};
    bool ok = true;
    for (size_t i = 0; ok && i < sizeof ints / sizeof ints[0]; i++)
        ok = cJSON_AddNumberToObject(j, ints[i].key, (double)ints[i].value) != NULL;
    for (size_t i = 0; ok && i < sizeof bools / sizeof bools[0]; i++)
        ok = cJSON_AddBoolToObject(j, bools[i].key, bools[i].value) != NULL;
    ok = ok && cJSON_AddNumberToObject(j, "layer_norm_eps", c->layer_norm_eps)
         && cJSON_AddStringToObject(j, "summary_type", summary_type_names[c->summary_type])
         && cJSON_AddStringToObject(j, "summary_activation",
                                    activation_names[c->summary_activation]);
    cJSON *archs = ok && c->architecture[0] ? cJSON_AddArrayToObject(j, "architectures") : NULL;
    if (archs != NULL)
        ok = cJSON_AddItemToArray(archs, cJSON_CreateString(c->architecture));
    cJSON *l2i = ok ? cJSON_AddObjectToObject(j, "lang2id") : NULL;
    cJSON *i2l = l2i ? cJSON_AddObjectToObject(j, "id2lang") : NULL;
    ok = i2l != NULL;
    for (int64_t i = 0; ok && i < c->n_langs; i++) {
        char id[32];
        if (c->lang_names[i][0] == '\0')
            continue;
        snprintf(id, sizeof id, "%lld", (long long)i);
        ok = cJSON_AddNumberToObject(l2i, c->lang_names[i], (double)i)
             && cJSON_AddStringToObject(i2l, id, c->lang_names[i]);
    }
    return ok;
}

shard_status_t shard_config_save(const shard_config_t *config, const char *path,
                                 shard_error_t *err)
{
    cJSON *j = cJSON_CreateObject();
    char *text = j != NULL && add_config_fields(j, config) ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (text == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_config_save: out of memory");
    FILE *f = fopen(path, "w");
    bool ok = f != NULL && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f != NULL && fclose(f) != 0)
        ok = false;
    free(text);
    if (!ok)
        return shard_error_set(err, SHARD_ERR_IO, "shard_config_save: cannot write %s", path);
    return SHARD_OK;
}
