/* proto.h: the xlmserve wire protocol.
 *
 * Status codes, tasks, and the codec in front of the protobuf-c code that
 * CMake generates from xlm.proto into the build tree (xlm.pb-c.h).
 *
 * Reading: every message that comes from the network goes through one of the
 * proto_*_decode functions: size limit, unpack, structural checks. On success
 * the caller owns the unpacked message (the generated struct, read-only) and
 * frees it with the matching proto_*_free. On failure nothing is left to
 * free, *out is NULL, and err says what was wrong: its code is the status to
 * answer with, its message names the function, the bad value and what was
 * expected, and its id is the request id when one could be read (so the
 * error reply can be addressed).
 *
 * Writing: fill the generated structs (xlm__*__init) and pack them with
 * proto_*_pack, which sets the version and allocates the bytes.
 *
 * Codec functions return PROTO_STATUS_OK (0) or the wire status of the
 * failure, so that the error reply is {err.code, err.message}.
 */
#ifndef XLM_PROTO_H
#define XLM_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xlm.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    PROTO_VERSION = 1,          /* every envelope's version field */
    PROTO_ID_MAX = 128,         /* bytes of a request id */
    PROTO_NAME_MAX = 128,       /* bytes of a model or pipeline name */
    PROTO_LANG_MAX = 15,        /* bytes of a language code */
    PROTO_PRECISION_MAX = 15,   /* bytes of a precision name (Ready.precision) */
    PROTO_MAX_ROWS = 65536,     /* rows of one request */
    PROTO_MAX_ROW_TOKENS = 1 << 20, /* tokens of one row, before the model's limit */
    PROTO_MAX_SEGMENTS = 8,     /* text segments of one row */
    PROTO_MAX_STEPS = 1 << 16,  /* generate steps */
    PROTO_MAX_TICKETS = 65536,  /* requests of one micro-batch */
    PROTO_MAX_CREDIT = 65536,   /* micro-batches a pipeline may hold */
    PROTO_MAX_STAGES = 4096,
    PROTO_MAX_DIMS = 8,         /* dimensions of an output tensor */
    PROTO_MAX_LANGS = 256,
    PROTO_ERROR_MAX = 256       /* bytes of an error message */
};

/* A micro-batch's budget (Ready.max_batch_tokens) counts real tokens, what
 * the stages compute; its padded size (rows * longest row), which only sizes
 * buffers, may be this many times the budget. */
#define PROTO_PADDED_FACTOR 4u

/* Default size limit of one message: 16 MiB. */
#define PROTO_DEFAULT_LIMIT ((size_t)16 << 20)

/* Mirrors the wire enum xlm.Status value for value. Append only. */
typedef enum {
    PROTO_STATUS_OK = 0,
    PROTO_STATUS_BAD_REQUEST = 1,
    PROTO_STATUS_UNKNOWN_MODEL = 2,
    PROTO_STATUS_UNKNOWN_TASK = 3,
    PROTO_STATUS_OVERLOADED = 4,
    PROTO_STATUS_DEADLINE_EXCEEDED = 5,
    PROTO_STATUS_CANCELLED = 6,
    PROTO_STATUS_INTERNAL = 7,
    PROTO_STATUS_UNAVAILABLE = 8,
    PROTO_STATUS_TOO_LARGE = 9,
    PROTO_STATUS_MALFORMED = 10,
    PROTO_STATUS_BAD_VERSION = 11,
    PROTO_STATUS_NOT_FOUND = 12,
    PROTO_STATUS_PERMISSION_DENIED = 13,
    PROTO_STATUS_COUNT_
} proto_status_t;

/* Mirrors the wire enum xlm.Task value for value. What each task is lives
 * in proto_task_info(); the worker maps tasks to engine calls in its own
 * table (worker/tasks.c), never by value. Append only. */
typedef enum {
    PROTO_TASK_BASE = 0,
    PROTO_TASK_LM = 1,
    PROTO_TASK_SEQ_CLS = 2,
    PROTO_TASK_MULTIPLE_CHOICE = 3,
    PROTO_TASK_TOKEN_CLS = 4,
    PROTO_TASK_QA_SIMPLE = 5,
    PROTO_TASK_QA = 6,
    PROTO_TASK_CLM_SCORE = 7,
    PROTO_TASK_GENERATE = 8,
    PROTO_TASK_MLM_PLL = 9,
    PROTO_TASK_COUNT_
} proto_task_t;

/* What a task computes. */
typedef enum {
    PROTO_TASK_KIND_HEAD = 0, /* one of the model's heads over every row */
    PROTO_TASK_KIND_SCORE,    /* log-probabilities of the scored positions */
    PROTO_TASK_KIND_GENERATE, /* greedy generation, one pipeline pass per token */
    PROTO_TASK_KIND_COUNT_
} proto_task_kind_t;

/* One row per wire task: its name, what it computes, how the broker may
 * batch it and which request options it takes. The codec's option checks
 * and the broker's batching read this table; nothing else says it. */
