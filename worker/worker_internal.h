/* worker_internal.h: what worker/'s files share. */
#ifndef XLM_WORKER_INTERNAL_H
#define XLM_WORKER_INTERNAL_H

#include "proto.h"
#include "worker.h"

#include <mpi.h>
#include <stdio.h>

/* ------------------------------------------------------------ logging */

void worker_log_init(int world_rank, worker_log_level_t level);
void worker_log(worker_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

uint64_t worker_now_us(void);

/* Every MPI call goes through this: errors return (MPI_ERRORS_RETURN) and
 * are reported with the call that failed. */
#define WORKER_MPI(call)                                                              \
    worker_mpi_check((call), #call, __FILE__, __LINE__)
int worker_mpi_check(int rc, const char *what, const char *file, int line);

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
} worker_micro_t;

worker_micro_t *worker_micro_new(micro_kind_t kind, int64_t batch, int64_t seq, int n_items,
                                 bool langs, bool token_types, bool p_mask);
void worker_micro_destroy(worker_micro_t **self_p);
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

/* ------------------------------------------------------------ broker link */

typedef struct worker_link worker_link_t;

worker_link_t *worker_link_new(void *zmq_context, const char *endpoint, const char *pipeline);
void worker_link_destroy(worker_link_t **self_p);
/* Sends a WorkerMessage (pipeline and version set here) and extra frames. */
int worker_link_send(worker_link_t *link, Xlm__WorkerMessage *msg, uint8_t **frames,
                     size_t *frame_sizes, size_t n_frames);
/* Waits up to timeout_ms for a message; 1 with *msg and its extra frames,
 * 0 on timeout, -1 on error. Frames are malloc'd copies. */
int worker_link_recv(worker_link_t *link, int timeout_ms, Xlm__WorkerMessage **msg,
                     uint8_t ***frames, size_t **frame_sizes, size_t *n_frames);
void worker_link_frames_free(uint8_t **frames, size_t *frame_sizes, size_t n_frames);
void *worker_link_socket(worker_link_t *link);
/* Drops the socket and connects a new one (after the broker went silent). */
int worker_link_reconnect(worker_link_t *link);

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
 * (may be NULL) becomes the output "tokens". */
int worker_reply_pack(worker_reply_t *reply, const worker_item_t *item, proto_status_t status,
                      const char *message, const shard_outputs_t *outputs,
                      const worker_texts_t *texts,
                      const uint64_t *stage_us, int n_stages, uint64_t batch_tokens,
                      uint32_t batch_requests);
/* Sends replies (frames freed) with one Reply per batch_id group. */
int worker_replies_send(worker_link_t *link, worker_reply_t *replies, size_t count,
                        const uint64_t *stage_us, int n_stages);

proto_status_t worker_status_of(shard_status_t status);

#endif
