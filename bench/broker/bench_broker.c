/* bench_broker.c: the broker's round trip and throughput on loopback.
 *
 *   bench-broker [--requests N] [--window W] [--seconds S]
 *
 * All in one process, on tcp://127.0.0.1 with real sockets and real
 * protobuf bytes: the broker (broker.h) in a thread, a fake worker pipeline
 * (broker_testing.h, answers at once) and a client. A tiny request (1 row
 * of 8 tokens, seq_cls) goes client -> broker -> worker -> broker ->
 * client. Reference measured in the same run: a bare ZeroMQ DEALER/ROUTER
 * echo on loopback (one hop each way, no protobuf), so the ratio says what
 * the broker's two extra hops and its work cost; and a cancel answered by
 * the broker itself (client -> broker -> client), its own cost per pass.
 *
 * Six threads take part (three sockets and their ZeroMQ I/O threads). On a
 * small VM, wake-ups across CPUs dominate: `taskset -c 0 bench-broker`
 * shows the path without them. */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "broker.h"
#include "broker_testing.h"

typedef struct {
    double p50_us, p99_us, mean_us;
} latency_t;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static latency_t summarise(int64_t *us, int n)
{
    qsort(us, (size_t)n, sizeof *us, cmp_i64);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)us[i];
    latency_t l = {(double)us[n / 2], (double)us[(int)((n - 1) * 0.99)], sum / n};
    return l;
}

/* ------------------------------------------------------------ reference: bare echo */

typedef struct {
    void *ctx;
    char endpoint[256];
    atomic_int stop;
} echo_t;

static void *echo_main(void *arg)
{
    echo_t *e = arg;
    void *s = zmq_socket(e->ctx, ZMQ_ROUTER);
    zmq_bind(s, "tcp://127.0.0.1:*");
    size_t len = sizeof e->endpoint;
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, e->endpoint, &len);
    while (!atomic_load(&e->stop)) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0)
            continue;
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        zmq_msg_recv(&id, s, 0);
        zmq_msg_recv(&body, s, 0);
        zmq_msg_send(&id, s, ZMQ_SNDMORE);
        zmq_msg_send(&body, s, 0);
    }
    zmq_close(s);
    return NULL;
}

static latency_t bench_echo(int n)
{
    echo_t e = {.ctx = zmq_ctx_new()};
    pthread_t thread;
    pthread_create(&thread, NULL, echo_main, &e);
    while (!e.endpoint[0])
        sched_yield();
    void *c = zmq_socket(e.ctx, ZMQ_DEALER);
    zmq_connect(c, e.endpoint);
    char buf[64] = {0}, in[64];
    int64_t *us = malloc((size_t)n * sizeof *us);
    for (int i = -n / 10; i < n; i++) { /* the first tenth warms up */
        int64_t t0 = testing_now_us();
        zmq_send(c, buf, 40, 0);
        zmq_recv(c, in, sizeof in, 0);
        if (i >= 0)
            us[i] = testing_now_us() - t0;
    }
    latency_t l = summarise(us, n);
    free(us);
    atomic_store(&e.stop, 1);
    pthread_join(thread, NULL);
    zmq_close(c);
    zmq_ctx_term(e.ctx);
    return l;
}

/* ------------------------------------------------------------ the broker */

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

static Xlm__ServiceMessage *expect_ok(test_client_t *c)
{
    Xlm__ServiceMessage *msg = test_client_recv(c, 5000);
    if (!msg || msg->response->status != XLM__STATUS__STATUS_OK) {
        fprintf(stderr, "bench-broker: no OK reply: %s\n",
                msg ? msg->response->message : "timeout");
        exit(1);
    }
    return msg;
}

static latency_t bench_round_trip(test_client_t *c, int n)
{
    int64_t *us = malloc((size_t)n * sizeof *us);
    char id[32];
    for (int i = -n / 10; i < n; i++) {
        snprintf(id, sizeof id, "lat-%d", i);
        int64_t t0 = testing_now_us();
        test_client_send_tokens(c, id, "tiny", PROTO_TASK_SEQ_CLS, 1, 8, i & 0xff, 0);
        Xlm__ServiceMessage *msg = expect_ok(c);
        if (i >= 0)
            us[i] = testing_now_us() - t0;
        proto_service_free(&msg);
    }
    latency_t l = summarise(us, n);
    free(us);
    return l;
}

/* A cancel of an id the broker does not hold: answered by the broker
 * itself (decode, lookups, a status reply), two hops. */
