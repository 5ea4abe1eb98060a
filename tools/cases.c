/* cases.c: the JSON lines format of cases and results (as in the golden
 * cases.jsonl), shared by xlm-infer and the service's client tool. */
#include "cases.h"
#include "errors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ parsing */

typedef struct {
    int ndim;
    int64_t shape[3];
} nested_shape_t;

/* Shape of a nested list, checking that it is rectangular. */
static shard_status_t shape_of(const char *field, const cJSON *value, nested_shape_t *shape,
                               shard_error_t *err)
{
    const cJSON *probe = value;
    shape->ndim = 0;
    while (cJSON_IsArray(probe)) {
        if (shape->ndim == 3)
            return shard_error_set(err, SHARD_ERR_INPUT, "%s: more than 3 dimensions", field);
        shape->shape[shape->ndim++] = cJSON_GetArraySize(probe);
        probe = cJSON_GetArrayItem(probe, 0);
    }
    if (shape->ndim < 2)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "%s: expected a list of rows ([batch][seq] or [batch][choices][seq])",
                               field);
    return SHARD_OK;
}

/* Walks the nested list in row-major order, checking every row's length. */
static shard_status_t flatten(const char *field, const cJSON *value, const nested_shape_t *shape,
                              int depth, int64_t *ints, float *floats, int64_t *at,
                              shard_error_t *err)
{
    if (depth == shape->ndim) {
        if (!cJSON_IsNumber(value))
            return shard_error_set(err, SHARD_ERR_INPUT, "%s: element %lld is not a number", field,
                                   (long long)*at);
        double v = value->valuedouble;
        if (ints) {
            if (v != floor(v) || fabs(v) > 9007199254740992.0)
                return shard_error_set(err, SHARD_ERR_INPUT, "%s: element %lld = %g is not an "
                                       "integer", field, (long long)*at, v);
            ints[*at] = (int64_t)v;
        } else {
            floats[*at] = (float)v;
        }
        (*at)++;
        return SHARD_OK;
    }
    if (depth < 0 || depth >= 3)
        return shard_error_set(err, SHARD_ERR_INPUT, "%s: too deeply nested", field);
    if (!cJSON_IsArray(value) || cJSON_GetArraySize(value) != shape->shape[depth])
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "%s: ragged rows: a row at depth %d has %d entries, expected %lld",
                               field, depth, cJSON_IsArray(value) ? cJSON_GetArraySize(value) : -1,
                               (long long)shape->shape[depth]);
    const cJSON *item;
    cJSON_ArrayForEach(item, value) {
        shard_status_t status = flatten(field, item, shape, depth + 1, ints, floats, at, err);
        if (status)
            return status;
    }
    return SHARD_OK;
}

static shard_status_t read_tensor(const cJSON *inputs, const char *field, bool is_float,
                                  const nested_shape_t *expect, nested_shape_t *shape_out,
                                  void **out, shard_error_t *err)
{
    *out = NULL;
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(inputs, field);
    if (!value || cJSON_IsNull(value))
        return SHARD_OK;
    nested_shape_t shape;
    shard_status_t status = shape_of(field, value, &shape, err);
    if (status)
        return status;
    bool same = !expect || shape.ndim == expect->ndim;
    for (int d = 0; expect && same && d < shape.ndim; d++)
        same = shape.shape[d] == expect->shape[d];
    if (!same)
        return shard_error_set(err, SHARD_ERR_INPUT, "%s: shape differs from input_ids'", field);
    size_t count = 1;
    for (int d = 0; d < shape.ndim; d++)
        count *= (size_t)shape.shape[d];
    *out = calloc(count ? count : 1, is_float ? sizeof(float) : sizeof(int64_t));
    if (!*out)
        return shard_error_set(err, SHARD_ERR_NOMEM, "%s: out of memory", field);
    int64_t at = 0;
    status = flatten(field, value, &shape, 0, is_float ? NULL : *out, is_float ? *out : NULL, &at,
                     err);
    if (status) {
        free(*out);
        *out = NULL;
    }
    if (shape_out)
        *shape_out = shape;
    return status;
}

static shard_status_t read_int_field(const cJSON *obj, const char *key, int64_t *out,
                                     shard_error_t *err)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!value)
        return SHARD_OK;
    if (!cJSON_IsNumber(value) || value->valuedouble != floor(value->valuedouble) ||
        fabs(value->valuedouble) > 1e15)
        return shard_error_set(err, SHARD_ERR_INPUT, "inputs.%s must be an integer", key);
    *out = (int64_t)value->valuedouble;
    return SHARD_OK;
}

