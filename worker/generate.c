/* generate.c: stage 0's greedy generations: one micro-batch per step
 * through the ring, the token fed back by the last stage, the reply once
 * the steps are done. Calls queue.c and link.c. */
#include "first.h"

#include <stdlib.h>
#include <string.h>

static void free_job(first_t *f, gen_job_t *job)
{
    worker_kv_drop(f->st->kv, job->id);
    worker_prepared_clear(&job->prep);
    free(job->ids);
    free(job->langs);
    free(job);
}

gen_job_t *first_job_start(first_t *f, worker_prepared_t *p)
{
    gen_job_t *job = calloc(1, sizeof *job);
    const int64_t total = p->item.seq + p->steps;
    if (job) {
        job->ids = calloc((size_t)total, sizeof *job->ids);
        job->langs = p->langs ? calloc((size_t)total, sizeof *job->langs) : NULL;
    }
    if (!job || !job->ids || (p->langs && !job->langs)) {
        if (job) {
            free(job->ids);
            free(job->langs);
        }
        free(job);
        return NULL;
    }
    job->id = ++f->job_counter;
    job->prep = *p;
    memset(p, 0, sizeof *p);
    job->len = job->prep.item.seq;
    job->total = total;
    memcpy(job->ids, job->prep.ids, (size_t)job->len * sizeof *job->ids);
    for (int64_t i = 0; job->langs && i < total; i++)
        job->langs[i] = i < job->len ? job->prep.langs[i] : job->prep.lang_fill;
    job->next = f->jobs;
    f->jobs = job;
    return job;
}

/* Cached steps need every position real, as the engine's in-process
 * generation does: a pad id would be masked, and the positions after it
 * would move. Then, and on models that are not causal, the step runs the
 * whole prefix through the stages. */
static worker_kv_mode_t step_kv_mode(const first_t *f, const gen_job_t *job)
{
    if (f->st->options->no_kv_cache || !f->st->config->causal)
        return WORKER_KV_NONE;
    for (int64_t i = 0; i < job->len; i++)
        if (job->ids[i] == f->st->config->pad_index)
            return WORKER_KV_NONE;
    return job->kv_filled ? WORKER_KV_STEP : WORKER_KV_FILL;
}

/* The micro-batch of a generation's next step: the sequence so far, run as
 * given (its default mask, positions 0..len-1). */
void first_job_step(first_t *f, gen_job_t *job)
{
    const bool types = job->prep.types != NULL;
    worker_micro_t *m = worker_micro_new(MICRO_GENERATE, 1, job->len, 1, job->langs != NULL, types,
                                         false);
    if (!m) {
        worker_log(f->st->log, WORKER_LOG_ERROR, "first_job_step: out of memory for a "
                   "generation step of %lld tokens", (long long)job->len);
        return;
    }
    m->micro_id = ++f->st->micro_counter;
    m->n_stages = f->st->n_stages;
    memcpy(m->input_ids, job->ids, (size_t)job->len * sizeof(int64_t));
    shard_default_mask(f->st->config, job->ids, job->len, m->attention_mask);
    for (int64_t s = 0; s < job->len; s++)
        m->position_ids[s] = s;
    if (job->langs)
        memcpy(m->langs, job->langs, (size_t)job->len * sizeof(int64_t));
    m->items[0] = job->prep.item;
    m->items[0].windows = NULL; /* the job keeps the prompt's */
    m->items[0].copies = NULL;
    m->items[0].row0 = 0;
    m->items[0].rows = 1;
    m->items[0].seq = job->len;
    m->items[0].gen_job = job->id;
    m->kv_key = job->id;
    m->kv_mode = step_kv_mode(f, job);
    m->kv_last = job->len + 1 == job->total;
    job->kv_filled = m->kv_mode != WORKER_KV_NONE;
    job->in_flight = true;
    first_enqueue(f, m);
}

gen_job_t *first_job_find(first_t *f, uint64_t id, gen_job_t ***link_out)
{
    gen_job_t **link = &f->jobs;
    for (; *link; link = &(*link)->next)
        if ((*link)->id == id) {
            *link_out = link;
            return *link;
        }
    return NULL;
}

void first_job_drop(first_t *f, gen_job_t *job, gen_job_t **link)
{
    first_give_credit(f, job->prep.item.credit);
    worker_log(f->st->log, WORKER_LOG_DEBUG, "ticket %llu (%s): cancelled, generation dropped "
               "after %lld of %lld tokens", (unsigned long long)job->prep.item.ticket,
               job->prep.item.id, (long long)(job->len - job->prep.item.seq),
               (long long)job->prep.steps);
    f->dropped++;
    *link = job->next;
    free_job(f, job);
}

static void finish_job(first_t *f, gen_job_t *job, gen_job_t **link, int64_t token)
{
    proto_status_t status = PROTO_STATUS_OK;
    shard_outputs_t outputs;
    shard_error_t serr = {0};
    shard_outputs_init(&outputs);
    int64_t shape_all[2] = {1, job->total}, shape_new[2] = {1, job->prep.steps};
    shard_tensor_t *all = NULL, *fresh = NULL;
    if (token < 0 ||
        !(all = shard_outputs_add(&outputs, "generated_ids", SHARD_I64, 2, shape_all, &serr)) ||
        !(fresh = shard_outputs_add(&outputs, "new_ids", SHARD_I64, 2, shape_new, &serr))) {
        status = PROTO_STATUS_INTERNAL;
    } else {
        memcpy(all->i64, job->ids, (size_t)job->total * sizeof(int64_t));
        memcpy(fresh->i64, job->ids + job->prep.item.seq, (size_t)job->prep.steps * sizeof(int64_t));
    }
    worker_reply_t reply;
    worker_error_t err;
    worker_status_t rc = worker_reply_pack(&reply, &job->prep.item, status,
                                           status ? "the generation failed" : NULL, &outputs,
                                           NULL, NULL, 0, (uint64_t)job->total, 1, &err);
    if (reply.frame) {
        worker_error_t send_err;
        worker_status_t sent = worker_replies_send(f->st->link, &reply, 1, NULL, 0, &send_err);
        if (sent != WORKER_OK && rc == WORKER_OK) {
            rc = sent;
            err = send_err;
        }
    }
    if (rc != WORKER_OK)
        worker_log(f->st->log, WORKER_LOG_ERROR, "the reply of generation %s: %s",
                   job->prep.item.id, err.message);
    shard_outputs_clear(&outputs);
    *link = job->next;
    free_job(f, job);
}

void first_job_token(first_t *f, uint64_t job_id, int64_t token)
{
    gen_job_t **link = NULL;
    gen_job_t *job = first_job_find(f, job_id, &link);
    if (!job)
        return;
    job->in_flight = false;
    if (job->cancelled) {
        first_job_drop(f, job, link);
        return;
    }
    if (token == WORKER_TOKEN_REFILL) {
        /* A stage behind lacked the cache (evicted, or out of memory when
         * the prefix came): the step again, over the whole prefix. */
        job->kv_filled = false;
        first_job_step(f, job);
        return;
    }
    if (token >= 0)
        job->ids[job->len++] = token;
    if (token < 0 || job->len == job->total)
        finish_job(f, job, link, token);
    else
        first_job_step(f, job);
}

void first_jobs_free(first_t *f)
{
    while (f->jobs) {
        gen_job_t *job = f->jobs;
        f->jobs = job->next;
        free_job(f, job);
    }
}
