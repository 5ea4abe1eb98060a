/* stage.c: a rank's set-up (which pipeline and stage it is, its layers,
 * its model, its pipeline id) and worker_run, which runs stage 0's loop
 * (first.c) or the ring's (ring.c) and logs the error that ends it. */
#include "stage.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static worker_status_t open_stage(worker_stage_t *st, worker_error_t *werr)
{
    shard_error_t err = {0};
    shard_config_t config;
    /* config.json, or an original XLM checkpoint's params. */
    if (shard_checkpoint_load_config(st->options->model_dir, &config, &err))
        return worker_error_set(werr, WORKER_ERR_CONFIG, "%s", err.message);
    int64_t counts[WORKER_MAX_STAGES] = {0};
    if (st->options->has_layer_map) {
        int64_t total = 0;
        for (int s = 0; s < st->n_stages; s++)
            total += st->options->layer_counts[s];
        if (total != config.n_layers)
            return worker_error_set(werr, WORKER_ERR_CONFIG, "--layer-map assigns %lld layers, "
                                    "the model has %lld", (long long)total,
                                    (long long)config.n_layers);
        memcpy(counts, st->options->layer_counts, sizeof counts);
    } else if (worker_plan_layers(&config, st->n_stages,
                                  shard_head_of_architecture(config.architecture) == SHARD_HEAD_LM ? st->options->projected_share : 0.0,
                                  counts, &err)) {
        return worker_error_set(werr, WORKER_ERR_CONFIG, "%s", err.message);
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
        worker_log(st->log, WORKER_LOG_INFO, "stage %d: precision %s: %s", st->stage,
                   shard_precision_name((shard_precision_t)st->options->precision),
                   shard_model_precision_note(st->model));
    if (!st->model)
        return worker_error_set(werr, WORKER_ERR_CONFIG, "%s", err.message);
    if (!(st->state = shard_state_new()))
        return worker_error_set(werr, WORKER_ERR_NOMEM, "open_stage: stage %d: out of memory "
                                "for the run state", st->stage);
    st->config = shard_model_config(st->model);
    worker_log(st->log, WORKER_LOG_INFO, "pipeline %d stage %d/%d: layers [%lld, %lld)%s%s",
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
            worker_log(st->log, WORKER_LOG_WARN, "no tokenizer, text requests will be refused: %s",
                       err.message);
    }
    int64_t tokens = (int64_t)st->options->max_batch_tokens;
    if (tokens < st->config->max_position_embeddings)
        tokens = st->config->max_position_embeddings;
    st->batch_tokens = (uint64_t)tokens;
    st->packet_capacity = worker_packet_capacity(tokens, st->config->emb_dim);
    /* MPI counts are int: every receive posts packet_capacity bytes. */
    if (st->packet_capacity == 0 || st->packet_capacity > (size_t)INT_MAX)
        return worker_error_set(werr, WORKER_ERR_CONFIG, "open_stage: packets for %lld tokens "
                                "of %lld values need %zu bytes, expected 1 to %d (an MPI count; "
                                "lower --max-batch-tokens)", (long long)tokens,
                                (long long)st->config->emb_dim, st->packet_capacity, INT_MAX);
    return WORKER_OK;
}

/* The job's id, the same on every rank: Slurm's job (and step) when
 * Slurm launched it, else world rank 0's process id. Two jobs on one host
 * then never share pipeline ids. */
static worker_status_t job_id(char *out, size_t size, worker_error_t *err)
{
    const char *slurm = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    if (slurm && *slurm) {
        snprintf(out, size, "%.40s%s%.20s", slurm, step && *step ? "." : "", step ? step : "");
        return WORKER_OK;
    }
    long long pid = (long long)getpid();
    worker_status_t rc = WORKER_MPI(MPI_Bcast(&pid, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD), err);
    snprintf(out, size, "%lld", pid);
    return rc;
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
static worker_status_t pipeline_name(worker_stage_t *st, worker_error_t *err)
{
    char host[128] = "localhost", job[64];
    gethostname(host, sizeof host - 1);
    worker_status_t rc = job_id(job, sizeof job, err);
    if (rc)
        return rc;
    st->instance = random_instance();
    if (st->options->pipeline_prefix)
        snprintf(st->pipeline_id, sizeof st->pipeline_id, "%.110s/p%d",
                 st->options->pipeline_prefix, st->pipeline_index);
    else
        snprintf(st->pipeline_id, sizeof st->pipeline_id, "%.60s@%.50s/j%.40s/p%d",
                 st->options->name, host, job, st->pipeline_index);
    return WORKER_OK;
}

/* Which pipeline and stage this rank is: the world split by app (several
 * models in one MPMD job), each app into pipelines of n_stages ranks. */
static worker_status_t place_rank(worker_stage_t *st, worker_error_t *err)
{
    int world_size = 0, app_rank = 0, *appnum = NULL, has_appnum = 0;
    MPI_Comm app = MPI_COMM_NULL;
    worker_status_t rc;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if ((rc = WORKER_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &st->world_rank), err)))
        return rc;
    /* mpirun -np A xlm-worker --model X : -np B xlm-worker --model Y runs
     * several models in one job: each app splits into its own pipelines. */
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &has_appnum);
    if ((rc = WORKER_MPI(MPI_Comm_split(MPI_COMM_WORLD, has_appnum ? *appnum : 0, st->world_rank,
                                        &app), err)) ||
        (rc = WORKER_MPI(MPI_Comm_rank(app, &app_rank), err)) ||
        (rc = WORKER_MPI(MPI_Comm_size(app, &world_size), err)))
        return rc;
    MPI_Comm_set_errhandler(app, MPI_ERRORS_RETURN);
    if (st->options->n_stages < 1 || world_size % st->options->n_stages != 0) {
        MPI_Comm_free(&app);
        return worker_error_set(err, WORKER_ERR_CONFIG, "%d ranks do not split into pipelines "
                                "of %d stages", world_size, st->options->n_stages);
    }
    st->n_stages = st->options->n_stages;
    st->pipeline_index = app_rank / st->n_stages;
    st->stage = app_rank % st->n_stages;
    rc = WORKER_MPI(MPI_Comm_split(app, st->pipeline_index, st->stage, &st->comm), err);
    MPI_Comm_free(&app);
    if (rc)
        return rc;
    MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN);
    /* Every stage speaks for its pipeline under stage 0's id and instance:
     * a stage on another host would otherwise name it after its own host,
     * and the broker would match none of its replies. */
    if ((rc = pipeline_name(st, err)) ||
        (rc = WORKER_MPI(MPI_Bcast(st->pipeline_id, (int)sizeof st->pipeline_id, MPI_CHAR, 0,
                                   st->comm), err)) ||
        (rc = WORKER_MPI(MPI_Bcast(&st->instance, 1, MPI_UINT64_T, 0, st->comm), err)))
        return rc;
    st->job = random_instance();
    if ((rc = WORKER_MPI(MPI_Bcast(&st->job, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD), err)))
        return rc;
    return WORKER_OK;
}

