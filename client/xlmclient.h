/* xlmclient.h: the client library of xlmserve (libxlmclient).
 *
 * A client holds one ZeroMQ DEALER socket connected to the broker's
 * frontend and a bounded window of requests. Requests are submitted without
 * blocking and their results collected later, in any order or by id; a
 * synchronous call is submit + collect.
 *
 *   xlm_client_t *client = xlm_client_new(&config, &err);
 *   xlm_request_t request;
 *   xlm_request_init(&request);
 *   request.task = XLM_TASK_SEQ_CLS;
 *   request.tokens = &tokens;            // ragged rows, see xlm_tokens_t
 *   xlm_result_t *result = NULL;
 *   if (xlm_client_call(client, &request, 10000, &result) == XLM_OK &&
 *       xlm_result_code(result) == XLM_CODE_OK)
 *       use(xlm_result_find(result, "logits"));
 *   xlm_result_destroy(&result);
 *   xlm_client_destroy(&client);
 *
 * Two kinds of failure, kept apart:
 *   - the call itself failed (bad argument, window full, nothing finished
 *     within the timeout, socket error): the function returns a negative
 *     xlm_status_t and xlm_client_error() says why;
 *   - the request finished without outputs (refused by the service, its
 *     deadline passed, cancelled, no reply after every attempt): the call
 *     succeeds and the result carries an xlm_code_t (the wire status of
 *     xlm.proto) and a message.
 *
 * Delivery: every submitted request yields exactly one result, and only
 * once. A request with no reply within attempt_timeout_ms is sent again with
 * the same id (the broker answers a retry once: from its cache of completed
 * replies, or by re-addressing the request it still holds), up to
 * max_attempts sends; so is a request answered OVERLOADED or UNAVAILABLE,
 * after an exponential backoff. A reply for an id no longer awaited (a late
 * duplicate, a cancelled request) is dropped. When the broker restarts, the
 * socket reconnects by itself and the retries complete the run.
 *
 * Thread safety: none. Use one client per thread; results may be passed to
 * and destroyed in another thread.
 *
 * Compatibility: the config, request and scoring-options structs begin with
 * struct_size, set by their init function (a macro passing sizeof as the
 * caller's header knows it). Fields are only ever added at the end, and the
 * library reads no further than struct_size, so a program built against an
 * older header keeps working with a newer library.
 *
 * Outputs per task (xlm_result_find names; HuggingFace's where it has one):
 *   base             last_hidden_state f32 [rows, len, hidden]
 *   lm               logits f32 [rows, len, vocab]
 *   seq_cls          logits f32 [rows, labels]
 *   multiple_choice  logits f32 [examples, n_choices]
 *   token_cls        logits f32 [rows, len, labels]
 *   qa_simple        start_logits, end_logits f32 [rows, len]
 *   qa               start_top_log_probs, end_top_log_probs f32 [rows, k] (and
 *                    [rows, k*k]), start_top_index, end_top_index i64, cls_logits f32 [rows]
 *   clm_score        token_logprobs f32 ragged [rows, scored], sum_logprob f32 [rows],
 *                    tokens text (return_tokens)
 *   mlm_pll          as clm_score
 *   generate         generated_ids i64 [1, len + steps], new_ids i64 [1, steps]
 */
#ifndef XLM_CLIENT_H
#define XLM_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XLM_CLIENT_VERSION "0.1.0"

/* ------------------------------------------------------------ status */

/* What a library call returns. */
typedef enum {
    XLM_OK = 0,
    XLM_ERR_ARG = -1,         /* an argument or a request field is wrong */
    XLM_ERR_NOMEM = -2,       /* an allocation failed or a size overflowed */
    XLM_ERR_ZMQ = -3,         /* a ZeroMQ call failed (bad endpoint, socket error) */
    XLM_ERR_TIMEOUT = -4,     /* nothing finished within the caller's timeout */
    XLM_ERR_WINDOW_FULL = -5, /* window requests not yet collected: collect first */
    XLM_ERR_NOT_FOUND = -6,   /* no request with that id is awaited */
    XLM_ERR_EMPTY = -7,       /* collect of any result with nothing submitted */
    XLM_ERR_DUPLICATE = -8,   /* a request with that id is already in the window */
    XLM_STATUS_COUNT_ = 9
} xlm_status_t;

