/* pool.c: the gateway's broker clients. libxlmclient is one client per
 * thread at a time, so a request borrows one for its whole call; the
 * number of clients bounds the requests computing at once (the rest wait
 * in the admission queue of server.c). */
#include "gateway_internal.h"

#include <stdio.h>
#include <stdlib.h>

struct gw_pool {
    pthread_mutex_t lock;
    pthread_cond_t freed;
    xlm_client_t **idle; /* [n] stack */
    size_t n, n_idle;
};

gw_pool_t *gw_pool_new(const gateway_options_t *o, char *error, size_t error_size)
{
    gw_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool || !(pool->idle = calloc(o->clients, sizeof *pool->idle))) {
        snprintf(error, error_size, "out of memory for %zu clients", o->clients);
        free(pool);
        return NULL;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->freed, NULL);
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = o->broker;
    config.window = 256; /* a /v1/score request keeps many pairs in flight */
    config.attempt_timeout_ms = o->attempt_timeout_ms;
    config.max_attempts = o->max_attempts;
    config.deadline_ms = o->deadline_ms;
    config.curve_server = o->curve_server_file;
    config.curve_secret = o->curve_secret_file;
    for (size_t i = 0; i < o->clients; i++) {
        xlm_error_t err;
        xlm_client_t *client = xlm_client_new(&config, &err);
        if (!client) {
            snprintf(error, error_size, "%s", err.message);
            gw_pool_destroy(&pool);
            return NULL;
        }
        pool->idle[pool->n_idle++] = client;
        pool->n++;
    }
    return pool;
}

xlm_client_t *gw_pool_take(gw_pool_t *pool)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->n_idle == 0)
        pthread_cond_wait(&pool->freed, &pool->lock);
    xlm_client_t *client = pool->idle[--pool->n_idle];
    pthread_mutex_unlock(&pool->lock);
    return client;
}

void gw_pool_give(gw_pool_t *pool, xlm_client_t *client)
{
    /* The calls used here (call, score_pairs) leave the window empty, even
     * when they fail; finished leftovers would only come from a bug, and
     * are dropped so the next borrower starts clean. */
    while (xlm_client_outstanding(client)) {
        xlm_result_t *stale = NULL;
        if (xlm_client_collect(client, NULL, 0, &stale) != XLM_OK)
            break;
        xlm_result_destroy(&stale);
    }
    pthread_mutex_lock(&pool->lock);
    pool->idle[pool->n_idle++] = client;
    pthread_cond_signal(&pool->freed);
    pthread_mutex_unlock(&pool->lock);
}

void gw_pool_destroy(gw_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_pool_t *pool = *self_p;
    for (size_t i = 0; i < pool->n_idle; i++)
        xlm_client_destroy(&pool->idle[i]);
    free(pool->idle);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->freed);
    free(pool);
    *self_p = NULL;
}
