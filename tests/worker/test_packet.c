/* Packets between stages: a round trip keeps every value; malformed bytes
 * are refused with an error, never read out of bounds; every flipped byte
 * has its expected outcome (refused with its reason, or decoded to what it
 * says). */
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
    /* Each item knows the packet it came in, for the broker's stage stats. */
    assert_int_equal(r->items[0].packet_bytes, size);
    assert_int_equal(r->items[1].packet_bytes, size);
    assert_int_equal(m->items[0].packet_bytes, 0);
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

/* What one flipped byte (x ^= 0xa5) of each field must do, field by field
 * in the order the packet holds them (sample_micro's values, 1,680 bytes;
 * integers little-endian). One letter per byte of the field, or one letter
 * for all of them:
 *   H  refused: bad header             T  refused: truncated
 *   L  refused: layout inconsistent    M  refused: item N is malformed
 *   R  refused: item 0's records (scored windows, masked copies) fall
 *      outside its 2 rows of 5 positions
 *   K  decodes with the flipped value: it writes back the flipped bytes
 *   I  decodes, the flip ignored: it writes back the original bytes
 *      (padding, the high half of a 32-bit field, a flag read as non-zero)
 *   S  decodes, the int32 made negative: written back sign-extended
 *   B  decodes, the flag set: written back as 1
 *   P  decodes, the byte ignored; not compared when written back: the
 *      writer leaves the padding after an item's id unset (its bytes are
 *      whatever was on the writer's stack)
 * A value pushed over 127 by the flip of its low byte can still pass the
 * header's bounds (batch 166 of seq 5, seq 160, emb_dim 161 all fit in 1,680
 * bytes by the header's arithmetic) and is then refused as truncated. */
typedef struct {
    const char *name;
    size_t bytes;
    const char *flips;
} flip_field_t;

static const flip_field_t micro_fields[] = { /* the header, activations, cells */
    {"magic", 8, "H"},          {"kind", 8, "H"},        {"batch", 8, "THHHHHHH"},
    {"seq", 8, "THHHHHHH"},     {"emb_dim", 8, "THHHHHHH"}, {"n_tokens", 8, "H"},
    {"n_items", 8, "H"},        {"has_p_mask", 8, "I"},  {"n_stages", 8, "H"},
    {"micro_id", 8, "K"},       {"started_us", 8, "K"},  {"stage_us", 8 * WORKER_MAX_STAGES, "K"},
    {"kv_mode", 8, "H"},        {"kv_key", 8, "K"},      {"kv_last", 8, "H"},
    {"kv_missed", 8, "H"},
    /* Activations (7 positions of 4 floats) and the 3x5 cells. */
    {"row_start", 4 * 8, "L"},  {"position", 7 * 4, "L"}, {"position padding", 4, "I"},
    {"is_real", 7, "K"},        {"is_real padding", 1, "I"}, {"hidden", 7 * 4 * 4, "K"},
    {"input_ids", 15 * 8, "K"}, {"attention_mask", 15 * 8, "K"}, {"p_mask", 15 * 4, "K"},
    {"p_mask padding", 4, "I"},
};

static const flip_field_t item_fields[] = {
    {"ticket", 8, "K"},       {"batch_id", 8, "K"},    {"queue_us", 8, "K"},
    {"tokenize_us", 8, "K"},  {"received_us", 8, "K"}, {"gen_job", 8, "K"},
    {"task", 8, "M"},  {"row0", 8, "M"},        {"rows", 8, "M"},
    {"seq", 8, "M"},          {"n_choices", 8, "KKKKKKKM"}, {"n_windows", 8, "M"},
    {"n_copies", 8, "M"},
    {"orig_rows", 8, "M"},    {"return_tokens", 8, "B"}, {"credit", 8, "KKKKIIII"},
    {"id", PROTO_ID_MAX + 1, "K"}, {"id padding", 7, "I"},
};

static const flip_field_t score_field = {"windows", 2 * 16, "R"}; /* item 0's 2 windows */

static char flip_letter(const flip_field_t *f, size_t byte)
{
    return f->flips[strlen(f->flips) == 1 ? 0 : byte];
}

/* Bytes a and b equal but where unset[] says the writer leaves them unset;
 * the first that differs, or size. */