/* "ok", "bad_argument", ...; "unknown" out of range. */
const char *xlm_status_str(xlm_status_t status);

/* How a request finished: the wire status (xlm.proto's Status), value for
 * value. Append only. */
typedef enum {
    XLM_CODE_OK = 0,
    XLM_CODE_BAD_REQUEST = 1,
    XLM_CODE_UNKNOWN_MODEL = 2,
    XLM_CODE_UNKNOWN_TASK = 3,
    XLM_CODE_OVERLOADED = 4,        /* retried; final only after max_attempts */
    XLM_CODE_DEADLINE_EXCEEDED = 5, /* the service's or the client's deadline passed */
    XLM_CODE_CANCELLED = 6,
    XLM_CODE_INTERNAL = 7,
    XLM_CODE_UNAVAILABLE = 8,       /* retried; also: no reply after max_attempts */
    XLM_CODE_TOO_LARGE = 9,
    XLM_CODE_MALFORMED = 10,
    XLM_CODE_BAD_VERSION = 11,
    XLM_CODE_NOT_FOUND = 12,
    XLM_CODE_PERMISSION_DENIED = 13, /* the broker no longer allows this client's CURVE key */
    XLM_CODE_COUNT_
} xlm_code_t;

/* The protocol's names: "ok", "bad_request", "overloaded", ...; "unknown"
 * out of range. */
const char *xlm_code_str(xlm_code_t code);

/* Tasks, as xlm.proto's Task; values 0..6 are the engine's heads. */
typedef enum {
    XLM_TASK_BASE = 0,
    XLM_TASK_LM = 1,
    XLM_TASK_SEQ_CLS = 2,
    XLM_TASK_MULTIPLE_CHOICE = 3,
    XLM_TASK_TOKEN_CLS = 4,
    XLM_TASK_QA_SIMPLE = 5,
    XLM_TASK_QA = 6,
    XLM_TASK_CLM_SCORE = 7,
    XLM_TASK_GENERATE = 8,
    XLM_TASK_MLM_PLL = 9, /* masked-LM pseudo-log-likelihood of scored positions */
    XLM_TASK_COUNT_
} xlm_task_t;

/* "base", "lm", ..., "generate"; from_name gives XLM_TASK_COUNT_ when the
 * name is not a task. */
const char *xlm_task_name(xlm_task_t task);
xlm_task_t xlm_task_from_name(const char *name);

enum {
    XLM_ID_MAX = 128,            /* bytes of a request id */
    XLM_ID_SIZE = XLM_ID_MAX + 1 /* a buffer for an id and its NUL */
};

/* ------------------------------------------------------------ client */

typedef struct {
    size_t struct_size;         /* sizeof, set by xlm_client_config_defaults */
    const char *endpoint;       /* the broker's frontend, e.g. "tcp://host:5555" (borrowed) */
    size_t window;              /* requests submitted and not yet collected: 64 */
    int attempt_timeout_ms;     /* wait for a reply before sending again: 5000 */
    int max_attempts;           /* sends of one request, >= 1: 5 */
    int backoff_ms;             /* first wait after OVERLOADED/UNAVAILABLE: 50, doubling */
    int backoff_max_ms;         /* cap of that wait: 2000 */
    uint32_t deadline_ms;       /* for requests that set none: 0 (the broker's default,
                                   no client-side deadline) */
    size_t max_message_bytes;   /* largest reply accepted: 64 MiB; the socket drops the
                                   connection past twice this (ZMQ_MAXMSGSIZE) */
    const char *curve_secret;   /* CURVE: this client's key pair file (NAME.key of
                                   xlm-keygen); NULL: plain (borrowed, read at new) */
    const char *curve_server;   /* CURVE: the broker's public key file (NAME.pub); set
                                   both or neither */
} xlm_client_config_t;

