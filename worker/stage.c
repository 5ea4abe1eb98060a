/* stage.c: set-up of a rank's stage, the stages after the first, and the
 * last stage's heads. */
#include "stage.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>


/* ------------------------------------------------------------ last stage */

/* Scored positions of item row r (orig rows): [from, to). */
static int64_t score_from(const worker_item_t *it, int64_t r) { return it->windows[r].from; }
static int64_t score_to(const worker_item_t *it, int64_t r) { return it->windows[r].to; }

/* The scored tokens as text, when the request asked and a tokenizer is here. */
static void scored_texts(worker_stage_t *st, const worker_item_t *it, const shard_inputs_t *in,
                         worker_texts_t *texts)
{
    memset(texts, 0, sizeof *texts);
    if (!it->return_tokens || !st->tokenizer)
        return;
    int64_t total = 0;
    for (int64_t r = 0; r < it->orig_rows; r++)
        total += score_to(it, r) - score_from(it, r);
    texts->text = calloc((size_t)(total ? total : 1), sizeof(char *));
    texts->row_lengths = calloc((size_t)(it->orig_rows ? it->orig_rows : 1), sizeof(int64_t));
    if (!texts->text || !texts->row_lengths) {
        worker_texts_clear(texts);
        return;
    }
    texts->rows = it->orig_rows;
    for (int64_t r = 0; r < it->orig_rows; r++) {
        const int64_t from = score_from(it, r), to = score_to(it, r);
        texts->row_lengths[r] = to - from;
        texts->longest = to - from > texts->longest ? to - from : texts->longest;
        for (int64_t pos = from; pos < to; pos++) {
            int64_t id;
            if (it->copies) /* the copies hold the mask there */
                id = it->copies[texts->n].target;
            else
                id = in->input_ids[r * in->seq + pos];
            const char *token = shard_tokenizer_id_to_token(st->tokenizer, id);
            texts->text[texts->n++] = strdup(token ? token : "");
        }
    }
}

/* clm_score of every row of a micro-batch at once: one pass of the
 * vocabulary projection for all its requests instead of one each. */
typedef struct {
    shard_outputs_t outputs; /* token_logprobs of every row of the micro-batch */
    bool ok;
} micro_clm_t;

static void micro_clm_run(worker_stage_t *st, worker_micro_t *m, micro_clm_t *clm)
{
    memset(clm, 0, sizeof *clm);
    shard_outputs_init(&clm->outputs);
    bool any = false;
    for (int i = 0; i < m->n_items; i++)
        any |= m->items[i].task == PROTO_TASK_CLM_SCORE;
    int64_t *from = any ? malloc((size_t)m->batch * sizeof *from) : NULL;
    if (!from)
        return;
    for (int64_t r = 0; r < m->batch; r++)
        from[r] = m->seq; /* rows of other requests: nothing scored */
    for (int i = 0; i < m->n_items; i++) {
        const worker_item_t *it = &m->items[i];
        for (int64_t r = 0; it->task == PROTO_TASK_CLM_SCORE && r < it->orig_rows; r++)
            from[it->row0 + r] = it->windows[r].from;
    }
    shard_inputs_t in = {.batch = m->batch, .seq = m->seq, .input_ids = m->input_ids,
                         .attention_mask = m->attention_mask};
    shard_error_t err = {0};
    /* A failure here (e.g. a long row with explicit positions) falls back
     * to each request on its own, which names the problem. */
    clm->ok = shard_head_clm_score(st->model, st->state, m->acts, &in, from, &clm->outputs, &err) == SHARD_OK;
    free(from);
}

static void micro_clm_clear(micro_clm_t *clm)
{
    shard_outputs_clear(&clm->outputs);
    memset(clm, 0, sizeof *clm);
}

/* The scores of one request, by the engine's pieces that xlm-score in
 * process runs too: its windows' outputs, the copies' or the clm head's
 * log-probs gathered into them, the rows summed. */
