/* Layer plans: balanced by compute, head included, every layer once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "worker.h"

#include <string.h>

static shard_config_t config_of(int64_t layers, int64_t emb, int64_t vocab)
{
    shard_config_t c = {0};
    c.n_layers = layers;
    c.emb_dim = emb;
    c.vocab_size = vocab;
    return c;
}

static int64_t sum(const int64_t *counts, int n)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += counts[i];
    return total;
}

static void even_split_without_head_cost(void **state)
{
    (void)state;
    shard_config_t c = config_of(12, 2048, 2);
    int64_t counts[4];
    shard_error_t err = {0};
    assert_int_equal(worker_plan_layers(&c, 4, 1.0, counts, &err), SHARD_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(counts[i], 3);
}

static void lm_head_takes_layers_off_the_last_stage(void **state)
{
    (void)state;
    /* enfr-1024: projecting every position costs 64139*2/(24*1024) = 5.2 layers. */
    shard_config_t c = config_of(6, 1024, 64139);
    int64_t counts[2];
    shard_error_t err = {0};
    assert_int_equal(worker_plan_layers(&c, 2, 1.0, counts, &err), SHARD_OK);
    assert_int_equal(counts[0], 6);
    assert_int_equal(counts[1], 0);
    /* Scoring projects about half the positions: 2.6 layers. */
    assert_int_equal(worker_plan_layers(&c, 2, 0.5, counts, &err), SHARD_OK);
    assert_int_equal(counts[0], 4);
    assert_int_equal(counts[1], 2);
    /* The tiny en-fr model: head cost 0.34 layer; 4 layers over 2 stages. */
    c = config_of(4, 128, 1044);
    assert_int_equal(worker_plan_layers(&c, 2, 0.5, counts, &err), SHARD_OK);
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 2);
}

static void every_layer_once(void **state)
{
    (void)state;
    for (int64_t layers = 1; layers <= 13; layers++)
        for (int stages = 1; stages <= layers + 1; stages++) {
            shard_config_t c = config_of(layers, 64, 1000);
            int64_t counts[WORKER_MAX_STAGES];
            shard_error_t err = {0};
            assert_int_equal(worker_plan_layers(&c, stages, 0.5, counts, &err), SHARD_OK);
            assert_int_equal(sum(counts, stages), layers);
            for (int s = 0; s < stages; s++)
                assert_true(counts[s] >= 0);
        }
}

static void too_many_stages_refused(void **state)
{
    (void)state;
    shard_config_t c = config_of(2, 64, 1000);
    int64_t counts[8];
    shard_error_t err = {0};
    assert_int_equal(worker_plan_layers(&c, 4, 0.0, counts, &err), SHARD_ERR_RANGE);
    assert_non_null(strstr(err.message, "4 stages for 2 layers"));
    assert_int_equal(worker_plan_layers(&c, 0, 0.0, counts, &err), SHARD_ERR_RANGE);
    assert_int_equal(worker_plan_layers(&c, 1, 1.5, counts, &err), SHARD_ERR_RANGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(even_split_without_head_cost),
        cmocka_unit_test(lm_head_takes_layers_off_the_last_stage),
        cmocka_unit_test(every_layer_once),
        cmocka_unit_test(too_many_stages_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