/* Fills config with the defaults above (endpoint NULL) and its struct_size. */
void xlm_client_config_defaults_sized(xlm_client_config_t *config, size_t struct_size);
#define xlm_client_config_defaults(config) \
    xlm_client_config_defaults_sized((config), sizeof *(config))

/* Constructor failures are reported here (the client has no error yet). */
typedef struct {
    xlm_status_t code;
    char message[256];
} xlm_error_t;

typedef struct xlm_client xlm_client_t;

/* Connects to config->endpoint (the connection itself is made in the
 * background; a broker that is not up yet is fine). NULL on failure, with
 * err (may be NULL) saying why: a malformed endpoint, a bad option. */
xlm_client_t *xlm_client_new(const xlm_client_config_t *config, xlm_error_t *err);
/* Drops whatever is in flight (no cancel is sent) and closes the socket. */
void xlm_client_destroy(xlm_client_t **self_p);

/* The message of the last failed call ("" after success). Borrowed: valid
 * until the next call on the client. */
const char *xlm_client_error(const xlm_client_t *client);

/* Requests submitted and not yet collected (pending or finished). */
size_t xlm_client_outstanding(const xlm_client_t *client);

/* ------------------------------------------------------------ requests */

/* Token input: rows stored back to back, lengths[r] ids each. Every other
 * array is NULL or has one value per input id, in the same layout. */
typedef struct {
    size_t rows;
    const int64_t *lengths;        /* [rows], each > 0 */
    const int64_t *input_ids;      /* [sum lengths] */
    const int64_t *attention_mask; /* 0/1; NULL: all ones */
    const int64_t *langs;
    const int64_t *token_type_ids;
    const int64_t *position_ids;
    const float *p_mask;           /* qa only */
} xlm_tokens_t;

/* Text input, tokenised by the service. */
typedef struct {
    const char *text; /* UTF-8, not empty */
    const char *lang; /* language code ("en"); NULL or "": none */
} xlm_segment_t;

typedef struct {
    size_t rows;
    const size_t *n_segments;      /* [rows], segments of each row (1 to 8) */
    const xlm_segment_t *segments; /* [sum n_segments], rows back to back */
} xlm_text_t;

/* A request; every pointer is borrowed for the duration of the submit only
 * (the request is encoded at once). Exactly one of tokens / text. */
typedef struct {
    size_t struct_size;    /* sizeof, set by xlm_request_init */
    const char *id;        /* NULL or "": the client makes a unique one */
    const char *model;     /* NULL or "": the service's only model */
    xlm_task_t task;
    uint32_t deadline_ms;  /* ms from submit; sent to the broker, and the client
                              finishes the request DEADLINE_EXCEEDED when it
                              passes; 0: the config's deadline_ms */
    int64_t n_choices;     /* multiple_choice only: rows = examples * n_choices */
    const xlm_tokens_t *tokens;
    const xlm_text_t *text;
    int64_t steps;             /* generate only, > 0 */
    int64_t lang_fill_id;      /* generate: language id of new tokens; < 0: not set */
    const char *lang_fill_code;/* generate: or its code; NULL: not set */
    const int64_t *score_from; /* clm_score, mlm_pll: NULL or [rows], first scored position */
    const int64_t *score_to;   /* clm_score, mlm_pll: NULL or [rows], end of the scored
                                  positions (see xlm.proto for the defaults) */
    bool return_tokens;        /* clm_score, mlm_pll: also the scored tokens' text */
} xlm_request_t;

/* Zeroes request, sets lang_fill_id = -1 and struct_size. */
void xlm_request_init_sized(xlm_request_t *request, size_t struct_size);
#define xlm_request_init(request) xlm_request_init_sized((request), sizeof *(request))

/* Encodes and sends a request, without blocking. The request is checked
 * with the protocol's rules first (XLM_ERR_ARG with the reason). Returns
 * XLM_ERR_WINDOW_FULL, sending nothing, when `window` requests are
 * submitted and not collected: collect some and submit again. id_out (NULL
 * or XLM_ID_SIZE bytes) receives the request's id. */
xlm_status_t xlm_client_submit(xlm_client_t *client, const xlm_request_t *request,
                               char *id_out);

