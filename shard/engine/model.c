/* model.c: opens a checkpoint folder for a layer range and binds the weights.
 *
 * Every tensor the range needs is looked up (with or without the
 * "transformer." prefix), its shape checked against the config and its dtype
 * converted to float32 when it is not already (F32 stays a view into the
 * mapped file). Tensors the range does not need are only checked by name. */
#include "dnnl_matmul.h"
#include "engine_internal.h"

#include <math.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

typedef struct shard_binder {
    shard_model_t *model;
    const char *path; /* the weight file, for messages */
    shard_error_t *err;
    bool *used; /* [file->count]: entries claimed by a parameter name */
} binder_t;

static shard_status_t own_buffer(shard_model_t *model, void *buffer, shard_error_t *err)
{
    void **grown = realloc(model->owned, (model->n_owned + 1) * sizeof *grown);
    if (!grown) {
        free(buffer);
        return shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
    }
    model->owned = grown;
    model->owned[model->n_owned++] = buffer;
    return SHARD_OK;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float value;
    if (exponent == 0)
        value = ldexpf((float)mantissa, -24);
    else if (exponent == 31)
        value = mantissa ? NAN : INFINITY;
    else
        value = ldexpf((float)(mantissa | 0x400), (int)exponent - 25);
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits |= sign;
    memcpy(&value, &bits, 4);
    return value;
}

/* Float32 view of an entry: the mapped bytes themselves when possible,
 * otherwise a converted copy owned by the model. */
static shard_status_t as_float32(binder_t *b, const tensor_entry_t *entry, size_t numel,
                                 const float **out)
{
    const unsigned char *bytes = entry->data;
    if (entry->dtype == TENSOR_F32 && ((uintptr_t)bytes % sizeof(float)) == 0) {
        *out = (const float *)entry->data;
        return SHARD_OK;
    }
    float *buffer = malloc((numel ? numel : 1) * sizeof *buffer);
    if (!buffer)
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory converting %s", entry->name);
    for (size_t i = 0; i < numel; i++) {
        switch (entry->dtype) {
        case TENSOR_F32: memcpy(&buffer[i], bytes + 4 * i, 4); break;
        case TENSOR_F64: {
            double d;
            memcpy(&d, bytes + 8 * i, 8);
            buffer[i] = (float)d;
            break;
        }
        case TENSOR_F16: {
            uint16_t h;
            memcpy(&h, bytes + 2 * i, 2);
            buffer[i] = half_to_float(h);
            break;
        }
        case TENSOR_BF16: {
            uint16_t h;
            memcpy(&h, bytes + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&buffer[i], &bits, 4);
            break;
        }
        default:
            free(buffer);
            return shard_error_set(b->err, SHARD_ERR_FORMAT,
                                   "%s: tensor %s has dtype %s, expected F32, F16, BF16 or F64",
                                   b->path, entry->name, tensor_dtype_name(entry->dtype));
        }
    }
    *out = buffer;
    return own_buffer(b->model, buffer, b->err);
}

/* Fetches name, or "transformer." name; *entry NULL when neither is there.
 * Fetching loads the bytes: a stage reads only its own tensors. */
static shard_status_t find_entry(binder_t *b, const char *name, const tensor_entry_t **entry)
{
    tensor_file_t *file = b->model->file;
    char prefixed[400];
    shard_status_t status = tensor_file_fetch(file, name, entry, b->err);
    if (!status && !*entry) {
        snprintf(prefixed, sizeof prefixed, "transformer.%s", name);
        status = tensor_file_fetch(file, prefixed, entry, b->err);
    }
    if (*entry)
        b->used[*entry - file->entries] = true;
    return status;
}

static void format_shape(char *out, size_t size, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(out, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, d ? ", %lld" : "%lld",
                                 (long long)shape[d]);
    if (used < size)
        snprintf(out + used, size - used, "]");
}

/* Finds a parameter and checks it has the expected shape; *entry stays NULL
 * when the tensor is absent and optional. */
static shard_status_t lookup(binder_t *b, const tensor_entry_t **entry_out, bool required,
                             const char *name, int ndim, const int64_t *expected)
{
    const tensor_entry_t *entry = NULL;
    *entry_out = NULL;
    shard_status_t status = find_entry(b, name, &entry);
    if (status)
        return status;
    if (!entry) {
        if (!required)
            return SHARD_OK;
        return shard_error_set(b->err, SHARD_ERR_FORMAT, "%s: tensor %s is missing", b->path, name);
    }
    bool same = entry->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = entry->shape[d] == expected[d];
    if (!same) {
        char got[128], want[128];
        format_shape(got, sizeof got, entry->ndim, entry->shape);
        format_shape(want, sizeof want, ndim, expected);
        return shard_error_set(b->err, SHARD_ERR_FORMAT,
                               "%s: tensor %s has shape %s, expected %s from config.json",
                               b->path, entry->name, got, want);
    }
    *entry_out = entry;
    return SHARD_OK;
}

