/* micro.c: micro-batches and their packets between stages. */
#include "worker_internal.h"

#include <stdlib.h>
#include <string.h>

worker_micro_t *worker_micro_new(micro_kind_t kind, int64_t batch, int64_t seq, int n_items,
                                 bool langs, bool token_types, bool p_mask)
{
    worker_micro_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->kind = kind;
    m->batch = batch;
    m->seq = seq;
    m->n_items = n_items;
    size_t n = (size_t)(batch * seq);
    if (n == 0)
        n = 1;
    m->input_ids = calloc(n, sizeof(int64_t));
    m->attention_mask = calloc(n, sizeof(int64_t));
    m->position_ids = calloc(n, sizeof(int64_t));
    m->langs = langs ? calloc(n, sizeof(int64_t)) : NULL;
    m->token_type_ids = token_types ? calloc(n, sizeof(int64_t)) : NULL;
    m->p_mask = p_mask ? calloc(n, sizeof(float)) : NULL;
    m->items = calloc(n_items > 0 ? (size_t)n_items : 1, sizeof *m->items);
    m->acts = shard_acts_new();
    if (!m->input_ids || !m->attention_mask || !m->position_ids || (langs && !m->langs) ||
        (token_types && !m->token_type_ids) || (p_mask && !m->p_mask) || !m->items || !m->acts)
        worker_micro_destroy(&m);
    return m;
}

void worker_micro_destroy(worker_micro_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_micro_t *m = *self_p;
    free(m->input_ids);
    free(m->attention_mask);
    free(m->position_ids);
    free(m->langs);
    free(m->token_type_ids);
    free(m->p_mask);
    for (int i = 0; m->items && i < m->n_items; i++)
    {
        free(m->items[i].windows);
        free(m->items[i].copies);
    }
    free(m->items);
    shard_acts_destroy(&m->acts);
    free(m);
    *self_p = NULL;
}

/* Moves rows [from, batch) of one input array to start at row to. */
static void shift_rows(void *base, size_t elem, int64_t seq, int64_t to, int64_t from, int64_t batch)
{
    if (!base || from >= batch)
        return;
    char *bytes = base;
    memmove(bytes + (size_t)(to * seq) * elem, bytes + (size_t)(from * seq) * elem,
            (size_t)((batch - from) * seq) * elem);
}

void worker_micro_drop_item(worker_micro_t *m, int index)
{
    worker_item_t *gone = &m->items[index];
    const int64_t to = gone->row0, from = gone->row0 + gone->rows;
    shift_rows(m->input_ids, sizeof(int64_t), m->seq, to, from, m->batch);
    shift_rows(m->attention_mask, sizeof(int64_t), m->seq, to, from, m->batch);
    shift_rows(m->position_ids, sizeof(int64_t), m->seq, to, from, m->batch);
    shift_rows(m->langs, sizeof(int64_t), m->seq, to, from, m->batch);
    shift_rows(m->token_type_ids, sizeof(int64_t), m->seq, to, from, m->batch);
    shift_rows(m->p_mask, sizeof(float), m->seq, to, from, m->batch);
    m->batch -= gone->rows;
    free(gone->windows);
    free(gone->copies);
    for (int i = index + 1; i < m->n_items; i++) {
        m->items[i - 1] = m->items[i];
        m->items[i - 1].row0 -= from - to;
    }
    m->n_items--;
}

shard_inputs_t worker_micro_inputs(const worker_micro_t *m)
{
    return (shard_inputs_t){.batch = m->batch, .seq = m->seq, .input_ids = m->input_ids,
                            .attention_mask = m->attention_mask, .langs = m->langs,
                            .token_type_ids = m->token_type_ids, .position_ids = m->position_ids,
                            .p_mask = m->p_mask};
}

static int64_t *copy_rows(const int64_t *src, const worker_micro_t *m, const worker_item_t *item)
{
    int64_t *dst = malloc((size_t)(item->rows * item->seq) * sizeof *dst);
    for (int64_t r = 0; dst && r < item->rows; r++)
        memcpy(dst + r * item->seq, src + (item->row0 + r) * m->seq, (size_t)item->seq * sizeof *dst);
    return dst;
}

