/* Packets between stages: a round trip keeps every value; malformed bytes
 * are refused with an error, never read out of bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "worker_internal.h"

static worker_micro_t *sample_micro(void)
{
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, 3, 5, 2, true, false, true);
    assert_non_null(m);
    m->micro_id = 42;
    m->n_stages = 3;
    m->stage_us[0] = 17;
    for (int i = 0; i < 15; i++) {
        m->input_ids[i] = 100 + i;
        m->attention_mask[i] = i % 5 < 4;
        m->p_mask[i] = (float)i / 8.0f;
    }
    assert_int_equal(shard_acts_reserve(m->acts, 3, 5, 4, 7, NULL), SHARD_OK);
    int64_t starts[4] = {0, 3, 5, 7};
    memcpy(m->acts->row_start, starts, sizeof starts);
    for (int t = 0; t < 7; t++) {
        m->acts->position[t] = t < 3 ? t : t < 5 ? t - 3 : t - 5;
        m->acts->is_real[t] = t != 4;
        for (int d = 0; d < 4; d++)
            m->acts->hidden[t * 4 + d] = (float)t + 0.25f * (float)d;
    }
    m->items[0] = (worker_item_t){.ticket = 7, .batch_id = 9, .task = PROTO_TASK_CLM_SCORE,
                                  .row0 = 0, .rows = 2, .seq = 5, .credit = 0};
    snprintf(m->items[0].id, sizeof m->items[0].id, "request-a");
    m->items[0].windows = calloc(2, sizeof *m->items[0].windows);
    m->items[0].orig_rows = 2;
    m->items[0].windows[0] = (worker_window_t){3, 5};
    m->items[0].windows[1] = (worker_window_t){1, 4};
    m->items[1] = (worker_item_t){.ticket = 8, .batch_id = 9, .task = PROTO_TASK_QA,
                                  .row0 = 2, .rows = 1, .seq = 4, .credit = 1};
    snprintf(m->items[1].id, sizeof m->items[1].id, "request-b");
    return m;
}

static void round_trip_keeps_everything(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    shard_error_t err = {0};
    worker_micro_t *r = worker_packet_read(buffer, size, &err);
    assert_non_null(r);
    assert_int_equal(r->micro_id, 42);
    assert_int_equal(r->batch, 3);
    assert_int_equal(r->seq, 5);
    assert_int_equal(r->stage_us[0], 17);
    assert_int_equal(r->acts->n_tokens, 7);
    assert_memory_equal(r->acts->hidden, m->acts->hidden, 28 * sizeof(float));
    assert_memory_equal(r->acts->position, m->acts->position, 7 * sizeof(int32_t));
    assert_memory_equal(r->input_ids, m->input_ids, 15 * sizeof(int64_t));
    assert_memory_equal(r->p_mask, m->p_mask, 15 * sizeof(float));
    assert_int_equal(r->n_items, 2);
    assert_string_equal(r->items[0].id, "request-a");
    assert_int_equal(r->items[0].orig_rows, 2);
    assert_non_null(r->items[0].windows);
    assert_int_equal(r->items[0].windows[0].from, 3);
    assert_int_equal(r->items[0].windows[0].to, 5);
    assert_int_equal(r->items[0].windows[1].from, 1);
    assert_int_equal(r->items[0].windows[1].to, 4);
    assert_null(r->items[0].copies);
    assert_null(r->items[1].windows);
    assert_int_equal(r->items[1].credit, 1);
    assert_int_equal(r->items[1].seq, 4);
    worker_micro_destroy(&r);
    worker_micro_destroy(&m);
    free(buffer);
}

static void too_small_buffer_writes_nothing(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    assert_int_equal(worker_packet_write(m, buffer, size - 8), 0);
    worker_micro_destroy(&m);
    free(buffer);
}

static void every_truncation_refused(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    unsigned char *buffer = malloc(size);
    worker_packet_write(m, buffer, size);
    for (size_t cut = 0; cut < size; cut++) {
        void *copy = malloc(cut ? cut : 1);
        memcpy(copy, buffer, cut);
        shard_error_t err = {0};
        worker_micro_t *r = worker_packet_read(copy, cut, &err);
        assert_null(r);
        assert_int_equal(err.code, SHARD_ERR_FORMAT);
        free(copy);
    }
    worker_micro_destroy(&m);
    free(buffer);
}

static void corrupted_layout_refused(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    m->acts->position[2] = 9; /* beyond seq 5 */
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    worker_packet_write(m, buffer, size);
    shard_error_t err = {0};
    assert_null(worker_packet_read(buffer, size, &err));
    assert_non_null(strstr(err.message, "layout"));
    m->acts->position[2] = 2;
    m->items[1].row0 = 3; /* rows [3, 4) of a batch of 3 */
    worker_packet_write(m, buffer, size);
    assert_null(worker_packet_read(buffer, size, &err));
    assert_non_null(strstr(err.message, "item 1"));
    worker_micro_destroy(&m);
    free(buffer);
}

static void flipped_bytes_never_crash(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    unsigned char *buffer = malloc(size), *copy = malloc(size);
    worker_packet_write(m, buffer, size);
    for (size_t at = 0; at < size; at += 3) {
        memcpy(copy, buffer, size);
        copy[at] ^= 0xa5;
        shard_error_t err = {0};
        worker_micro_t *r = worker_packet_read(copy, size, &err);
        worker_micro_destroy(&r);
    }
    worker_micro_destroy(&m);
    free(buffer);
    free(copy);
}

