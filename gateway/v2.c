/* v2.c: the KServe v2 / Open Inference Protocol REST endpoints.
 *
 * Shapes as the protocol lays them out: health answers by status code
 * with an empty body (200 true, 400 false); metadata and inference bodies
 * and the error body {"error": "..."} as in its required API. Tensors are
 * flat (or nested) row-major data with a shape and a datatype. The tasks a
 * model serves are the engine's heads plus scoring and generation;
 * parameters.task picks one (default: the model's first).
 */
#include "gateway_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the task table */

typedef struct {
    const char *name, *datatype;
    int rank; /* -1 in every dimension of the metadata shape */
} tensor_info_t;

enum { OUTPUTS_MAX = 5 };

/* One row per task: its outputs and how input_ids are shaped. */
static const struct {
    int input_rank; /* input_ids: [batch, seq], or [batch, choices, seq] */
    bool p_mask;    /* takes p_mask */
    tensor_info_t outputs[OUTPUTS_MAX];
} task_table[XLM_TASK_COUNT_] = {
    [XLM_TASK_BASE] = {2, false, {{"last_hidden_state", "FP32", 3}}},
    [XLM_TASK_LM] = {2, false, {{"logits", "FP32", 3}}},
    [XLM_TASK_SEQ_CLS] = {2, false, {{"logits", "FP32", 2}}},
    [XLM_TASK_MULTIPLE_CHOICE] = {3, false, {{"logits", "FP32", 2}}},
    [XLM_TASK_TOKEN_CLS] = {2, false, {{"logits", "FP32", 3}}},
    [XLM_TASK_QA_SIMPLE] = {2, true, {{"start_logits", "FP32", 2}, {"end_logits", "FP32", 2}}},
    [XLM_TASK_QA] = {2, true, {{"start_top_log_probs", "FP32", 2}, {"start_top_index", "INT64", 2},
                               {"end_top_log_probs", "FP32", 2}, {"end_top_index", "INT64", 2},
                               {"cls_logits", "FP32", 1}}},
    [XLM_TASK_CLM_SCORE] = {2, false, {{"token_logprobs", "FP32", 2}, {"sum_logprob", "FP32", 1},
                                       {"tokens", "BYTES", 2}}},
    [XLM_TASK_GENERATE] = {2, false, {{"generated_ids", "INT64", 2}, {"new_ids", "INT64", 2}}},
    [XLM_TASK_MLM_PLL] = {2, false, {{"token_logprobs", "FP32", 2}, {"sum_logprob", "FP32", 1},
                                     {"tokens", "BYTES", 2}}},
};

/* The token inputs, in the order of xlm_tokens_t. */
enum { IN_IDS, IN_MASK, IN_LANGS, IN_TYPES, IN_POSITIONS, IN_P_MASK, IN_COUNT };
static const char *const input_names[IN_COUNT] = {
    "input_ids", "attention_mask", "langs", "token_type_ids", "position_ids", "p_mask"};

/* ------------------------------------------------------------ health and metadata */

void gw_v2_live(gw_request_t *rq, gw_reply_t *reply)
{
    (void)rq;
    reply->code = 200; /* this process answers: it is live */
}

void gw_v2_ready(gw_request_t *rq, gw_reply_t *reply)
{
    gw_service_t service;
    gw_service_get(rq->gw, 250, &service);
    bool ready = service.reached && service.accepting && service.n_models > 0;
    for (size_t i = 0; ready && i < service.n_models; i++)
        ready = service.models[i].pipelines_alive > 0;
    gw_service_clear(&service);
    reply->code = ready ? 200 : 400;
}

void gw_v2_server(gw_request_t *rq, gw_reply_t *reply)
{
    (void)rq;
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "name", "xlmserve");
    cJSON_AddStringToObject(json, "version", XLM_CLIENT_VERSION);
    cJSON_AddItemToObject(json, "extensions", cJSON_CreateArray());
    gw_reply_json(reply, 200, json);
}

/* The model of the path, or a reply: 503 when the broker does not answer,
 * 404 when it serves no such model. */
static const gw_model_t *find_model(const gw_service_t *service, const char *name,
                                    gw_reply_t *reply)
{
    if (!service->reached) {
        gw_reply_error(reply, 503, "%s", service->why);
        reply->retry_after_s = 1;
        return NULL;
    }
    const gw_model_t *m = gw_service_model(service, name);
    if (!m) {
        char served[1024] = "";
        size_t used = 0;
        for (size_t i = 0; i < service->n_models && used + 1 < sizeof served; i++)
            used += (size_t)snprintf(served + used, sizeof served - used, "%s'%s'", i ? ", " : "",
                                     service->models[i].name);
        gw_reply_error(reply, 404, "unknown model '%s' (served: %s)", name ? name : "",
                       service->n_models ? served : "none");
    }
    return m;
}