/* Binds a parameter of the expected shape as float32; *out stays NULL when
 * the tensor is absent and optional. */
static shard_status_t bind(binder_t *b, const float **out, bool required, const char *name,
                           int ndim, ...)
{
    int64_t expected[TENSOR_MAX_DIMS];
    va_list args;
    va_start(args, ndim);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        expected[d] = va_arg(args, int64_t);
        numel *= (size_t)expected[d];
    }
    va_end(args);
    *out = NULL;
    const tensor_entry_t *entry = NULL;
    shard_status_t status = lookup(b, &entry, required, name, ndim, expected);
    if (status || !entry)
        return status;
    return as_float32(b, entry, numel, out);
}

/* Element i of a weight, as float: from the checkpoint's bytes in any
 * float dtype (no converted copy of the whole tensor), or from a float32
 * array (a tied weight). */
typedef struct {
    const tensor_entry_t *entry;
    const float *f32;
} weight_source_t;

static float source_at(const weight_source_t *src, size_t i)
{
    if (src->f32)
        return src->f32[i];
    const unsigned char *bytes = src->entry->data;
    switch (src->entry->dtype) {
    case TENSOR_F32: {
        float f;
        memcpy(&f, bytes + 4 * i, 4);
        return f;
    }
    case TENSOR_F64: {
        double d;
        memcpy(&d, bytes + 8 * i, 8);
        return (float)d;
    }
    case TENSOR_F16: {
        uint16_t h;
        memcpy(&h, bytes + 2 * i, 2);
        return half_to_float(h);
    }
    default: { /* TENSOR_BF16: checked by the caller */
        uint16_t h;
        memcpy(&h, bytes + 2 * i, 2);
        return shard_bf16_to_float(h);
    }
    }
}

static shard_status_t check_float_dtype(binder_t *b, const tensor_entry_t *entry)
{
    const tensor_dtype_t t = entry->dtype;
    if (t == TENSOR_F32 || t == TENSOR_F64 || t == TENSOR_F16 || t == TENSOR_BF16)
        return SHARD_OK;
    return shard_error_set(b->err, SHARD_ERR_FORMAT,
                           "%s: tensor %s has dtype %s, expected F32, F16, BF16 or F64", b->path,
                           entry->name, tensor_dtype_name(t));
}

/* Symmetric per-output-channel int8: W[o][i] ~ q[o][i] * scale[o],
 * scale[o] = max_i |W[o][i]| / qmax (127, or 63 where the CPU's int8
 * kernel would saturate: shard_int8_weight_max). */
static shard_status_t quantise_int8(binder_t *b, shard_linear_t *l, const weight_source_t *src)
{
    const size_t out = (size_t)l->out, in = (size_t)l->in;
    int8_t *q = malloc(out * in > 0 ? out * in : 1);
    float *scale = malloc((out ? out : 1) * sizeof *scale);
    if (!q || !scale) {
        free(q);
        free(scale);
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory quantising a weight");
    }
    const float qmax = (float)shard_int8_weight_max();
    for (size_t o = 0; o < out; o++) {
        float amax = 0.0f;
        for (size_t i = 0; i < in; i++)
            amax = fmaxf(amax, fabsf(source_at(src, o * in + i)));
        scale[o] = amax > 0.0f ? amax / qmax : 1.0f;
        for (size_t i = 0; i < in; i++)
            q[o * in + i] = (int8_t)lrintf(source_at(src, o * in + i) / scale[o]);
    }
    l->i8 = q;
    l->scale = scale;
    if (own_buffer(b->model, q, b->err)) {
        free(scale);
        return b->err->code;
    }
    b->model->weight_bytes += out * in + out * sizeof *scale;
    return own_buffer(b->model, scale, b->err);
}

/* bf16: the checkpoint's own bytes when they are bf16 (a view), else
 * rounded element by element. */
static shard_status_t to_bf16(binder_t *b, shard_linear_t *l, const weight_source_t *src)
{
    const size_t numel = (size_t)l->out * (size_t)l->in;
    b->model->weight_bytes += numel * sizeof(uint16_t);
    if (src->entry && src->entry->dtype == TENSOR_BF16 &&
        (uintptr_t)src->entry->data % sizeof(uint16_t) == 0) {
        l->bf16 = src->entry->data;
        return SHARD_OK;
    }
    uint16_t *w = malloc((numel ? numel : 1) * sizeof *w);
    if (!w)
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory converting a weight");
    for (size_t i = 0; i < numel; i++)
        w[i] = shard_float_to_bf16(source_at(src, i));
    l->bf16 = w;
    return own_buffer(b->model, w, b->err);
}

/* Gives l (in, out set) its weight in the model's precision, and makes the
 * kernels ready for its shape. */
