/* broker_testing.h: test doubles on the real protocol, for the broker's
 * tests, its benchmark and the client's tests: a fake worker pipeline (a
 * thread with its own DEALER socket, real protobuf bytes, no model), a
 * small synchronous client, and helpers to run xlm-broker as a process.
 * Only ever 127.0.0.1. Not part of the service. */
#ifndef XLM_BROKER_TESTING_H
#define XLM_BROKER_TESTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ fake worker */

typedef enum {
    FAKE_WORKER_NORMAL = 0,
    FAKE_WORKER_SILENT,    /* sends nothing (no heartbeats, no replies): looks dead */
    FAKE_WORKER_PAUSED,    /* heartbeats, but holds its batches: a hung later stage (the
                              broker declares it dead after liveness intervals) */
    FAKE_WORKER_DUPLICATE, /* sends every reply twice */
    FAKE_WORKER_PROGRESSING, /* holds its batches, but its heartbeats carry a growing
                                progress count (a last stage in a long generation) */
    FAKE_WORKER_MODE_COUNT_
} fake_worker_mode_t;

typedef struct {
    const char *endpoint;        /* the broker's backend (borrowed) */
    const char *model;           /* "tiny" */
    const char *pipeline;        /* "fake-0" */
    uint32_t credit;             /* 4 */
    uint64_t max_batch_tokens;   /* 4096 */
    int64_t vocab_size;          /* 1000 */
    int64_t max_position_embeddings; /* 64 */
    int64_t n_langs;             /* 2, codes "en" "fr" */
    uint32_t n_stages;           /* 2 */
    int heartbeat_ms;            /* 1000 */
    int liveness;                /* 3: the broker is gone after that many silent intervals */
    int delay_us;                /* compute time of one micro-batch: 0 */
    bool split_reply_socket;     /* replies from a second socket, as a last stage would */
    uint32_t tasks_mask;         /* bit per proto_task_t served; 0: all */
    int64_t n_layers;            /* 0: not said */
    const char *curve_secret;    /* CURVE: own key pair file and the broker's public */
    const char *curve_server;    /* key file (both NULL: plain) */
} fake_worker_config_t;

void fake_worker_config_defaults(fake_worker_config_t *config);

typedef struct fake_worker fake_worker_t;

/* Starts the worker thread; it registers at once. NULL on failure. */
fake_worker_t *fake_worker_start(const fake_worker_config_t *config);
/* Says Disconnect, stops and joins the thread. */
void fake_worker_stop(fake_worker_t **self_p);
void fake_worker_set_mode(fake_worker_t *worker, fake_worker_mode_t mode);
uint64_t fake_worker_requests(const fake_worker_t *worker);      /* requests answered */
uint64_t fake_worker_batches(const fake_worker_t *worker);       /* micro-batches answered */
uint64_t fake_worker_registrations(const fake_worker_t *worker); /* Ready messages sent */
uint64_t fake_worker_max_batch(const fake_worker_t *worker);     /* most requests in one batch */
uint64_t fake_worker_max_padding(const fake_worker_t *worker);   /* most padded-but-empty tokens, per mille */

/* The fake's answer to a token request: output "sum_ids" (i64 [rows]),
 * each row's sum of input ids, and "lengths" (i64 [rows]). BAD_REQUEST when
 * an id is not below vocab_size, as the real worker would. */

/* ------------------------------------------------------------ client */

typedef struct test_client test_client_t;

test_client_t *test_client_new(const char *endpoint);
/* A CURVE client with these key files (see proto/curve_keys.h). */
test_client_t *test_client_new_curve(const char *endpoint, const char *secret_path,
                                     const char *server_path);
void test_client_destroy(test_client_t **self_p);
/* A new socket, so a new routing id (what a client does after a timeout). */
int test_client_reconnect(test_client_t *client);
int test_client_send_bytes(test_client_t *client, const void *data, size_t size);
/* One message of n frames (for protocol errors). */
int test_client_send_frames(test_client_t *client, const void *const *data, const size_t *sizes,
                            size_t n);
/* Wraps the request in a ClientMessage, packs and sends it. */
int test_client_send_request(test_client_t *client, Xlm__Request *request);
/* A token request of rows rows of row_len ids each: id of token t of row r
 * is (seed + 31 * r + t) % 997. */
int test_client_send_tokens(test_client_t *client, const char *id, const char *model,
                            proto_task_t task, int64_t rows, int64_t row_len, int64_t seed,
                            uint32_t deadline_ms);
int test_client_send_cancel(test_client_t *client, const char *id);
int test_client_send_stats(test_client_t *client);
/* The next message within timeout_ms, decoded by the codec; NULL on
 * timeout or when it does not decode. Free with proto_service_free. */
Xlm__ServiceMessage *test_client_recv(test_client_t *client, int timeout_ms);
/* What test_client_send_tokens' rows sum to, row 0. */
int64_t test_tokens_row_sum(int64_t row_len, int64_t seed, int64_t row);
/* The i64 output called name of a response, or NULL. */
const Xlm__Tensor *test_response_output(const Xlm__Response *response, const char *name);

/* ------------------------------------------------------------ processes */

/* Lines of the file at path that hold needle (0 when it cannot be read):
 * what a test counts in a log. */
int testing_count_lines_with(const char *path, const char *needle);
/* A TCP port on 127.0.0.1 free at the time of the call. */
int testing_free_port(void);
/* Starts bin (xlm-broker) on 127.0.0.1 with the two ports and extra
 * arguments (NULL terminated, may be NULL); waits until it answers a stats
 * request. Returns the pid, or -1. */
pid_t testing_broker_spawn(const char *bin, int front_port, int back_port,
                           const char *const *extra);
/* How else to start it: its standard error appended to log_path (NULL:
 * inherited), for tests that read what it logged; the CURVE key files
 * of the client that waits for it (NULL: plain). */
typedef struct {
    const char *log_path;
    const char *curve_secret, *curve_server;
} testing_spawn_t;
pid_t testing_broker_spawn_with(const char *bin, int front_port, int back_port,
                                const char *const *extra, const testing_spawn_t *how);
/* Sends sig, waits up to timeout_ms, then SIGKILL. Returns the exit status
 * (waitpid's), or -1. */
int testing_process_stop(pid_t pid, int sig, int timeout_ms);
/* Resident memory of a process in KiB, or -1. */
long testing_process_rss_kb(pid_t pid);
int64_t testing_now_us(void);

#ifdef __cplusplus
}
#endif

#endif /* XLM_BROKER_TESTING_H */