/* The same for a request encoded by the caller: the bytes of an xlm.Request
 * (xlm.proto, installed with this library under share/xlmserve/), e.g. from
 * protobuf-c's xlm__request__pack. The request must carry its id
 * (xlm_client_new_id gives a unique one). The bytes are sent as they are: a
 * request deadline_ms of 0 leaves the broker's default, and config
 * deadline_ms, when set, holds on the client's side only. */
xlm_status_t xlm_client_submit_packed(xlm_client_t *client, const void *request_bytes,
                                      size_t size, char *id_out);

/* A new unique request id (XLM_ID_SIZE bytes): a random per-client prefix
 * and a counter, as submit makes them. */
xlm_status_t xlm_client_new_id(xlm_client_t *client, char *id_out);

typedef struct xlm_result xlm_result_t;

/* Waits up to timeout_ms (< 0: no limit, 0: poll) for a finished request and
 * hands its result to *result_p (owned by the caller). id NULL: the first
 * request to finish, in finishing order; else that request.
 * XLM_ERR_TIMEOUT: nothing finished in time (requests go on; collect
 * again). XLM_ERR_EMPTY (id NULL) or XLM_ERR_NOT_FOUND: nothing to wait for.
 * XLM_OK does not mean the request succeeded: see xlm_result_code. */
xlm_status_t xlm_client_collect(xlm_client_t *client, const char *id, int timeout_ms,
                                xlm_result_t **result_p);

/* Submit + collect by id, waiting up to timeout_ms (< 0: no limit). On
 * XLM_ERR_TIMEOUT the request is cancelled and leaves the window; *result_p
 * stays NULL. */
xlm_status_t xlm_client_call(xlm_client_t *client, const xlm_request_t *request,
                             int timeout_ms, xlm_result_t **result_p);

/* Cancels a request not yet finished: tells the broker (best effort) and
 * finishes it at once with XLM_CODE_CANCELLED; collect that result as any
 * other. A reply arriving later is dropped. XLM_ERR_NOT_FOUND if no such
 * request is pending (unknown, or already finished). */
xlm_status_t xlm_client_cancel(xlm_client_t *client, const char *id);

/* Asks the broker for its statistics and waits up to timeout_ms (sent again
 * every attempt_timeout_ms). *json_out (free with free()) is one JSON
 * object with xlm.proto's Stats field names. Replies to requests received
 * meanwhile are kept for collect. */
xlm_status_t xlm_client_stats_json(xlm_client_t *client, int timeout_ms, char **json_out);

/* ------------------------------------------------------------ event loops
 *
 * To drive a client from epoll, libuv or a select loop instead of blocking
 * in collect: watch xlm_client_fd for readability (it is ZeroMQ's ZMQ_FD,
 * edge-triggered: readable means "something may have changed", not "a
 * message is waiting"), and call xlm_client_process when it fires, when
 * its timeout passes, and after every submit or cancel. process never
 * blocks; afterwards collect with timeout 0 takes what finished. */

/* The descriptor to watch (owned by the client; do not read or close it). */
xlm_status_t xlm_client_fd(xlm_client_t *client, int *fd_out);

/* Reads every message waiting and fires due retries and deadlines.
 * *finished_out (may be NULL): results waiting to be collected.
 * *timeout_ms_out (may be NULL): call again within this many ms even if the
 * descriptor stays quiet (-1: no timer pending). */
xlm_status_t xlm_client_process(xlm_client_t *client, size_t *finished_out,
                                int *timeout_ms_out);

/* ------------------------------------------------------------ scoring pairs */

/* A translation pair, scored as <s> src </s> tgt </s> (xlm-score's rule). */
typedef struct {
    const char *src_lang, *src, *tgt_lang, *tgt; /* borrowed; langs may be NULL */
} xlm_pair_t;

typedef enum { XLM_SCORE_CLM = 0, XLM_SCORE_MLM_PLL = 1, XLM_SCORE_MODE_COUNT_ } xlm_score_mode_t;