static shard_status_t check_input_keys(const cJSON *inputs, shard_error_t *err)
{
    static const char *const known[] = {"input_ids", "attention_mask", "langs", "token_type_ids",
                                        "position_ids", "p_mask", "steps", "langs_fill"};
    const cJSON *item;
    cJSON_ArrayForEach(item, inputs) {
        bool found = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0] && !found; i++)
            found = strcmp(item->string, known[i]) == 0;
        if (!found)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "inputs: unknown field \"%s\" (expected input_ids, "
                                   "attention_mask, langs, token_type_ids, position_ids, p_mask, "
                                   "steps, langs_fill)", item->string);
    }
    return SHARD_OK;
}

static shard_status_t parse_inputs(const cJSON *inputs, case_t *c, shard_error_t *err)
{
    if (!cJSON_IsObject(inputs))
        return shard_error_set(err, SHARD_ERR_INPUT, "\"inputs\" must be an object");
    nested_shape_t shape;
    void *ids = NULL;
    shard_status_t status = check_input_keys(inputs, err);
    if (status || (status = read_tensor(inputs, "input_ids", false, NULL, &shape, &ids, err)))
        return status;
    c->inputs.input_ids = ids;
    if (!ids)
        return shard_error_set(err, SHARD_ERR_INPUT, "inputs.input_ids is missing");
    if (shape.ndim == 3) {
        c->inputs.n_choices = shape.shape[1];
        c->inputs.batch = shape.shape[0] * shape.shape[1];
    } else {
        c->inputs.batch = shape.shape[0];
    }
    c->inputs.seq = shape.shape[shape.ndim - 1];
    void *mask = NULL, *langs = NULL, *types = NULL, *positions = NULL, *p_mask = NULL;
    status = read_tensor(inputs, "attention_mask", false, &shape, NULL, &mask, err);
    c->inputs.attention_mask = mask;
    if (!status)
        status = read_tensor(inputs, "langs", false, &shape, NULL, &langs, err);
    c->inputs.langs = langs;
    if (!status)
        status = read_tensor(inputs, "token_type_ids", false, &shape, NULL, &types, err);
    c->inputs.token_type_ids = types;
    if (!status)
        status = read_tensor(inputs, "position_ids", false, &shape, NULL, &positions, err);
    c->inputs.position_ids = positions;
    if (!status)
        status = read_tensor(inputs, "p_mask", true, &shape, NULL, &p_mask, err);
    c->inputs.p_mask = p_mask;
    if (!status)
        status = read_int_field(inputs, "steps", &c->steps, err);
    if (!status)
        status = read_int_field(inputs, "langs_fill", &c->langs_fill, err);
    return status;
}

static shard_status_t parse_kind(const cJSON *root, case_t *c, shard_error_t *err)
{
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(root, "head");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    c->head = SHARD_HEAD_COUNT_;
    if (head && !cJSON_IsNull(head)) {
        c->head = cJSON_IsString(head) ? shard_head_from_name(head->valuestring) : SHARD_HEAD_COUNT_;
        if (c->head == SHARD_HEAD_COUNT_) {
            char names[256];
            shard_head_names(names, sizeof names);
            return shard_error_set(err, SHARD_ERR_HEAD, "unknown head %s (expected %s)",
                                   cJSON_IsString(head) ? head->valuestring : "(not a string)",
                                   names);
        }
    }
    c->kind = CASE_HEAD;
    if (kind && !cJSON_IsNull(kind)) {
        if (cJSON_IsString(kind) && strcmp(kind->valuestring, "clm_score") == 0)
            c->kind = CASE_CLM_SCORE;
        else if (cJSON_IsString(kind) && strcmp(kind->valuestring, "greedy") == 0)
            c->kind = CASE_GREEDY;
        else
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "unknown kind %s (expected clm_score or greedy)",
                                   cJSON_IsString(kind) ? kind->valuestring : "(not a string)");
    }
    return SHARD_OK;
}

/* What the protocol refuses of a greedy case before any model sees it,
 * refused in process too so that the line fails the same way. */
static shard_status_t check_greedy(const case_t *c, shard_error_t *err)
{
    if (c->kind == CASE_GREEDY && (c->steps < 1 || c->steps > CASE_MAX_STEPS))
        return shard_error_set(err, SHARD_ERR_INPUT, "inputs.steps = %lld, expected 1 to %d "
                               "(tokens to generate)", (long long)c->steps, CASE_MAX_STEPS);
    return SHARD_OK;
}