static size_t first_difference(const unsigned char *a, const unsigned char *b,
                               const unsigned char *unset, size_t size)
{
    size_t i = 0;
    while (i < size && (unset[i] || a[i] == b[i]))
        i++;
    return i;
}

/* Flips byte (of field f, which starts at start; item -1 outside the
 * items) and checks the outcome its letter names. */
static void check_flip(const unsigned char *original, const unsigned char *unset, size_t size,
                       size_t start, const flip_field_t *f, size_t byte, int item)
{
    char letter = flip_letter(f, byte), refusal[128] = "";
    switch (letter) {
    case 'H': snprintf(refusal, sizeof refusal, "packet: bad header in %zu bytes", size); break;
    case 'T': snprintf(refusal, sizeof refusal, "packet: truncated (%zu bytes)", size); break;
    case 'L': snprintf(refusal, sizeof refusal, "packet: activation layout is inconsistent"); break;
    case 'M': snprintf(refusal, sizeof refusal, "packet: item %d is malformed", item); break;
    case 'R':
        snprintf(refusal, sizeof refusal, "packet: item %d has a scored window or masked copy "
                 "outside its 2 rows of 5 positions", item);
        break;
    case 'K': case 'I': case 'S': case 'B': case 'P': break;
    default: fail_msg("%s: no outcome '%c' for byte %zu", f->name, letter, byte);
    }
    const size_t at = start + byte;
    char where[32] = "";
    if (item >= 0)
        snprintf(where, sizeof where, "item %d ", item);
    unsigned char *copy = malloc(size), *want = malloc(size), *again = malloc(size);
    assert_non_null(copy);
    assert_non_null(want);
    assert_non_null(again);
    memcpy(copy, original, size);
    copy[at] ^= 0xa5;
    shard_error_t err = {0};
    worker_micro_t *r = worker_packet_read(copy, size, &err);
    if (refusal[0]) {
        if (r || err.code != SHARD_ERR_FORMAT || strcmp(err.message, refusal) != 0)
            fail_msg("%s%s byte %zu (packet byte %zu): expected \"%s\", got %s (%d: \"%s\")",
                     where, f->name, byte, at, refusal, r ? "a decoded packet" : "a refusal",
                     err.code, err.message);
    } else {
        if (!r)
            fail_msg("%s%s byte %zu (packet byte %zu): expected it to decode ('%c'), got \"%s\"",
                     where, f->name, byte, at, letter, err.message);
        memcpy(want, letter == 'K' || letter == 'S' ? copy : original, size);
        if (letter == 'S')
            memset(want + start + 4, 0xff, 4);
        if (letter == 'B')
            want[start] = 1;
        assert_int_equal(worker_packet_size(r), size);
        assert_int_equal(worker_packet_write(r, again, size), size);
        size_t first = first_difference(again, want, unset, size);
        if (first < size)
            fail_msg("%s%s byte %zu ('%c'): decoded, but writes back byte %zu as 0x%02x, "
                     "expected 0x%02x", where, f->name, byte, letter, first, again[first], want[first]);
    }
    worker_micro_destroy(&r);
    free(copy);
    free(want);
    free(again);
}

/* Walks n fields from *start on: marks the bytes the writer leaves unset
 * ('P') in unset[], or, when check, flips and checks every byte. */
static void walk_fields(const unsigned char *packet, unsigned char *unset, size_t size,
                        size_t *start, const flip_field_t *fields, size_t n, int item, bool check)
{
    for (size_t i = 0; i < n; i++) {
        const flip_field_t *f = &fields[i];
        size_t letters = strlen(f->flips);
        assert_true(letters == 1 || letters == f->bytes);
        assert_true(*start + f->bytes <= size);
        for (size_t byte = 0; byte < f->bytes; byte++) {
            if (check)
                check_flip(packet, unset, size, *start, f, byte, item);
            else
                unset[*start + byte] = flip_letter(f, byte) == 'P';
        }
        *start += f->bytes;
    }
}

/* The whole packet, field by field; returns the bytes the table covers. */
static size_t walk_packet(const unsigned char *packet, unsigned char *unset, size_t size, bool check)
{
    size_t at = 0;
    walk_fields(packet, unset, size, &at, micro_fields,
                sizeof micro_fields / sizeof micro_fields[0], -1, check);
    for (int item = 0; item < 2; item++) {
        walk_fields(packet, unset, size, &at, item_fields,
                    sizeof item_fields / sizeof item_fields[0], item, check);
        if (item == 0)
            walk_fields(packet, unset, size, &at, &score_field, 1, item, check);
    }
    return at;
}

