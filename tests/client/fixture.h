/* fixture.h: helpers of the client tests. A raw ROUTER peer that plays the
 * broker by hand (the test sees every byte the client sends and answers as
 * it likes), a lossy proxy between a client and a real broker (drops a
 * request or a reply, or answers OVERLOADED, by id prefix), and running the
 * xlm-client program. Only ever 127.0.0.1. */
#ifndef XLM_TESTS_CLIENT_FIXTURE_H
#define XLM_TESTS_CLIENT_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

int64_t fx_now_ms(void);

/* ------------------------------------------------------------ raw peer */

typedef struct {
    void *ctx, *router;
    char endpoint[64];
    uint8_t identity[256]; /* of the last message received */
    size_t identity_len;
} peer_t;

/* Binds a ROUTER on a free port of 127.0.0.1. */
bool peer_open(peer_t *peer);
void peer_close(peer_t *peer);
/* The next client message within timeout_ms, decoded by the codec (NULL on
 * timeout or when it does not decode). *raw, when not NULL, receives a copy
 * of the bytes (free()). */
Xlm__ClientMessage *peer_recv(peer_t *peer, int timeout_ms, uint8_t **raw, size_t *raw_size);
void peer_send_bytes(peer_t *peer, const void *data, size_t size);
void peer_send_service(peer_t *peer, Xlm__ServiceMessage *msg);
void peer_send_response(peer_t *peer, Xlm__Response *response);
void peer_send_status(peer_t *peer, const char *id, proto_status_t status, const char *message);
/* An OK response to a token request: "sum_ids" (i64 [rows]) and "echo"
 * (f32, ragged [rows, longest]: the ids as floats). */
void peer_send_echo(peer_t *peer, const Xlm__Request *request);

/* ------------------------------------------------------------ lossy proxy */

/* By id prefix of the request:
 *   lose-       the first send is dropped (never reaches the broker)
 *   lostreply-  the first reply is dropped (never reaches the client)
 *   ovl-        the first send is answered OVERLOADED by the proxy
 *   ovlall-     every send is answered OVERLOADED by the proxy
 * Everything else, stats included, passes. One client at a time. */
typedef struct proxy proxy_t;

proxy_t *proxy_start(const char *upstream);
const char *proxy_endpoint(const proxy_t *proxy);
/* Requests with this id seen from the client so far. */
int proxy_sends(proxy_t *proxy, const char *id);
void proxy_stop(proxy_t **self_p);

/* ------------------------------------------------------------ processes */

/* Runs argv (argv[0] a path) with stdin from in_path (NULL: /dev/null) and
 * stdout, stderr into out_path, err_path; returns the pid or -1. */
pid_t fx_spawn(char *const argv[], const char *in_path, const char *out_path,
               const char *err_path);
/* Waits up to timeout_ms; the exit code, or -1 (killed, or timed out). */
int fx_wait(pid_t pid, int timeout_ms);
/* True when the child has exited; *code its exit code. */
bool fx_exited(pid_t pid, int *code);
/* A path under the tests' tmp folder, unique to this process. */
const char *fx_tmp_path(char *buf, size_t size, const char *name);
bool fx_write_file(const char *path, const char *text);
/* The whole file, NUL-terminated (free()), or NULL. */
char *fx_read_file(const char *path);

#endif