static cJSON *tensor_metadata(const char *name, const char *datatype, int rank)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "name", name);
    cJSON_AddStringToObject(t, "datatype", datatype);
    cJSON *shape = cJSON_AddArrayToObject(t, "shape");
    for (int d = 0; d < rank; d++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber(-1));
    return t;
}

static bool listed(const cJSON *array, const char *name)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(item, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return true;
    }
    return false;
}

static cJSON *task_metadata(xlm_task_t task)
{
    cJSON *t = cJSON_CreateObject();
    cJSON *inputs = cJSON_AddArrayToObject(t, "inputs");
    for (int i = 0; i < IN_COUNT; i++)
        if (i != IN_P_MASK || task_table[task].p_mask)
            cJSON_AddItemToArray(inputs, tensor_metadata(input_names[i], i == IN_P_MASK ? "FP32" : "INT64",
                                                         task_table[task].input_rank));
    cJSON *outputs = cJSON_AddArrayToObject(t, "outputs");
    for (int o = 0; o < OUTPUTS_MAX && task_table[task].outputs[o].name; o++)
        cJSON_AddItemToArray(outputs, tensor_metadata(task_table[task].outputs[o].name,
                                                      task_table[task].outputs[o].datatype,
                                                      task_table[task].outputs[o].rank));
    return t;
}

void gw_v2_model(gw_request_t *rq, const char *name, gw_reply_t *reply)
{
    gw_service_t service;
    gw_service_get(rq->gw, 250, &service);
    const gw_model_t *m = find_model(&service, name, reply);
    if (!m) {
        gw_service_clear(&service);
        return;
    }
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "name", m->name);
    cJSON *versions = cJSON_AddArrayToObject(json, "versions");
    cJSON_AddItemToArray(versions, cJSON_CreateString("1"));
    cJSON_AddStringToObject(json, "platform", "xlmserve");
    cJSON *inputs = cJSON_AddArrayToObject(json, "inputs");
    cJSON *outputs = cJSON_AddArrayToObject(json, "outputs");
    /* Beside the protocol's fields: per task, what it takes and returns. */
    cJSON *parameters = cJSON_AddObjectToObject(json, "parameters");
    cJSON *tasks = cJSON_AddObjectToObject(parameters, "tasks");
    for (int t = 0; t < XLM_TASK_COUNT_; t++) {
        if (!m->serves[t])
            continue;
        cJSON *task = task_metadata((xlm_task_t)t);
        cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(task, "inputs"))
        {
            const char *n = cJSON_GetObjectItemCaseSensitive(item, "name")->valuestring;
            if (!listed(inputs, n))
                cJSON_AddItemToArray(inputs, cJSON_Duplicate(item, true));
        }
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(task, "outputs"))
        {
            const char *n = cJSON_GetObjectItemCaseSensitive(item, "name")->valuestring;
            if (!listed(outputs, n))
                cJSON_AddItemToArray(outputs, cJSON_Duplicate(item, true));
        }
        cJSON_AddItemToObject(tasks, gw_task_name((xlm_task_t)t), task);
    }
    if (m->first_task != XLM_TASK_COUNT_)
        cJSON_AddStringToObject(parameters, "default_task", gw_task_name(m->first_task));
    cJSON *languages = cJSON_AddArrayToObject(parameters, "languages");
    for (size_t l = 0; l < m->n_langs; l++)
        cJSON_AddItemToArray(languages, cJSON_CreateString(m->lang_codes[l]));
    cJSON_AddNumberToObject(parameters, "max_length", (double)m->max_length);
    cJSON_AddNumberToObject(parameters, "vocab_size", (double)m->vocab_size);
    cJSON_AddStringToObject(parameters, "precision", m->precision[0] ? m->precision : "unknown");
    cJSON_AddNumberToObject(parameters, "pipelines_alive", m->pipelines_alive);
    gw_service_clear(&service);
    gw_reply_json(reply, 200, json);
}

void gw_v2_model_ready(gw_request_t *rq, const char *name, gw_reply_t *reply)
{
    gw_service_t service;
    gw_service_get(rq->gw, 250, &service);
    const gw_model_t *m = find_model(&service, name, reply);
    if (m)
        reply->code = m->pipelines_alive > 0 ? 200 : 400;
    gw_service_clear(&service);
}