static void flipped_bytes_refused_or_kept(void **state)
{
    (void)state;
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1)
        skip(); /* the table above is little-endian */
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    assert_int_equal(size, 1680); /* the T letters above hold for this size */
    unsigned char *buffer = malloc(size), *again = malloc(size), *unset = calloc(size, 1);
    assert_non_null(buffer);
    assert_non_null(again);
    assert_non_null(unset);
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    assert_int_equal(walk_packet(buffer, unset, size, false), size); /* the table covers it all */
    /* Unflipped, it decodes and writes back byte for byte. */
    shard_error_t err = {0};
    worker_micro_t *r = worker_packet_read(buffer, size, &err);
    assert_non_null(r);
    assert_int_equal(worker_packet_write(r, again, size), size);
    assert_int_equal(first_difference(again, buffer, unset, size), size);
    worker_micro_destroy(&r);
    /* Every byte, each with its expected outcome. */
    walk_packet(buffer, unset, size, true);
    worker_micro_destroy(&m);
    free(buffer);
    free(again);
    free(unset);
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

/* Found by fuzz_packet: an item whose row0 + rows overflows int64 wrapped
 * to a negative sum, passed the bound and had rows far past the batch
 * read. Each alone within int64, their sum is refused. */
static void item_rows_past_int64_refused(void **state)
{
    (void)state;
    struct { int64_t row0, rows; } bad[] = {
        {INT64_C(1) << 62, INT64_C(1) << 62},
        {INT64_MAX, 1},
        {2, INT64_MAX},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        worker_micro_t *m = sample_micro();
        m->items[1].row0 = bad[k].row0;
        m->items[1].rows = bad[k].rows;
        size_t size = worker_packet_size(m);
        void *buffer = malloc(size);
        assert_int_equal(worker_packet_write(m, buffer, size), size);
        shard_error_t err = {0};
        worker_micro_t *r = worker_packet_read(buffer, size, &err);
        if (r)
            fail_msg("item rows [%lld, +%lld) of a batch of 3 accepted", (long long)bad[k].row0,
                     (long long)bad[k].rows);
        assert_string_equal(err.message, "packet: item 1 is malformed");
        worker_micro_destroy(&m);
        free(buffer);
    }
}

/* Found by fuzz_packet: with seq 0 the header put no bound on batch, and
 * (batch + 1) row starts of 8 bytes overflowed the sizes computed from
 * it. batch is bounded by the packet's bytes whatever seq is. */
static void huge_batch_of_empty_rows_refused(void **state)
{
    (void)state;
    worker_micro_t *m = sample_micro();
    size_t size = worker_packet_size(m);
    unsigned char *buffer = malloc(size);
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    const int64_t batches[] = {INT64_C(1) << 61, INT64_MAX, (int64_t)size};
    for (size_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
        const int64_t zero = 0;
        memcpy(buffer + 2 * 8, &batches[k], 8); /* header: magic, kind, batch, seq, ... */
        memcpy(buffer + 3 * 8, &zero, 8);
        memcpy(buffer + 5 * 8, &zero, 8);       /* n_tokens */
        memcpy(buffer + 6 * 8, &zero, 8);       /* n_items */
        shard_error_t err = {0};
        worker_micro_t *r = worker_packet_read(buffer, size, &err);
        if (r)
            fail_msg("a batch of %lld rows of 0 positions in %zu bytes accepted",
                     (long long)batches[k], size);
        char want[64];
        snprintf(want, sizeof want, "packet: bad header in %zu bytes", size);
        assert_string_equal(err.message, want);
    }
    worker_micro_destroy(&m);
    free(buffer);
}

static void capacity_overflow_is_zero(void **state)
{
    (void)state;
    assert_true(worker_packet_capacity(1024, 64) > 1024 * 64 * 4);
    assert_int_equal(worker_packet_capacity(INT64_MAX / 2, 1024), 0);
    assert_int_equal(worker_packet_capacity(16, 0), 0);
    assert_int_equal(worker_packet_capacity(-1, 64), 0);
}