/* JSON text is UTF-8 (RFC 8259); cJSON would pass other bytes on. */
static shard_status_t check_utf8(const char *line, size_t length, shard_error_t *err)
{
    size_t valid = tools_utf8_valid_prefix(line, length);
    if (valid == length)
        return SHARD_OK;
    return shard_error_set(err, SHARD_ERR_UTF8, "the line is not valid UTF-8 (byte 0x%02X at "
                           "byte %zu): JSON text must be UTF-8", (unsigned char)line[valid],
                           valid + 1);
}

shard_status_t case_parse(const char *line, size_t length, case_t *c,
                                shard_error_t *err)
{
    memset(c, 0, sizeof *c);
    c->head = SHARD_HEAD_COUNT_;
    cJSON *root = cJSON_ParseWithLength(line, length);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    c->name = strdup(cJSON_IsString(name) ? name->valuestring : "");
    shard_status_t status = SHARD_OK;
    if (!c->name)
        status = shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
    else if ((status = check_utf8(line, length, err)))
        ;
    else if (!cJSON_IsObject(root))
        status = shard_error_set(err, SHARD_ERR_INPUT, "the line is not a JSON object "
                                 "(expected {\"name\": ..., \"inputs\": {...}, ...})");
    else if (!(status = parse_kind(root, c, err)) &&
             !(status = parse_inputs(cJSON_GetObjectItemCaseSensitive(root, "inputs"), c, err)))
        status = check_greedy(c, err);
    cJSON_Delete(root);
    return status;
}

void case_clear(case_t *c)
{
    free(c->name);
    free((void *)c->inputs.input_ids);
    free((void *)c->inputs.attention_mask);
    free((void *)c->inputs.langs);
    free((void *)c->inputs.token_type_ids);
    free((void *)c->inputs.position_ids);
    free((void *)c->inputs.p_mask);
    memset(c, 0, sizeof *c);
}

shard_status_t case_run(const shard_model_t *model, shard_state_t *state, const case_t *c,
                        shard_outputs_t *outputs, shard_error_t *err)
{
    switch (c->kind) {
    case CASE_GREEDY:
        return shard_generate_greedy(model, state, &c->inputs, c->steps, c->langs_fill, outputs, err);
    case CASE_CLM_SCORE: /* every token after the first: the reference's clm_score */
        return shard_score_rows(model, state, SHARD_SCORE_CLM, &c->inputs, NULL, NULL, outputs, err);
    case CASE_HEAD:
    case CASE_KIND_COUNT_:
        break;
    }
    shard_head_t head = c->head == SHARD_HEAD_COUNT_ ? shard_model_default_head(model) : c->head;
    if (c->inputs.n_choices > 0 && head != SHARD_HEAD_MULTIPLE_CHOICE)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "input_ids of [batch][choices][seq] are only for multiple_choice, "
                               "not %s", shard_head_name(head));
    if (c->inputs.n_choices == 0 && head == SHARD_HEAD_MULTIPLE_CHOICE)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "multiple_choice takes input_ids of [batch][choices][seq]");
    return shard_forward(model, state, head, &c->inputs, outputs, err);
}

/* The broker refuses rows longer than the model's positions before a
 * worker sees them (too_large); the engine would call them bad input. */
const char *case_check_limits(const shard_config_t *config, const case_t *c, shard_error_t *err)
{
    const int64_t max = config->max_position_embeddings;
    const int64_t generated = c->kind == CASE_GREEDY ? c->steps : 0;
    if (c->inputs.position_ids || c->inputs.seq + generated <= max)
        return NULL;
    shard_error_set(err, SHARD_ERR_INPUT, "a row has %lld tokens%s, the model takes at most %lld",
                    (long long)(c->inputs.seq + generated),
                    generated ? " with the generated ones" : "", (long long)max);
    return "too_large";
}

/* ------------------------------------------------------------ writing */

bool case_line_is_blank(const char *line)
{
    for (; *line; line++)
        if (*line != ' ' && *line != '\t' && *line != '\r' && *line != '\n')
            return false;
    return true;
}

void case_print(FILE *out, char *json, const char *name)
{
    if (json) {
        fprintf(out, "%s\n", json);
    } else {
        char *quoted = tools_json_quote(name);
        fprintf(out, "{\"name\":%s,\"error\":{\"code\":\"internal\",\"message\":"
                     "\"out of memory: cannot format the result\"}}\n", quoted ? quoted : "\"\"");
        free(quoted);
    }
    free(json);
}