static shard_status_t score_item(worker_stage_t *st, const worker_item_t *it, const shard_acts_t *view,
                                 const shard_inputs_t *in, const micro_clm_t *clm,
                                 shard_outputs_t *outputs, shard_error_t *err)
{
    shard_tensor_t *tokens = NULL, *sums = NULL;
    shard_status_t status = shard_score_outputs_add(outputs, it->windows, it->orig_rows, &tokens,
                                                    &sums, err);
    if (status)
        return status;
    if (it->task == PROTO_TASK_MLM_PLL) {
        float *logprob = malloc((size_t)(it->n_copies ? it->n_copies : 1) * sizeof *logprob);
        status = logprob ? shard_pll_logprob(st->model, st->state, view, it->copies, it->n_copies,
                                             logprob, err)
                         : shard_error_set(err, SHARD_ERR_NOMEM, "mlm_pll: out of memory");
        if (!status)
            status = shard_pll_gather(it->copies, it->n_copies, logprob, it->windows, tokens, err);
        free(logprob);
    } else if (clm && clm->ok) {
        status = shard_clm_gather(shard_outputs_find(&clm->outputs, "token_logprobs"), it->row0,
                                  it->windows, tokens, err);
    } else {
        shard_outputs_t all;
        shard_outputs_init(&all);
        int64_t *from = malloc((size_t)it->orig_rows * sizeof *from);
        if (!from)
            status = shard_error_set(err, SHARD_ERR_NOMEM, "clm_score: out of memory");
        for (int64_t r = 0; !status && r < it->orig_rows; r++)
            from[r] = score_from(it, r);
        if (!status && !(status = shard_head_clm_score(st->model, st->state, view, in, from, &all, err)))
            status = shard_clm_gather(shard_outputs_find(&all, "token_logprobs"), 0, it->windows,
                                      tokens, err);
        free(from);
        shard_outputs_clear(&all);
    }
    if (!status)
        shard_score_sum_rows(tokens, sums);
    return status;
}

static shard_status_t run_item(worker_stage_t *st, worker_micro_t *m, const worker_item_t *item,
                               const micro_clm_t *clm, shard_outputs_t *outputs,
                               worker_texts_t *texts, shard_error_t *err)
{
    shard_inputs_t in;
    shard_acts_t view;
    shard_status_t status = worker_item_inputs(m, item, &in, err);
    if (status)
        return status;
    const worker_task_t *wt = worker_task(item->task);
    if (!(status = shard_acts_view(m->acts, item->row0, item->rows, item->seq, &view, err))) {
        if (wt && (wt->call == WORKER_CALL_CLM_SCORE || wt->call == WORKER_CALL_MASKED_LOGPROB)) {
            status = score_item(st, item, &view, &in, clm, outputs, err);
            if (!status)
                scored_texts(st, item, &in, texts);
        } else if (wt && wt->call == WORKER_CALL_HEAD) {
            status = shard_head(st->model, st->state, wt->head, &view, &in, outputs, err);
        } else {
            status = shard_error_set(err, SHARD_ERR_HEAD,
                                     "run_item: task %d (%s) is not computed by a head or a "
                                     "scoring call in a micro-batch",
                                     (int)item->task, proto_task_name((proto_task_t)item->task));
        }
    }
    worker_inputs_free(&in);
    return status;
}

int worker_finish_micro(worker_stage_t *st, worker_micro_t *m, int64_t *next_token)
{
    if (m->kind == MICRO_GENERATE) {
        shard_error_t err = {0};
        *next_token = -1;
        if (shard_head_next_token(st->model, st->state, m->acts, 0, m->seq - 1, next_token, &err)) {
            worker_log(WORKER_LOG_ERROR, "generation step failed: %s", err.message);
            *next_token = -1;
        }
        return 0;
    }
    worker_reply_t *replies = calloc((size_t)(m->n_items ? m->n_items : 1), sizeof *replies);
    if (!replies)
        return -1;
    int rc = 0;
    const uint64_t batch_tokens = (uint64_t)(m->batch * m->seq);
    micro_clm_t clm;
    micro_clm_run(st, m, &clm);
    for (int i = 0; i < m->n_items; i++) {
        shard_outputs_t outputs;
        worker_texts_t texts = {0};
        shard_error_t err = {0};
        shard_outputs_init(&outputs);
        shard_status_t status = run_item(st, m, &m->items[i], &clm, &outputs, &texts, &err);
        if (worker_reply_pack(&replies[i], &m->items[i], worker_status_of(status),
                              status ? err.message : NULL, &outputs, &texts, m->stage_us,
                              m->n_stages, batch_tokens, (uint32_t)m->n_items) != 0)
            rc = -1;
        worker_texts_clear(&texts);
        shard_outputs_clear(&outputs);
    }
    micro_clm_clear(&clm);
    if (worker_replies_send(st->link, replies, (size_t)m->n_items, m->stage_us, m->n_stages) != 0)
        rc = -1;
    free(replies);
    return rc;
}