static worker_status_t run_stage(worker_stage_t *st, worker_error_t *err)
{
    worker_status_t rc;
    if ((rc = place_rank(st, err)))
        return rc;
    shard_set_threads(st->options->threads > 0 ? st->options->threads : 1);
    if (!(st->zmq_context = zmq_ctx_new()))
        return worker_error_set(err, WORKER_ERR_ZMQ, "worker_run: no ZeroMQ context: %s",
                                zmq_strerror(zmq_errno()));
    if ((rc = open_stage(st, err)))
        return rc;
    const bool cache = !st->options->no_kv_cache && st->config->causal;
    if (!(st->kv = worker_kv_new(cache ? st->options->kv_cache_generations : 0)))
        return worker_error_set(err, WORKER_ERR_NOMEM, "worker_run: stage %d: out of memory for "
                                "the key/value cache table", st->stage);
    if ((rc = worker_curve_load(st->options->curve_secret, st->options->curve_server, &st->curve,
                                err)))
        return rc;
    if (st->stage == 0 || st->stage == st->n_stages - 1) {
        st->link = worker_link_new(st->zmq_context, st->options->broker, st->pipeline_id,
                                   &st->curve, err);
        if (!st->link)
            return err->code;
    }
    worker_beat_start(st);
    return st->stage == 0 ? worker_run_first(st, err) : worker_run_next(st, err);
}

worker_status_t worker_run(const worker_options_t *options, const worker_log_t *log,
                           const atomic_int *stop)
{
    worker_stage_t st = {.options = options, .log = log, .stop = stop, .comm = MPI_COMM_NULL};
    worker_error_t err = {WORKER_OK, ""};
    worker_status_t rc = run_stage(&st, &err);
    if (rc != WORKER_OK)
        worker_log(log, WORKER_LOG_ERROR, "%s", err.message);
    if (st.kv) {
        const worker_kv_stats_t s = worker_kv_stats(st.kv);
        worker_log(log, WORKER_LOG_INFO, "stage %d: generation steps: %llu cached, %llu "
                   "full-prefix, %llu positions computed, %llu cache misses, %llu evictions",
                   st.stage, (unsigned long long)s.steps[1], (unsigned long long)s.steps[0],
                   (unsigned long long)s.positions, (unsigned long long)s.misses,
                   (unsigned long long)s.evictions);
    }
    worker_beat_stop(&st);
    worker_kv_destroy(&st.kv);
    worker_link_destroy(&st.link);
    shard_tokenizer_destroy(&st.tokenizer);
    shard_state_destroy(&st.state);
    shard_model_destroy(&st.model);
    if (st.zmq_context)
        zmq_ctx_term(st.zmq_context);
    if (st.comm != MPI_COMM_NULL)
        MPI_Comm_free(&st.comm);
    return rc;
}
