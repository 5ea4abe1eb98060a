/* main.c: xlm-broker, the program around broker.h.
 *
 *   xlm-broker --frontend tcp://127.0.0.1:5555 --backend tcp://127.0.0.1:5556
 *
 * SIGTERM or SIGINT: graceful stop (see broker_run). Exit status 0 after a
 * clean stop, 1 when the broker fails, 2 on a bad command line. */
#include "broker.h"
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_requested, 1);
}

static void usage(FILE *out)
{
    broker_config_t d;
    broker_config_defaults(&d);
    fprintf(out,
            "usage: xlm-broker --frontend ENDPOINT --backend ENDPOINT [options]\n"
            "  --frontend ENDPOINT        ROUTER endpoint for clients (tcp://127.0.0.1:5555)\n"
            "  --backend ENDPOINT         ROUTER endpoint for workers\n"
            "  --heartbeat-ms N           heartbeat interval to workers [%d]\n"
            "  --liveness N               heartbeats missed before a pipeline is dead [%d]\n"
            "  --queue-max N              queued requests per model [%zu]\n"
            "  --queue-bytes N            queued bytes per model [%zu]\n"
            "  --max-message-bytes N      largest client message decoded (TOO_LARGE past it;\n"
            "                             past 4x it the connection drops) [%zu]\n"
            "  --max-worker-message-bytes N  largest frame from a worker; past it the\n"
            "                             worker's connection drops [%zu]\n"
            "  --curve-key FILE           the broker's CURVE key pair (NAME.key of xlm-keygen)\n"
            "  --curve-allow DIR          both sides require CURVE; DIR holds the allowed\n"
            "                             public keys (*.pub), read again when it changes\n"
            "  --frontend-curve-allow DIR only the frontend (clients) requires CURVE\n"
            "  --backend-curve-allow DIR  only the backend (workers) requires CURVE\n"
            "  --insecure                 a side without CURVE may bind off loopback\n"
            "  --log-window-ms N          peer-caused log lines: each kind writes its burst per\n"
            "                             window, then a count of those held back [%u]\n"
            "  --default-deadline-ms N    deadline of requests that give none [%u]\n"
            "  --max-deadline-ms N        longest deadline granted [%u]\n"
            "  --dedup-ms N               completed replies kept for retries [%u]\n"
            "  --dedup-max N              at most this many kept [%zu]\n"
            "  --dedup-bytes N            at most this many bytes kept [%zu]\n"
            "  --drain-ms N               time to finish held requests on stop [%u]\n"
            "  --startup-grace-ms N       after start, unknown models are UNAVAILABLE, not\n"
            "                             UNKNOWN_MODEL (pipelines registering again) [%u]\n"
            "  --model-grace-ms N         a model without a live pipeline this long is\n"
            "                             unregistered (UNAVAILABLE \"no live pipeline since T\") [%u]\n"
            "  --batch-scan N             queued requests looked at per micro-batch [%zu]\n"
            "  --batch-max-requests N     requests per micro-batch [%zu]\n"
            "  --spin-us N                after traffic, poll without sleeping this long: the\n"
            "                             round trip skips a wake-up; 0 never spins [%u]\n"
            "  --log-level LEVEL          debug, info, warn or error [info]\n"
            "  --version                  the project's and the wire protocol's versions\n",
            d.heartbeat_ms, d.liveness, d.queue_max, d.queue_bytes, d.max_message_bytes,
            d.max_worker_message_bytes, d.log_window_ms,
            d.default_deadline_ms, d.max_deadline_ms, d.dedup_ms, d.dedup_max, d.dedup_bytes,
            d.drain_ms, d.startup_grace_ms, d.model_grace_ms, d.batch_scan, d.batch_max_requests, d.spin_us);
}

