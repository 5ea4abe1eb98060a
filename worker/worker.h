/* worker.h: the MPI pipeline worker.
 *
 * The ranks of one mpirun job split into pipelines of n_stages ranks each.
 * Stage s of a pipeline holds a contiguous range of layers; stage 0 also the
 * embeddings and the tokenizer and talks to the broker; the last stage also
 * holds the heads and sends the replies. Activations move stage to stage
 * with non-blocking MPI while the next micro-batch enters stage 0.
 */
#ifndef XLM_WORKER_H
#define XLM_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shard_engine.h"
#include "shard_tokenizer.h"

enum { WORKER_MAX_STAGES = 64, WORKER_NAME_MAX = 128 };

typedef enum { WORKER_LOG_ERROR = 0, WORKER_LOG_WARN, WORKER_LOG_INFO, WORKER_LOG_DEBUG,
               WORKER_LOG_COUNT_ } worker_log_level_t;

/* "error", "warn", "info", "debug"; WORKER_LOG_COUNT_ when unknown. */
worker_log_level_t worker_log_level_from_name(const char *name);

/* Where a rank's lines go: the caller's (main.c makes it once MPI knows
 * the rank), passed down, never a global. Lines under level are skipped;
 * each says the time, the program, the level and the rank, on stderr. */
typedef struct {
    int rank;
    worker_log_level_t level;
} worker_log_t;

void worker_log(const worker_log_t *log, worker_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef enum {
    WORKER_OK = 0,
    WORKER_ERR_MPI = -1,     /* an MPI call failed */
    WORKER_ERR_ZMQ = -2,     /* a ZeroMQ call failed (socket, connect, send) */
    WORKER_ERR_NOMEM = -3,
    WORKER_ERR_PACKET = -4,  /* a packet between stages is malformed or does not fit */
    WORKER_ERR_ENGINE = -5,  /* the engine failed on a whole micro-batch */
    WORKER_ERR_CONFIG = -6,  /* the options and the checkpoint make no pipeline */
    WORKER_ERR_WIRE = -7,    /* a message could not be packed, or did not decode */
    WORKER_ERR_REFUSED = -8, /* the broker refused the pipeline's id */
    WORKER_ERR_STALLED = -9, /* the broker declared the pipeline dead */
    WORKER_ERR_AUTH = -10,   /* the broker refuses this worker's CURVE handshake or key */
    WORKER_STATUS_COUNT_ = 11
} worker_status_t;

/* "ok", "mpi_error", ...; "unknown" out of range. */
const char *worker_status_str(worker_status_t status);

typedef struct {
    const char *model_dir;   /* checkpoint folder */
    const char *broker;      /* broker backend endpoint, e.g. tcp://127.0.0.1:5556 */
    char name[WORKER_NAME_MAX]; /* served model name; default: the folder's name */
    const char *pipeline_prefix; /* pipeline ids are PREFIX/pN; default NAME@HOST/jJOB */
    int n_stages;
    int64_t layer_counts[WORKER_MAX_STAGES]; /* explicit layer map, or all 0: balanced */
    bool has_layer_map;
    int threads;             /* BLAS threads per rank; 0: 1 */
    int precision;           /* a shard_precision_t: fp32 (0), bf16, int8 */
    uint32_t credit;         /* micro-batches a pipeline holds; 0: n_stages + 1 */
    uint64_t max_batch_tokens; /* padded tokens per micro-batch */
    uint32_t heartbeat_ms;
    uint32_t liveness;       /* missed heartbeats before the broker is presumed gone */
    bool lang_rules;         /* tokenizer: per-language rules (see xlm-tokenize) */
    double projected_share;  /* LM checkpoints: positions projected onto the vocabulary,
                                for balancing the stages (default 0.5: scoring) */
    worker_log_level_t log_level; /* lines under it are skipped (default info) */
    const char *curve_secret; /* CURVE: this worker's key pair file; NULL: plain */
    const char *curve_server; /* CURVE: the broker's public key file */
    bool no_kv_cache;        /* every generation step recomputes the whole prefix */
    int kv_cache_generations; /* generations whose key/value caches a stage keeps */
} worker_options_t;

void worker_options_default(worker_options_t *options);

/* Layers per stage, balanced by compute: each stage's layers plus, on the
 * last stage, the vocabulary projection of the share of positions the
 * workload projects (lm: all, clm_score: the targets, about half; other
 * heads: none), counted as share * vocab / (12 emb_dim) layers.
 * counts[n_stages] out. */
shard_status_t worker_plan_layers(const shard_config_t *config, int n_stages,
                                  double projected_share, int64_t *counts, shard_error_t *err);

/* Runs this rank until *stop becomes non-zero (the caller sets it, e.g.
 * from its SIGTERM handler: the pipeline drains, then stops) or a fatal
 * error. Installs no signal handler. Needs MPI initialised. Logs through
 * log (borrowed). Returns WORKER_OK, or the error's status after logging
 * it: the caller then ends the MPI job (one rank failing ends it). */
worker_status_t worker_run(const worker_options_t *options, const worker_log_t *log,
                           const atomic_int *stop);

#endif