typedef struct {
    size_t struct_size;     /* sizeof, set by xlm_score_options_init */
    const char *model;      /* NULL or "": the service's only model */
    xlm_score_mode_t mode;  /* clm for causal checkpoints, mlm_pll for masked ones */
    bool no_source;         /* score <s> tgt </s> alone */
    bool token_scores;      /* also each target token's log-probability and text */
    uint32_t deadline_ms;   /* per pair, 0: the config's */
} xlm_score_options_t;

void xlm_score_options_init_sized(xlm_score_options_t *options, size_t struct_size);
#define xlm_score_options_init(options) \
    xlm_score_options_init_sized((options), sizeof *(options))

/* What xlm-score writes for a pair. code XLM_CODE_OK, or the pair's own
 * failure (message says why) while the others go on. */
typedef struct {
    xlm_code_t code;
    char *message;          /* owned; "" when OK */
    double score;           /* sum of the target tokens' log-probabilities */
    int64_t n_target_tokens;
    double mean;            /* score / n_target_tokens (NaN for none) */
    float *token_scores;    /* [n_target_tokens] with token_scores, owned */
    char **tokens;          /* [n_target_tokens] with token_scores, owned */
} xlm_pair_score_t;

/* Scores n pairs through the window (submitting as room frees) and fills
 * scores_out[0..n) in the pairs' order; returns when every pair is
 * finished. Needs an empty window (collect what is outstanding first).
 * A non-OK status means the client itself failed (socket error, memory);
 * what is filled is then to be cleared all the same. */
xlm_status_t xlm_client_score_pairs(xlm_client_t *client, const xlm_pair_t *pairs, size_t n,
                                    const xlm_score_options_t *options,
                                    xlm_pair_score_t *scores_out);
/* Frees what score_pairs allocated in scores[0..n) and zeroes them. */
void xlm_pair_scores_clear(xlm_pair_score_t *scores, size_t n);

/* ------------------------------------------------------------ results */

typedef enum { XLM_F32 = 0, XLM_I64 = 1, XLM_TEXT = 2 } xlm_dtype_t;

/* A named output, borrowed from its result. Dense: numel = prod(shape)
 * values, row-major. Ragged (row_lengths not NULL): shape = [rows, longest
 * row], row r has row_lengths[r] values, rows back to back, numel their sum. */
typedef struct {
    const char *name;
    xlm_dtype_t dtype;
    size_t ndim;
    const int64_t *shape;       /* [ndim] */
    size_t numel;
    const float *f32;           /* dtype XLM_F32, else NULL */
    const int64_t *i64;         /* dtype XLM_I64, else NULL */
    const int64_t *row_lengths; /* [shape[0]] or NULL */
    char *const *text;          /* dtype XLM_TEXT (output "tokens"), else NULL */
} xlm_tensor_t;

typedef struct {
    uint64_t queue_us;        /* waiting in the broker's queue */
    uint64_t tokenize_us;     /* text requests */
    uint64_t worker_us;       /* stage 0 receipt to reply */
    size_t n_stages;
    const uint64_t *stage_us; /* [n_stages], compute of each stage for the micro-batch */
    uint32_t batch_requests;  /* requests of the micro-batch */
    uint64_t batch_tokens;    /* its padded tokens */
    uint64_t total_us;        /* measured by the client: submit to finish */
    int attempts;             /* sends of the request */
} xlm_timings_t;

const char *xlm_result_id(const xlm_result_t *result);
xlm_code_t xlm_result_code(const xlm_result_t *result);
/* "" when OK; else what went wrong (the service's or the client's words). */
const char *xlm_result_message(const xlm_result_t *result);
size_t xlm_result_count(const xlm_result_t *result);
/* The index-th output (NULL out of range), in the service's order. */
const xlm_tensor_t *xlm_result_tensor(const xlm_result_t *result, size_t index);
/* The output of that name, or NULL. */
const xlm_tensor_t *xlm_result_find(const xlm_result_t *result, const char *name);
const xlm_timings_t *xlm_result_timings(const xlm_result_t *result);
void xlm_result_destroy(xlm_result_t **self_p);

#ifdef __cplusplus
}
#endif

#endif /* XLM_CLIENT_H */