/* ------------------------------------------------------------ stages 1.. */

/* Sleeps between polls of an idle stage: short right after work, longer the
 * longer it has been idle, so that many idle ranks on few cores stay cheap. */
void worker_idle_pause(uint64_t idle_since_us)
{
    uint64_t idle = worker_now_us() - idle_since_us;
    long ns = idle < 10000 ? 20 * 1000 : idle < 1000000 ? 200 * 1000 : 2 * 1000 * 1000;
    struct timespec pause = {0, ns};
    nanosleep(&pause, NULL);
}

/* Sends a packet to the next stage from one of two slots, waiting for the
 * slot's previous send first: at most two sends outstanding. */
int worker_send_next(worker_stage_t *st, slot_t *slots, int *next_slot, worker_micro_t *m)
{
    slot_t *slot = &slots[*next_slot];
    *next_slot ^= 1;
    if (slot->request != MPI_REQUEST_NULL && WORKER_MPI(MPI_Wait(&slot->request, MPI_STATUS_IGNORE)))
        return -1;
    size_t size = worker_packet_write(m, slot->buffer, st->packet_capacity);
    if (size == 0 || size > (size_t)INT32_MAX) {
        worker_log(WORKER_LOG_ERROR, "micro-batch %llu does not fit a packet of %zu bytes",
                   (unsigned long long)m->micro_id, st->packet_capacity);
        return -1;
    }
    return WORKER_MPI(MPI_Isend(slot->buffer, (int)size, MPI_BYTE, st->stage + 1, TAG_ACTIVATIONS,
                                st->comm, &slot->request));
}

static int finish_sends(slot_t *slots)
{
    for (int i = 0; i < 2; i++)
        if (slots[i].request != MPI_REQUEST_NULL &&
            WORKER_MPI(MPI_Wait(&slots[i].request, MPI_STATUS_IGNORE)))
            return -1;
    return 0;
}

/* Handles one received packet; returns 1 when it was the shutdown. */
static int handle_packet(worker_stage_t *st, const void *data, size_t size, slot_t *send_slots,
                         int *send_slot)
{
    shard_error_t err = {0};
    worker_micro_t *m = worker_packet_read(data, size, &err);
    if (!m) {
        worker_log(WORKER_LOG_ERROR, "stage %d: %s", st->stage, err.message);
        return -1;
    }
    const bool last = st->stage == st->n_stages - 1;
    int rc = 0;
    if (m->kind == MICRO_SHUTDOWN) {
        rc = last ? 1 : (worker_send_next(st, send_slots, send_slot, m) ? -1 : 1);
        worker_micro_destroy(&m);
        return rc;
    }
    uint64_t start = worker_now_us();
    if (shard_run_layers(st->model, st->state, m->acts, &err)) {
        worker_log(WORKER_LOG_ERROR, "stage %d: %s", st->stage, err.message);
        worker_micro_destroy(&m);
        return -1;
    }
    m->stage_us[st->stage] = worker_now_us() - start;
    if (!last) {
        rc = worker_send_next(st, send_slots, send_slot, m);
    } else {
        int64_t token = -1;
        rc = worker_finish_micro(st, m, &token);
        if (rc == 0 && m->kind == MICRO_GENERATE) {
            int64_t feedback[2] = {(int64_t)m->items[0].gen_job, token};
            rc = WORKER_MPI(MPI_Send(feedback, 2, MPI_INT64_T, 0, TAG_FEEDBACK, st->comm));
        }
    }
    worker_micro_destroy(&m);
    return rc;
}

