/* worker_internal.h: what worker/'s files share.
 *
 * Files, each calling only the ones above it (no cycles):
 *   log.c       the logger context, errors, the MPI check
 *   tasks.c     wire task -> engine call;   plan.c   layers per stage
 *   micro.c     micro-batches and their packets
 *   kv.c        a stage's key/value caches of the generations it runs
 *   link.c      a ZeroMQ link to the broker, reply packing
 *   beat.c      every rank's heartbeat thread (stage.h)
 *   prepare.c   stage 0: a Request made ready for a micro-batch (stage.h)
 *   last.c      the last stage: heads, scores, replies, progress
 *   ring.c      the MPI ring: sends to the next stage, stages 1.. loop
 *   queue.c     stage 0: its state, the queue of micro-batches, error replies (first.h)
 *   generate.c  stage 0: greedy generation jobs
 *   batcher.c   stage 0: Batches into micro-batches, cancelled tickets out
 *   register.c  stage 0: Ready, heartbeats, disconnect
 *   first.c     stage 0: the loop (broker messages, compute, feedback)
 *   stage.c     a rank's set-up and worker_run
 *
 * Errors: functions return WORKER_OK or a negative worker_status_t and fill
 * the caller's worker_error_t naming the function, the bad value and what
 * was expected; the layer that decides (the loops, worker_run) logs. */
#ifndef XLM_WORKER_INTERNAL_H
#define XLM_WORKER_INTERNAL_H

#include "curve_keys.h"
#include "proto.h"
#include "worker.h"

#include <mpi.h>
#include <stdio.h>

/* ------------------------------------------------------------ errors */

typedef struct {
    worker_status_t code;
    char message[512];
} worker_error_t;

