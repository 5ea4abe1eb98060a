/* first.h (internal to worker/): stage 0's state and what its files
 * (queue.c, generate.c, batcher.c, register.c, first.c, in that order of
 * calls) share. */
#ifndef XLM_WORKER_FIRST_H
#define XLM_WORKER_FIRST_H

#include "stage.h"


/* A greedy generation in progress: one micro-batch per step. */
typedef struct gen_job {
    uint64_t id;
    worker_prepared_t prep; /* the prompt row; item addresses the reply */
    int64_t *ids, *langs;   /* [prompt + steps] */
    int64_t len, total;
    bool in_flight;
    bool kv_filled; /* a step started the stages' caches: the next ones continue them */
    bool cancelled; /* by the broker: ends at its step in flight, unanswered */
    struct gen_job *next;
} gen_job_t;

typedef struct queued {
    worker_micro_t *micro;
    struct queued *next;
} queued_t;

typedef struct {
    worker_stage_t *st;
    Xlm__Ready ready;
    char **lang_codes;
    Xlm__Task tasks[PROTO_TASK_COUNT_];
    queued_t *head, *tail;
    gen_job_t *jobs;
    uint64_t job_counter;
    slot_t slots[2];
    int next_slot;
    int64_t feedback[2];
    MPI_Request feedback_request;
    uint64_t last_sent_us, last_recv_us;
    uint64_t last_work_us; /* last feedback or compute: paces idle polling */
    bool accepting;
    bool refused; /* the broker will not take this pipeline: stop */
    bool stalled; /* the broker declared this pipeline dead: end the job */
    uint64_t dropped; /* cancelled requests dropped before they ran */
} first_t;

/* ------------------------------------------------------------ queue.c */

/* Appends a micro-batch to run (takes it; on failure it is freed, said in
 * the log). */
void first_enqueue(first_t *f, worker_micro_t *m);
/* The oldest queued micro-batch, taken out; NULL when none. */
worker_micro_t *first_dequeue(first_t *f);
/* Answers one ticket with an error (and the credit it carries). */
void first_reply_error(first_t *f, uint64_t batch_id, uint64_t ticket, const char *id,
                       proto_status_t status, const char *message, uint32_t credit);
/* Gives credit back to the broker for work dropped unanswered. */
void first_give_credit(first_t *f, uint32_t credit);

/* ------------------------------------------------------------ generate.c */

/* Takes p (zeroed) into a new job at the head of f->jobs. */
gen_job_t *first_job_start(first_t *f, worker_prepared_t *p);
/* Queues the micro-batch of the job's next step. */
void first_job_step(first_t *f, gen_job_t *job);
gen_job_t *first_job_find(first_t *f, uint64_t id, gen_job_t ***link_out);
/* The token of a job's step (-1: it failed): next step, or the reply. */
void first_job_token(first_t *f, uint64_t job_id, int64_t token);
/* A cancelled job leaves unanswered; its credit goes back. */
void first_job_drop(first_t *f, gen_job_t *job, gen_job_t **link);
void first_jobs_free(first_t *f);

/* ------------------------------------------------------------ batcher.c */

/* A Batch from the broker (its frames: one ClientMessage per ticket) into
 * queued micro-batches and generation jobs; refused requests answered. */
void first_take_batch(first_t *f, const Xlm__Batch *batch, uint8_t **frames, size_t *sizes,
                      size_t n_frames);
/* Drops the cancelled tickets that have not started computing. */
void first_cancel(first_t *f, const Xlm__CancelTickets *cancel);

/* ------------------------------------------------------------ register.c */

/* The Ready of this pipeline, from its model; f->ready and the arrays it
 * points to. */
worker_status_t first_build_ready(first_t *f, worker_error_t *err);
worker_status_t first_send_ready(first_t *f, worker_error_t *err);
worker_status_t first_send_heartbeat(first_t *f, worker_error_t *err);
worker_status_t first_send_disconnect(first_t *f, const char *reason, worker_error_t *err);

#endif