shard_status_t worker_item_inputs(const worker_micro_t *m, const worker_item_t *item,
                                  shard_inputs_t *in, shard_error_t *err)
{
    memset(in, 0, sizeof *in);
    in->batch = item->rows;
    in->seq = item->seq;
    in->n_choices = item->n_choices;
    int64_t *ids = copy_rows(m->input_ids, m, item);
    int64_t *mask = copy_rows(m->attention_mask, m, item);
    float *p_mask = NULL;
    if (m->p_mask) {
        p_mask = malloc((size_t)(item->rows * item->seq) * sizeof *p_mask);
        for (int64_t r = 0; p_mask && r < item->rows; r++)
            memcpy(p_mask + r * item->seq, m->p_mask + (item->row0 + r) * m->seq,
                   (size_t)item->seq * sizeof *p_mask);
    }
    in->input_ids = ids;
    in->attention_mask = mask;
    in->p_mask = p_mask;
    if (!ids || !mask || (m->p_mask && !p_mask)) {
        worker_inputs_free(in);
        return shard_error_set(err, SHARD_ERR_NOMEM, "worker_item_inputs: out of memory");
    }
    return SHARD_OK;
}

void worker_inputs_free(shard_inputs_t *in)
{
    free((void *)in->input_ids);
    free((void *)in->attention_mask);
    free((void *)in->p_mask);
    memset(in, 0, sizeof *in);
}

/* ------------------------------------------------------------ packets */

enum { PACKET_MAGIC = 0x584c4d50 /* "XLMP" */, PACKET_ID_BYTES = PROTO_ID_MAX + 1 };

typedef struct {
    int64_t magic, kind, batch, seq, emb_dim, n_tokens, n_items, has_p_mask, n_stages;
    uint64_t micro_id, started_us;
    uint64_t stage_us[WORKER_MAX_STAGES];
    /* Appended for cached generation steps (worker_kv_mode_t, its key, the
     * last step and missed flags as 0/1). */
    int64_t kv_mode;
    uint64_t kv_key;
    int64_t kv_last, kv_missed;
} packet_header_t;

typedef struct {
    uint64_t ticket, batch_id, queue_us, tokenize_us, received_us, gen_job;
    int64_t task, row0, rows, seq, n_choices, n_windows, n_copies, orig_rows, return_tokens,
        credit;
    char id[PACKET_ID_BYTES];
} packet_item_t;

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Records are written back to back: their sizes keep the 8-byte alignment. */
_Static_assert(sizeof(worker_window_t) % 8 == 0, "worker_window_t breaks packet alignment");
_Static_assert(sizeof(worker_pll_copy_t) % 8 == 0, "worker_pll_copy_t breaks packet alignment");

size_t worker_packet_capacity(int64_t tokens, int64_t emb_dim)
{
    /* Computed positions carry their hidden state and layout; padded cells
     * (up to PROTO_PADDED_FACTOR per budgeted token) their ids, mask and
     * p_mask; every row may be its own request. */
    if (tokens < 0 || emb_dim < 1 || (uint64_t)emb_dim > SIZE_MAX / 8)
        return 0;
    const size_t per_token = (size_t)emb_dim * 4 + 4 + 1;
    const size_t per_cell = 8 + 8 + 4 + 8 /* row_start */ + sizeof(packet_item_t) +
                            sizeof(worker_window_t) + sizeof(worker_pll_copy_t);
    size_t a, b, c, total;
    if (__builtin_mul_overflow((size_t)tokens, per_token, &a) ||
        __builtin_mul_overflow((size_t)tokens, (size_t)PROTO_PADDED_FACTOR * per_cell, &b) ||
        __builtin_add_overflow(a, b, &c) ||
        __builtin_add_overflow(c, sizeof(packet_header_t) + 4096, &total))
        return 0; /* too large: the caller refuses it */
    return total;
}

/* Records that travel after an item: its windows and masked copies. */
static int64_t item_windows(const worker_item_t *it) { return it->windows ? it->orig_rows : 0; }
static int64_t item_copies(const worker_item_t *it) { return it->copies ? it->n_copies : 0; }

static size_t item_records_size(const worker_item_t *it)
{
    return (size_t)item_windows(it) * sizeof(worker_window_t) +
           (size_t)item_copies(it) * sizeof(worker_pll_copy_t);
}

