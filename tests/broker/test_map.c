/* test_map.c: the broker's hash map and lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "broker_internal.h"

static int setup(void **state)
{
    *state = broker_map_new();
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    broker_map_t *map = *state;
    broker_map_destroy(&map);
    assert_null(map);
    broker_map_destroy(&map); /* NULL-safe */
    broker_map_destroy(NULL);
    return 0;
}

static void test_put_get_remove(void **state)
{
    broker_map_t *map = *state;
    int a = 1, b = 2;
    assert_int_equal(broker_map_put(map, "alpha", 5, &a), BROKER_OK);
    assert_int_equal(broker_map_put(map, "beta", 4, &b), BROKER_OK);
    assert_ptr_equal(broker_map_get(map, "alpha", 5), &a);
    assert_ptr_equal(broker_map_get(map, "beta", 4), &b);
    assert_null(broker_map_get(map, "alph", 4));
    assert_null(broker_map_get(map, "gamma", 5));
    assert_int_equal(broker_map_size(map), 2);
    /* Replace keeps the size. */
    assert_int_equal(broker_map_put(map, "alpha", 5, &b), BROKER_OK);
    assert_ptr_equal(broker_map_get(map, "alpha", 5), &b);
    assert_int_equal(broker_map_size(map), 2);
    assert_ptr_equal(broker_map_remove(map, "alpha", 5), &b);
    assert_null(broker_map_remove(map, "alpha", 5));
    assert_null(broker_map_get(map, "alpha", 5));
    assert_int_equal(broker_map_size(map), 1);
}

static void test_binary_keys_and_growth(void **state)
{
    broker_map_t *map = *state;
    enum { N = 20000 };
    static uint64_t keys[N];
    for (uint64_t i = 0; i < N; i++) {
        keys[i] = i * 0x10000; /* low bits all zero: the hash must spread them */
        assert_int_equal(broker_map_put(map, &keys[i], sizeof keys[i], &keys[i]), BROKER_OK);
    }
    assert_int_equal(broker_map_size(map), N);
    for (uint64_t i = 0; i < N; i++)
        assert_ptr_equal(broker_map_get(map, &keys[i], sizeof keys[i]), &keys[i]);
    for (uint64_t i = 0; i < N; i += 2)
        assert_ptr_equal(broker_map_remove(map, &keys[i], sizeof keys[i]), &keys[i]);
    assert_int_equal(broker_map_size(map), N / 2);
    for (uint64_t i = 0; i < N; i++)
        assert_ptr_equal(broker_map_get(map, &keys[i], sizeof keys[i]), i % 2 ? &keys[i] : NULL);
    /* An empty key is a key. */
    assert_int_equal(broker_map_put(map, "", 0, map), BROKER_OK);
    assert_ptr_equal(broker_map_get(map, "", 0), map);
}

typedef struct {
    broker_link_t link;
    int value;
} item_t;

static void test_lists(void **state)
{
    (void)state;
    broker_link_t head;
    broker_list_init(&head);
    assert_true(broker_list_empty(&head));
    item_t items[4];
    for (int i = 0; i < 4; i++) {
        items[i].value = i;
        broker_list_push_back(&head, &items[i].link);
    }
    broker_list_remove(&items[1].link);
    broker_list_push_front(&head, &items[1].link);
    int order[4], n = 0;
    for (broker_link_t *l = head.next; l != &head; l = l->next)
        order[n++] = BROKER_CONTAINER(l, item_t, link)->value;
    assert_int_equal(n, 4);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 0);
    assert_int_equal(order[2], 2);
    assert_int_equal(order[3], 3);
    /* Removal under a cursor that saved its next link. */
    for (broker_link_t *l = head.next, *next; l != &head; l = next) {
        next = l->next;
        broker_list_remove(l);
    }
    assert_true(broker_list_empty(&head));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_keys_and_growth, setup, teardown),
        cmocka_unit_test(test_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
