/* fixture.c: see fixture.h. */
#include "fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int fx_start(fx_t *fx, const char *const *extra)
{
    if (fx->front_port == 0) {
        fx->front_port = testing_free_port();
        fx->back_port = testing_free_port();
        while (fx->back_port == fx->front_port)
            fx->back_port = testing_free_port();
        snprintf(fx->front, sizeof fx->front, "tcp://127.0.0.1:%d", fx->front_port);
        snprintf(fx->back, sizeof fx->back, "tcp://127.0.0.1:%d", fx->back_port);
    }
    const char *args[48] = {FX_BROKER_ARGS};
    int n = 0;
    while (args[n])
        n++;
    for (int i = 0; extra && extra[i] && n < 46; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    testing_spawn_t how = {fx->log_path[0] ? fx->log_path : NULL, fx->curve_secret,
                           fx->curve_server};
    fx->broker = testing_broker_spawn_with(XLM_BIN_DIR "/xlm-broker", fx->front_port,
                                           fx->back_port, args, &how);
    if (fx->broker < 0)
        return -1;
    if (!fx->client)
        fx->client = test_client_new_curve(fx->front, fx->curve_secret, fx->curve_server);
    if (!fx->admin)
        fx->admin = test_client_new_curve(fx->front, fx->curve_secret, fx->curve_server);
    return fx->client && fx->admin ? 0 : -1;
}

int fx_teardown(fx_t *fx)
{
    for (int i = 0; i < FX_MAX_WORKERS; i++)
        fake_worker_stop(&fx->workers[i]);
    test_client_destroy(&fx->client);
    test_client_destroy(&fx->admin);
    int rc = 0;
    if (fx->broker > 0) {
        /* A graceful stop, so that a sanitizer build checks the broker's
         * exit (leaks make the exit status non-zero). */
        int status = testing_process_stop(fx->broker, SIGTERM, 5000);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fx_teardown: xlm-broker ended with status 0x%x\n", status);
            rc = -1;
        }
    }
    fx->broker = 0;
    return rc;
}

fake_worker_t *fx_worker(fx_t *fx, int i, const char *model, const char *pipeline,
                         void (*tweak)(fake_worker_config_t *config))
{
    fake_worker_config_t c;
    fake_worker_config_defaults(&c);
    c.endpoint = fx->back;
    c.model = model;
    c.pipeline = pipeline;
    c.heartbeat_ms = 100;
    if (tweak)
        tweak(&c);
    /* The broker knows how many pipelines the model had before. */
    Xlm__ServiceMessage *before = fx_stats(fx);
    const Xlm__ModelStats *ms = fx_model_stats(before, model);
    uint32_t alive = ms ? ms->pipelines_alive : 0;
    proto_service_free(&before);
    fx->workers[i] = fake_worker_start(&c);
    if (!fx->workers[i] || !fx_wait_pipelines(fx, model, alive + 1, 5000))
        fail_msg("fx_worker: pipeline '%s' of model '%s' did not register", pipeline, model);
    return fx->workers[i];
}

Xlm__ServiceMessage *fx_stats(fx_t *fx)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (test_client_send_stats(fx->admin) != 0)
            return NULL;
        Xlm__ServiceMessage *msg = test_client_recv(fx->admin, 2000);
        if (msg && msg->body_case == XLM__SERVICE_MESSAGE__BODY_STATS)
            return msg;
        proto_service_free(&msg);
    }
    return NULL;
}

const Xlm__ModelStats *fx_model_stats(const Xlm__ServiceMessage *stats, const char *model)
{
    for (size_t i = 0; stats && i < stats->stats->n_models; i++)
        if (strcmp(stats->stats->models[i]->name, model) == 0)
            return stats->stats->models[i];
    return NULL;
}

bool fx_wait_pipelines(fx_t *fx, const char *model, uint32_t n, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        const Xlm__ModelStats *ms = fx_model_stats(stats, model);
        bool ok = ms && ms->pipelines_alive == n;
        proto_service_free(&stats);
        if (ok)
            return true;
        usleep(10000);
    }
    return false;
}

bool fx_wait_received(fx_t *fx, uint64_t n, int timeout_ms)
{
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        Xlm__ServiceMessage *stats = fx_stats(fx);
        bool ok = stats && stats->stats->requests_received >= n;
        proto_service_free(&stats);
        if (ok)
            return true;
        usleep(5000);
    }
    return false;
}

Xlm__ServiceMessage *fx_response(fx_t *fx, int timeout_ms)
{
    Xlm__ServiceMessage *msg = test_client_recv(fx->client, timeout_ms);
    if (msg && msg->body_case != XLM__SERVICE_MESSAGE__BODY_RESPONSE)
        proto_service_free(&msg);
    return msg;
}

Xlm__ServiceMessage *fx_expect(fx_t *fx, const char *id, proto_status_t status, int timeout_ms)
{
    Xlm__ServiceMessage *msg = fx_response(fx, timeout_ms);
    if (!msg)
        fail_msg("fx_expect: no response for '%s' within %d ms", id, timeout_ms);
    const Xlm__Response *r = msg->response;
    if (strcmp(r->id, id) != 0 || (int)r->status != (int)status)
        fail_msg("fx_expect: got id '%s' status %s ('%s'), expected id '%s' status %s", r->id,
                 proto_status_str((proto_status_t)r->status), r->message, id,
                 proto_status_str(status));
    return msg;
}

bool fx_broker_alive(const fx_t *fx)
{
    return fx->broker > 0 && waitpid(fx->broker, NULL, WNOHANG) == 0;
}

int fx_state_setup(void **state, const char *const *extra)
{
    fx_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    if (fx_start(fx, extra) != 0) {
        fx_teardown(fx);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

int fx_state_teardown(void **state)
{
    fx_t *fx = *state;
    int rc = fx_teardown(fx);
    free(fx);
    *state = NULL;
    return rc;
}