/* Parses a whole decimal number in [min, max]. */
static int parse_u64(const char *opt, const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || v < min || v > max) {
        fprintf(stderr, "xlm-broker: --%s '%s', expected a whole number from %" PRIu64 " to %" PRIu64 "\n",
                opt, text, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    OPT_FRONTEND = 256, OPT_BACKEND, OPT_HEARTBEAT, OPT_LIVENESS, OPT_QUEUE_MAX, OPT_QUEUE_BYTES,
    OPT_SPIN, OPT_MAX_MESSAGE, OPT_DEFAULT_DEADLINE, OPT_MAX_DEADLINE, OPT_DEDUP_MS, OPT_DEDUP_MAX,
    OPT_DEDUP_BYTES, OPT_DRAIN, OPT_GRACE, OPT_MODEL_GRACE, OPT_BATCH_SCAN, OPT_BATCH_MAX, OPT_LOG_LEVEL,
    OPT_MAX_WORKER_MESSAGE, OPT_CURVE_KEY, OPT_CURVE_ALLOW, OPT_FRONTEND_ALLOW, OPT_BACKEND_ALLOW,
    OPT_INSECURE, OPT_LOG_WINDOW, OPT_HELP, OPT_VERSION
};

static const struct option options[] = {
    {"frontend", required_argument, NULL, OPT_FRONTEND},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT},
    {"liveness", required_argument, NULL, OPT_LIVENESS},
    {"queue-max", required_argument, NULL, OPT_QUEUE_MAX},
    {"queue-bytes", required_argument, NULL, OPT_QUEUE_BYTES},
    {"max-message-bytes", required_argument, NULL, OPT_MAX_MESSAGE},
    {"default-deadline-ms", required_argument, NULL, OPT_DEFAULT_DEADLINE},
    {"max-deadline-ms", required_argument, NULL, OPT_MAX_DEADLINE},
    {"spin-us", required_argument, NULL, OPT_SPIN},
    {"dedup-ms", required_argument, NULL, OPT_DEDUP_MS},
    {"dedup-max", required_argument, NULL, OPT_DEDUP_MAX},
    {"dedup-bytes", required_argument, NULL, OPT_DEDUP_BYTES},
    {"drain-ms", required_argument, NULL, OPT_DRAIN},
    {"startup-grace-ms", required_argument, NULL, OPT_GRACE},
    {"model-grace-ms", required_argument, NULL, OPT_MODEL_GRACE},
    {"batch-scan", required_argument, NULL, OPT_BATCH_SCAN},
    {"batch-max-requests", required_argument, NULL, OPT_BATCH_MAX},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"max-worker-message-bytes", required_argument, NULL, OPT_MAX_WORKER_MESSAGE},
    {"curve-key", required_argument, NULL, OPT_CURVE_KEY},
    {"curve-allow", required_argument, NULL, OPT_CURVE_ALLOW},
    {"frontend-curve-allow", required_argument, NULL, OPT_FRONTEND_ALLOW},
    {"backend-curve-allow", required_argument, NULL, OPT_BACKEND_ALLOW},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"log-window-ms", required_argument, NULL, OPT_LOG_WINDOW},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* Applies one option to c; -1 on a bad value. */