static shard_status_t reduce_linear(binder_t *b, shard_linear_t *l, const weight_source_t *src)
{
    shard_precision_t p = b->model->precision;
    l->type = p;
    l->weight = NULL;
    shard_status_t status = p == SHARD_PRECISION_INT8 ? quantise_int8(b, l, src)
                                                      : to_bf16(b, l, src);
    if (!status)
        status = p == SHARD_PRECISION_INT8 ? shard_int8_prepare(l->in, l->out, l->in, b->err)
                                           : shard_bf16_prepare(l->in, l->out, l->in, b->err);
    return status;
}

static shard_status_t pack_fp32_source(binder_t *b, shard_linear_t *l,
                                       const tensor_entry_t *entry);

shard_status_t shard_bind_tied(shard_binder_t *b, shard_linear_t *linear, const float *weight)
{
    if (b->model->precision == SHARD_PRECISION_FP32) {
        linear->weight = weight;
        b->model->weight_bytes += (size_t)linear->out * (size_t)linear->in * sizeof(float);
        return pack_fp32_source(b, linear, NULL);
    }
    const weight_source_t src = {NULL, weight};
    return reduce_linear(b, linear, &src);
}

static shard_status_t bind_linear_weight(binder_t *b, shard_linear_t *linear, bool required,
                                         const char *name)
{
    const int64_t shape[2] = {linear->out, linear->in};
    const tensor_entry_t *entry = NULL;
    shard_status_t status = lookup(b, &entry, required, name, 2, shape);
    if (status || !entry)
        return status;
    if (b->model->precision == SHARD_PRECISION_FP32) {
        b->model->weight_bytes += (size_t)linear->out * (size_t)linear->in * sizeof(float);
        shard_status_t bound =
            as_float32(b, entry, (size_t)linear->out * (size_t)linear->in, &linear->weight);
        return bound ? bound : pack_fp32_source(b, linear, entry);
    }
    if ((status = check_float_dtype(b, entry)))
        return status;
    const weight_source_t src = {entry, NULL};
    return reduce_linear(b, linear, &src);
}

static shard_status_t bind_linear(binder_t *b, shard_linear_t *linear, bool required,
                                  bool has_bias, const char *prefix, int64_t out, int64_t in)
{
    char name[320];
    linear->in = in;
    linear->out = out;
    snprintf(name, sizeof name, "%s.weight", prefix);
    shard_status_t status = bind_linear_weight(b, linear, required, name);
    if (status || !shard_linear_bound(linear) || !has_bias)
        return status;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind(b, &linear->bias, true, name, 1, out);
}

static shard_status_t bind_norm(binder_t *b, shard_norm_t *norm, const char *prefix, int64_t dim)
{
    char name[320];
    snprintf(name, sizeof name, "%s.weight", prefix);
    shard_status_t status = bind(b, &norm->weight, true, name, 1, dim);
    if (status)
        return status;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind(b, &norm->bias, true, name, 1, dim);
}

/* The binder's calls for the head table (heads.c). */
shard_status_t shard_bind_linear(shard_binder_t *b, shard_linear_t *linear, bool required,
                                 bool has_bias, const char *prefix, int64_t out, int64_t in)
{
    return bind_linear(b, linear, required, has_bias, prefix, out, in);
}

shard_status_t shard_bind_norm(shard_binder_t *b, shard_norm_t *norm, const char *prefix,
                               int64_t dim)
{
    return bind_norm(b, norm, prefix, dim);
}

shard_status_t shard_bind_vector(shard_binder_t *b, const float **out, bool required,
                                 const char *name, int64_t count)
{
    return bind(b, out, required, name, 1, count);
}

static shard_status_t bind_embedding(binder_t *b, shard_embedding_t *table, bool required,
                                     const char *name, int64_t rows, int64_t dim)
{
    table->rows = rows;
    table->dim = dim;
    return bind(b, &table->weight, required, name, 2, rows, dim);
}

static shard_status_t sinusoidal_positions(binder_t *b, int64_t n_pos, int64_t dim,
                                           const float **out)
{
    size_t count = (size_t)n_pos * (size_t)dim;
    float *table = malloc(count * sizeof *table);
    if (!table)
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory");
    /* As the reference computes it: angles in double, sin on even columns,
     * cos on odd ones, then rounded to float32. */
    for (int64_t pos = 0; pos < n_pos; pos++)
        for (int64_t j = 0; j < dim; j++) {
            double angle = (double)pos / pow(10000.0, 2.0 * (double)(j / 2) / (double)dim);
            table[pos * dim + j] = (float)((j % 2 == 0) ? sin(angle) : cos(angle));
        }
    *out = table;
    return own_buffer(b->model, table, b->err);
}

static shard_status_t bind_embeddings(binder_t *b)
{
    shard_model_t *m = b->model;
    const shard_config_t *c = &m->config;
    shard_status_t status = bind_embedding(b, &m->position_embeddings, !c->sinusoidal_embeddings,
                                           "position_embeddings.weight",
                                           c->max_position_embeddings, c->emb_dim);
    if (!status && !m->position_embeddings.weight)
        status = sinusoidal_positions(b, c->max_position_embeddings, c->emb_dim,
                                      &m->position_embeddings.weight);
    if (!status && c->n_langs > 1 && c->use_lang_emb)
        status = bind_embedding(b, &m->lang_embeddings, true, "lang_embeddings.weight",
                                c->n_langs, c->emb_dim);
    if (!status)
        status = bind_norm(b, &m->norm_emb, "layer_norm_emb", c->emb_dim);
    return status;
}