int worker_run_next(worker_stage_t *st)
{
    slot_t recv_slots[2], send_slots[2];
    int rc = 0, oldest = 0, send_slot = 0;
    for (int i = 0; i < 2; i++) {
        recv_slots[i].buffer = malloc(st->packet_capacity);
        send_slots[i].buffer = malloc(st->packet_capacity);
        recv_slots[i].request = send_slots[i].request = MPI_REQUEST_NULL;
        if (!recv_slots[i].buffer || !send_slots[i].buffer)
            rc = -1;
    }
    /* Both receives posted early: the next packet lands while this one runs. */
    for (int i = 0; rc == 0 && i < 2; i++)
        rc = WORKER_MPI(MPI_Irecv(recv_slots[i].buffer, (int)st->packet_capacity, MPI_BYTE,
                                  st->stage - 1, TAG_ACTIVATIONS, st->comm, &recv_slots[i].request));
    uint64_t stop_seen_us = 0, idle_since = worker_now_us();
    while (rc == 0) {
        int done = 0;
        MPI_Status status;
        if ((rc = WORKER_MPI(MPI_Test(&recv_slots[oldest].request, &done, &status))))
            break;
        if (!done) {
            /* Stopping is driven by stage 0's shutdown packet; this is the
             * fallback when stage 0 is gone. */
            if (atomic_load(st->stop) && !stop_seen_us)
                stop_seen_us = worker_now_us();
            if (stop_seen_us && worker_now_us() - stop_seen_us > 30u * 1000000u) {
                worker_log(WORKER_LOG_WARN, "stage %d: no shutdown from stage 0 in 30 s", st->stage);
                break;
            }
            worker_idle_pause(idle_since);
            continue;
        }
        idle_since = worker_now_us();
        int count = 0;
        if ((rc = WORKER_MPI(MPI_Get_count(&status, MPI_BYTE, &count))))
            break;
        if (count == MPI_UNDEFINED || count < 0 || (size_t)count > st->packet_capacity) {
            worker_log(WORKER_LOG_ERROR, "stage %d: received a packet of %d bytes, expected 0 to "
                       "%zu", st->stage, count, st->packet_capacity);
            rc = -1;
            break;
        }
        int handled = handle_packet(st, recv_slots[oldest].buffer, (size_t)count, send_slots,
                                    &send_slot);
        if (handled != 0) {
            rc = handled < 0 ? -1 : 0;
            break;
        }
        rc = WORKER_MPI(MPI_Irecv(recv_slots[oldest].buffer, (int)st->packet_capacity, MPI_BYTE,
                                  st->stage - 1, TAG_ACTIVATIONS, st->comm,
                                  &recv_slots[oldest].request));
        oldest ^= 1;
    }
    if (finish_sends(send_slots))
        rc = -1;
    for (int i = 0; i < 2; i++) {
        if (recv_slots[i].request != MPI_REQUEST_NULL) {
            MPI_Cancel(&recv_slots[i].request);
            MPI_Request_free(&recv_slots[i].request);
        }
        free(recv_slots[i].buffer);
        free(send_slots[i].buffer);
    }
    return rc;
}

/* ------------------------------------------------------------ set-up */

