/* register.c: stage 0's side of the broker's registry: the Ready that
 * says what this pipeline serves, heartbeats (every rank also beats from a
 * thread of its own, beat.c), the goodbye. Calls link.c. */
#include "first.h"

#include <stdlib.h>
#include <string.h>

/* served[h]: the pipeline runs head h. Stage 0 of several does not hold
 * the heads: the engine reads the checkpoint's from one open of its head
 * tensors. A checkpoint that cannot be probed serves no head. */
static void heads_served(const worker_stage_t *st, bool served[SHARD_HEAD_COUNT_])
{
    if (st->n_stages == 1) {
        for (int h = 0; h < SHARD_HEAD_COUNT_; h++)
            served[h] = shard_model_has_head(st->model, (shard_head_t)h);
        return;
    }
    shard_error_t err = {0};
    if (shard_model_probe_heads(st->options->model_dir, served, &err))
        worker_log(st->log, WORKER_LOG_ERROR, "probing the heads of %s: %s", st->options->model_dir,
                   err.message);
}

/* Pseudo-log-likelihood needs a masked LM: on a causal checkpoint it is
 * refused, as xlm-score refuses it in process. clm_score stays served on
 * every LM, as xlm-infer computes it for any checkpoint with the LM head. */
static bool task_suits_model(proto_task_t task, const shard_config_t *c)
{
    return task != PROTO_TASK_MLM_PLL || !c->causal;
}

worker_status_t first_build_ready(first_t *f, worker_error_t *err)
{
    const worker_stage_t *st = f->st;
    const shard_config_t *c = st->config;
    xlm__ready__init(&f->ready);
    f->ready.model = (char *)st->options->name;
    f->ready.n_stages = (uint32_t)st->n_stages;
    f->ready.credit = st->options->credit ? st->options->credit : (uint32_t)st->n_stages + 1;
    f->ready.max_batch_tokens = st->options->max_batch_tokens;
    f->ready.vocab_size = c->vocab_size;
    f->ready.max_position_embeddings = c->max_position_embeddings;
    f->ready.n_langs = c->n_langs;
    f->ready.heartbeat_ms = st->options->heartbeat_ms;
    f->ready.instance = st->instance;
    f->ready.job = st->job;
    f->ready.n_layers = c->n_layers;
    f->ready.emb_dim = c->emb_dim;
    f->ready.n_heads = c->n_heads;
    f->ready.architecture = c->causal ? "causal" : "masked";
    f->ready.precision = (char *)shard_precision_name((shard_precision_t)st->options->precision);
    bool named = false;
    for (int64_t i = 0; i < c->n_langs; i++)
        named |= c->lang_names[i][0] != '\0';
    if (named) {
        f->lang_codes = calloc((size_t)c->n_langs, sizeof *f->lang_codes);
        if (!f->lang_codes)
            return worker_error_set(err, WORKER_ERR_NOMEM, "first_build_ready: out of memory "
                                    "for %lld language codes", (long long)c->n_langs);
        for (int64_t i = 0; i < c->n_langs; i++)
            f->lang_codes[i] = (char *)c->lang_names[i];
        f->ready.n_lang_codes = (size_t)c->n_langs;
        f->ready.lang_codes = f->lang_codes;
    }
    /* A task is served when the model has the head its engine call needs
     * (worker/tasks.c); the heads are probed once. */
    bool served[SHARD_HEAD_COUNT_];
    heads_served(st, served);
    size_t n = 0;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++) {
        const worker_task_t *wt = worker_task(t);
        if (wt && served[wt->head] && task_suits_model(wt->task, c))
            f->tasks[n++] = (Xlm__Task)wt->task;
    }
    f->ready.n_tasks = n;
    f->ready.tasks = f->tasks;
    return WORKER_OK;
}

static worker_status_t send_body(first_t *f, Xlm__WorkerMessage *msg, worker_error_t *err)
{
    worker_status_t rc = worker_link_send(f->st->link, msg, NULL, NULL, 0, err);
    f->last_sent_us = worker_now_us();
    return rc;
}

worker_status_t first_send_ready(first_t *f, worker_error_t *err)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &f->ready;
    worker_log(f->st->log, WORKER_LOG_INFO, "registering %s with the broker (credit %u)",
               f->st->pipeline_id, f->ready.credit);
    f->last_recv_us = worker_now_us();
    return send_body(f, &msg, err);
}

worker_status_t first_send_heartbeat(first_t *f, worker_error_t *err)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
    heartbeat.heartbeat_ms = f->st->options->heartbeat_ms;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &heartbeat;
    return send_body(f, &msg, err);
}

worker_status_t first_send_disconnect(first_t *f, const char *reason, worker_error_t *err)
{
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = (char *)reason;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    return send_body(f, &msg, err);
}