typedef struct {
    proto_task_t task;
    const char *name;         /* "base", ..., "mlm_pll" */
    proto_task_kind_t kind;
    bool batchable;           /* false: always a micro-batch of its own */
    bool needs_lm;            /* served only by a model with the LM head */
    bool n_choices;           /* needs n_choices > 0 dividing the rows; others 0 */
    bool p_mask;              /* token input may carry p_mask */
    bool generate;            /* needs the generate options, one row; others none */
    bool score_window;        /* takes score_from, score_to and return_tokens */
    bool tokens_need_score_from; /* token rows must say score_from */
} proto_task_info_t;

/* The row of task; NULL when task is not a wire task. */
const proto_task_info_t *proto_task_info(proto_task_t task);

typedef struct {
    proto_status_t code;
    char message[PROTO_ERROR_MAX];
    char id[PROTO_ID_MAX + 1]; /* request id when known, else "" */
} proto_error_t;

/* Stable short names: "ok", "bad_request", ...; "unknown" out of range. */
const char *proto_status_str(proto_status_t status);
/* True for statuses a client should retry with the same id later:
 * OVERLOADED and UNAVAILABLE. */
bool proto_status_retryable(proto_status_t status);
/* "base", "lm", ..., "generate"; "unknown" out of range. */
const char *proto_task_name(proto_task_t task);
/* PROTO_TASK_COUNT_ when name is not a task. */
proto_task_t proto_task_from_name(const char *name);

/* Sets err (may be NULL; err->id is kept) and returns code. */
proto_status_t proto_error_set(proto_error_t *err, proto_status_t code,
                               const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Clears err: code OK, empty message and id. */
void proto_error_clear(proto_error_t *err);

/* ------------------------------------------------------------ requests */

/* What the broker needs to queue and batch a checked request. For text the
 * token counts are upper estimates (bytes + separators), the worker
 * tokenises. */
typedef struct {
    int64_t rows;
    int64_t max_len; /* longest row, tokens */
    int64_t tokens;  /* sum of row lengths */
    int64_t padded;  /* rows * max_len */
    bool text;
} proto_shape_t;

/* Structure of a request: id and names within bounds, task known, one
 * input, row lengths positive and consistent with every array, values in
 * their domains (mask 0/1, ids >= 0, finite p_mask), task options present
 * where needed and absent elsewhere. shape may be NULL. */
proto_status_t proto_request_check(const Xlm__Request *request,
                                   proto_shape_t *shape, proto_error_t *err);

/* Against what a pipeline of the model advertised in its Ready: task
 * served, token ids and token types below vocab_size, rows and positions
 * within max_position_embeddings (TOO_LARGE), language ids below n_langs,
 * language codes known. Call after proto_request_check. */
proto_status_t proto_request_check_model(const Xlm__Request *request,
                                         const Xlm__Ready *ready,
                                         proto_error_t *err);

/* ------------------------------------------------------------ decode */

/* Client -> service. A request is checked with proto_request_check (shape
 * filled when not NULL and the body is a request); a cancel needs an id. */
proto_status_t proto_client_decode(const void *data, size_t size, size_t limit,
                                   Xlm__ClientMessage **out,
                                   proto_shape_t *shape, proto_error_t *err);
void proto_client_free(Xlm__ClientMessage **msg_p);

/* Service -> client. Responses are checked with proto_response_check. */
proto_status_t proto_service_decode(const void *data, size_t size, size_t limit,
                                    Xlm__ServiceMessage **out,
                                    proto_error_t *err);
void proto_service_free(Xlm__ServiceMessage **msg_p);

/* Status known, tensors consistent: name set, at most PROTO_MAX_DIMS
 * non-negative dims, data of one type with prod(shape) values, or for a
 * ragged tensor row_lengths[shape[0]] each <= shape[1] and sum(row_lengths)
 * values. */
proto_status_t proto_response_check(const Xlm__Response *response,
                                    proto_error_t *err);

/* Broker <-> worker. The pipeline id is required; the body is checked
 * (Ready: limits positive, language codes and tasks valid; Batch and Reply:
 * per-ticket arrays as long as the tickets; credits bounded). */
proto_status_t proto_worker_decode(const void *data, size_t size, size_t limit,
                                   Xlm__WorkerMessage **out,
                                   proto_error_t *err);
void proto_worker_free(Xlm__WorkerMessage **msg_p);

/* ------------------------------------------------------------ encode */

/* Set msg->version to PROTO_VERSION and pack into a new buffer (*data, free
 * with free()). A 0-byte message gets a 1-byte allocation so that *data is
 * never NULL on success. */
proto_status_t proto_client_pack(Xlm__ClientMessage *msg, uint8_t **data,
                                 size_t *size, proto_error_t *err);
proto_status_t proto_service_pack(Xlm__ServiceMessage *msg, uint8_t **data,
                                  size_t *size, proto_error_t *err);
proto_status_t proto_worker_pack(Xlm__WorkerMessage *msg, uint8_t **data,
                                 size_t *size, proto_error_t *err);

/* A ServiceMessage holding a Response with only id, status and message
 * (id and message may be NULL). */
proto_status_t proto_response_pack_status(const char *id, proto_status_t status,
                                          const char *message, uint8_t **data,
                                          size_t *size, proto_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* XLM_PROTO_H */