/* Frees a buffer the model owns (one replaced by a copy) and forgets it. */
static void release_owned(shard_model_t *model, const void *buffer)
{
    for (size_t i = 0; buffer && i < model->n_owned; i++)
        if (model->owned[i] == buffer) {
            free(model->owned[i]);
            model->owned[i] = model->owned[--model->n_owned];
            return;
        }
}

/* Q, K and V as one [3d][d] layer, so that a layer's input is read by one
 * product instead of three. Made once at open in the layer's precision
 * (rows concatenated: per-output-channel int8 scales stay exact); q, k and v
 * then view their thirds of it, and the copies they owned are freed. */
static shard_status_t fuse_qkv(binder_t *b, int64_t index, shard_layer_t *layer)
{
    shard_linear_t *parts[3] = {&layer->q, &layer->k, &layer->v};
    const int64_t d = layer->q.in;
    const size_t part = (size_t)d * (size_t)d;
    const shard_precision_t type = layer->q.type;
    shard_linear_t *f = &layer->qkv;
    /* fp32 keeps Q, K and V where the reader has them (mapped, shared):
     * a fused copy would hold the layer's attention weights twice. */
    if (type == SHARD_PRECISION_FP32) {
        *f = (shard_linear_t){0};
        return SHARD_OK;
    }
    *f = (shard_linear_t){.in = d, .out = 3 * d, .type = type};
    const size_t elem = type == SHARD_PRECISION_INT8 ? 1
                        : type == SHARD_PRECISION_BF16 ? sizeof(uint16_t) : sizeof(float);
    unsigned char *w = malloc(3 * part * elem);
    float *bias = malloc(3 * (size_t)d * sizeof *bias);
    float *scale = type == SHARD_PRECISION_INT8 ? malloc(3 * (size_t)d * sizeof *scale) : NULL;
    if (!w || !bias || (type == SHARD_PRECISION_INT8 && !scale)) {
        free(w);
        free(bias);
        free(scale);
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory fusing Q, K and V");
    }
    for (int j = 0; j < 3; j++) {
        const shard_linear_t *l = parts[j];
        const void *src = type == SHARD_PRECISION_INT8   ? (const void *)l->i8
                          : type == SHARD_PRECISION_BF16 ? (const void *)l->bf16
                                                         : (const void *)l->weight;
        memcpy(w + (size_t)j * part * elem, src, part * elem);
        memcpy(bias + j * d, l->bias, (size_t)d * sizeof *bias);
        if (scale)
            memcpy(scale + j * d, l->scale, (size_t)d * sizeof *scale);
    }
    shard_status_t status = own_buffer(b->model, w, b->err);
    if (!status)
        status = own_buffer(b->model, bias, b->err);
    else
        free(bias);
    if (scale && !status)
        status = own_buffer(b->model, scale, b->err);
    else if (scale)
        free(scale);
    if (status)
        return status;
    for (int j = 0; j < 3; j++) {
        shard_linear_t *l = parts[j];
        release_owned(b->model, l->weight);
        release_owned(b->model, l->bf16);
        release_owned(b->model, l->i8);
        release_owned(b->model, l->scale);
        release_owned(b->model, l->bias);
        l->bias = bias + j * d;
        if (type == SHARD_PRECISION_INT8) {
            l->i8 = (const int8_t *)w + j * part;
            l->scale = scale + j * d;
        } else if (type == SHARD_PRECISION_BF16) {
            l->bf16 = (const uint16_t *)w + j * part;
        } else {
            l->weight = (const float *)w + j * part;
        }
    }
    /* The reader's own copies of the three (h5 reads datasets into memory)
     * would hold the layer's attention weights twice. */
    static const char *const part_names[3] = {"q_lin", "k_lin", "v_lin"};
    for (int j = 0; j < 3; j++) {
        char name[256];
        snprintf(name, sizeof name, "attentions.%lld.%s.weight", (long long)index, part_names[j]);
        tensor_file_discard(b->model->file, name);
        snprintf(name, sizeof name, "transformer.attentions.%lld.%s.weight", (long long)index,
                 part_names[j]);
        tensor_file_discard(b->model->file, name);
    }
    f->bias = bias;
    f->i8 = type == SHARD_PRECISION_INT8 ? (const int8_t *)w : NULL;
    f->scale = scale;
    f->bf16 = type == SHARD_PRECISION_BF16 ? (const uint16_t *)w : NULL;
    f->weight = type == SHARD_PRECISION_FP32 ? (const float *)w : NULL;
    return type == SHARD_PRECISION_INT8   ? shard_int8_prepare(d, 3 * d, d, b->err)
           : type == SHARD_PRECISION_BF16 ? shard_bf16_prepare(d, 3 * d, d, b->err)
                                          : SHARD_OK;
}

