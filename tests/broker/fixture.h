/* fixture.h: one xlm-broker process on free 127.0.0.1 ports, fake worker
 * pipelines and clients around it, for the end-to-end tests. */
#ifndef XLM_TESTS_BROKER_FIXTURE_H
#define XLM_TESTS_BROKER_FIXTURE_H

#include <stdbool.h>
#include <sys/types.h>

#include "broker_testing.h"

enum { FX_MAX_WORKERS = 4 };

typedef struct {
    int front_port, back_port;
    char front[64], back[64];
    pid_t broker;
    test_client_t *client; /* requests and replies */
    test_client_t *admin;  /* stats only, so that they never mix with replies */
    fake_worker_t *workers[FX_MAX_WORKERS];
    char log_path[512];    /* set before fx_start: the broker's stderr goes there */
    const char *curve_secret, *curve_server; /* set before fx_start: the CURVE key files of
                                                its clients (NULL: plain) */
} fx_t;

/* Broker arguments of the tests: fast heartbeats, quiet logs, unknown
 * models unknown at once (extra arguments come after and override). */
#define FX_BROKER_ARGS "--heartbeat-ms", "100", "--liveness", "3", "--log-level", "warn", \
    "--startup-grace-ms", "0"

/* Starts xlm-broker with FX_BROKER_ARGS and extra (NULL-terminated, may be
 * NULL) on new ports, or the same ones again when fx already has ports.
 * Creates the clients on first start. Returns 0 or -1. */
int fx_start(fx_t *fx, const char *const *extra);
/* Stops workers, clients and the broker (SIGTERM); -1 when the broker
 * does not exit cleanly with status 0. */
int fx_teardown(fx_t *fx);
/* cmocka set-up and tear-down of a fixture in *state: a new fx started with
 * extra (see fx_start), and its teardown and free. */
int fx_state_setup(void **state, const char *const *extra);
int fx_state_teardown(void **state);
/* Starts worker slot i with the defaults, model and pipeline, after tweak
 * (may be NULL), and waits until the broker lists it. */
fake_worker_t *fx_worker(fx_t *fx, int i, const char *model, const char *pipeline,
                         void (*tweak)(fake_worker_config_t *config));
/* Stats from the broker, or NULL. Free with proto_service_free. */
Xlm__ServiceMessage *fx_stats(fx_t *fx);
const Xlm__ModelStats *fx_model_stats(const Xlm__ServiceMessage *stats, const char *model);
/* Polls stats until model has n pipelines alive; false after timeout_ms. */
bool fx_wait_pipelines(fx_t *fx, const char *model, uint32_t n, int timeout_ms);
/* Polls stats until the broker has received n requests (a client's first
 * messages wait for its connection); false after timeout_ms. */
bool fx_wait_received(fx_t *fx, uint64_t n, int timeout_ms);
/* The next response on fx->client within timeout_ms, or NULL. */
Xlm__ServiceMessage *fx_response(fx_t *fx, int timeout_ms);
/* Expects one response with this id and status; returns it (free it). */
Xlm__ServiceMessage *fx_expect(fx_t *fx, const char *id, proto_status_t status, int timeout_ms);
/* True when the broker process is still running. */
bool fx_broker_alive(const fx_t *fx);

#endif