size_t worker_packet_size(const worker_micro_t *m)
{
    const shard_acts_t *a = m->acts;
    const size_t cells = (size_t)(m->batch * m->seq);
    size_t size = sizeof(packet_header_t);
    size += align8((size_t)(m->batch + 1) * 8) + align8((size_t)a->n_tokens * 4) +
            align8((size_t)a->n_tokens) + align8((size_t)(a->n_tokens * a->emb_dim) * 4);
    size += cells * 8 * 2 + (m->p_mask ? align8(cells * 4) : 0);
    for (int i = 0; i < m->n_items; i++)
        size += sizeof(packet_item_t) + item_records_size(&m->items[i]);
    return size;
}

typedef struct {
    unsigned char *at, *end;
} writer_t;

static void put(writer_t *w, const void *data, size_t n)
{
    if ((size_t)(w->end - w->at) < align8(n)) {
        w->at = w->end + 1; /* overflowed: the caller sees a size of 0 */
        return;
    }
    memcpy(w->at, data, n);
    memset(w->at + n, 0, align8(n) - n);
    w->at += align8(n);
}

size_t worker_packet_write(const worker_micro_t *m, void *buffer, size_t capacity)
{
    const shard_acts_t *a = m->acts;
    writer_t w = {buffer, (unsigned char *)buffer + capacity};
    packet_header_t h = {PACKET_MAGIC, m->kind, m->batch, m->seq, a->emb_dim, a->n_tokens,
                         m->n_items, m->p_mask != NULL, m->n_stages, m->micro_id, m->started_us,
                         {0}, m->kv_mode, m->kv_key, m->kv_last, m->kv_missed};
    memcpy(h.stage_us, m->stage_us, sizeof h.stage_us);
    put(&w, &h, sizeof h);
    put(&w, a->row_start, (size_t)(m->batch + 1) * 8);
    put(&w, a->position, (size_t)a->n_tokens * 4);
    put(&w, a->is_real, (size_t)a->n_tokens);
    put(&w, a->hidden, (size_t)(a->n_tokens * a->emb_dim) * 4);
    const size_t cells = (size_t)(m->batch * m->seq);
    put(&w, m->input_ids, cells * 8);
    put(&w, m->attention_mask, cells * 8);
    if (m->p_mask)
        put(&w, m->p_mask, cells * 4);
    for (int i = 0; i < m->n_items; i++) {
        const worker_item_t *it = &m->items[i];
        /* Zeroed first and filled field by field: an initialiser leaves the
         * padding after id unset, and those bytes would go on the wire. */
        packet_item_t p;
        memset(&p, 0, sizeof p);
        p.ticket = it->ticket;
        p.batch_id = it->batch_id;
        p.queue_us = it->queue_us;
        p.tokenize_us = it->tokenize_us;
        p.received_us = it->received_us;
        p.gen_job = it->gen_job;
        p.task = it->task;
        p.row0 = it->row0;
        p.rows = it->rows;
        p.seq = it->seq;
        p.n_choices = it->n_choices;
        p.n_windows = item_windows(it);
        p.n_copies = item_copies(it);
        p.orig_rows = it->orig_rows;
        p.return_tokens = it->return_tokens;
        p.credit = it->credit;
        memcpy(p.id, it->id, sizeof p.id);
        put(&w, &p, sizeof p);
        if (p.n_windows)
            put(&w, it->windows, (size_t)p.n_windows * sizeof *it->windows);
        if (p.n_copies)
            put(&w, it->copies, (size_t)p.n_copies * sizeof *it->copies);
    }
    if (w.at > w.end)
        return 0;
    return (size_t)(w.at - (unsigned char *)buffer);
}

typedef struct {
    const unsigned char *at, *end;
    bool failed;
} reader_t;

static const void *take(reader_t *r, size_t n)
{
    if (r->failed || (size_t)(r->end - r->at) < align8(n)) {
        r->failed = true;
        return NULL;
    }
    const void *p = r->at;
    r->at += align8(n);
    return p;
}

