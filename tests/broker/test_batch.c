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
    broker_batch_item_t it = {rows, len, 1, false, rows * len};
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
    items[1].key = 2;    /* another task */
    items[2].alone = true; /* generate */
    size_t chosen[4];
    assert_int_equal(broker_batch_select(items, 4, 1000, 16, chosen), 2);
    assert_int_equal(chosen[1], 3);
    items[0].alone = true;
    assert_int_equal(broker_batch_select(items, 4, 1000, 16, chosen), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_and_padding),
        cmocka_unit_test(test_head_always_taken),
        cmocka_unit_test(test_keys_and_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