/* ------------------------------------------------------------ infer: inputs */

typedef struct {
    int64_t shape[3];
    int rank;
    size_t count;
    int64_t *i64; /* [count] */
    float *f32;   /* p_mask */
} input_t;

typedef struct {
    input_t in[IN_COUNT];
    xlm_task_t task;
    uint32_t deadline_ms;
    int64_t steps, lang_fill_id;
    char lang_fill_code[32];
    bool return_tokens;
    const cJSON *outputs; /* the request's "outputs", or NULL */
    const char *id;
} infer_t;

static void infer_free(infer_t *inf)
{
    for (int i = 0; i < IN_COUNT; i++) {
        free(inf->in[i].i64);
        free(inf->in[i].f32);
    }
}

/* Flattens data (nested arrays allowed) into count numbers. false with
 * the reason when something is not a number or the count differs. */
static bool flatten(const cJSON *data, double *out, size_t count, size_t *at, const char *name,
                    char *why, size_t size)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, data)
    {
        if (cJSON_IsArray(item)) {
            if (!flatten(item, out, count, at, name, why, size))
                return false;
            continue;
        }
        if (!cJSON_IsNumber(item)) {
            snprintf(why, size, "input '%s': data[%zu] is not a number", name, *at);
            return false;
        }
        if (*at >= count) {
            snprintf(why, size, "input '%s': more data than its shape's %zu values", name, count);
            return false;
        }
        out[(*at)++] = item->valuedouble;
    }
    return true;
}

static bool read_shape(const cJSON *shape, input_t *in, const char *name, char *why, size_t size)
{
    int rank = cJSON_GetArraySize(shape);
    if (!cJSON_IsArray(shape) || rank < 1 || rank > 3) {
        snprintf(why, size, "input '%s': shape must be an array of 2 (or, for multiple_choice, "
                 "3) dimensions", name);
        return false;
    }
    in->rank = rank;
    in->count = 1;
    for (int d = 0; d < rank; d++) {
        const cJSON *dim = cJSON_GetArrayItem(shape, d);
        if (!cJSON_IsNumber(dim) || dim->valuedouble < 1 || dim->valuedouble > 1e6 ||
            dim->valuedouble != floor(dim->valuedouble)) {
            snprintf(why, size, "input '%s': shape[%d] must be a whole number from 1 to 1000000",
                     name, d);
            return false;
        }
        in->shape[d] = (int64_t)dim->valuedouble;
        if (in->count > ((size_t)64 << 20) / (size_t)in->shape[d]) {
            snprintf(why, size, "input '%s': the shape holds over 64 Mi values", name);
            return false;
        }
        in->count *= (size_t)in->shape[d];
    }
    return true;
}

static bool read_input(const cJSON *json, infer_t *inf, char *why, size_t size)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(json, "name");
    if (!cJSON_IsString(name)) {
        snprintf(why, size, "an input without a name (expected input_ids, attention_mask, ...)");
        return false;
    }
    int which = -1;
    for (int i = 0; i < IN_COUNT; i++)
        if (strcmp(name->valuestring, input_names[i]) == 0)
            which = i;
    if (which < 0) {
        snprintf(why, size, "input '%s': not an input of this model (expected input_ids, "
                 "attention_mask, langs, token_type_ids, position_ids or p_mask)", name->valuestring);
        return false;
    }
    input_t *in = &inf->in[which];
    if (in->count) {
        snprintf(why, size, "input '%s' is given twice", name->valuestring);
        return false;
    }
    const cJSON *datatype = cJSON_GetObjectItemCaseSensitive(json, "datatype");
    bool is_float = which == IN_P_MASK;
    static const char *const ints[] = {"INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64"};
    bool ok_type = false;
    for (size_t k = 0; cJSON_IsString(datatype) && k < sizeof ints / sizeof ints[0]; k++)
        ok_type |= !is_float && strcmp(datatype->valuestring, ints[k]) == 0;
    ok_type |= is_float && cJSON_IsString(datatype) &&
               (strcmp(datatype->valuestring, "FP32") == 0 || strcmp(datatype->valuestring, "FP64") == 0);
    if (!ok_type) {
        snprintf(why, size, "input '%s': datatype %s, expected %s", name->valuestring,
                 cJSON_IsString(datatype) ? datatype->valuestring : "missing",
                 is_float ? "FP32" : "INT64 (or another integer type)");
        return false;
    }
    if (!read_shape(cJSON_GetObjectItemCaseSensitive(json, "shape"), in, name->valuestring, why, size))
        return false;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(json, "data");
    if (!cJSON_IsArray(data)) {
        snprintf(why, size, "input '%s': no data array", name->valuestring);
        return false;
    }
    double *values = malloc(in->count * sizeof *values);
    size_t at = 0;
    bool ok = values && flatten(data, values, in->count, &at, name->valuestring, why, size);
    if (ok && at != in->count) {
        snprintf(why, size, "input '%s': %zu values, its shape holds %zu", name->valuestring, at,
                 in->count);
        ok = false;
    }
    if (ok && is_float && (in->f32 = malloc(in->count * sizeof *in->f32)))
        for (size_t k = 0; k < in->count; k++)
            in->f32[k] = (float)values[k];
    if (ok && !is_float && (in->i64 = malloc(in->count * sizeof *in->i64)))
        for (size_t k = 0; ok && k < in->count; k++) {
            if (values[k] != floor(values[k]) || fabs(values[k]) > 9.0e15) {
                snprintf(why, size, "input '%s': data[%zu] = %g is not an integer",
                         name->valuestring, k, values[k]);
                ok = false;
            }
            in->i64[k] = (int64_t)values[k];
        }
    if (ok && !in->i64 && !in->f32) {
        snprintf(why, size, "out of memory for input '%s'", name->valuestring);
        ok = false;
    }
    free(values);
    return ok;
}