static shard_status_t bind_layer(binder_t *b, int64_t i, shard_layer_t *layer)
{
    const int64_t d = b->model->config.emb_dim, h = b->model->config.hidden_dim;
    char name[256];
    const struct { shard_linear_t *linear; const char *part; } attention[] = {
        {&layer->q, "q_lin"}, {&layer->k, "k_lin"}, {&layer->v, "v_lin"}, {&layer->out, "out_lin"}};
    for (size_t j = 0; j < 4; j++) {
        snprintf(name, sizeof name, "attentions.%lld.%s", (long long)i, attention[j].part);
        if (bind_linear(b, attention[j].linear, true, true, name, d, d))
            return b->err->code;
    }
    if (fuse_qkv(b, i, layer))
        return b->err->code;
    snprintf(name, sizeof name, "layer_norm1.%lld", (long long)i);
    if (bind_norm(b, &layer->norm1, name, d))
        return b->err->code;
    snprintf(name, sizeof name, "ffns.%lld.lin1", (long long)i);
    if (bind_linear(b, &layer->ffn_in, true, true, name, h, d))
        return b->err->code;
    snprintf(name, sizeof name, "ffns.%lld.lin2", (long long)i);
    if (bind_linear(b, &layer->ffn_out, true, true, name, d, h))
        return b->err->code;
    snprintf(name, sizeof name, "layer_norm2.%lld", (long long)i);
    return bind_norm(b, &layer->norm2, name, d);
}

/* Names a checkpoint may hold that are not parameters of this range: other
 * layers' tensors and known buffers. Anything else is an error. */
