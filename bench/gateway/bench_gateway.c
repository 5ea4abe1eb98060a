/* bench_gateway.c: what the HTTP gateway adds to a request.
 *
 *   bench-gateway [--requests N] [--clients C] [--seconds S]
 *
 * One process, loopback TCP, real sockets: the broker (broker.h) in a
 * thread, a fake worker pipeline (broker_testing.h, answers at once), the
 * gateway (gateway.h) on a free port. A tiny request (seq_cls, 1 row of 8
 * tokens) is timed two ways in the same run:
 *   reference: libxlmclient's xlm_client_call straight to the broker;
 *   gateway:   POST /v2/models/tiny/infer (KServe JSON) on a keep-alive
 *              HTTP/1.1 connection, the gateway calling the broker.
 * Round trips one at a time (p50, p99), then requests/s with C concurrent
 * clients of each kind. Targets (issue 12): the gateway adds < 150 us at
 * p50 and keeps >= 50% of the broker's requests/s with 8 clients. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"
#include "broker_testing.h"
#include "gateway.h"
#include "xlmclient.h"

static const int64_t row_ids[8] = {0, 11, 12, 13, 14, 15, 16, 1}, row_lengths[1] = {8};
static const char infer_body[] =
    "{\"inputs\":[{\"name\":\"input_ids\",\"shape\":[1,8],\"datatype\":\"INT64\","
    "\"data\":[0,11,12,13,14,15,16,1]}],\"parameters\":{\"task\":\"seq_cls\"}}";

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------ the two clients */

typedef struct {
    xlm_client_t *xlm;   /* reference */
    int fd;              /* gateway: a keep-alive connection */
    char buffer[65536];
} caller_t;

static bool call_broker(caller_t *c)
{
    xlm_tokens_t tokens = {.rows = 1, .lengths = row_lengths, .input_ids = row_ids};
    xlm_request_t rq;
    xlm_request_init(&rq);
    rq.model = "tiny";
    rq.task = XLM_TASK_SEQ_CLS;
    rq.tokens = &tokens;
    xlm_result_t *result = NULL;
    bool ok = xlm_client_call(c->xlm, &rq, 10000, &result) == XLM_OK &&
              xlm_result_code(result) == XLM_CODE_OK;
    xlm_result_destroy(&result);
    return ok;
}

static int connect_gateway(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One request and its whole response (headers, then Content-Length bytes). */
static bool call_gateway(caller_t *c)
{
    char request[1024];
    int n = snprintf(request, sizeof request,
                     "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof infer_body - 1, infer_body);
    if (write(c->fd, request, (size_t)n) != n)
        return false;
    size_t used = 0;
    for (;;) {
        ssize_t got = read(c->fd, c->buffer + used, sizeof c->buffer - 1 - used);
        if (got <= 0)
            return false;
        used += (size_t)got;
        c->buffer[used] = '\0';
        char *end = strstr(c->buffer, "\r\n\r\n");
        if (!end)
            continue;
        const char *length = strstr(c->buffer, "Content-Length:");
        if (!length || length > end)
            return false;
        size_t want = (size_t)(end + 4 - c->buffer) + strtoul(length + 15, NULL, 10);
        if (used >= want)
            return strncmp(c->buffer, "HTTP/1.1 200", 12) == 0;
    }
}

typedef bool (*call_fn)(caller_t *);

static void round_trips(caller_t *c, call_fn call, int n, double *p50, double *p99)
{
    int64_t *us = malloc((size_t)n * sizeof *us);
    for (int i = 0; i < n; i++) {
        int64_t t0 = testing_now_us();
        if (!call(c)) {
            fprintf(stderr, "bench-gateway: a request failed\n");
            exit(1);
        }
        us[i] = testing_now_us() - t0;
    }
    qsort(us, (size_t)n, sizeof *us, cmp_i64);
    *p50 = (double)us[n / 2];
    *p99 = (double)us[(int)((n - 1) * 0.99)];
    free(us);
}

/* ------------------------------------------------------------ concurrent load */

typedef struct {
    caller_t caller;
    call_fn call;
    const atomic_int *stop;
    long done;
    bool failed;
} load_t;

static void *load_main(void *arg)
{
    load_t *l = arg;
    while (!atomic_load(l->stop)) {
        if (!l->call(&l->caller)) {
            l->failed = true;
            break;
        }
        l->done++;
    }
    return NULL;
}

static double throughput(load_t *loads, int clients, double seconds)
{
    atomic_int stop = 0;
    pthread_t threads[64];
    for (int i = 0; i < clients; i++) {
        loads[i].stop = &stop;
        loads[i].done = 0;
        pthread_create(&threads[i], NULL, load_main, &loads[i]);
    }
    int64_t t0 = testing_now_us();
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop, 1);
    long total = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(threads[i], NULL);
        total += loads[i].done;
        if (loads[i].failed)
            fprintf(stderr, "bench-gateway: a client's request failed\n");
    }
    return (double)total / ((double)(testing_now_us() - t0) / 1e6);
}

/* ------------------------------------------------------------ setup */

