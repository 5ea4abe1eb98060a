/* kv.c: a stage's key/value caches of the generations it runs, one per
 * generation (keyed by stage 0's job id), at most a fixed number: the
 * least recently used goes when a new one needs room. Every stage sees
 * the steps in the same order, so their caches come and go alike; a stage
 * that lacks one all the same marks the step missed and stage 0 redoes it
 * over the whole prefix. Calls the engine only. */
#include "worker_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key; /* 0: a free slot */
    uint64_t used; /* the table's clock at its last step */
    shard_kv_cache_t *cache;
} kv_entry_t;

struct worker_kv {
    kv_entry_t *entries; /* [limit] */
    int limit;
    uint64_t clock;
    worker_kv_stats_t stats;
};

worker_kv_t *worker_kv_new(int limit)
{
    worker_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv)
        return NULL;
    kv->limit = limit > 0 ? limit : 0;
    kv->entries = calloc(kv->limit ? (size_t)kv->limit : 1, sizeof *kv->entries);
    if (!kv->entries) {
        free(kv);
        return NULL;
    }
    return kv;
}

void worker_kv_destroy(worker_kv_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_kv_t *kv = *self_p;
    for (int i = 0; i < kv->limit; i++)
        shard_kv_cache_destroy(&kv->entries[i].cache);
    free(kv->entries);
    free(kv);
    *self_p = NULL;
}

static kv_entry_t *find(worker_kv_t *kv, uint64_t key)
{
    for (int i = 0; key && kv && i < kv->limit; i++)
        if (kv->entries[i].key == key)
            return &kv->entries[i];
    return NULL;
}

int64_t worker_kv_length(worker_kv_t *kv, uint64_t key)
{
    const kv_entry_t *e = find(kv, key);
    return e ? shard_kv_cache_length(e->cache) : -1;
}

void worker_kv_drop(worker_kv_t *kv, uint64_t key)
{
    kv_entry_t *e = find(kv, key);
    if (e) {
        shard_kv_cache_destroy(&e->cache);
        e->key = 0;
    }
}

/* The key's entry, emptied: a free slot or the least recently used one's.
 * NULL when the table holds nothing or memory ran out. */
static kv_entry_t *claim(worker_kv_t *kv, uint64_t key)
{
    kv_entry_t *e = find(kv, key);
    for (int i = 0; !e && i < kv->limit; i++)
        if (kv->entries[i].key == 0)
            e = &kv->entries[i];
    if (!e && kv->limit > 0) {
        e = &kv->entries[0];
        for (int i = 1; i < kv->limit; i++)
            if (kv->entries[i].used < e->used)
                e = &kv->entries[i];
    }
    if (!e)
        return NULL;
    if (e->key && e->key != key)
        kv->stats.evictions++;
    e->key = key;
    if (e->cache)
        shard_kv_cache_reset(e->cache);
    else if (!(e->cache = shard_kv_cache_new()))
        e->key = 0;
    return e->key ? e : NULL;
}

worker_status_t worker_kv_run_layers(worker_kv_t *kv, const shard_model_t *model,
                                     shard_state_t *state, worker_micro_t *m, int stage,
                                     const worker_log_t *log, worker_error_t *err)
{
    shard_error_t serr = {0};
    const int64_t from = m->acts->n_tokens > 0 ? m->acts->position[0] : 0;
    shard_status_t status = SHARD_OK;
    kv_entry_t *e = NULL;
    if (m->kind != MICRO_GENERATE || m->kv_mode == WORKER_KV_NONE) {
        status = shard_run_layers(model, state, m->acts, &serr);
    } else if (m->kv_mode == WORKER_KV_FILL) {
        /* No room (or memory): this stage computes the prefix uncached and
         * its next step misses, which stage 0 turns into another fill. */
        if ((e = claim(kv, m->kv_key)))
            status = shard_run_layers_cached(model, state, e->cache, m->acts, &serr);
        else
            status = shard_run_layers(model, state, m->acts, &serr);
    } else if (!(e = find(kv, m->kv_key)) || shard_kv_cache_length(e->cache) != from) {
        kv->stats.misses++;
        m->kv_missed = true;
        worker_log(log, WORKER_LOG_DEBUG, "stage %d: generation %llu: no cache of %lld positions "
                   "here (%lld): the step is redone over the whole prefix", stage,
                   (unsigned long long)m->kv_key, (long long)from,
                   (long long)(e ? shard_kv_cache_length(e->cache) : -1));
        return WORKER_OK;
    } else {
        status = shard_run_layers_cached(model, state, e->cache, m->acts, &serr);
    }
    if (status) {
        if (e) { /* half-updated: no step may continue it */
            shard_kv_cache_destroy(&e->cache);
            e->key = 0;
        }
        return worker_error_set(err, WORKER_ERR_ENGINE, "stage %d: %s", stage, serr.message);
    }
    if (m->kind == MICRO_GENERATE) {
        const bool cached = m->kv_mode == WORKER_KV_STEP;
        kv->stats.steps[cached ? 1 : 0]++;
        kv->stats.positions += (uint64_t)m->acts->n_tokens;
        worker_log(log, WORKER_LOG_DEBUG, "stage %d: generation %llu: %s step of %lld positions",
                   stage, (unsigned long long)m->kv_key, cached ? "cached" : "full-prefix",
                   (long long)m->acts->n_tokens);
    }
    if (e) {
        e->used = ++kv->clock;
        if (m->kv_last)
            worker_kv_drop(kv, m->kv_key);
    }
    return WORKER_OK;
}

worker_kv_stats_t worker_kv_stats(const worker_kv_t *kv)
{
    return kv ? kv->stats : (worker_kv_stats_t){0};
}