typedef struct {
    char *text;
    size_t length, capacity;
    bool failed;
} text_buffer_t;

static void append(text_buffer_t *buf, const char *s, size_t n)
{
    if (buf->failed)
        return;
    if (buf->length + n + 1 > buf->capacity) {
        size_t capacity = buf->capacity ? buf->capacity : 256;
        while (capacity < buf->length + n + 1)
            capacity *= 2;
        char *grown = realloc(buf->text, capacity);
        if (!grown) {
            buf->failed = true;
            return;
        }
        buf->text = grown;
        buf->capacity = capacity;
    }
    memcpy(buf->text + buf->length, s, n);
    buf->length += n;
    buf->text[buf->length] = '\0';
}

static void append_str(text_buffer_t *buf, const char *s) { append(buf, s, strlen(s)); }

/* A JSON string literal, valid UTF-8 whatever s holds. */
static void append_json_string(text_buffer_t *buf, const char *s)
{
    char *quoted = tools_json_quote(s);
    if (quoted)
        append_str(buf, quoted);
    else
        buf->failed = true;
    free(quoted);
}

static void append_float(text_buffer_t *buf, float value)
{
    char number[32];
    /* %.9g reads back to the same float32; JSON has no NaN or infinity. */
    int n = isfinite(value) ? snprintf(number, sizeof number, "%.9g", (double)value)
                            : snprintf(number, sizeof number, "null");
    append(buf, number, (size_t)n);
}

static void append_int(text_buffer_t *buf, int64_t value)
{
    char number[32];
    int n = snprintf(number, sizeof number, "%lld", (long long)value);
    append(buf, number, (size_t)n);
}

static void append_values(text_buffer_t *buf, const shard_tensor_t *t, int64_t first, int64_t count)
{
    append_str(buf, "[");
    for (int64_t i = 0; i < count; i++) {
        if (i)
            append_str(buf, ",");
        if (t->elem == SHARD_F32)
            append_float(buf, t->f32[first + i]);
        else
            append_int(buf, t->i64[first + i]);
    }
    append_str(buf, "]");
}

/* Dimension dim of a dense tensor starting at element first. */
static void append_dense(text_buffer_t *buf, const shard_tensor_t *t, int dim, int64_t first)
{
    if (dim < 0 || dim >= SHARD_MAX_DIMS)
        return;
    if (dim == t->ndim - 1) {
        append_values(buf, t, first, t->shape[dim]);
        return;
    }
    int64_t inner = 1;
    for (int d = dim + 1; d < t->ndim && d < SHARD_MAX_DIMS; d++)
        inner *= t->shape[d];
    append_str(buf, "[");
    for (int64_t i = 0; i < t->shape[dim]; i++) {
        if (i)
            append_str(buf, ",");
        append_dense(buf, t, dim + 1, first + i * inner);
    }
    append_str(buf, "]");
}

static void append_tensor(text_buffer_t *buf, const shard_tensor_t *t)
{
    if (!t->row_lengths) {
        append_dense(buf, t, 0, 0);
        return;
    }
    append_str(buf, "[");
    for (int64_t r = 0, first = 0; r < t->shape[0]; first += t->row_lengths[r], r++) {
        if (r)
            append_str(buf, ",");
        append_values(buf, t, first, t->row_lengths[r]);
    }
    append_str(buf, "]");
}

char *case_result_json(const char *name, const shard_outputs_t *outputs)
{
    text_buffer_t buf = {0};
    append_str(&buf, "{\"name\":");
    append_json_string(&buf, name);
    append_str(&buf, ",\"outputs\":{");
    for (int i = 0; i < outputs->count; i++) {
        if (i)
            append_str(&buf, ",");
        append_json_string(&buf, outputs->tensors[i].name);
        append_str(&buf, ":");
        append_tensor(&buf, &outputs->tensors[i]);
    }
    append_str(&buf, "}}");
    if (buf.failed) {
        free(buf.text);
        return NULL;
    }
    return buf.text;
}

char *case_error_json(const char *name, const char *code, const char *message)
{
    char said[1024];
    tools_user_message(message, said, sizeof said);
    text_buffer_t buf = {0};
    append_str(&buf, "{\"name\":");
    append_json_string(&buf, name);
    append_str(&buf, ",\"error\":{\"code\":");
    append_json_string(&buf, code);
    append_str(&buf, ",\"message\":");
    append_json_string(&buf, said);
    append_str(&buf, "}}");
    if (buf.failed) {
        free(buf.text);
        return NULL;
    }
    return buf.text;
}
