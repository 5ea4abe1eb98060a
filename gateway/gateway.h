/* gateway.h: xlm-gateway, HTTP/JSON in front of the broker.
 *
 * An HTTP/1.1 server (libmicrohttpd, a thread per connection) that speaks
 * the KServe v2 / Open Inference Protocol REST endpoints, a scoring
 * endpoint for people (/v1/score) and Prometheus metrics (/metrics), and
 * reaches the broker through a pool of libxlmclient clients (one per
 * request at a time: the library is not thread-safe).
 */
#ifndef XLM_GATEWAY_H
#define XLM_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *broker;          /* the broker's frontend, tcp://HOST:PORT (borrowed) */
    const char *listen_host;     /* numeric IPv4 address to bind: "127.0.0.1" */
    uint16_t listen_port;        /* 8000; 0: any free port (gateway_port says which) */
    size_t clients;              /* broker clients, i.e. requests computing at once: 16 */
    size_t max_queue;            /* requests admitted (computing or waiting): 256; past it 503 */
    size_t max_body_bytes;       /* larger request bodies get 413: 16 MiB */
    int retry_after_s;           /* Retry-After of a 503: 1 */
    uint32_t deadline_ms;        /* for requests that give none: 0 (the broker's default) */
    int attempt_timeout_ms;      /* libxlmclient's, per attempt: 5000 */
    int max_attempts;            /* libxlmclient's: 12 (a minute of broker restarts) */
    const char *curve_server_file; /* CURVE, passed to libxlmclient; NULL: none (borrowed) */
    const char *curve_secret_file;
} gateway_options_t;

void gateway_options_defaults(gateway_options_t *options);

typedef struct gateway gateway_t;

/* Binds and starts serving (threads of its own). NULL with the reason in
 * error when the options are wrong or the address cannot be bound. */
gateway_t *gateway_new(const gateway_options_t *options, char *error, size_t error_size);
/* The bound port (the chosen one when listen_port was 0). */
uint16_t gateway_port(const gateway_t *gateway);
/* Stops accepting, finishes the requests under way, frees everything. */
void gateway_destroy(gateway_t **self_p);

#endif
