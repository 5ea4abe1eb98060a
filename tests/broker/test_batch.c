/* test_batch.c: micro-batch selection: token budget, padded cap, keys, the
 * head always first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "broker_internal.h"

static broker_batch_item_t item(int64_t rows, int64_t len)
{
    broker_batch_item_t it = {rows, len, {PROTO_TASK_LM, 0}, false, rows * len};
    return it;
}

static void test_budget_and_padding(void **state)
{
    (void)state;
    broker_batch_item_t items[] = {
        item(2, 10), /* head: 20 tokens */
        item(1, 40), /* 60 tokens, padded 3 x 40 = 120 */
        item(3, 11), /* 93 tokens, padded 6 x 40 = 240 */
        item(1, 10), /* 103 > 100: skipped */
        item(1, 7),  /* 100 tokens, padded 7 x 40 = 280 */
    };
    size_t chosen[5];
    size_t n = broker_batch_select(items, 5, 100, 16, chosen);
    assert_int_equal(n, 4);
    assert_int_equal(chosen[0], 0);
    assert_int_equal(chosen[1], 1);
    assert_int_equal(chosen[2], 2);
    assert_int_equal(chosen[3], 4);
    /* The padded size is capped at 4 x the budget: 2 x 10 then 1 x 40 pads to 120 > 4 x 25. */
    n = broker_batch_select(items, 2, 25, 16, chosen);
    assert_int_equal(n, 1);
    /* max_requests bounds it. */
    assert_int_equal(broker_batch_select(items, 5, 1000, 2, chosen), 2);
}

static void test_head_always_taken(void **state)
{
    (void)state;
    broker_batch_item_t items[] = {item(8, 60), item(1, 60)};
    size_t chosen[2];
    /* The head alone is over budget: it goes alone (the worker splits or
     * refuses), the queue does not stall behind it. */
    assert_int_equal(broker_batch_select(items, 2, 100, 16, chosen), 1);
    assert_int_equal(chosen[0], 0);
    assert_int_equal(broker_batch_select(items, 0, 100, 16, chosen), 0);
}

static void test_keys_and_alone(void **state)
{
    (void)state;
    broker_batch_item_t items[] = {item(1, 8), item(1, 8), item(1, 8), item(1, 8)};
    items[1].key.task = PROTO_TASK_SEQ_CLS; /* another task */
    items[2].alone = true; /* generate */
    size_t chosen[4];
    assert_int_equal(broker_batch_select(items, 4, 1000, 16, chosen), 2);
    assert_int_equal(chosen[1], 3);
    items[0].alone = true;
    assert_int_equal(broker_batch_select(items, 4, 1000, 16, chosen), 1);
}

/* Same task, other choices per example: never one micro-batch. */
static void test_key_fields_compared(void **state)
{
    (void)state;
    broker_batch_item_t items[] = {item(4, 8), item(4, 8), item(6, 8)};
    for (int i = 0; i < 3; i++)
        items[i].key = (broker_batch_key_t){PROTO_TASK_MULTIPLE_CHOICE, i < 2 ? 2 : 3};
    size_t chosen[3];
    assert_int_equal(broker_batch_select(items, 3, 1000, 16, chosen), 2);
    assert_int_equal(chosen[1], 1);
}

/* Keys and alone come from proto_task_info: n_choices only where the task
 * takes it, the tasks that are not batchable always alone. */
static void test_key_of_request(void **state)
{
    (void)state;
    Xlm__Request rq = XLM__REQUEST__INIT;
    rq.task = XLM__TASK__TASK_MULTIPLE_CHOICE;
    rq.n_choices = 4;
    broker_batch_key_t mc = broker_batch_key_of(&rq);
    assert_int_equal(mc.task, PROTO_TASK_MULTIPLE_CHOICE);
    assert_int_equal(mc.n_choices, 4);
    rq.task = XLM__TASK__TASK_SEQ_CLS;
    broker_batch_key_t seq = broker_batch_key_of(&rq);
    assert_int_equal(seq.task, PROTO_TASK_SEQ_CLS);
    assert_int_equal(seq.n_choices, 0);
    assert_false(broker_batch_key_equal(&mc, &seq));
    broker_batch_key_t again = broker_batch_key_of(&rq);
    assert_true(broker_batch_key_equal(&seq, &again));
    assert_false(proto_task_info(PROTO_TASK_GENERATE)->batchable);
    assert_false(proto_task_info(PROTO_TASK_MLM_PLL)->batchable);
    assert_true(proto_task_info(PROTO_TASK_CLM_SCORE)->batchable);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_fields_compared),
        cmocka_unit_test(test_key_of_request),
        cmocka_unit_test(test_budget_and_padding),
        cmocka_unit_test(test_head_always_taken),
        cmocka_unit_test(test_keys_and_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