static bool is_known_name(const shard_config_t *c, const char *name)
{
    if (strncmp(name, "transformer.", 12) == 0)
        name += 12;
    static const char *const fixed[] = {
        "position_ids", "position_embeddings.weight", "lang_embeddings.weight",
        "embeddings.weight", "layer_norm_emb.weight", "layer_norm_emb.bias",
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (strcmp(name, fixed[i]) == 0)
            return true;
    if (shard_heads_know_tensor(name))
        return true; /* a head's, named by its row of the head table */
    static const char *const per_layer[] = {"attentions.", "layer_norm1.", "ffns.", "layer_norm2."};
    for (size_t i = 0; i < 4; i++) {
        size_t len = strlen(per_layer[i]);
        if (strncmp(name, per_layer[i], len) == 0) {
            char *end = NULL;
            long long layer = strtoll(name + len, &end, 10);
            return end != name + len && *end == '.' && layer >= 0 && layer < c->n_layers;
        }
    }
    return false;
}

static shard_status_t check_unknown_tensors(binder_t *b)
{
    const tensor_file_t *file = b->model->file;
    for (size_t i = 0; i < file->count; i++)
        if (!b->used[i] && !is_known_name(&b->model->config, file->entries[i].name))
            return shard_error_set(b->err, SHARD_ERR_FORMAT,
                                   "%s: unexpected tensor %s: not a parameter of an XLM model "
                                   "with %lld layers", b->path, file->entries[i].name,
                                   (long long)b->model->config.n_layers);
    return SHARD_OK;
}

static shard_status_t bind_all(binder_t *b)
{
    shard_model_t *m = b->model;
    const shard_config_t *c = &m->config;
    /* The word embeddings serve stage 0 and, tied, the LM head. */
    if (m->range.embeddings || m->range.heads)
        if (bind_embedding(b, &m->word_embeddings, true, "embeddings.weight", c->vocab_size,
                           c->emb_dim))
            return b->err->code;
    if (m->range.embeddings && bind_embeddings(b))
        return b->err->code;
    int64_t n = m->range.last_layer - m->range.first_layer;
    m->layers = calloc(n > 0 ? (size_t)n : 1, sizeof *m->layers);
    if (!m->layers)
        return shard_error_set(b->err, SHARD_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        if (bind_layer(b, m->range.first_layer + i, &m->layers[i]))
            return b->err->code;
    if (m->range.heads && shard_heads_bind(b, m))
        return b->err->code;
    return check_unknown_tensors(b);
}

static tensor_file_t *open_weights(const char *dir, char *path, size_t path_size,
                                   shard_error_t *err)
{
    return shard_checkpoint_open_weights(dir, path, path_size, err);
}

/* ---------------------------------------------------------------- packing */

/* Drops this process's pages of a weight the packed copy replaced: a
 * mapped checkpoint's pages go back to the page cache (MADV_PAGEOUT keeps
 * the contents; the word embeddings of a tied projection stay readable). */
static void page_out(const void *data, size_t bytes)
{
#ifdef MADV_PAGEOUT
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t first = ((uintptr_t)data + page - 1) / page * page;
    const uintptr_t end = ((uintptr_t)data + bytes) / page * page;
    if (end > first)
        (void)madvise((void *)first, end - first, MADV_PAGEOUT);
#else
    (void)data, (void)bytes;
#endif
}

/* The entry whose data is weight (a tied projection's word embeddings). */
static const tensor_entry_t *entry_holding(const tensor_file_t *file, const void *weight)
{
    for (size_t i = 0; i < file->count; i++)
        if (file->entries[i].data == weight)
            return &file->entries[i];
    return NULL;
}

/* Reorders l's weights once into oneDNN's own layout where its products run
 * on oneDNN (dnnl_matmul.h: 1.1x to 3.9x a product); the bf16 or int8 copy
 * it replaces is freed, so memory stays as it was. fp32 weights stay mapped
 * as well (the tied LM projection is the word embedding table). */
static shard_status_t pack_linear(shard_model_t *model, shard_linear_t *l, int64_t panel,
                                  shard_error_t *err)
{
    if (l->packed || l->in <= 0 || l->out <= 0)
        return SHARD_OK;
    dnnl_data_type_t src, wei, dst;
    const void *plain;
    size_t size;
    switch (l->type) {
    case SHARD_PRECISION_INT8:
        src = wei = dnnl_s8, dst = dnnl_s32, plain = l->i8, size = 1;
        break;
    case SHARD_PRECISION_BF16:
        if (!shard_bf16_native())
            return SHARD_OK; /* widened to fp32 tiles by the kernels */
        src = wei = dnnl_bf16, dst = dnnl_f32, plain = l->bf16, size = sizeof(uint16_t);
        break;
    case SHARD_PRECISION_FP32:
    case SHARD_PRECISION_COUNT_:
    default:
        if (!shard_fp32_onednn())
            return SHARD_OK; /* OpenBLAS reads the mapped weights */
        src = wei = dst = dnnl_f32, plain = l->weight, size = sizeof(float);
        break;
    }
    if (!plain)
        return SHARD_OK;
    /* bf16 or int8 the reader holds (a bf16 checkpoint's bytes): packed
     * only where those can be handed back */
    const tensor_entry_t *entry =
        l->type != SHARD_PRECISION_FP32 ? entry_holding(model->file, plain) : NULL;
    if (entry && entry->held && !model->file->discard)
        return SHARD_OK;
    shard_packed_t *packed = NULL;
    shard_status_t status =
        shard_matmul_pack(src, wei, dst, l->in, l->out, l->in, plain, size, panel, &packed, err);
    if (status || !packed || (status = own_buffer(model, packed, err)))
        return status;
    l->packed = packed;
    model->packed_linears++;
    if (l->type != SHARD_PRECISION_FP32) {
        if (!entry)
            release_owned(model, plain);
        else if (!entry->held)
            page_out(plain, (size_t)l->out * (size_t)l->in * size);
        else
            tensor_file_discard(model->file, entry->name);
        l->bf16 = NULL;
        l->i8 = NULL;
    }
    return SHARD_OK;
}

static bool packing_wanted(void)
{
    const char *env = getenv("XLM_PACKED_WEIGHTS");
    return !env || strcmp(env, "0") != 0;
}

/* fp32 is packed as it is bound, and only where what held the weight
 * before can be given back before the next one is read, so that a stage
 * holds its weights once: a mapped checkpoint's pages (to the page cache),
 * the engine's converted copy (freed), a reader's loaded bytes it can
 * discard (HDF5). Elsewhere (torch zip storages, transposed copies, a tied
 * projection of converted embeddings) the weight stays where it is and
 * runs unpacked. entry NULL: tied to the word embeddings, which stay. */
static shard_status_t pack_fp32_source(binder_t *b, shard_linear_t *l,
                                       const tensor_entry_t *entry)
{
    const shard_model_t *m = b->model;
    const int64_t layers = m->range.last_layer - m->range.first_layer;
    const bool in_layers = m->layers && (const char *)l >= (const char *)m->layers &&
                           (const char *)l < (const char *)(m->layers + layers);
    /* the layers and the LM projection: the small heads' products take
     * column ranges that packed panels do not serve */
    if (!packing_wanted() || !(in_layers || l == &m->heads.lm_proj))
        return SHARD_OK;
    const float *source = l->weight;
    const bool tied = entry == NULL;
    if (tied)
        entry = entry_holding(b->model->file, source);
    const bool converted = entry && (const void *)source != entry->data;
    const bool can_give_back =
        entry && (tied ? !converted && !entry->held
                       : converted || !entry->held || b->model->file->discard);
    if (!can_give_back)
        return SHARD_OK;
    const int64_t panel = l == &b->model->heads.lm_proj ? PROJECT_VOCAB : 0;
    shard_status_t status = pack_linear(b->model, l, panel, b->err);
    if (status || !l->packed)
        return status;
    if (converted)
        release_owned(b->model, source); /* as_float32's copy */
    else if (!entry->held)
        page_out(source, (size_t)l->out * (size_t)l->in * sizeof *source);
    else
        tensor_file_discard(b->model->file, entry->name);
    l->weight = NULL; /* every product of it reads the packed copy */
    return SHARD_OK;
}

/* bf16 and int8, whose copies are the engine's own (fp32: as bound). */
static shard_status_t pack_weights(shard_model_t *model, shard_error_t *err)
{
    if (!packing_wanted() || model->precision == SHARD_PRECISION_FP32)
        return SHARD_OK;
    const int64_t layers = model->range.last_layer - model->range.first_layer;
    shard_status_t status = SHARD_OK;
    for (int64_t i = 0; !status && i < layers; i++) {
        shard_layer_t *layer = &model->layers[i];
        shard_linear_t *parts[3] = {&layer->q, &layer->k, &layer->v};
        if (layer->qkv.out) {
            status = pack_linear(model, &layer->qkv, 0, err);
            for (int j = 0; j < 3 && layer->qkv.packed; j++) /* they viewed the freed copy */
                parts[j]->bf16 = NULL, parts[j]->i8 = NULL;
        } else {
            for (int j = 0; j < 3 && !status; j++)
                status = pack_linear(model, parts[j], 0, err);
        }
        if (!status)
            status = pack_linear(model, &layer->out, 0, err);
        if (!status)
            status = pack_linear(model, &layer->ffn_in, 0, err);
        if (!status)
            status = pack_linear(model, &layer->ffn_out, 0, err);
    }
    if (!status && shard_linear_bound(&model->heads.lm_proj))
        status = pack_linear(model, &model->heads.lm_proj, PROJECT_VOCAB, err);
    return status;
}

static shard_status_t check_range(const shard_config_t *c, const shard_range_t *r,
                                  const char *dir, shard_error_t *err)
{
    if (r->first_layer < 0 || r->first_layer > r->last_layer || r->last_layer > c->n_layers)
        return shard_error_set(err, SHARD_ERR_RANGE,
                               "shard_model_open: %s: layer range [%lld, %lld) is not inside "
                               "[0, %lld)", dir, (long long)r->first_layer,
                               (long long)r->last_layer, (long long)c->n_layers);
    return SHARD_OK;
}

/* Messages from the readers and binders name the file and tensor; the
 * caller also learns which call failed. */
static void prefix_function(shard_error_t *err, const char *function)
{
    if (!err)
        return;
    size_t len = strlen(function);
    if (strncmp(err->message, function, len) == 0)
        return;
    char message[2 * SHARD_ERROR_MESSAGE_MAX];
    snprintf(message, sizeof message, "%s: %s", function, err->message);
    snprintf(err->message, sizeof err->message, "%.*s", SHARD_ERROR_MESSAGE_MAX - 1, message);
}

static void set_precision_note(shard_model_t *model)
{
    char buf[sizeof model->precision_note] = "";
    if (model->precision != SHARD_PRECISION_FP32) {
        /* the reduced precisions' own note below */
    } else if (shard_fp32_onednn()) {
        shard_error_t err = {0};
        const shard_matmul_t *mm = shard_matmul_get(dnnl_f32, dnnl_f32, dnnl_f32,
                                                    SHARD_MATMUL_ROWS, 64, 64, 64, &err);
        snprintf(buf, sizeof buf, "fp32 weights, fp32 products (oneDNN %s: %s)",
                 mm ? shard_matmul_impl(mm) : "unavailable", shard_fp32_products_reason());
    } else if (shard_fp32_ordered()) {
        snprintf(buf, sizeof buf, "fp32 weights, fp32 products (the engine's ordered AVX2 "
                 "kernel: %s)", shard_fp32_products_reason());
    } else {
        snprintf(buf, sizeof buf, "fp32 weights, fp32 products (OpenBLAS sgemm, %s)",
                 shard_fp32_products_reason());
    }
    const char *note = buf;
    char reduced[sizeof model->precision_note];
    if (model->precision == SHARD_PRECISION_BF16)
        note = shard_bf16_native() ? "bf16 weights, bf16 products, fp32 accumulation (oneDNN)"
                                   : "bf16 weights, fp32 products: this CPU has no AVX512_BF16";
    if (model->precision == SHARD_PRECISION_INT8) {
        shard_error_t err = {0};
        const shard_matmul_t *mm = shard_matmul_get(dnnl_s8, dnnl_s8, dnnl_s32, SHARD_MATMUL_ROWS,
                                                    64, 64, 64, &err);
        snprintf(reduced, sizeof reduced,
                 "int8 weights (|q| <= %d%s), int8 products, int32 accumulation (oneDNN %s)",
                 shard_int8_weight_max(),
                 shard_int8_weight_max() < 127 ? ": this CPU has no AVX512_VNNI" : "",
                 mm ? shard_matmul_impl(mm) : "unavailable");
        note = reduced;
    }
    if (model->packed_linears > 0)
        snprintf(model->precision_note, sizeof model->precision_note,
                 "%.200s; %lld weights reordered once for oneDNN", note,
                 (long long)model->packed_linears);
    else
        snprintf(model->precision_note, sizeof model->precision_note, "%s", note);
}

shard_model_t *shard_model_open(const char *dir, const shard_model_options_t *options,
                                shard_error_t *err)
{
    const shard_model_options_t defaults = {0};
    if (!options)
        options = &defaults;
    const shard_range_t *range = options->range;
    char path[4096];
    shard_model_t *model = calloc(1, sizeof *model);
    binder_t binder = {model, path, err, NULL};
    if (!model) {
        shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    snprintf(model->dir, sizeof model->dir, "%s", dir);
    if ((unsigned)options->precision >= SHARD_PRECISION_COUNT_) {
        shard_error_set(err, SHARD_ERR_INPUT,
                        "shard_model_open: precision %d: expected fp32, bf16 or int8",
                        (int)options->precision);
        goto fail;
    }
    model->precision = options->precision;
    if (shard_checkpoint_load_config(dir, &model->config, err))
        goto fail;
    model->head = shard_head_of_architecture(model->config.architecture);
    if (model->head == SHARD_HEAD_COUNT_) {
        shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                        "%s/config.json: architecture \"%s\" is not an XLM class this engine runs",
                        dir, model->config.architecture);
        goto fail;
    }
    model->range = range ? *range
                         : (shard_range_t){0, model->config.n_layers, true, true};
    if (check_range(&model->config, &model->range, dir, err))
        goto fail;
    model->file = open_weights(dir, path, sizeof path, err);
    if (!model->file)
        goto fail;
    binder.used = calloc(model->file->count + 1, sizeof *binder.used);
    if (!binder.used) {
        shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    shard_set_threads(options->threads); /* the packed weights' primitives are per thread count */
    if (bind_all(&binder))
        goto fail;
    free(binder.used);
#ifdef __GLIBC__
    /* Binding frees what it replaced (readers' copies, unfused Q/K/V) in
     * the middle of the heap, where glibc keeps it resident: give those
     * pages back, so a stage holds its share and no more. */
    malloc_trim(0);
#endif
    shard_set_threads(options->threads);
    if (pack_weights(model, err))
        goto fail;
#ifdef __GLIBC__
    malloc_trim(0); /* the bf16 and int8 copies the packed ones replaced */
#endif
    set_precision_note(model);
    return model;
fail:
    free(binder.used);
    shard_model_destroy(&model);
    prefix_function(err, "shard_model_open");
    return NULL;
}

void shard_model_destroy(shard_model_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    shard_model_t *model = *self_p;
    for (size_t i = 0; i < model->n_owned; i++)
        free(model->owned[i]);
    free(model->owned);
    free(model->layers);
    tensor_file_destroy(&model->file);
    free(model);
    *self_p = NULL;
}

const shard_config_t *shard_model_config(const shard_model_t *model) { return &model->config; }

shard_head_t shard_model_default_head(const shard_model_t *model) { return model->head; }

shard_range_t shard_model_range(const shard_model_t *model) { return model->range; }

shard_precision_t shard_model_precision(const shard_model_t *model) { return model->precision; }

size_t shard_model_weight_bytes(const shard_model_t *model) { return model->weight_bytes; }

const char *shard_model_precision_note(const shard_model_t *model)
{
    return model->precision_note;
}

static const char *const precision_names[SHARD_PRECISION_COUNT_] = {"fp32", "bf16", "int8"};

const char *shard_precision_name(shard_precision_t precision)
{
    return (unsigned)precision < SHARD_PRECISION_COUNT_ ? precision_names[precision] : NULL;
}

shard_precision_t shard_precision_parse(const char *name, shard_error_t *err)
{
    for (int p = 0; p < SHARD_PRECISION_COUNT_; p++)
        if (name && strcmp(name, precision_names[p]) == 0)
            return (shard_precision_t)p;
    shard_error_set(err, SHARD_ERR_INPUT, "shard_precision_parse: precision \"%s\": expected "
                    "fp32, bf16 or int8", name ? name : "(null)");
    return SHARD_PRECISION_COUNT_;
}

bool shard_model_has_head(const shard_model_t *model, shard_head_t head)
{
    if ((int)head < 0 || head >= SHARD_HEAD_COUNT_ || !model->range.heads)
        return false;
    return model->has_head[head];
}

shard_status_t shard_model_probe_heads(const char *dir, bool has[SHARD_HEAD_COUNT_],
                                       shard_error_t *err)
{
    /* No layers, no embeddings: the head tensors (and the word embeddings
     * a tied LM projection shares) are all that is bound. */
    const shard_range_t heads_only = {0, 0, false, true};
    shard_model_t *probe = shard_model_open(dir, &(shard_model_options_t){.range = &heads_only},
                                            err);
    for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
        has[h] = probe && shard_model_has_head(probe, (shard_head_t)h);
    if (!probe)
        return err ? err->code : SHARD_ERR_IO;
    shard_model_destroy(&probe);
    return SHARD_OK;
}