static int open_stage(worker_stage_t *st)
{
    shard_error_t err = {0};
    shard_config_t config;
    /* config.json, or an original XLM checkpoint's params. */
    if (shard_checkpoint_load_config(st->options->model_dir, &config, &err)) {
        worker_log(WORKER_LOG_ERROR, "%s", err.message);
        return -1;
    }
    int64_t counts[WORKER_MAX_STAGES] = {0};
    if (st->options->has_layer_map) {
        int64_t total = 0;
        for (int s = 0; s < st->n_stages; s++)
            total += st->options->layer_counts[s];
        if (total != config.n_layers) {
            worker_log(WORKER_LOG_ERROR, "--layer-map assigns %lld layers, the model has %lld",
                       (long long)total, (long long)config.n_layers);
            return -1;
        }
        memcpy(counts, st->options->layer_counts, sizeof counts);
    } else if (worker_plan_layers(&config, st->n_stages,
                                  shard_head_of_architecture(config.architecture) == SHARD_HEAD_LM ? st->options->projected_share : 0.0,
                                  counts, &err)) {
        worker_log(WORKER_LOG_ERROR, "%s", err.message);
        return -1;
    }
    shard_range_t range = {0, 0, st->stage == 0, st->stage == st->n_stages - 1};
    for (int s = 0; s < st->stage; s++)
        range.first_layer += counts[s];
    range.last_layer = range.first_layer + counts[st->stage];
    st->model = shard_model_open(
        st->options->model_dir,
        &(shard_model_options_t){.range = &range,
                                 .precision = (shard_precision_t)st->options->precision},
        &err);
    if (st->model && st->options->precision != SHARD_PRECISION_FP32)
        worker_log(WORKER_LOG_INFO, "stage %d: precision %s: %s", st->stage,
                   shard_precision_name((shard_precision_t)st->options->precision),
                   shard_model_precision_note(st->model));
    if (!st->model) {
        worker_log(WORKER_LOG_ERROR, "%s", err.message);
        return -1;
    }
    if (!(st->state = shard_state_new())) {
        worker_log(WORKER_LOG_ERROR, "stage %d: out of memory for the run state", st->stage);
        return -1;
    }
    st->config = shard_model_config(st->model);
    worker_log(WORKER_LOG_INFO, "pipeline %d stage %d/%d: layers [%lld, %lld)%s%s",
               st->pipeline_index, st->stage, st->n_stages, (long long)range.first_layer,
               (long long)range.last_layer, range.embeddings ? " + embeddings" : "",
               range.heads ? " + heads" : "");
    if (st->stage == 0 || st->stage == st->n_stages - 1) {
        /* Stage 0 tokenises text; the last stage names scored tokens. */
        st->tokenizer = shard_tokenizer_open(st->options->model_dir, &err);
        /* An original XLM folder's languages come from its checkpoint's params. */
        if (st->tokenizer && shard_tokenizer_adopt_langs(st->tokenizer, st->config->lang_names,
                                                         st->config->n_langs, &err) != SHARD_OK)
            shard_tokenizer_destroy(&st->tokenizer);
        if (!st->tokenizer)
            worker_log(WORKER_LOG_WARN, "no tokenizer, text requests will be refused: %s",
                       err.message);
    }
    int64_t tokens = (int64_t)st->options->max_batch_tokens;
    if (tokens < st->config->max_position_embeddings)
        tokens = st->config->max_position_embeddings;
    st->batch_tokens = (uint64_t)tokens;
    st->packet_capacity = worker_packet_capacity(tokens, st->config->emb_dim);
    /* MPI counts are int: every receive posts packet_capacity bytes. */
    if (st->packet_capacity == 0 || st->packet_capacity > (size_t)INT_MAX) {
        worker_log(WORKER_LOG_ERROR, "open_stage: packets for %lld tokens of %lld values need "
                   "%zu bytes, expected 1 to %d (an MPI count; lower --max-batch-tokens)",
                   (long long)tokens, (long long)st->config->emb_dim, st->packet_capacity,
                   INT_MAX);
        return -1;
    }
    return 0;
}

/* The job's id, the same on every rank: Slurm's job (and step) when
 * Slurm launched it, else world rank 0's process id. Two jobs on one host
 * then never share pipeline ids. */
static int job_id(char *out, size_t size)
{
    const char *slurm = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    if (slurm && *slurm) {
        snprintf(out, size, "%.40s%s%.20s", slurm, step && *step ? "." : "", step ? step : "");
        return 0;
    }
    long long pid = (long long)getpid();
    if (WORKER_MPI(MPI_Bcast(&pid, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD)))
        return -1;
    snprintf(out, size, "%lld", pid);
    return 0;
}

