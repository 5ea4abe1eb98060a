/* Per-stage statistics from the Replies: compute time and, for every stage
 * after the first, the bytes of the packets it received (what the
 * throughput model of bench/ reads). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "broker_internal.h"

static void packet_bytes_summed_past_stage_0(void **state)
{
    (void)state;
    broker_model_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    const uint64_t first[] = {100, 250, 40}, second[] = {300, 50, 60};
    broker_model_record_stages(m, first, 3, 4096);
    broker_model_record_stages(m, second, 3, 1000);
    assert_int_equal(m->n_stages, 3);
    assert_int_equal(m->stages[0].packet_bytes, 0); /* stage 0 takes Batches, not packets */
    assert_int_equal(m->stages[1].packet_bytes, 5096);
    assert_int_equal(m->stages[2].packet_bytes, 5096);
    assert_int_equal(m->stages[1].batches, 2);
    assert_int_equal(m->stages[0].total_us, 400);
    assert_int_equal(m->stages[1].max_us, 250);
    free(m->stages);
    free(m);
}

static void one_stage_has_no_packets(void **state)
{
    (void)state;
    broker_model_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    const uint64_t only[] = {70};
    broker_model_record_stages(m, only, 1, 0);
    assert_int_equal(m->n_stages, 1);
    assert_int_equal(m->stages[0].packet_bytes, 0);
    assert_int_equal(m->stages[0].total_us, 70);
    free(m->stages);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(packet_bytes_summed_past_stage_0),
        cmocka_unit_test(one_stage_has_no_packets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
