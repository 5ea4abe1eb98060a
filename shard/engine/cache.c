/* cache.c: the key/value cache of greedy generation.
 *
 * A causal position never attends to a later one, so the keys and values a
 * layer computed for positions [0, n) stay what they are when position n is
 * appended: a generation step needs only the new position through the
 * layers, attending to the cached keys and values. Every product and every
 * query's attention is batch invariant (kernels.c), so the new position's
 * hidden state has the bits the whole-prefix recomputation gives it. */
#include "engine_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct shard_kv_cache {
    int64_t layers, dim; /* of the model range it serves; 0 before first use */
    int64_t length;      /* cached positions */
    int64_t capacity;    /* positions each layer's buffer holds */
    float **kv;          /* [layers][capacity][2 * dim]: k ; v of each position */
};

shard_kv_cache_t *shard_kv_cache_new(void) { return calloc(1, sizeof(shard_kv_cache_t)); }

static void free_layers(shard_kv_cache_t *cache)
{
    for (int64_t i = 0; cache->kv && i < cache->layers; i++)
        free(cache->kv[i]);
    free(cache->kv);
    cache->kv = NULL;
    cache->layers = cache->dim = cache->length = cache->capacity = 0;
}

void shard_kv_cache_destroy(shard_kv_cache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free_layers(*self_p);
    free(*self_p);
    *self_p = NULL;
}

void shard_kv_cache_reset(shard_kv_cache_t *cache)
{
    if (cache)
        cache->length = 0;
}

int64_t shard_kv_cache_length(const shard_kv_cache_t *cache) { return cache->length; }

/* Room for length positions of layers layers of width dim (the buffers of
 * another range or width are dropped first). */
static shard_status_t reserve(shard_kv_cache_t *cache, int64_t layers, int64_t dim,
                              int64_t length, shard_error_t *err)
{
    if (cache->kv && (cache->layers != layers || cache->dim != dim)) {
        if (cache->length > 0)
            return shard_error_set(err, SHARD_ERR_INPUT,
                                   "kv cache: holds %lld positions of %lld layers of width "
                                   "%lld, this model range has %lld of width %lld",
                                   (long long)cache->length, (long long)cache->layers,
                                   (long long)cache->dim, (long long)layers, (long long)dim);
        free_layers(cache);
    }
    if (!cache->kv) {
        if (!(cache->kv = calloc((size_t)(layers ? layers : 1), sizeof *cache->kv)))
            return shard_error_set(err, SHARD_ERR_NOMEM, "kv cache: out of memory");
        cache->layers = layers;
        cache->dim = dim;
    }
    if (length <= cache->capacity)
        return SHARD_OK;
    int64_t capacity = cache->capacity ? cache->capacity : 64;
    while (capacity < length)
        capacity *= 2;
    for (int64_t i = 0; i < layers; i++) {
        float *grown = realloc(cache->kv[i], (size_t)(capacity * 2 * dim) * sizeof *grown);
        if (!grown)
            return shard_error_set(err, SHARD_ERR_NOMEM,
                                   "kv cache: out of memory for %lld positions", (long long)length);
        cache->kv[i] = grown;
    }
    cache->capacity = capacity;
    return SHARD_OK;
}

/* One layer over the new positions of acts: their q, k and v in one
 * product, k and v appended to the layer's cache, each new query attending
 * to every cached position up to itself. */
static shard_status_t run_layer_cached(const shard_model_t *model, shard_state_t *state,
                                       const shard_layer_t *layer, float *kv, int64_t cached,
                                       shard_acts_t *acts, shard_error_t *err)
{
    const shard_config_t *c = &model->config;
    const int64_t d = c->emb_dim, n = acts->n_tokens, dh = d / c->n_heads;
    const int64_t threads = omp_get_max_threads(), keys = cached + n;
    float *qkv = shard_buffer_get(&state->qkv, (size_t)(3 * n * d));
    float *ctx = shard_buffer_get(&state->ctx, (size_t)(n * d));
    float *ffn = shard_buffer_get(&state->ffn, (size_t)(n * c->hidden_dim));
    const size_t work_per_thread = shard_attention_work_floats(keys, dh);
    float *work = shard_buffer_get(&state->scores, (size_t)threads * work_per_thread);
    if (!qkv || !ctx || !ffn || !work)
        return shard_error_set(err, SHARD_ERR_NOMEM, "kv cache: out of memory for %lld positions",
                               (long long)n);
    shard_linear_qkv(layer, acts->hidden, n, qkv);
    for (int64_t t = 0; t < n; t++)
        memcpy(kv + (cached + t) * 2 * d, qkv + t * 3 * d + d, (size_t)(2 * d) * sizeof *kv);
    /* A head per task; a single step over a short cache is too little work
     * to wake the other threads for. */
#pragma omp parallel for schedule(dynamic, 1) if (n * keys * d >= (int64_t)1 << 18)
    for (int64_t h = 0; h < c->n_heads; h++)
        shard_attention_head(qkv + h * dh, 3 * d, n, kv + h * dh, kv + d + h * dh, 2 * d, keys,
                             cached + 1, true, dh,
                             work + (size_t)omp_get_thread_num() * work_per_thread,
                             ctx + h * dh, d);
    shard_layer_finish(model, layer, acts, ctx, qkv, ffn);
    return SHARD_OK;
}

shard_status_t shard_run_layers_cached(const shard_model_t *model, shard_state_t *state,
                                       shard_kv_cache_t *cache, shard_acts_t *acts,
                                       shard_error_t *err)
{
    const shard_config_t *c = &model->config;
    if (!c->causal)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "kv cache: %s is not causal: earlier positions attend to later "
                               "ones, nothing can be cached", model->dir);
    if (acts->emb_dim != c->emb_dim)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "kv cache: activations of width %lld, model has emb_dim %lld",
                               (long long)acts->emb_dim, (long long)c->emb_dim);
    const int64_t cached = cache->length, n = acts->n_tokens;
    bool continues = acts->batch == 1 && n > 0;
    for (int64_t t = 0; continues && t < n; t++)
        continues = acts->position[t] == cached + t && acts->is_real[t];
    if (!continues)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "kv cache: expected one row of real positions from %lld on "
                               "(got %lld rows, %lld positions)", (long long)cached,
                               (long long)acts->batch, (long long)n);
    const int64_t layers = model->range.last_layer - model->range.first_layer;
    shard_status_t status = reserve(cache, layers, c->emb_dim, cached + n, err);
    for (int64_t i = 0; !status && i < layers; i++)
        status = run_layer_cached(model, state, &model->layers[i], cache->kv[i], cached, acts, err);
    if (!status)
        cache->length = cached + n;
    return status;
}
