/* test_batch.c: micro-batch selection: budget, buckets, keys, the head
 * always first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "broker_internal.h"

static broker_batch_item_t item(int64_t rows, int64_t len)
{
    broker_batch_item_t it = {rows, len, 1, false};
    return it;
}

static void test_buckets(void **state)
{
    (void)state;
    assert_int_equal(broker_batch_bucket(1), 0);
    assert_int_equal(broker_batch_bucket(64), broker_batch_bucket(79));
    assert_int_not_equal(broker_batch_bucket(79), broker_batch_bucket(80));
    assert_int_not_equal(broker_batch_bucket(63), broker_batch_bucket(64));
    /* Within a bucket the longest is less than 25% over the shortest. */
    for (int64_t a = 2; a < 5000; a++)
        for (int64_t b = a + 1; b < a + a / 3 + 2; b++)
            if (broker_batch_bucket(a) == broker_batch_bucket(b) && (b - a) * 4 >= a)
                fail_msg("lengths %lld and %lld share bucket %d", (long long)a, (long long)b,
                         broker_batch_bucket(a));
    /* Monotonic. */
    for (int64_t a = 1; a < 100000; a++)
        assert_true(broker_batch_bucket(a) <= broker_batch_bucket(a + 1));
}

static void test_budget_and_buckets(void **state)
{
    (void)state;
    broker_batch_item_t items[] = {
        item(2, 10), /* head: bucket of 10, 20 padded tokens */
        item(1, 40), /* other bucket */
        item(3, 11), /* same bucket: 5 rows x 11 = 55 */
        item(4, 10), /* 9 x 11 = 99 */
        item(1, 11), /* 10 x 11 = 110 > 100: skipped */
    };
    size_t chosen[5];
    size_t n = broker_batch_select(items, 5, 100, 16, chosen);
    assert_int_equal(n, 3);
    assert_int_equal(chosen[0], 0);
    assert_int_equal(chosen[1], 2);
    assert_int_equal(chosen[2], 3);
    /* A larger budget takes the last one too, never the other bucket. */
    n = broker_batch_select(items, 5, 1000, 16, chosen);
    assert_int_equal(n, 4);
    assert_int_equal(chosen[3], 4);
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
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_budget_and_buckets),
        cmocka_unit_test(test_head_always_taken),
        cmocka_unit_test(test_keys_and_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
