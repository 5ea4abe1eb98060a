/* plan.c: which layers each pipeline stage owns. */
#include "worker.h"

#include <stdlib.h>

/* Cost of the vocabulary projection on the last stage, in units of one
 * layer's compute per token (24 emb^2 flops): 2 vocab emb flops for each
 * projected position. */
static double head_cost(const shard_config_t *c, double projected_share)
{
    return projected_share * (double)c->vocab_size * 2.0 / (24.0 * (double)c->emb_dim);
}

shard_status_t worker_plan_layers(const shard_config_t *c, int n_stages, double projected_share,
                                  int64_t *counts, shard_error_t *err)
{
    if (!(projected_share >= 0.0 && projected_share <= 1.0))
        return shard_error_set(err, SHARD_ERR_RANGE,
                               "worker_plan_layers: projected share %g, expected 0..1",
                               projected_share);
    const int64_t n = c->n_layers;
    if (n_stages < 1 || n_stages > WORKER_MAX_STAGES || n_stages > n + 1)
        return shard_error_set(err, SHARD_ERR_RANGE,
                               "worker_plan_layers: %d stages for %lld layers, expected 1..%lld",
                               n_stages, (long long)n,
                               (long long)(n + 1 < WORKER_MAX_STAGES ? n + 1 : WORKER_MAX_STAGES));
    /* Minimise the slowest stage: best[s][k] = the smallest maximum cost of
     * splitting the first k layers into stages 0..s. Layers cost 1 each. */
    const double extra = head_cost(c, projected_share);
    const size_t cols = (size_t)n + 1;
    double *best = malloc((size_t)n_stages * cols * sizeof *best);
    int64_t *cut = malloc((size_t)n_stages * cols * sizeof *cut);
    if (!best || !cut) {
        free(best);
        free(cut);
        return shard_error_set(err, SHARD_ERR_NOMEM, "worker_plan_layers: out of memory");
    }
    for (int64_t k = 0; k <= n; k++) {
        best[k] = (double)k + (n_stages == 1 ? extra : 0.0);
        cut[k] = 0;
    }
    for (int s = 1; s < n_stages; s++) {
        const double tail = s == n_stages - 1 ? extra : 0.0;
        for (int64_t k = 0; k <= n; k++) {
            double choice = -1.0;
            int64_t where = 0;
            /* Every stage but a surplus one gets at least one layer. */
            for (int64_t j = (k >= s ? s : k); j <= k; j++) {
                double prev = best[(size_t)(s - 1) * cols + (size_t)j];
                double here = (double)(k - j) + tail;
                double worst = prev > here ? prev : here;
                if (choice < 0 || worst < choice - 1e-9) {
                    choice = worst;
                    where = j;
                }
            }
            best[(size_t)s * cols + (size_t)k] = choice;
            cut[(size_t)s * cols + (size_t)k] = where;
        }
    }
    int64_t k = n;
    for (int s = n_stages - 1; s >= 0; s--) {
        int64_t j = s ? cut[(size_t)s * cols + (size_t)k] : 0;
        counts[s] = k - j;
        k = j;
    }
    free(best);
    free(cut);
    return SHARD_OK;
}
