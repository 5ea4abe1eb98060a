/* main.c: the xlm-gateway program. Parses options, starts the gateway and
 * waits for SIGINT or SIGTERM; the gateway then finishes what is under
 * way and stops. */
#include "cli.h"
#include "gateway.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: xlm-gateway --broker tcp://HOST:PORT [options]\n"
    "HTTP/JSON in front of the broker: KServe v2 (Open Inference Protocol) REST,\n"
    "POST /v1/score, GET /metrics (Prometheus).\n"
    "  --broker E              the broker's frontend (required)\n"
    "  --listen HOST:PORT      address to serve on: 127.0.0.1:8000 (port 0: any free one)\n"
    "  --clients N             broker clients, i.e. requests computing at once: 16\n"
    "  --max-queue N           requests admitted, computing or waiting: 256; then 503\n"
    "  --max-body-bytes N      larger request bodies get 413: 16777216\n"
    "  --retry-after S         Retry-After of a 503: 1\n"
    "  --deadline-ms N         for requests that give none (X-Deadline-Ms header or\n"
    "                          parameters.deadline_ms): 0, the broker's default\n"
    "  --attempt-timeout-ms N  per attempt towards the broker: 5000\n"
    "  --max-attempts N        sends of one request (retries keep its id): 12\n"
    "  --curve-server FILE     the broker's CURVE public key (Z85 text or czmq certificate)\n"
    "  --curve-secret FILE     this gateway's CURVE secret key (both or neither)\n"
    "  --version, --help\n";

static bool parse_number(const char *text, unsigned long long max, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || !end || *end || end == text || text[0] == '-' || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_listen(const char *text, gateway_options_t *o, char *host, size_t size)
{
    const char *colon = strrchr(text, ':');
    unsigned long long port = 0;
    if (!colon || (size_t)(colon - text) >= size || !parse_number(colon + 1, 65535, &port))
        return false;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    o->listen_host = host;
    o->listen_port = (uint16_t)port;
    return true;
}

static int parse_args(int argc, char **argv, gateway_options_t *o, char *host, size_t host_size)
{
    static const struct option long_options[] = {
        {"broker", required_argument, NULL, 'b'},       {"listen", required_argument, NULL, 'l'},
        {"clients", required_argument, NULL, 'c'},      {"max-queue", required_argument, NULL, 'q'},
        {"max-body-bytes", required_argument, NULL, 's'}, {"retry-after", required_argument, NULL, 'r'},
        {"deadline-ms", required_argument, NULL, 'd'},  {"attempt-timeout-ms", required_argument, NULL, 'a'},
        {"max-attempts", required_argument, NULL, 'm'}, {"curve-server", required_argument, NULL, 'S'},
        {"curve-secret", required_argument, NULL, 'K'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0}};
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":", long_options, NULL)) != -1) {
        unsigned long long v = 0;
        bool ok = true;
        switch (opt) {
        case 'b': o->broker = optarg; break;
        case 'l': ok = parse_listen(optarg, o, host, host_size); break;
        case 'c': ok = parse_number(optarg, 1024, &v) && v >= 1; o->clients = (size_t)v; break;
        case 'q': ok = parse_number(optarg, 100000, &v) && v >= 1; o->max_queue = (size_t)v; break;
        case 's': ok = parse_number(optarg, (unsigned long long)1 << 40, &v) && v >= 64; o->max_body_bytes = (size_t)v; break;
        case 'r': ok = parse_number(optarg, 3600, &v); o->retry_after_s = (int)v; break;
        case 'd': ok = parse_number(optarg, UINT32_MAX, &v); o->deadline_ms = (uint32_t)v; break;
        case 'a': ok = parse_number(optarg, 86400000, &v) && v >= 1; o->attempt_timeout_ms = (int)v; break;
        case 'm': ok = parse_number(optarg, 1000, &v) && v >= 1; o->max_attempts = (int)v; break;
        case 'S': o->curve_server_file = optarg; break;
        case 'K': o->curve_secret_file = optarg; break;
        case 'V': tools_print_version(stdout, "xlm-gateway"); return 0;
        case 'h': fputs(usage, stdout); return 0;
        default: tools_bad_option(stderr, "xlm-gateway", argv, opt); return 2;
        }
        if (!ok) {
            fprintf(stderr, "xlm-gateway: --%s '%s': not a valid value (see --help)\n",
                    argv[optind - 1][1] == '-' ? argv[optind - 1] + 2 : argv[optind - 1], optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "xlm-gateway: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (!o->broker) {
        fprintf(stderr, "xlm-gateway: --broker tcp://HOST:PORT is required (see --help)\n");
        return 2;
    }
    if (!o->curve_server_file != !o->curve_secret_file) {
        fprintf(stderr, "xlm-gateway: --curve-server and --curve-secret go together\n");
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    gateway_options_t options;
    gateway_options_defaults(&options);
    char host[256];
    int rc = parse_args(argc, argv, &options, host, sizeof host);
    if (rc >= 0)
        return rc;
    /* Block the stop signals before threads start, so that only sigwait sees them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    char error[512];
    gateway_t *gateway = gateway_new(&options, error, sizeof error);
    if (!gateway) {
        fprintf(stderr, "xlm-gateway: %s\n", error);
        return 1;
    }
    fprintf(stderr, "xlm-gateway: listening on http://%s:%u, broker %s\n", options.listen_host,
            (unsigned)gateway_port(gateway), options.broker);
    fflush(stderr);
    int signal_number = 0;
    sigwait(&stop, &signal_number);
    fprintf(stderr, "xlm-gateway: %s: stopping\n", strsignal(signal_number));
    gateway_destroy(&gateway);
    return 0;
}