/* A random 64-bit number, never 0 (0 means "not said" on the wire). */
static uint64_t random_instance(void)
{
    uint64_t value = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&value, sizeof value, 1, f) != 1)
            value = 0;
        fclose(f);
    }
    if (!value) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        value = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    return value ? value : 1;
}

/* model@host/jJOB/pINDEX, or PREFIX/pINDEX when the operator chose one. */
static int pipeline_name(worker_stage_t *st)
{
    char host[128] = "localhost", job[64];
    gethostname(host, sizeof host - 1);
    if (job_id(job, sizeof job))
        return -1;
    st->instance = random_instance();
    if (st->options->pipeline_prefix)
        snprintf(st->pipeline_id, sizeof st->pipeline_id, "%.110s/p%d",
                 st->options->pipeline_prefix, st->pipeline_index);
    else
        snprintf(st->pipeline_id, sizeof st->pipeline_id, "%.60s@%.50s/j%.40s/p%d",
                 st->options->name, host, job, st->pipeline_index);
    return 0;
}

int worker_run(const worker_options_t *options, const atomic_int *stop)
{
    worker_stage_t st = {.options = options, .stop = stop, .comm = MPI_COMM_NULL};
    int world_size = 0, rc = 0, app_rank = 0, *appnum = NULL, has_appnum = 0;
    MPI_Comm app = MPI_COMM_NULL;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (WORKER_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &st.world_rank)))
        return 1;
    /* mpirun -np A xlm-worker --model X : -np B xlm-worker --model Y runs
     * several models in one job: each app splits into its own pipelines. */
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &has_appnum);
    if (WORKER_MPI(MPI_Comm_split(MPI_COMM_WORLD, has_appnum ? *appnum : 0, st.world_rank, &app)) ||
        WORKER_MPI(MPI_Comm_rank(app, &app_rank)) || WORKER_MPI(MPI_Comm_size(app, &world_size)))
        return 1;
    MPI_Comm_set_errhandler(app, MPI_ERRORS_RETURN);
    if (options->n_stages < 1 || world_size % options->n_stages != 0) {
        worker_log(WORKER_LOG_ERROR, "%d ranks do not split into pipelines of %d stages",
                   world_size, options->n_stages);
        return 1;
    }
    st.n_stages = options->n_stages;
    st.pipeline_index = app_rank / st.n_stages;
    st.stage = app_rank % st.n_stages;
    if (WORKER_MPI(MPI_Comm_split(app, st.pipeline_index, st.stage, &st.comm)))
        return 1;
    MPI_Comm_free(&app);
    MPI_Comm_set_errhandler(st.comm, MPI_ERRORS_RETURN);
    shard_set_threads(options->threads > 0 ? options->threads : 1);
    /* Every stage speaks for its pipeline under stage 0's id and instance:
     * a stage on another host would otherwise name it after its own host,
     * and the broker would match none of its replies. */
    if (pipeline_name(&st) ||
        WORKER_MPI(MPI_Bcast(st.pipeline_id, (int)sizeof st.pipeline_id, MPI_CHAR, 0, st.comm)) ||
        WORKER_MPI(MPI_Bcast(&st.instance, 1, MPI_UINT64_T, 0, st.comm)))
        return 1;
    st.zmq_context = zmq_ctx_new();
    if (!st.zmq_context || open_stage(&st) != 0) {
        rc = 1;
    } else {
        if (st.stage == 0 || st.stage == st.n_stages - 1) {
            st.link = worker_link_new(st.zmq_context, options->broker, st.pipeline_id);
            if (!st.link)
                rc = 1;
        }
        if (rc == 0)
            rc = (st.stage == 0 ? worker_run_first(&st) : worker_run_next(&st)) ? 1 : 0;
    }
    worker_link_destroy(&st.link);
    shard_tokenizer_destroy(&st.tokenizer);
    shard_state_destroy(&st.state);
    shard_model_destroy(&st.model);
    if (st.zmq_context)
        zmq_ctx_term(st.zmq_context);
    MPI_Comm_free(&st.comm);
    return rc;
}