static bool read_parameters(const cJSON *parameters, const gw_model_t *m, infer_t *inf, char *why,
                            size_t size)
{
    inf->task = m->first_task;
    inf->lang_fill_id = -1;
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(parameters, "task");
    if (task) {
        inf->task = cJSON_IsString(task) ? xlm_task_from_name(task->valuestring) : XLM_TASK_COUNT_;
        if (inf->task == XLM_TASK_COUNT_ || !m->serves[inf->task]) {
            char served[256] = "";
            size_t used = 0;
            for (int t = 0; t < XLM_TASK_COUNT_ && used + 1 < sizeof served; t++)
                if (m->serves[t])
                    used += (size_t)snprintf(served + used, sizeof served - used, "%s%s",
                                             used ? ", " : "", gw_task_name((xlm_task_t)t));
            snprintf(why, size, "parameters.task '%s': model '%s' serves %s",
                     cJSON_IsString(task) ? task->valuestring : "(not a string)", m->name, served);
            return false;
        }
    }
    if (inf->task == XLM_TASK_COUNT_) {
        snprintf(why, size, "model '%s' serves no task", m->name);
        return false;
    }
    const cJSON *deadline = cJSON_GetObjectItemCaseSensitive(parameters, "deadline_ms");
    if (deadline) {
        if (!cJSON_IsNumber(deadline) || deadline->valuedouble < 1 || deadline->valuedouble > 4e9) {
            snprintf(why, size, "parameters.deadline_ms: expected whole milliseconds, 1 to 4000000000");
            return false;
        }
        inf->deadline_ms = (uint32_t)deadline->valuedouble;
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(parameters, "steps");
    inf->steps = cJSON_IsNumber(steps) ? (int64_t)steps->valuedouble : 0;
    const cJSON *fill = cJSON_GetObjectItemCaseSensitive(parameters, "lang_fill");
    if (cJSON_IsNumber(fill))
        inf->lang_fill_id = (int64_t)fill->valuedouble;
    else if (cJSON_IsString(fill))
        snprintf(inf->lang_fill_code, sizeof inf->lang_fill_code, "%s", fill->valuestring);
    inf->return_tokens = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(parameters, "return_tokens"));
    return true;
}

static bool task_output(xlm_task_t task, const char *name)
{
    for (int o = 0; o < OUTPUTS_MAX && task_table[task].outputs[o].name; o++)
        if (strcmp(task_table[task].outputs[o].name, name) == 0)
            return true;
    return false;
}

