/* stage.h (internal to worker/): one rank's stage of a pipeline, and what
 * the files of a rank share (their order: worker_internal.h). */
#ifndef XLM_WORKER_STAGE_H
#define XLM_WORKER_STAGE_H

#include "worker_internal.h"

#include <pthread.h>
#include <stdatomic.h>

/* A request of a Batch made ready for a micro-batch (stage 0). */
typedef struct {
    worker_item_t item;
    int64_t *ids, *mask, *positions, *langs, *types; /* [rows*seq] */
    float *p_mask;
    int64_t tokens;           /* unmasked positions: what the stages compute */
    int64_t steps, lang_fill; /* generate */
    /* text rows: where each row's segments are, for the default scored
     * positions; NULL for token rows */
    shard_score_layout_t *segments;
} worker_prepared_t;

/* A rank's heartbeat thread (beat.c). */
typedef struct {
    void *context;
    const char *endpoint, *pipeline;
    const worker_curve_t *curve;
    uint32_t heartbeat_ms, stage;
    uint64_t instance;
    const worker_log_t *log;
    atomic_int stop;
    pthread_t thread;
    bool started;
} worker_beat_t;

typedef struct worker_stage {
    const worker_options_t *options;
    const worker_log_t *log; /* the caller's (borrowed) */
    const atomic_int *stop;  /* the caller's: non-zero asks to drain and stop (borrowed) */
    int stage, n_stages, pipeline_index, world_rank;
    MPI_Comm comm; /* this pipeline's ranks, rank = stage */
    shard_model_t *model;
    shard_state_t *state; /* the engine's run state of this rank's calls */
    const shard_config_t *config;
    shard_tokenizer_t *tokenizer; /* stage 0 */
    void *zmq_context;
    worker_curve_t curve; /* the links' keys (worker_curve_load) */
    worker_link_t *link; /* stage 0 and the last stage */
    char pipeline_id[256];
    uint64_t instance; /* random, never 0: tells a reconnection from a duplicate id */
    uint64_t job;      /* random, never 0, the same on every rank of the MPI job */
    size_t packet_capacity;
    uint64_t batch_tokens; /* positions a micro-batch may hold */
    uint64_t micro_counter;
    /* The last stage: micro-batches finished, and when it last spoke to
     * the broker (a Reply, a Heartbeat with progress, or its idle beat). */
    uint64_t progress, progress_sent_us;
    worker_kv_t *kv; /* this stage's layers' caches of the generations in flight */
    worker_beat_t beat;
} worker_stage_t;

/* One of two send buffers towards the next stage. */
typedef struct {
    void *buffer;
    MPI_Request request;
} slot_t;

enum { TAG_ACTIVATIONS = 1, TAG_FEEDBACK = 2 };

/* ------------------------------------------------------------ beat.c */

/* Starts the rank's heartbeat thread (st->beat), which beats until
 * worker_beat_stop: Heartbeat.stage_beat with the stage and the engine's
 * work count, every heartbeat interval, on a socket of its own. */
void worker_beat_start(worker_stage_t *st);
void worker_beat_stop(worker_stage_t *st);

/* ------------------------------------------------------------ prepare.c */

/* A request's own errors are the client's: a wire status, and perr's
 * message naming the bad value and what was expected (perr->id kept). */
proto_status_t worker_prepare(worker_prepared_t *p, const worker_stage_t *st,
                              const Xlm__Request *req, proto_error_t *perr);
void worker_prepared_clear(worker_prepared_t *p);

/* ------------------------------------------------------------ last.c */

/* The token fed back for a step that a stage's missing cache stopped:
 * stage 0 redoes it over the whole prefix. */
enum { WORKER_TOKEN_REFILL = -2 };

/* The last stage's work on a micro-batch that went through every layer:
 * heads and replies (or, for a generation step, the next token: -1 when
 * the step failed, said in the log). */
worker_status_t worker_finish_micro(worker_stage_t *st, worker_micro_t *micro,
                                    int64_t *next_token, worker_error_t *err);
/* Counts a finished micro-batch; one that sent no reply (a generation
 * step) is reported to the broker, at most twice per heartbeat interval,
 * so that a long generation is not taken for a hung pipeline. */
worker_status_t worker_note_progress(worker_stage_t *st, bool replied, worker_error_t *err);
/* The last stage of several, idle: says which socket is the pipeline's
 * tail (Heartbeat.tail) once it connects and then every heartbeat
 * interval it has not spoken, so that the broker can order the job's end
 * through it even when stage 0 hangs before this stage ever replied. */
worker_status_t worker_tail_beat(worker_stage_t *st, worker_error_t *err);

/* ------------------------------------------------------------ ring.c */

/* Sleeps between polls of an idle stage: short right after work, longer the
 * longer it has been idle, so that many idle ranks on few cores stay cheap. */
void worker_idle_pause(uint64_t idle_since_us);
/* Sends a micro-batch's packet to the next stage from one of two slots,
 * waiting for the slot's previous send first: at most two outstanding. */
worker_status_t worker_send_next(worker_stage_t *st, slot_t *slots, int *next_slot,
                                 worker_micro_t *m, worker_error_t *err);
/* Stages 1..: receive, run the layers, pass on or finish, until stage 0's
 * shutdown packet (or the broker's order to end the job). */
worker_status_t worker_run_next(worker_stage_t *st, worker_error_t *err);

/* ------------------------------------------------------------ batcher.c */

/* Whether p alone fits a micro-batch of budget tokens (its unmasked
 * tokens, and its padded ones within PROTO_PADDED_FACTOR x budget); and
 * the end of the micro-batch that starts at preps[first] of n: the
 * requests after it of its signature (langs and token types given or not),
 * not generations, while both counts still fit. */
bool worker_fits_budget(const worker_prepared_t *p, uint64_t budget);
size_t worker_group_end(const worker_prepared_t *preps, size_t first, size_t n, uint64_t budget);

/* ------------------------------------------------------------ first.c */

/* Stage 0: registers, takes Batches, computes the first layers and feeds
 * the ring until *st->stop (drained) or an error. */
worker_status_t worker_run_first(worker_stage_t *st, worker_error_t *err);

#endif