static latency_t bench_broker_only(test_client_t *c, int n)
{
    int64_t *us = malloc((size_t)n * sizeof *us);
    for (int i = -n / 10; i < n; i++) {
        int64_t t0 = testing_now_us();
        test_client_send_cancel(c, "no-such-id");
        Xlm__ServiceMessage *msg = test_client_recv(c, 5000);
        if (!msg || msg->response->status != XLM__STATUS__STATUS_NOT_FOUND) {
            fprintf(stderr, "bench-broker: no NOT_FOUND reply to a cancel\n");
            exit(1);
        }
        proto_service_free(&msg);
        if (i >= 0)
            us[i] = testing_now_us() - t0;
    }
    latency_t l = summarise(us, n);
    free(us);
    return l;
}

/* Keeps window requests outstanding for seconds; returns replies/s. */
static double bench_throughput(test_client_t *c, int window, double seconds)
{
    char id[32];
    long sent = 0, received = 0;
    for (; sent < window; sent++) {
        snprintf(id, sizeof id, "tp-%ld", sent);
        test_client_send_tokens(c, id, "tiny", PROTO_TASK_SEQ_CLS, 1, 8, sent & 0xff, 0);
    }
    int64_t t0 = testing_now_us(), until = t0 + (int64_t)(seconds * 1e6);
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *msg = expect_ok(c);
        proto_service_free(&msg);
        received++;
        snprintf(id, sizeof id, "tp-%ld", sent++);
        test_client_send_tokens(c, id, "tiny", PROTO_TASK_SEQ_CLS, 1, 8, sent & 0xff, 0);
    }
    double elapsed = (double)(testing_now_us() - t0) / 1e6;
    for (; received < sent; received++) { /* drain */
        Xlm__ServiceMessage *msg = expect_ok(c);
        proto_service_free(&msg);
    }
    return (double)(received - window) / elapsed;
}

int main(int argc, char **argv)
{
    int n = 5000, window = 64;
    double seconds = 2.0;
    static const struct option options[] = {
        {"requests", required_argument, NULL, 'n'},
        {"window", required_argument, NULL, 'w'},
        {"seconds", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'n')
            n = atoi(optarg);
        else if (opt == 'w')
            window = atoi(optarg);
        else if (opt == 's')
            seconds = atof(optarg);
        else {
            fprintf(stderr, "usage: bench-broker [--requests N] [--window W] [--seconds S]\n");
            return 2;
        }
    }
    if (n < 10 || window < 1 || window > 10000 || seconds <= 0) {
        fprintf(stderr, "bench-broker: --requests >= 10, --window 1 to 10000, --seconds > 0\n");
        return 2;
    }

    latency_t echo = bench_echo(n);

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
    test_client_t *client = test_client_new(broker_frontend_endpoint(bt.broker));
    if (!worker || !client)
        return 1;
    /* Until the worker has registered: requests before get UNAVAILABLE. */
    for (int tries = 0;; tries++) {
        test_client_send_tokens(client, "warmup", "tiny", PROTO_TASK_SEQ_CLS, 1, 8, 0, 0);
        Xlm__ServiceMessage *msg = test_client_recv(client, 1000);
        bool ok = msg && msg->response->status == XLM__STATUS__STATUS_OK;
        proto_service_free(&msg);
        if (ok)
            break;
        if (tries > 50) {
            fprintf(stderr, "bench-broker: the fake worker did not register\n");
            return 1;
        }
    }

    latency_t only = bench_broker_only(client, n);
    latency_t rt = bench_round_trip(client, n);
    double rate = bench_throughput(client, window, seconds);

    printf("bench-broker: %d round trips of a 1x8-token request, loopback TCP, one process\n", n);
    printf("  reference zmq echo (1 hop each way): p50 %7.1f us  p99 %7.1f us  mean %7.1f us\n",
           echo.p50_us, echo.p99_us, echo.mean_us);
    printf("  client-broker round trip (cancel):    p50 %7.1f us  p99 %7.1f us  mean %7.1f us\n",
           only.p50_us, only.p99_us, only.mean_us);
    printf("  client-broker-worker round trip:      p50 %7.1f us  p99 %7.1f us  mean %7.1f us\n",
           rt.p50_us, rt.p99_us, rt.mean_us);
    printf("  ratio to the echo (p50):              %.2fx\n", rt.p50_us / echo.p50_us);
    printf("  throughput, %d outstanding:           %.0f requests/s (%.1f s)\n", window, rate, seconds);
    printf("  micro-batches: %llu for %llu requests (at most %llu per batch)\n",
           (unsigned long long)fake_worker_batches(worker),
           (unsigned long long)fake_worker_requests(worker),
           (unsigned long long)fake_worker_max_batch(worker));

    test_client_destroy(&client);
    fake_worker_stop(&worker);
    atomic_store(&bt.stop, 1);
    pthread_join(thread, NULL);
    broker_destroy(&bt.broker);
    return 0;
}