static int apply_option(broker_config_t *c, int opt, const char *name, const char *arg)
{
    uint64_t v = 0;
    const uint64_t u32 = UINT32_MAX, big = (uint64_t)1 << 40;
    switch (opt) {
    case OPT_FRONTEND: c->frontend = arg; return 0;
    case OPT_BACKEND: c->backend = arg; return 0;
    case OPT_CURVE_KEY: c->curve_key = arg; return 0;
    case OPT_CURVE_ALLOW: c->frontend_curve_allow = c->backend_curve_allow = arg; return 0;
    case OPT_FRONTEND_ALLOW: c->frontend_curve_allow = arg; return 0;
    case OPT_BACKEND_ALLOW: c->backend_curve_allow = arg; return 0;
    case OPT_INSECURE: c->insecure = true; return 0;
    case OPT_MAX_WORKER_MESSAGE: if (parse_u64(name, arg, 1024, (uint64_t)1 << 32, &v)) return -1; c->max_worker_message_bytes = v; return 0;
    case OPT_LOG_WINDOW: if (parse_u64(name, arg, 10, 3600000, &v)) return -1; c->log_window_ms = (uint32_t)v; return 0;
    case OPT_LOG_LEVEL:
        c->log_level = broker_log_level_from_name(arg);
        if (c->log_level == BROKER_LOG_COUNT_) {
            fprintf(stderr, "xlm-broker: --log-level '%s', expected debug, info, warn or error\n", arg);
            return -1;
        }
        return 0;
    case OPT_HEARTBEAT: if (parse_u64(name, arg, 10, 3600000, &v)) return -1; c->heartbeat_ms = (int)v; return 0;
    case OPT_LIVENESS: if (parse_u64(name, arg, 1, 100, &v)) return -1; c->liveness = (int)v; return 0;
    case OPT_QUEUE_MAX: if (parse_u64(name, arg, 1, big, &v)) return -1; c->queue_max = v; return 0;
    case OPT_QUEUE_BYTES: if (parse_u64(name, arg, 1, big, &v)) return -1; c->queue_bytes = v; return 0;
    case OPT_MAX_MESSAGE: if (parse_u64(name, arg, 64, 1u << 30, &v)) return -1; c->max_message_bytes = v; return 0;
    case OPT_DEFAULT_DEADLINE: if (parse_u64(name, arg, 1, u32, &v)) return -1; c->default_deadline_ms = (uint32_t)v; return 0;
    case OPT_MAX_DEADLINE: if (parse_u64(name, arg, 1, u32, &v)) return -1; c->max_deadline_ms = (uint32_t)v; return 0;
    case OPT_SPIN: if (parse_u64(name, arg, 0, 100000, &v)) return -1; c->spin_us = (uint32_t)v; return 0;
    case OPT_DEDUP_MS: if (parse_u64(name, arg, 0, u32, &v)) return -1; c->dedup_ms = (uint32_t)v; return 0;
    case OPT_DEDUP_MAX: if (parse_u64(name, arg, 0, big, &v)) return -1; c->dedup_max = v; return 0;
    case OPT_DEDUP_BYTES: if (parse_u64(name, arg, 0, big, &v)) return -1; c->dedup_bytes = v; return 0;
    case OPT_DRAIN: if (parse_u64(name, arg, 0, u32, &v)) return -1; c->drain_ms = (uint32_t)v; return 0;
    case OPT_GRACE: if (parse_u64(name, arg, 0, u32, &v)) return -1; c->startup_grace_ms = (uint32_t)v; return 0;
    case OPT_MODEL_GRACE: if (parse_u64(name, arg, 0, u32, &v)) return -1; c->model_grace_ms = (uint32_t)v; return 0;
    case OPT_BATCH_SCAN: if (parse_u64(name, arg, 0, 65536, &v)) return -1; c->batch_scan = v; return 0;
    case OPT_BATCH_MAX: if (parse_u64(name, arg, 1, 65536, &v)) return -1; c->batch_max_requests = v; return 0;
    default: return -1;
    }
}

int main(int argc, char **argv)
{
    broker_config_t config;
    broker_config_defaults(&config);
    int opt, index;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", options, &index)) != -1) {
        if (opt == OPT_HELP) {
            usage(stdout);
            return 0;
        }
        if (opt == OPT_VERSION) {
            tools_print_version(stdout, "xlm-broker");
            return 0;
        }
        if (opt == '?' || opt == ':') {
            tools_bad_option(stderr, "xlm-broker", argv, opt);
            return 2;
        }
        if (apply_option(&config, opt, options[index].name, optarg) != 0)
            return 2; /* apply_option said why */
    }
    if (optind < argc || !config.frontend || !config.backend) {
        fprintf(stderr, "xlm-broker: %s; see --help\n", optind < argc
                ? "unexpected argument" : "--frontend and --backend are required");
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    broker_t *broker = broker_new(&config);
    if (!broker)
        return 1;
    broker_status_t rc = broker_run(broker, &stop_requested);
    broker_destroy(&broker);
    return rc == BROKER_OK ? 0 : 1;
}