typedef struct {
    broker_t *broker;
    atomic_int stop;
} broker_thread_t;

static void *broker_main(void *arg)
{
    broker_thread_t *bt = arg;
    broker_run(bt->broker, &bt->stop);
    return NULL;
}

static xlm_client_t *new_client(const char *endpoint)
{
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = endpoint;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client)
        fprintf(stderr, "bench-gateway: %s\n", err.message);
    return client;
}

int main(int argc, char **argv)
{
    int n = 5000, clients = 8;
    double seconds = 3.0;
    static const struct option options[] = {{"requests", required_argument, NULL, 'n'},
                                            {"clients", required_argument, NULL, 'c'},
                                            {"seconds", required_argument, NULL, 's'},
                                            {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'n') n = atoi(optarg);
        else if (opt == 'c') clients = atoi(optarg);
        else if (opt == 's') seconds = atof(optarg);
        else {
            fprintf(stderr, "usage: bench-gateway [--requests N] [--clients C] [--seconds S]\n");
            return 2;
        }
    }
    if (n < 10 || clients < 1 || clients > 64 || seconds <= 0) {
        fprintf(stderr, "bench-gateway: --requests >= 10, --clients 1 to 64, --seconds > 0\n");
        return 2;
    }
    broker_config_t config;
    broker_config_defaults(&config);
    config.frontend = "tcp://127.0.0.1:*";
    config.backend = "tcp://127.0.0.1:*";
    config.log_level = BROKER_LOG_WARN;
    broker_thread_t bt = {.broker = broker_new(&config)};
    if (!bt.broker)
        return 1;
    pthread_t thread;
    pthread_create(&thread, NULL, broker_main, &bt);
    fake_worker_config_t wc;
    fake_worker_config_defaults(&wc);
    wc.endpoint = broker_backend_endpoint(bt.broker);
    wc.credit = 16;
    fake_worker_t *worker = fake_worker_start(&wc);
    const char *frontend = broker_frontend_endpoint(bt.broker);
    gateway_options_t go;
    gateway_options_defaults(&go);
    go.broker = frontend;
    go.listen_port = 0;
    go.clients = (size_t)clients;
    char error[512];
    gateway_t *gateway = worker ? gateway_new(&go, error, sizeof error) : NULL;
    if (!gateway) {
        fprintf(stderr, "bench-gateway: %s\n", worker ? error : "no fake worker");
        return 1;
    }
    load_t loads[64];
    memset(loads, 0, sizeof loads);
    for (int i = 0; i < clients; i++)
        if (!(loads[i].caller.xlm = new_client(frontend)))
            return 1;
    /* Until the fake worker has registered, requests are UNAVAILABLE. */
    int tries = 0;
    while (!call_broker(&loads[0].caller) && ++tries < 100)
        usleep(20000);
    caller_t *one = &loads[0].caller;
    one->fd = connect_gateway(gateway_port(gateway));
    if (one->fd < 0 || !call_gateway(one)) {
        fprintf(stderr, "bench-gateway: the gateway does not answer\n");
        return 1;
    }
    for (int i = 0; i < n / 10; i++) /* warm both paths */
        call_broker(one), call_gateway(one);

    double broker_p50, broker_p99, gw_p50, gw_p99;
    round_trips(one, call_broker, n, &broker_p50, &broker_p99);
    round_trips(one, call_gateway, n, &gw_p50, &gw_p99);
    for (int i = 0; i < clients; i++)
        loads[i].call = call_broker;
    double broker_rate = throughput(loads, clients, seconds);
    for (int i = 1; i < clients; i++)
        loads[i].caller.fd = connect_gateway(gateway_port(gateway));
    for (int i = 0; i < clients; i++)
        loads[i].call = call_gateway;
    double gw_rate = throughput(loads, clients, seconds);

    printf("bench-gateway: seq_cls 1x8 tokens, fake worker, loopback TCP, one process\n");
    printf("  reference libxlmclient -> broker: p50 %7.1f us  p99 %7.1f us  %8.0f requests/s (%d clients)\n",
           broker_p50, broker_p99, broker_rate, clients);
    printf("  HTTP -> gateway -> broker:        p50 %7.1f us  p99 %7.1f us  %8.0f requests/s (%d clients)\n",
           gw_p50, gw_p99, gw_rate, clients);
    printf("  the gateway adds %.1f us at p50 (target < 150), %.1f us at p99\n", gw_p50 - broker_p50,
           gw_p99 - broker_p99);
    printf("  it keeps %.2f of the broker's requests/s with %d concurrent clients (target >= 0.5)\n",
           gw_rate / broker_rate, clients);

    for (int i = 0; i < clients; i++) {
        xlm_client_destroy(&loads[i].caller.xlm);
        if (loads[i].caller.fd > 0)
            close(loads[i].caller.fd);
    }
    gateway_destroy(&gateway);
    fake_worker_stop(&worker);
    atomic_store(&bt.stop, 1);
    pthread_join(thread, NULL);
    broker_destroy(&bt.broker);
    return 0;
}