static bool bad_header(const packet_header_t *h, size_t size)
{
    return h->magic != PACKET_MAGIC || h->kind < MICRO_BATCH || h->kind > MICRO_SHUTDOWN ||
           h->batch < 0 || h->seq < 0 || h->emb_dim < 1 || h->n_tokens < 0 ||
           h->n_items < 0 || h->n_stages < 0 || h->n_stages > WORKER_MAX_STAGES ||
           /* batch + 1 row starts of 8 bytes each, even when seq is 0 */
           h->batch >= (int64_t)(size / 8) ||
           (h->seq > 0 && h->batch > (int64_t)size / h->seq) ||
           h->n_tokens > h->batch * h->seq || h->emb_dim > (int64_t)size ||
           (h->n_tokens > 0 && h->emb_dim > (int64_t)size / h->n_tokens) ||
           h->n_items > h->batch + 1 || h->kv_mode < WORKER_KV_NONE ||
           h->kv_mode >= WORKER_KV_COUNT_ || (h->kv_mode != WORKER_KV_NONE &&
                                              (h->kind != MICRO_GENERATE || h->batch != 1)) ||
           (h->kv_last != 0 && h->kv_last != 1) || (h->kv_missed != 0 && h->kv_missed != 1);
}

/* Counts of the item's records: windows one per request row or none,
 * copies one per item row or none (mlm_pll's copies may outnumber or, when
 * rows score nothing, undercount the request's rows; without copies the
 * item's rows are the request's). */
static bool bad_item(const packet_item_t *p, const packet_header_t *h)
{
    /* rows against what is left after row0: their sum could overflow. */
    return p->row0 < 0 || p->rows < 0 || p->row0 > h->batch || p->rows > h->batch - p->row0 ||
           p->seq < 0 ||
           p->seq > h->seq || p->n_choices < 0 || memchr(p->id, 0, sizeof p->id) == NULL ||
           !worker_task(p->task) || p->orig_rows < 0 || p->orig_rows > PROTO_MAX_ROWS ||
           (p->n_copies == 0 && p->orig_rows > p->rows) ||
           (p->n_windows != 0 && p->n_windows != p->orig_rows) ||
           (p->n_copies != 0 && (p->n_copies != p->rows || p->n_windows == 0));
}

/* Every window inside the item's seq, every copy of a request row and its
 * masked position inside seq. */
static bool bad_records(const worker_item_t *it)
{
    for (int64_t r = 0; it->windows && r < it->orig_rows; r++)
        if (it->windows[r].from < 0 || it->windows[r].to < it->windows[r].from ||
            it->windows[r].to > it->seq)
            return true;
    for (int64_t c = 0; c < it->n_copies; c++)
        if (it->copies[c].row < 0 || it->copies[c].row >= it->orig_rows ||
            it->copies[c].pos < 0 || it->copies[c].pos >= it->seq || it->copies[c].target < 0)
            return true;
    return false;
}

/* Copies n records of size bytes from the packet into *out (malloc'd). */
static bool take_records(reader_t *r, int64_t n, size_t size, void **out)
{
    const void *src = take(r, (size_t)n * size);
    *out = src ? malloc((size_t)n * size) : NULL;
    if (*out)
        memcpy(*out, src, (size_t)n * size);
    return *out != NULL;
}

static shard_status_t read_items(reader_t *r, const packet_header_t *h, worker_micro_t *m,
                                 shard_error_t *err)
{
    for (int i = 0; i < m->n_items; i++) {
        const packet_item_t *p = take(r, sizeof *p);
        if (!p || bad_item(p, h))
            return shard_error_set(err, SHARD_ERR_FORMAT, "packet: item %d is malformed", i);
        worker_item_t *it = &m->items[i];
        *it = (worker_item_t){.ticket = p->ticket, .batch_id = p->batch_id, .task = (int32_t)p->task,
                              .row0 = p->row0, .rows = p->rows, .seq = p->seq,
                              .n_choices = p->n_choices, .queue_us = p->queue_us,
                              .tokenize_us = p->tokenize_us, .received_us = p->received_us,
                              .credit = (uint32_t)p->credit, .gen_job = p->gen_job,
                              .orig_rows = p->orig_rows, .return_tokens = p->return_tokens != 0};
        memcpy(it->id, p->id, sizeof it->id);
        if ((p->n_windows && !take_records(r, p->n_windows, sizeof *it->windows,
                                           (void **)&it->windows)) ||
            (p->n_copies && !take_records(r, p->n_copies, sizeof *it->copies,
                                          (void **)&it->copies)))
            return shard_error_set(err, SHARD_ERR_FORMAT, "packet: item %d truncated", i);
        it->n_copies = p->n_copies;
        if (bad_records(it))
            return shard_error_set(err, SHARD_ERR_FORMAT,
                                   "packet: item %d has a scored window or masked copy outside "
                                   "its %lld rows of %lld positions", i, (long long)it->orig_rows,
                                   (long long)it->seq);
    }
    return SHARD_OK;
}