/* A cached generation step: one row of 9 positions of which only the last
 * travels, at its position, with its cache's key and flags. */
static worker_micro_t *cached_step(void)
{
    worker_micro_t *m = worker_micro_new(MICRO_GENERATE, 1, 9, 1, false, false, false);
    assert_non_null(m);
    assert_int_equal(shard_acts_reserve(m->acts, 1, 9, 4, 1, NULL), SHARD_OK);
    m->acts->row_start[0] = 0;
    m->acts->row_start[1] = 1;
    m->acts->position[0] = 8;
    m->acts->is_real[0] = 1;
    for (int d = 0; d < 4; d++)
        m->acts->hidden[d] = 0.5f * (float)d;
    for (int i = 0; i < 9; i++) {
        m->input_ids[i] = 10 + i;
        m->attention_mask[i] = 1;
    }
    m->items[0] = (worker_item_t){.ticket = 3, .task = PROTO_TASK_GENERATE, .rows = 1, .seq = 9,
                                  .gen_job = 77};
    snprintf(m->items[0].id, sizeof m->items[0].id, "gen");
    m->kv_mode = WORKER_KV_STEP;
    m->kv_key = 77;
    m->kv_last = true;
    m->kv_missed = true;
    return m;
}

static void cached_step_round_trip(void **state)
{
    (void)state;
    worker_micro_t *m = cached_step();
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    shard_error_t err = {0};
    worker_micro_t *r = worker_packet_read(buffer, size, &err);
    assert_non_null(r);
    assert_int_equal(r->kv_mode, WORKER_KV_STEP);
    assert_int_equal(r->kv_key, 77);
    assert_true(r->kv_last);
    assert_true(r->kv_missed);
    assert_int_equal(r->acts->n_tokens, 1);
    assert_int_equal(r->acts->position[0], 8);
    assert_int_equal(r->seq, 9);
    assert_memory_equal(r->acts->hidden, m->acts->hidden, 4 * sizeof(float));
    worker_micro_destroy(&r);
    /* Each alone: the flags are independent fields. */
    m->kv_missed = false;
    m->kv_mode = WORKER_KV_FILL;
    assert_int_equal(worker_packet_write(m, buffer, size), size);
    assert_non_null(r = worker_packet_read(buffer, size, &err));
    assert_int_equal(r->kv_mode, WORKER_KV_FILL);
    assert_false(r->kv_missed);
    assert_true(r->kv_last);
    worker_micro_destroy(&r);
    worker_micro_destroy(&m);
    free(buffer);
}

/* A cache mode outside the table, or on a micro-batch that is not one
 * generation step, is refused. */
static void bad_cache_mode_refused(void **state)
{
    (void)state;
    const worker_kv_mode_t modes[] = {WORKER_KV_COUNT_, (worker_kv_mode_t)-1};
    for (size_t i = 0; i < 3; i++) {
        worker_micro_t *m = i < 2 ? cached_step() : sample_micro();
        m->kv_mode = i < 2 ? modes[i] : WORKER_KV_STEP;
        size_t size = worker_packet_size(m);
        void *buffer = malloc(size);
        assert_int_equal(worker_packet_write(m, buffer, size), size);
        shard_error_t err = {0};
        assert_null(worker_packet_read(buffer, size, &err));
        assert_int_equal(err.code, SHARD_ERR_FORMAT);
        char want[64];
        snprintf(want, sizeof want, "packet: bad header in %zu bytes", size);
        assert_string_equal(err.message, want);
        worker_micro_destroy(&m);
        free(buffer);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_keeps_everything),
        cmocka_unit_test(too_small_buffer_writes_nothing),
        cmocka_unit_test(every_truncation_refused),
        cmocka_unit_test(corrupted_layout_refused),
        cmocka_unit_test(flipped_bytes_refused_or_kept),
        cmocka_unit_test(pll_records_round_trip),
        cmocka_unit_test(bad_records_refused),
        cmocka_unit_test(fewer_copies_than_rows),
        cmocka_unit_test(item_rows_past_int64_refused),
        cmocka_unit_test(huge_batch_of_empty_rows_refused),
        cmocka_unit_test(capacity_overflow_is_zero),
        cmocka_unit_test(cached_step_round_trip),
        cmocka_unit_test(bad_cache_mode_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