/* An mlm_pll item: 2 request rows, 3 masked copies (the item's rows). */
static worker_micro_t *pll_micro(void)
{
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, 3, 5, 1, false, false, false);
    assert_non_null(m);
    assert_int_equal(shard_acts_reserve(m->acts, 3, 5, 2, 0, NULL), SHARD_OK);
    memset(m->acts->row_start, 0, 4 * sizeof *m->acts->row_start);
    worker_item_t *it = &m->items[0];
    *it = (worker_item_t){.ticket = 1, .task = PROTO_TASK_MLM_PLL, .rows = 3, .seq = 5,
                          .orig_rows = 2, .n_copies = 3, .return_tokens = true};
    snprintf(it->id, sizeof it->id, "pll");
    it->windows = calloc(2, sizeof *it->windows);
    it->copies = calloc(3, sizeof *it->copies);
    assert_true(it->windows && it->copies);
    it->windows[0] = (worker_window_t){1, 3};
    it->windows[1] = (worker_window_t){2, 3};
    it->copies[0] = (worker_pll_copy_t){.row = 0, .pos = 1, .target = 11};
    it->copies[1] = (worker_pll_copy_t){.row = 0, .pos = 2, .target = 12};
    it->copies[2] = (worker_pll_copy_t){.row = 1, .pos = 2, .target = 21};
    return m;
}

static worker_micro_t *pll_round_trip(worker_micro_t *m, shard_error_t *err)
{
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    worker_micro_t *r = worker_packet_read(buffer, size, err);
    free(buffer);
    return r;
}

static void pll_records_round_trip(void **state)
{
    (void)state;
    worker_micro_t *m = pll_micro();
    shard_error_t err = {0};
    worker_micro_t *r = pll_round_trip(m, &err);
    if (!r)
        fail_msg("%s", err.message);
    const worker_item_t *it = &r->items[0];
    assert_int_equal(it->orig_rows, 2);
    assert_int_equal(it->n_copies, 3);
    assert_true(it->return_tokens);
    assert_memory_equal(it->windows, m->items[0].windows, 2 * sizeof *it->windows);
    assert_memory_equal(it->copies, m->items[0].copies, 3 * sizeof *it->copies);
    worker_micro_destroy(&r);
    worker_micro_destroy(&m);
}

/* Records that point outside the item are refused, naming the item. */
static void bad_records_refused(void **state)
{
    (void)state;
    struct { int which; int64_t value; } bad[] = {
        {0, 6},  /* a window ending past seq 5 */
        {1, 5},  /* a masked position past the last one (4) */
        {2, 2},  /* a copy of request row 2 of 2 */
        {3, 12}, /* task 12 is not a wire task */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        worker_micro_t *m = pll_micro();
        worker_item_t *it = &m->items[0];
        if (bad[k].which == 0)
            it->windows[1].to = bad[k].value;
        else if (bad[k].which == 1)
            it->copies[2].pos = bad[k].value;
        else if (bad[k].which == 2)
            it->copies[0].row = bad[k].value;
        else
            it->task = (int32_t)bad[k].value;
        shard_error_t err = {0};
        worker_micro_t *r = pll_round_trip(m, &err);
        if (r)
            fail_msg("bad record %zu accepted", k);
        assert_int_equal(err.code, SHARD_ERR_FORMAT);
        assert_non_null(strstr(err.message, "item 0"));
        worker_micro_destroy(&m);
    }
}

/* An mlm_pll request whose rows score fewer positions than it has rows
 * (a row may score none) still travels. */
static void fewer_copies_than_rows(void **state)
{
    (void)state;
    worker_micro_t *m = pll_micro();
    worker_item_t *it = &m->items[0];
    it->orig_rows = 4;
    worker_window_t *w = realloc(it->windows, 4 * sizeof *w);
    assert_non_null(w);
    it->windows = w;
    w[2] = (worker_window_t){3, 3};
    w[3] = (worker_window_t){1, 1};
    shard_error_t err = {0};
    worker_micro_t *r = pll_round_trip(m, &err);
    if (!r)
        fail_msg("%s", err.message);
    assert_int_equal(r->items[0].orig_rows, 4);
    assert_int_equal(r->items[0].windows[2].from, 3);
    worker_micro_destroy(&r);
    worker_micro_destroy(&m);
}

static void capacity_overflow_is_zero(void **state)
{
    (void)state;
    assert_true(worker_packet_capacity(1024, 64) > 1024 * 64 * 4);
    assert_int_equal(worker_packet_capacity(INT64_MAX / 2, 1024), 0);
    assert_int_equal(worker_packet_capacity(16, 0), 0);
    assert_int_equal(worker_packet_capacity(-1, 64), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_keeps_everything),
        cmocka_unit_test(too_small_buffer_writes_nothing),
        cmocka_unit_test(every_truncation_refused),
        cmocka_unit_test(corrupted_layout_refused),
        cmocka_unit_test(flipped_bytes_never_crash),
        cmocka_unit_test(pll_records_round_trip),
        cmocka_unit_test(bad_records_refused),
        cmocka_unit_test(fewer_copies_than_rows),
        cmocka_unit_test(capacity_overflow_is_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