worker_micro_t *worker_packet_read(const void *buffer, size_t size, shard_error_t *err)
{
    reader_t r = {buffer, (const unsigned char *)buffer + size, false};
    const packet_header_t *h = take(&r, sizeof *h);
    if (!h || bad_header(h, size)) {
        shard_error_set(err, SHARD_ERR_FORMAT, "packet: bad header in %zu bytes", size);
        return NULL;
    }
    worker_micro_t *m = worker_micro_new((micro_kind_t)h->kind, h->batch, h->seq, (int)h->n_items,
                                         false, false, h->has_p_mask != 0);
    if (!m) {
        shard_error_set(err, SHARD_ERR_NOMEM, "packet: out of memory");
        return NULL;
    }
    m->micro_id = h->micro_id;
    m->started_us = h->started_us;
    m->n_stages = (int)h->n_stages;
    memcpy(m->stage_us, h->stage_us, sizeof m->stage_us);
    m->kv_mode = (worker_kv_mode_t)h->kv_mode;
    m->kv_key = h->kv_key;
    m->kv_last = h->kv_last != 0;
    m->kv_missed = h->kv_missed != 0;
    if (shard_acts_reserve(m->acts, h->batch, h->seq, h->emb_dim, h->n_tokens, err))
        goto fail;
    const size_t cells = (size_t)(h->batch * h->seq);
    const void *row_start = take(&r, (size_t)(h->batch + 1) * 8);
    const void *position = take(&r, (size_t)h->n_tokens * 4);
    const void *is_real = take(&r, (size_t)h->n_tokens);
    const void *hidden = take(&r, (size_t)(h->n_tokens * h->emb_dim) * 4);
    const void *ids = take(&r, cells * 8);
    const void *mask = take(&r, cells * 8);
    const void *p_mask = h->has_p_mask ? take(&r, cells * 4) : NULL;
    if (r.failed) {
        shard_error_set(err, SHARD_ERR_FORMAT, "packet: truncated (%zu bytes)", size);
        goto fail;
    }
    memcpy(m->acts->row_start, row_start, (size_t)(h->batch + 1) * 8);
    memcpy(m->acts->position, position, (size_t)h->n_tokens * 4);
    memcpy(m->acts->is_real, is_real, (size_t)h->n_tokens);
    memcpy(m->acts->hidden, hidden, (size_t)(h->n_tokens * h->emb_dim) * 4);
    memcpy(m->input_ids, ids, cells * 8);
    memcpy(m->attention_mask, mask, cells * 8);
    if (p_mask)
        memcpy(m->p_mask, p_mask, cells * 4);
    /* The layout must be a valid packing: rows in order, positions inside. */
    const shard_acts_t *a = m->acts;
    bool ok = a->row_start[0] == 0 && a->row_start[h->batch] == h->n_tokens;
    for (int64_t b = 0; ok && b < h->batch; b++)
        ok = a->row_start[b] <= a->row_start[b + 1];
    for (int64_t t = 0; ok && t < h->n_tokens; t++)
        ok = a->position[t] >= 0 && a->position[t] < h->seq;
    if (!ok) {
        shard_error_set(err, SHARD_ERR_FORMAT, "packet: activation layout is inconsistent");
        goto fail;
    }
    if (read_items(&r, h, m, err))
        goto fail;
    for (int i = 0; i < m->n_items; i++)
        m->items[i].packet_bytes = size;
    return m;
fail:
    worker_micro_destroy(&m);
    return NULL;
}
