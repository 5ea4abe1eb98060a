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
    m->items[0].score = calloc(4, sizeof(int64_t));
    m->items[0].n_score = 4;
    m->items[0].orig_rows = 2;
    m->items[0].score[0] = 3;
    m->items[0].score[1] = 1;
    m->items[0].score[2] = 5;
    m->items[0].score[3] = 4;
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
    assert_int_equal(r->items[0].n_score, 4);
    assert_int_equal(r->items[0].score[0], 3);
    assert_int_equal(r->items[0].score[1], 1);
    assert_int_equal(r->items[0].score[3], 4);
    assert_null(r->items[1].score);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_keeps_everything),
        cmocka_unit_test(too_small_buffer_writes_nothing),
        cmocka_unit_test(every_truncation_refused),
        cmocka_unit_test(corrupted_layout_refused),
        cmocka_unit_test(flipped_bytes_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