static bool check_shapes(infer_t *inf, char *why, size_t size)
{
    const input_t *ids = &inf->in[IN_IDS];
    if (!ids->count) {
        snprintf(why, size, "no input 'input_ids'");
        return false;
    }
    int rank = task_table[inf->task].input_rank;
    if (ids->rank != rank) {
        snprintf(why, size, "input 'input_ids': shape of %d dimensions, task '%s' takes %s", ids->rank,
                 gw_task_name(inf->task), rank == 3 ? "[batch, choices, sequence]" : "[batch, sequence]");
        return false;
    }
    for (int i = 1; i < IN_COUNT; i++) {
        const input_t *in = &inf->in[i];
        if (!in->count)
            continue;
        if (i == IN_P_MASK && !task_table[inf->task].p_mask) {
            snprintf(why, size, "input 'p_mask': task '%s' takes none", gw_task_name(inf->task));
            return false;
        }
        if (in->rank != ids->rank || memcmp(in->shape, ids->shape, (size_t)rank * sizeof in->shape[0])) {
            snprintf(why, size, "input '%s': its shape differs from input_ids'", input_names[i]);
            return false;
        }
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, inf->outputs)
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(item, "name");
        if (!cJSON_IsString(n) || !task_output(inf->task, n->valuestring)) {
            snprintf(why, size, "requested output '%s': not an output of task '%s'",
                     cJSON_IsString(n) ? n->valuestring : "(no name)", gw_task_name(inf->task));
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------ infer: outputs */

static bool wanted(const infer_t *inf, const char *name)
{
    return !inf->outputs || listed(inf->outputs, name);
}

/* One output as the protocol's tensor; ragged rows padded to the longest
 * (0, or "" for text), their lengths in parameters.row_lengths. */
static cJSON *output_json(const xlm_tensor_t *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "datatype", t->dtype == XLM_F32 ? "FP32" : t->dtype == XLM_I64 ? "INT64" : "BYTES");
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    size_t dense = 1;
    for (size_t d = 0; d < t->ndim; d++) {
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        dense *= (size_t)t->shape[d];
    }
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    size_t rows = t->row_lengths ? (size_t)t->shape[0] : 1;
    size_t width = t->row_lengths ? (rows ? dense / rows : 0) : dense;
    for (size_t r = 0, at = 0; r < rows; r++) {
        size_t have = t->row_lengths ? (size_t)t->row_lengths[r] : width;
        for (size_t k = 0; k < width; k++) {
            bool real = k < have;
            cJSON *v = t->dtype == XLM_TEXT ? cJSON_CreateString(real ? t->text[at + k] : "")
                       : t->dtype == XLM_F32 ? gw_json_float(real ? t->f32[at + k] : 0.0f)
                                             : cJSON_CreateNumber(real ? (double)t->i64[at + k] : 0.0);
            cJSON_AddItemToArray(data, v);
        }
        at += have;
    }
    if (t->row_lengths) {
        cJSON *parameters = cJSON_AddObjectToObject(o, "parameters");
        cJSON *lengths = cJSON_AddArrayToObject(parameters, "row_lengths");
        for (size_t r = 0; r < rows; r++)
            cJSON_AddItemToArray(lengths, cJSON_CreateNumber((double)t->row_lengths[r]));
    }
    return o;
}

static void reply_result(const infer_t *inf, const gw_model_t *m, const xlm_result_t *result,
                         gw_reply_t *reply)
{
    xlm_code_t code = xlm_result_code(result);
    if (code != XLM_CODE_OK) {
        gw_reply_error(reply, gw_http_status(code), "%s: %s", xlm_code_str(code),
                       xlm_result_message(result));
        if (code == XLM_CODE_OVERLOADED || code == XLM_CODE_UNAVAILABLE)
            reply->retry_after_s = 1;
        return;
    }
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "model_name", m->name);
    cJSON_AddStringToObject(json, "model_version", "1");
    if (inf->id)
        cJSON_AddStringToObject(json, "id", inf->id);
    cJSON *parameters = cJSON_AddObjectToObject(json, "parameters");
    cJSON_AddStringToObject(parameters, "task", gw_task_name(inf->task));
    cJSON *outputs = cJSON_AddArrayToObject(json, "outputs");
    for (size_t i = 0; i < xlm_result_count(result); i++) {
        const xlm_tensor_t *t = xlm_result_tensor(result, i);
        if (wanted(inf, t->name))
            cJSON_AddItemToArray(outputs, output_json(t));
    }
    gw_reply_json(reply, 200, json);
}

