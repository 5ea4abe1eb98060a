/* Micro-batches at stage 0 before they run: taking out a cancelled request
 * moves the later requests' rows up with every input array, and keeps
 * their own values; the worker's statuses all have names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "worker_internal.h"

enum { SEQ = 4 };

/* Three requests of 2, 1 and 3 rows; every value says its row and column
 * (row r, column c: 10 r + c), langs and p_mask alike. */
static worker_micro_t *three_requests(void)
{
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, 6, SEQ, 3, true, false, true);
    assert_non_null(m);
    for (int64_t r = 0; r < 6; r++)
        for (int64_t c = 0; c < SEQ; c++) {
            m->input_ids[r * SEQ + c] = 10 * r + c;
            m->attention_mask[r * SEQ + c] = c < 3;
            m->position_ids[r * SEQ + c] = c;
            m->langs[r * SEQ + c] = 100 + r;
            m->p_mask[r * SEQ + c] = (float)r + 0.5f;
        }
    const int64_t rows[3] = {2, 1, 3};
    for (int i = 0, row0 = 0; i < 3; row0 += (int)rows[i], i++) {
        m->items[i] = (worker_item_t){.ticket = 70 + (uint64_t)i, .row0 = row0, .rows = rows[i],
                                      .seq = SEQ, .orig_rows = rows[i], .credit = i == 2};
        m->items[i].windows = calloc((size_t)rows[i], sizeof *m->items[i].windows);
        assert_non_null(m->items[i].windows);
    }
    return m;
}

/* Row `row` of m holds original row `orig`. */
static void assert_row_is(const worker_micro_t *m, int64_t row, int64_t orig)
{
    for (int64_t c = 0; c < SEQ; c++) {
        assert_int_equal(m->input_ids[row * SEQ + c], 10 * orig + c);
        assert_int_equal(m->langs[row * SEQ + c], 100 + orig);
        assert_int_equal(m->position_ids[row * SEQ + c], c);
        assert_true(m->p_mask[row * SEQ + c] == (float)orig + 0.5f);
    }
}

static void dropping_the_middle_moves_the_rest_up(void **state)
{
    (void)state;
    worker_micro_t *m = three_requests();
    worker_micro_drop_item(m, 1);
    assert_int_equal(m->n_items, 2);
    assert_int_equal(m->batch, 5);
    assert_int_equal(m->items[0].ticket, 70);
    assert_int_equal(m->items[0].row0, 0);
    assert_int_equal(m->items[1].ticket, 72);
    assert_int_equal(m->items[1].row0, 2);
    assert_int_equal(m->items[1].credit, 1);
    const int64_t expected[5] = {0, 1, 3, 4, 5};
    for (int64_t r = 0; r < 5; r++)
        assert_row_is(m, r, expected[r]);
    worker_micro_destroy(&m);
}

static void dropping_first_and_last(void **state)
{
    (void)state;
    worker_micro_t *m = three_requests();
    worker_micro_drop_item(m, 2);
    assert_int_equal(m->batch, 3);
    worker_micro_drop_item(m, 0);
    assert_int_equal(m->n_items, 1);
    assert_int_equal(m->batch, 1);
    assert_int_equal(m->items[0].ticket, 71);
    assert_int_equal(m->items[0].row0, 0);
    assert_row_is(m, 0, 2);
    worker_micro_drop_item(m, 0);
    assert_int_equal(m->n_items, 0);
    assert_int_equal(m->batch, 0);
    worker_micro_destroy(&m);
}

static void every_status_has_a_name(void **state)
{
    (void)state;
    for (int s = 0; s > -WORKER_STATUS_COUNT_; s--)
        assert_string_not_equal(worker_status_str((worker_status_t)s), "unknown");
    assert_string_equal(worker_status_str(WORKER_ERR_STALLED), "stalled");
    assert_string_equal(worker_status_str((worker_status_t)-WORKER_STATUS_COUNT_), "unknown");
    assert_string_equal(worker_status_str((worker_status_t)1), "unknown");
    worker_error_t err;
    assert_int_equal(worker_error_set(&err, WORKER_ERR_PACKET, "f: %d bytes, expected 0", 5),
                     WORKER_ERR_PACKET);
    assert_int_equal(err.code, WORKER_ERR_PACKET);
    assert_string_equal(err.message, "f: 5 bytes, expected 0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dropping_the_middle_moves_the_rest_up),
        cmocka_unit_test(dropping_first_and_last),
        cmocka_unit_test(every_status_has_a_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