/* Sets err (may be NULL) and returns code. */
worker_status_t worker_error_set(worker_error_t *err, worker_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

uint64_t worker_now_us(void);

/* Every MPI call goes through this: errors return (MPI_ERRORS_RETURN) as
 * WORKER_ERR_MPI naming the calling function, the call and MPI's reason. */
#define WORKER_MPI(call, err) worker_mpi_check((call), #call, __func__, (err))
worker_status_t worker_mpi_check(int rc, const char *call, const char *function,
                                 worker_error_t *err);

/* ------------------------------------------------------------ tasks */

/* The engine call that computes a wire task (worker/tasks.c). */
typedef enum {
    WORKER_CALL_HEAD = 0,       /* shard_head with the entry's head */
    WORKER_CALL_CLM_SCORE,      /* shard_head_clm_score over the scored positions */
    WORKER_CALL_MASKED_LOGPROB, /* shard_head_masked_logprob over the masked copies */
    WORKER_CALL_NEXT_TOKEN,     /* shard_head_next_token, one pipeline pass per token */
    WORKER_CALL_COUNT_
} worker_call_t;

typedef struct {
    proto_task_t task;
    worker_call_t call;
    shard_head_t head; /* the head computed (WORKER_CALL_HEAD), else the one whose
                        * weights the call reads; a model serves the task when it
                        * has this head */
} worker_task_t;

/* The map's entry of a wire task; NULL when task is not one. */
const worker_task_t *worker_task(int64_t task);

/* ------------------------------------------------------------ micro-batches */

typedef enum {
    MICRO_BATCH = 1,    /* requests to run through every stage */
    MICRO_GENERATE = 2, /* one step of a greedy generation */
    MICRO_SHUTDOWN = 3  /* drained: the stages behind stop after it */
} micro_kind_t;

/* How a generation step uses the stages' key/value caches. */
typedef enum {
    WORKER_KV_NONE = 0, /* the whole prefix, nothing cached (--no-kv-cache, non-causal
                         * models, a pad id in the sequence) */
    WORKER_KV_FILL = 1, /* the whole prefix, and each stage's cache starts over with it */
    WORKER_KV_STEP = 2, /* only the positions the caches lack (acts' first position on) */
    WORKER_KV_COUNT_
} worker_kv_mode_t;

/* Scored positions [from, to) of one row of a clm_score / mlm_pll request,
 * and one masked copy of mlm_pll: the engine's, so that the service and
 * xlm-score in process window and expand rows with the same code. */
typedef shard_score_window_t worker_window_t;
typedef shard_pll_copy_t worker_pll_copy_t;

/* One request inside a micro-batch: rows [row0, row0 + rows) padded to its
 * own seq (heads see it exactly as if it had run alone). */
typedef struct {
    uint64_t ticket;
    uint64_t batch_id;
    char id[PROTO_ID_MAX + 1];
    int32_t task;          /* proto_task_t */
    int64_t row0, rows, seq, n_choices;
    /* clm_score / mlm_pll: windows[orig_rows], the request's rows' scored
     * positions; NULL for other tasks. mlm_pll: copies[n_copies], one per
     * row of the item (the rows are the masked copies); NULL otherwise. */
    worker_window_t *windows;
    worker_pll_copy_t *copies;
    int64_t orig_rows, n_copies;
    bool return_tokens;
    uint64_t queue_us, tokenize_us, received_us;
    uint32_t credit;       /* credit given back with this request's reply */
    uint64_t gen_job;      /* MICRO_GENERATE: the job at stage 0 */
    uint64_t packet_bytes; /* the packet it came in from the stage before (0 at stage
                            * 0), for the broker's stats; not sent on */
} worker_item_t;

/* A micro-batch: padded inputs of every row, the requests it carries and,
 * after stage 0, the activations. */
typedef struct {
    micro_kind_t kind;
    uint64_t micro_id;
    int64_t batch, seq;
    int64_t *input_ids, *attention_mask, *position_ids, *langs, *token_type_ids; /* [batch*seq] */
    float *p_mask;         /* [batch*seq] or NULL */
    int n_items;
    worker_item_t *items;
    shard_acts_t *acts;
    int n_stages;
    uint64_t stage_us[WORKER_MAX_STAGES];
    uint64_t started_us;
    /* MICRO_GENERATE: how the stages use their key/value caches (kv.c). */
    worker_kv_mode_t kv_mode;
    uint64_t kv_key;   /* the generation's cache at every stage (its job id) */
    bool kv_last;      /* the generation's last step: the caches go after it */
    bool kv_missed;    /* a stage lacked the cache: nothing computed after it,
                        * stage 0 redoes the step over the whole prefix */
} worker_micro_t;

worker_micro_t *worker_micro_new(micro_kind_t kind, int64_t batch, int64_t seq, int n_items,
                                 bool langs, bool token_types, bool p_mask);
void worker_micro_destroy(worker_micro_t **self_p);
/* Takes request index out of a micro-batch that has not run yet: its rows
 * go, the later requests' rows move up. */
void worker_micro_drop_item(worker_micro_t *m, int index);
/* Inputs of the whole micro-batch, for shard_embed. */
shard_inputs_t worker_micro_inputs(const worker_micro_t *micro);
/* Inputs of one request (copied rows, its own seq) for the heads; free with
 * worker_inputs_free. */
shard_status_t worker_item_inputs(const worker_micro_t *micro, const worker_item_t *item,
                                  shard_inputs_t *inputs, shard_error_t *err);
void worker_inputs_free(shard_inputs_t *inputs);

/* Serialises a micro-batch (activations included) for the next stage. The
 * ranks of a job share one architecture: values travel as native bytes. */
size_t worker_packet_size(const worker_micro_t *micro);
size_t worker_packet_write(const worker_micro_t *micro, void *buffer, size_t capacity);
/* Parses a packet; every count and offset is checked against size. */
worker_micro_t *worker_packet_read(const void *buffer, size_t size, shard_error_t *err);
/* Upper bound of a packet's size for a micro-batch of tokens positions; 0
 * when it does not fit a size_t. */
size_t worker_packet_capacity(int64_t tokens, int64_t emb_dim);

/* ------------------------------------------------------------ key/value caches */

/* A stage's caches of the generations it runs (worker/kv.c). */
typedef struct worker_kv worker_kv_t;

typedef struct {
    uint64_t steps[2];  /* generation steps computed: [0] over the whole prefix, [1] cached */
    uint64_t positions; /* positions those steps computed */
    uint64_t misses, evictions;
} worker_kv_stats_t;

/* At most limit generations cached (0: none, every step a full prefix). */
worker_kv_t *worker_kv_new(int limit);
void worker_kv_destroy(worker_kv_t **self_p);
/* Positions cached for key, -1 when none. */
int64_t worker_kv_length(worker_kv_t *kv, uint64_t key);
/* Frees key's cache (a generation ended or was cancelled). */
void worker_kv_drop(worker_kv_t *kv, uint64_t key);
/* Runs the model's layers over m's activations: through key's cache as
 * m->kv_mode says for a generation step, else plainly. A step whose cache
 * is missing here is marked m->kv_missed, computing nothing. */
worker_status_t worker_kv_run_layers(worker_kv_t *kv, const shard_model_t *model,
                                     shard_state_t *state, worker_micro_t *m, int stage,
                                     const worker_log_t *log, worker_error_t *err);
worker_kv_stats_t worker_kv_stats(const worker_kv_t *kv);

/* ------------------------------------------------------------ broker link */

typedef struct worker_link worker_link_t;

/* CURVE keys of this worker's links (both certificates loaded) or none:
 * loaded once at set-up and borrowed by every link it opens. */
typedef struct {
    bool on;
    proto_curve_cert_t mine, server;
    const char *secret_path, *server_path; /* the files they came from (borrowed), for messages */
} worker_curve_t;

/* Reads the key files (--curve-secret, --curve-server); both or neither. */
worker_status_t worker_curve_load(const char *secret_path, const char *server_path,
                                  worker_curve_t *curve, worker_error_t *err);

/* NULL with err set when the socket cannot be made or connected. curve is
 * borrowed (NULL or curve->on false: a plain socket). */
worker_link_t *worker_link_new(void *zmq_context, const char *endpoint, const char *pipeline,
                               const worker_curve_t *curve, worker_error_t *err);
void worker_link_destroy(worker_link_t **self_p);
/* Sends a WorkerMessage (pipeline and version set here) and extra frames. */
worker_status_t worker_link_send(worker_link_t *link, Xlm__WorkerMessage *msg, uint8_t **frames,
                                 size_t *frame_sizes, size_t n_frames, worker_error_t *err);
/* Watches the link's handshakes from now on (and across reconnects):
 * libzmq retries a refused handshake for ever without a word, so a
 * monitor hears the failures and worker_link_recv turns them into
 * WORKER_ERR_AUTH. Only stage 0's main link is watched: one rank says it. */
worker_status_t worker_link_watch_handshakes(worker_link_t *link, worker_error_t *err);
/* Waits up to timeout_ms for a message: *got true with *msg and its extra
 * frames (malloc'd copies), false on timeout. A message that does not
 * decode is dropped with WORKER_ERR_WIRE (the link stays usable). On a
 * watched link, WORKER_ERR_AUTH when the broker refuses the handshake: the
 * key (FAILED_AUTH), the mechanism or the server key (FAILED_PROTOCOL), or
 * the connection closed during the handshake HANDSHAKE_RETRIES times in a
 * row (FAILED_NO_DETAIL: a wrong --curve-server key); err names the cause,
 * the key file and the endpoint. */
worker_status_t worker_link_recv(worker_link_t *link, int timeout_ms, bool *got,
                                 Xlm__WorkerMessage **msg, uint8_t ***frames,
                                 size_t **frame_sizes, size_t *n_frames, worker_error_t *err);
void worker_link_frames_free(uint8_t **frames, size_t *frame_sizes, size_t n_frames);
/* Gives credit back without a reply (work dropped before it ran). */
worker_status_t worker_link_send_credit(worker_link_t *link, uint32_t credit, worker_error_t *err);
/* The last stage's sign that the pipeline advanced without a reply to
 * show it (a generation step): progress counts its finished micro-batches.
 * tail: sent on the last stage's own socket (a pipeline of several
 * stages) under the pipeline's instance, so that the broker knows where
 * the order to end the job goes; such a beat with progress 0 is the idle
 * last stage's (it shows no progress, and is no liveness of stage 0). */
worker_status_t worker_link_send_progress(worker_link_t *link, uint32_t heartbeat_ms,
                                          uint64_t progress, bool tail, uint64_t instance,
                                          worker_error_t *err);
/* Reads what waits on the socket, without blocking: WORKER_ERR_STALLED
 * (the reason in err) when the broker declared the pipeline dead
 * (Disconnect.stalled). The rest is dropped: only stage 0's socket takes
 * the broker's orders. */
worker_status_t worker_link_check_stalled(worker_link_t *link, worker_error_t *err);
/* Drops the socket and connects a new one (after the broker went silent). */
worker_status_t worker_link_reconnect(worker_link_t *link, worker_error_t *err);

/* Turns outputs into Response tensors and sends one Reply for the items. */
typedef struct {
    uint64_t ticket;
    uint64_t batch_id;
    uint32_t credit;
    uint8_t *frame; /* packed ServiceMessage */
    size_t frame_size;
    proto_status_t status;
    uint64_t packet_bytes; /* the item's packet_bytes */
} worker_reply_t;

/* Token strings of a scoring reply, ragged like its token_logprobs. */
typedef struct {
    char **text; /* [n] */
    int64_t n;
    int64_t *row_lengths; /* [rows] */
    int64_t rows, longest;
} worker_texts_t;

void worker_texts_clear(worker_texts_t *texts);

/* Packs a Response for an item: outputs (may be NULL) or an error; texts
 * (may be NULL) becomes the output "tokens". When the outputs cannot be
 * encoded it returns WORKER_ERR_WIRE and reply still holds an INTERNAL
 * answer to send (the request must not be lost), unless reply->frame is
 * NULL. */
worker_status_t worker_reply_pack(worker_reply_t *reply, const worker_item_t *item,
                                  proto_status_t status, const char *message,
                                  const shard_outputs_t *outputs, const worker_texts_t *texts,
                                  const uint64_t *stage_us, int n_stages, uint64_t batch_tokens,
                                  uint32_t batch_requests, worker_error_t *err);
/* Sends replies (frames freed) with one Reply per batch_id group. */
worker_status_t worker_replies_send(worker_link_t *link, worker_reply_t *replies, size_t count,
                                    const uint64_t *stage_us, int n_stages, worker_error_t *err);

proto_status_t worker_status_of(shard_status_t status);

#endif