static void request_fill(infer_t *inf, const char *model, xlm_request_t *rq, xlm_tokens_t *tokens,
                         int64_t **lengths)
{
    const input_t *ids = &inf->in[IN_IDS];
    int64_t seq = ids->shape[ids->rank - 1];
    size_t rows = ids->count / (size_t)seq;
    *lengths = malloc(rows * sizeof **lengths);
    for (size_t r = 0; *lengths && r < rows; r++)
        (*lengths)[r] = seq;
    memset(tokens, 0, sizeof *tokens);
    tokens->rows = rows;
    tokens->lengths = *lengths;
    tokens->input_ids = ids->i64;
    tokens->attention_mask = inf->in[IN_MASK].i64;
    tokens->langs = inf->in[IN_LANGS].i64;
    tokens->token_type_ids = inf->in[IN_TYPES].i64;
    tokens->position_ids = inf->in[IN_POSITIONS].i64;
    tokens->p_mask = inf->in[IN_P_MASK].f32;
    xlm_request_init(rq);
    rq->model = model;
    rq->task = inf->task;
    rq->deadline_ms = inf->deadline_ms;
    rq->n_choices = ids->rank == 3 ? ids->shape[1] : 0;
    rq->tokens = tokens;
    rq->steps = inf->steps;
    rq->lang_fill_id = inf->lang_fill_id;
    rq->lang_fill_code = inf->lang_fill_code[0] ? inf->lang_fill_code : NULL;
    rq->return_tokens = inf->return_tokens;
}

static void run_infer(gw_request_t *rq, const gw_model_t *m, infer_t *inf, gw_reply_t *reply)
{
    xlm_request_t request;
    xlm_tokens_t tokens;
    int64_t *lengths = NULL;
    request_fill(inf, m->name, &request, &tokens, &lengths);
    if (!lengths) {
        gw_reply_error(reply, 500, "out of memory");
        return;
    }
    xlm_client_t *client = gw_client_take(rq->gw);
    xlm_result_t *result = NULL;
    /* The client finishes the request itself at its deadline, or after its
     * attempts: the call waits for that. */
    xlm_status_t status = xlm_client_call(client, &request, -1, &result);
    if (status == XLM_ERR_ARG)
        gw_reply_error(reply, 400, "%s", xlm_client_error(client));
    else if (status)
        gw_reply_error(reply, 500, "%s", xlm_client_error(client));
    else
        reply_result(inf, m, result, reply);
    gw_client_give(rq->gw, client);
    double seconds = (double)(gw_now_us() - rq->started_us) / 1e6;
    xlm_code_t code = status == XLM_ERR_ARG ? XLM_CODE_BAD_REQUEST
                      : status              ? XLM_CODE_INTERNAL
                                            : xlm_result_code(result);
    gw_metrics_request(rq->gw->metrics, m->name, gw_task_name(inf->task), code, seconds,
                       result ? xlm_result_timings(result) : NULL);
    xlm_result_destroy(&result);
    free(lengths);
}

void gw_v2_infer(gw_request_t *rq, const char *name, gw_reply_t *reply)
{
    cJSON *body = gw_parse_body(rq, reply);
    if (!body)
        return;
    gw_service_t service;
    gw_service_get(rq->gw, 1000, &service);
    const gw_model_t *m = find_model(&service, name, reply);
    infer_t inf;
    memset(&inf, 0, sizeof inf);
    char why[512] = "";
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(body, "inputs");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(body, "id");
    inf.id = cJSON_IsString(id) ? id->valuestring : NULL;
    inf.outputs = cJSON_GetObjectItemCaseSensitive(body, "outputs");
    bool ok = m != NULL;
    if (ok && !cJSON_IsObject(body)) {
        snprintf(why, sizeof why, "the body must be a JSON object with \"inputs\"");
        ok = false;
    } else if (ok && (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) == 0)) {
        snprintf(why, sizeof why, "\"inputs\" must be a non-empty array of tensors");
        ok = false;
    } else if (ok && inf.outputs && !cJSON_IsArray(inf.outputs)) {
        snprintf(why, sizeof why, "\"outputs\" must be an array of {\"name\": ...}");
        ok = false;
    }
    ok = ok && read_parameters(cJSON_GetObjectItemCaseSensitive(body, "parameters"), m, &inf, why,
                               sizeof why);
    const cJSON *input, *to_read = ok ? inputs : NULL;
    cJSON_ArrayForEach(input, to_read)
    {
        if (!(ok = read_input(input, &inf, why, sizeof why)))
            break;
    }
    ok = ok && check_shapes(&inf, why, sizeof why);
    if (!inf.deadline_ms)
        inf.deadline_ms = rq->deadline_ms;
    if (ok)
        run_infer(rq, m, &inf, reply);
    else if (m)
        gw_reply_error(reply, 400, "%s", why);
    infer_free(&inf);
    gw_service_clear(&service);
    cJSON_Delete(body);
}
