/* tokenizer_bpe.c: XLM's byte-pair encoding of one word, its merge table and
 * a shared cache of encoded words.
 *
 * A word starts as its characters, the last one carrying the "</w>" word end;
 * then, as long as some adjacent pair is a merge, every occurrence of the
 * lowest-ranked pair is merged, left to right without overlaps (HF's loop).
 * Symbols are interned: every string that appears in merges.txt gets an id,
 * and a pair of ids maps to (rank, id of the merged symbol). A character
 * that never appears in a merge has no id and stays a unit of its own.
 *
 * Short words run HF's loop directly (quadratic, but tiny); long words run
 * the same rounds over a linked list with a heap, so a word of a million
 * characters costs O(n log n) instead of O(n^2). Both give the same units;
 * the tests check that on random merge tables. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

enum {
    CACHE_SHARDS = 16,           /* independent locks, so threads rarely wait */
    CACHE_SHARD_CAPACITY = 4096, /* entries per shard before it is emptied */
    CACHE_MAX_WORD = 128,        /* longer words are not cached */
    DIRECT_MAX_CHARS = 48,       /* longer words use the heap algorithm */
};

typedef struct {
    uint64_t key;   /* left id << 32 | right id; UINT64_MAX = empty */
    int32_t rank;
    int32_t merged; /* symbol id of left+right */
} pair_slot_t;

typedef struct {
    char *key;      /* the word, not NUL-terminated */
    size_t key_len;
    char *units;    /* units, each NUL-terminated, back to back */
    size_t units_len;
    size_t n_units;
    uint64_t hash;
} cache_entry_t;

typedef struct {
    pthread_mutex_t lock;
    cache_entry_t *slots; /* [CACHE_SHARD_CAPACITY * 2], open addressing */
    size_t count;
} cache_shard_t;

struct shard_tok_bpe {
    shard_tok_map_t symbols; /* symbol string -> id */
    pair_slot_t *pairs;
    size_t pairs_cap;
    /* For save_vocabulary: each rank's line as HF keeps it (its first two
     * fields joined by a space), NULL for a rank that a later identical
     * line replaced. */
    char **merge_line;
    shard_tok_map_t line_ranks; /* line -> rank */
    size_t n_merges;
    cache_shard_t cache[CACHE_SHARDS];
};

/* ---------------------------------------------------------------- merge table */

static size_t pair_find(const shard_tok_bpe_t *bpe, uint64_t key)
{
    size_t mask = bpe->pairs_cap - 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
    while (bpe->pairs[i].key != UINT64_MAX && bpe->pairs[i].key != key)
        i = (i + 1) & mask;
    return i;
}

static bool pair_get(const shard_tok_bpe_t *bpe, int64_t a, int64_t b, int32_t *rank,
                     int32_t *merged)
{
    if (a < 0 || b < 0)
        return false;
    uint64_t key = ((uint64_t)a << 32) | (uint64_t)b;
    const pair_slot_t *s = &bpe->pairs[pair_find(bpe, key)];
    if (s->key == UINT64_MAX)
        return false;
    *rank = s->rank;
    *merged = s->merged;
    return true;
}

static int64_t intern(shard_tok_bpe_t *bpe, const char *s, size_t n, bool *ok)
{
    int64_t id;
    if (shard_tok_map_get(&bpe->symbols, s, n, &id))
        return id;
    id = (int64_t)bpe->symbols.count;
    if (id >= INT32_MAX || !shard_tok_map_put(&bpe->symbols, s, n, id))
        *ok = false;
    return id;
}

/* Python str.split() on one line: fields separated by whitespace. */
static size_t split_fields(const char *line, size_t len, const char **field, size_t *flen,
                           size_t max)
{
    size_t n = 0, i = 0;
    while (i < len) {
        /* ASCII whitespace, plus the two-byte and three-byte spaces Python
         * also splits on (NBSP, U+2000.., U+3000, ...). */
        uint32_t c;
        size_t w = 1;
        unsigned char b = (unsigned char)line[i];
        if (b < 0x80) {
            c = b;
        } else {
            shard_tok_text_t t = {0};
            size_t cl = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
            if (cl > len - i || shard_tok_utf8_decode(line + i, cl, 0, &t, NULL) != SHARD_OK) {
                c = 0xFFFD;
            } else {
                c = t.cp[0];
                w = cl;
            }
            shard_tok_text_free(&t);
        }
        if (shard_tok_is_space(c)) {
            i += w;
            continue;
        }
        size_t start = i;
        while (i < len) {
            unsigned char d = (unsigned char)line[i];
            if (d < 0x80) {
                if (shard_tok_is_space(d))
                    break;
                i++;
                continue;
            }
            shard_tok_text_t t = {0};
            size_t cl = d >= 0xF0 ? 4 : d >= 0xE0 ? 3 : 2;
            bool space = false;
            if (cl <= len - i && shard_tok_utf8_decode(line + i, cl, 0, &t, NULL) == SHARD_OK)
                space = shard_tok_is_space(t.cp[0]);
            shard_tok_text_free(&t);
            if (space)
                break;
            i += cl <= len - i ? cl : 1;
        }
        if (n < max) {
            field[n] = line + start;
            flen[n] = i - start;
        }
        n++;
    }
    return n;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

shard_tok_bpe_t *shard_tok_bpe_new(const char *merges, size_t merges_len, shard_error_t *err)
{
    shard_tok_bpe_t *bpe = calloc(1, sizeof *bpe);
    if (!bpe) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_tok_bpe_new: out of memory");
        return NULL;
    }
    for (int s = 0; s < CACHE_SHARDS; s++)
        pthread_mutex_init(&bpe->cache[s].lock, NULL);

    /* HF: read().split("\n")[:-1], i.e. every line ended by "\n"; text after
     * the last "\n" is dropped. */
    size_t n_lines = 0;
    for (size_t i = 0; i < merges_len; i++)
        n_lines += merges[i] == '\n';
    if (n_lines >= INT32_MAX) {
        shard_error_set(err, SHARD_ERR_FORMAT, "shard_tok_bpe_new: merges.txt has %zu lines, "
                        "more than %d", n_lines, INT32_MAX - 1);
        goto fail;
    }
    bpe->pairs_cap = 16;
    while (bpe->pairs_cap < n_lines * 2 + 2)
        bpe->pairs_cap *= 2;
    bpe->pairs = malloc(bpe->pairs_cap * sizeof *bpe->pairs);
    bpe->merge_line = calloc(n_lines + 1, sizeof *bpe->merge_line);
    if (!bpe->pairs || !bpe->merge_line || !shard_tok_map_init(&bpe->line_ranks, n_lines + 16) ||
        !shard_tok_map_init(&bpe->symbols, n_lines * 2 + 16)) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_tok_bpe_new: out of memory for %zu merges",
                        n_lines);
        goto fail;
    }
    for (size_t i = 0; i < bpe->pairs_cap; i++)
        bpe->pairs[i].key = UINT64_MAX;
    bpe->n_merges = n_lines;

    /* Ranks of lines that are not pairs still count (HF's dict keeps them),
     * so the rank is the line number. A repeated pair takes its last rank. */
    size_t rank = 0, pos = 0;
    bool ok = true;
    char *joined = NULL;
    while (rank < n_lines) {
        const char *line = merges + pos;
        const char *nl = memchr(line, '\n', merges_len - pos);
        size_t len = (size_t)(nl - line);
        pos += len + 1;
        const char *f[3];
        size_t fl[3];
        size_t nf = split_fields(line, len, f, fl, 3);
        /* The line as HF's dict key: tuple(line.split()[:2]). */
        size_t kf = nf < 2 ? nf : 2;
        size_t tl = kf == 0 ? 0 : kf == 1 ? fl[0] : fl[0] + 1 + fl[1];
        char *text = malloc(tl + 1);
        if (!text) {
            ok = false;
            break;
        }
        if (kf >= 1)
            memcpy(text, f[0], fl[0]);
        if (kf == 2) {
            text[fl[0]] = ' ';
            memcpy(text + fl[0] + 1, f[1], fl[1]);
        }
        text[tl] = '\0';
        int64_t earlier;
        if (shard_tok_map_get(&bpe->line_ranks, text, tl, &earlier)) {
            free(bpe->merge_line[earlier]);
            bpe->merge_line[earlier] = NULL;
        }
        bpe->merge_line[rank] = text;
        if (!shard_tok_map_put(&bpe->line_ranks, text, tl, (int64_t)rank)) {
            ok = false;
            break;
        }
        if (nf >= 2) {
            int64_t a = intern(bpe, f[0], fl[0], &ok);
            int64_t b = intern(bpe, f[1], fl[1], &ok);
            joined = malloc(fl[0] + fl[1] + 1);
            if (!joined || !ok) {
                ok = false;
                break;
            }
            memcpy(joined, f[0], fl[0]);
            memcpy(joined + fl[0], f[1], fl[1]);
            int64_t m = intern(bpe, joined, fl[0] + fl[1], &ok);
            free(joined);
            joined = NULL;
            if (!ok)
                break;
            uint64_t key = ((uint64_t)a << 32) | (uint64_t)b;
            pair_slot_t *s = &bpe->pairs[pair_find(bpe, key)];
            s->key = key; /* a repeated pair takes its last rank */
            s->rank = (int32_t)rank;
            s->merged = (int32_t)m;
        }
        rank++;
    }
    if (!ok) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_tok_bpe_new: out of memory at merge %zu",
                        rank);
        goto fail;
    }
    return bpe;
fail:
    shard_tok_bpe_destroy(&bpe);
    return NULL;
}

static void cache_clear(cache_shard_t *c)
{
    if (!c->slots)
        return;
    for (size_t i = 0; i < CACHE_SHARD_CAPACITY * 2; i++) {
        free(c->slots[i].key);
        free(c->slots[i].units);
    }
    memset(c->slots, 0, CACHE_SHARD_CAPACITY * 2 * sizeof *c->slots);
    c->count = 0;
}

void shard_tok_bpe_destroy(shard_tok_bpe_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    shard_tok_bpe_t *bpe = *self_p;
    for (int s = 0; s < CACHE_SHARDS; s++) {
        cache_clear(&bpe->cache[s]);
        free(bpe->cache[s].slots);
        pthread_mutex_destroy(&bpe->cache[s].lock);
    }
    if (bpe->merge_line)
        for (size_t i = 0; i < bpe->n_merges; i++)
            free(bpe->merge_line[i]);
    free(bpe->merge_line);
    shard_tok_map_free(&bpe->line_ranks);
    free(bpe->pairs);
    shard_tok_map_free(&bpe->symbols);
    free(bpe);
    *self_p = NULL;
}

size_t shard_tok_bpe_n_merges(const shard_tok_bpe_t *bpe)
{
    return bpe->n_merges;
}

const char *shard_tok_bpe_merge(const shard_tok_bpe_t *bpe, size_t r)
{
    return r < bpe->n_merges ? bpe->merge_line[r] : NULL;
}

/* ---------------------------------------------------------------- one word */

typedef struct {
    size_t start, end; /* bytes of the word; the last symbol also has "</w>" */
    int64_t id;        /* symbol id, -1 when not a merge symbol */
} sym_t;

static const char EOW[] = "</w>";
enum { EOW_LEN = 4 };

static size_t char_len(unsigned char b)
{
    return b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
}

static int64_t symbol_id(const shard_tok_bpe_t *bpe, const char *word, size_t start,
                         size_t end, bool last, char *scratch)
{
    int64_t id;
    if (!last)
        return shard_tok_map_get(&bpe->symbols, word + start, end - start, &id) ? id : -1;
    memcpy(scratch, word + start, end - start);
    memcpy(scratch + (end - start), EOW, EOW_LEN);
    return shard_tok_map_get(&bpe->symbols, scratch, end - start + EOW_LEN, &id) ? id : -1;
}

/* The word's characters as symbols; *count set, NULL on no memory. */
static sym_t *initial_symbols(const shard_tok_bpe_t *bpe, const char *word, size_t n,
                              size_t *count)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i += char_len((unsigned char)word[i]))
        chars++;
    sym_t *s = malloc((chars ? chars : 1) * sizeof *s);
    if (!s)
        return NULL;
    char scratch[8];
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t l = char_len((unsigned char)word[i]);
        if (l > n - i)
            l = n - i;
        s[k].start = i;
        s[k].end = i + l;
        s[k].id = symbol_id(bpe, word, i, i + l, i + l == n, scratch);
        k++;
        i += l;
    }
    *count = k;
    return s;
}

static bool append_units(const char *word, const sym_t *s, size_t count, char **units,
                         size_t *units_len, size_t *units_cap, size_t *n_units)
{
    size_t need = 0;
    for (size_t i = 0; i < count; i++)
        need += s[i].end - s[i].start + 1;
    need += EOW_LEN;
    if (need > SIZE_MAX / 2 - *units_len)
        return false;
    if (*units_len + need > *units_cap) {
        size_t cap = *units_cap ? *units_cap : 256;
        while (cap < *units_len + need)
            cap *= 2;
        char *u = realloc(*units, cap);
        if (!u)
            return false;
        *units = u;
        *units_cap = cap;
    }
    char *o = *units + *units_len;
    for (size_t i = 0; i < count; i++) {
        size_t l = s[i].end - s[i].start;
        memcpy(o, word + s[i].start, l);
        o += l;
        if (i + 1 == count) {
            memcpy(o, EOW, EOW_LEN);
            o += EOW_LEN;
        }
        *o++ = '\0';
    }
    *units_len = (size_t)(o - *units);
    *n_units += count;
    return true;
}

shard_status_t shard_tok_bpe_word_direct(const shard_tok_bpe_t *bpe, const char *word,
                                         size_t n, char **units, size_t *units_len,
                                         size_t *units_cap, size_t *n_units,
                                         shard_error_t *err)
{
    size_t count = 0;
    sym_t *s = initial_symbols(bpe, word, n, &count);
    if (!s)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory in BPE");
    while (count > 1) {
        int32_t best = INT32_MAX, best_merged = -1, r, m;
        int64_t ba = -1, bb = -1;
        for (size_t i = 0; i + 1 < count; i++)
            if (pair_get(bpe, s[i].id, s[i + 1].id, &r, &m) && r < best) {
                best = r;
                best_merged = m;
                ba = s[i].id;
                bb = s[i + 1].id;
            }
        if (best == INT32_MAX)
            break;
        size_t o = 0;
        for (size_t i = 0; i < count;) {
            if (i + 1 < count && s[i].id == ba && s[i + 1].id == bb) {
                s[o].start = s[i].start;
                s[o].end = s[i + 1].end;
                s[o].id = best_merged;
                i += 2;
            } else {
                s[o] = s[i++];
            }
            o++;
        }
        count = o;
    }
    bool ok = append_units(word, s, count, units, units_len, units_cap, n_units);
    free(s);
    return ok ? SHARD_OK
              : shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory in BPE");
}

/* ---------------------------------------------------------------- heap variant */

typedef struct {
    int32_t rank;
    size_t left;  /* index of the left symbol */
    int64_t a, b; /* ids when pushed, to detect stale entries */
} heap_item_t;

typedef struct {
    heap_item_t *items;
    size_t len, cap;
} heap_t;

static bool heap_less(const heap_item_t *x, const heap_item_t *y)
{
    return x->rank != y->rank ? x->rank < y->rank : x->left < y->left;
}

static bool heap_push(heap_t *h, heap_item_t it)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        heap_item_t *items = realloc(h->items, cap * sizeof *items);
        if (!items)
            return false;
        h->items = items;
        h->cap = cap;
    }
    size_t i = h->len++;
    h->items[i] = it;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&h->items[i], &h->items[p]))
            break;
        heap_item_t t = h->items[i];
        h->items[i] = h->items[p];
        h->items[p] = t;
        i = p;
    }
    return true;
}

static heap_item_t heap_pop(heap_t *h)
{
    heap_item_t top = h->items[0];
    h->items[0] = h->items[--h->len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && heap_less(&h->items[l], &h->items[m]))
            m = l;
        if (r < h->len && heap_less(&h->items[r], &h->items[m]))
            m = r;
        if (m == i)
            break;
        heap_item_t t = h->items[i];
        h->items[i] = h->items[m];
        h->items[m] = t;
        i = m;
    }
    return top;
}

static int cmp_left(const void *x, const void *y)
{
    size_t a = ((const heap_item_t *)x)->left, b = ((const heap_item_t *)y)->left;
    return a < b ? -1 : a > b;
}

shard_status_t shard_tok_bpe_word_heap(const shard_tok_bpe_t *bpe, const char *word, size_t n,
                                       char **units, size_t *units_len, size_t *units_cap,
                                       size_t *n_units, shard_error_t *err)
{
    size_t count = 0;
    sym_t *s = initial_symbols(bpe, word, n, &count);
    size_t *next = malloc((count + 1) * sizeof *next);
    size_t *prev = malloc((count + 1) * sizeof *prev);
    bool *alive = malloc((count + 1) * sizeof *alive);
    heap_t heap = {0};
    heap_item_t *round = NULL;
    size_t round_cap = 0;
    bool ok = s && next && prev && alive;
    const size_t NONE = SIZE_MAX;
    for (size_t i = 0; ok && i < count; i++) {
        next[i] = i + 1 < count ? i + 1 : NONE;
        prev[i] = i > 0 ? i - 1 : NONE;
        alive[i] = true;
        int32_t r, m;
        if (i + 1 < count && pair_get(bpe, s[i].id, s[i + 1].id, &r, &m))
            ok = heap_push(&heap, (heap_item_t){r, i, s[i].id, s[i + 1].id});
    }
    /* One round = HF's loop body: all occurrences of the lowest-ranked pair,
     * left to right; pairs created by the round wait for the next one. */
    while (ok && heap.len) {
        int32_t rank = heap.items[0].rank;
        size_t nr = 0;
        while (ok && heap.len && heap.items[0].rank == rank) {
            heap_item_t it = heap_pop(&heap);
            if (!alive[it.left] || s[it.left].id != it.a || next[it.left] == NONE ||
                s[next[it.left]].id != it.b)
                continue; /* stale: a symbol changed since the push */
            if (nr == round_cap) {
                size_t cap = round_cap ? round_cap * 2 : 32;
                heap_item_t *rr = realloc(round, cap * sizeof *rr);
                if (!rr) {
                    ok = false;
                    break;
                }
                round = rr;
                round_cap = cap;
            }
            round[nr++] = it;
        }
        if (!ok || nr == 0)
            continue;
        qsort(round, nr, sizeof *round, cmp_left);
        int32_t r, merged = -1;
        pair_get(bpe, round[0].a, round[0].b, &r, &merged);
        for (size_t k = 0; ok && k < nr; k++) {
            size_t i = round[k].left;
            /* An earlier merge of this round may have taken its symbols
             * (overlapping "a a a"): then it is not an occurrence anymore. */
            if (!alive[i] || s[i].id != round[k].a || next[i] == NONE ||
                s[next[i]].id != round[k].b)
                continue;
            size_t j = next[i];
            s[i].end = s[j].end;
            s[i].id = merged;
            alive[j] = false;
            next[i] = next[j];
            if (next[j] != NONE)
                prev[next[j]] = i;
        }
        /* New pairs around every merged symbol. */
        for (size_t k = 0; ok && k < nr; k++) {
            size_t i = round[k].left;
            if (!alive[i] || s[i].id != merged)
                continue;
            int32_t rr, mm;
            if (prev[i] != NONE && pair_get(bpe, s[prev[i]].id, s[i].id, &rr, &mm))
                ok = heap_push(&heap, (heap_item_t){rr, prev[i], s[prev[i]].id, s[i].id});
            if (ok && next[i] != NONE && pair_get(bpe, s[i].id, s[next[i]].id, &rr, &mm))
                ok = heap_push(&heap, (heap_item_t){rr, i, s[i].id, s[next[i]].id});
        }
    }
    if (ok) {
        size_t o = 0;
        for (size_t i = 0; i < count; i++)
            if (alive[i])
                s[o++] = s[i];
        ok = append_units(word, s, o, units, units_len, units_cap, n_units);
    }
    free(s);
    free(next);
    free(prev);
    free(alive);
    free(heap.items);
    free(round);
    return ok ? SHARD_OK
              : shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory in BPE");
}

/* ---------------------------------------------------------------- cache */

static cache_entry_t *cache_slot(cache_shard_t *c, const char *word, size_t n, uint64_t h)
{
    size_t mask = CACHE_SHARD_CAPACITY * 2 - 1;
    size_t i = (size_t)(h >> 8) & mask;
    while (c->slots[i].key && (c->slots[i].hash != h || c->slots[i].key_len != n ||
                               memcmp(c->slots[i].key, word, n) != 0))
        i = (i + 1) & mask;
    return &c->slots[i];
}

static bool append_bytes(char **units, size_t *units_len, size_t *units_cap, const char *src,
                         size_t n)
{
    if (*units_len + n > *units_cap) {
        size_t cap = *units_cap ? *units_cap : 256;
        while (cap < *units_len + n)
            cap *= 2;
        char *u = realloc(*units, cap);
        if (!u)
            return false;
        *units = u;
        *units_cap = cap;
    }
    memcpy(*units + *units_len, src, n);
    *units_len += n;
    return true;
}

shard_status_t shard_tok_bpe_word(const shard_tok_bpe_t *cbpe, const char *word, size_t n,
                                  char **units, size_t *units_len, size_t *units_cap,
                                  size_t *n_units, shard_error_t *err)
{
    /* The cache is the only state that changes after open; it sits behind
     * per-shard locks, so a const tokenizer is safe to share. */
    shard_tok_bpe_t *bpe = (shard_tok_bpe_t *)cbpe;
    if (n == 0)
        return SHARD_OK;
    bool cacheable = n <= CACHE_MAX_WORD;
    uint64_t h = 0;
    cache_shard_t *c = NULL;
    if (cacheable) {
        h = shard_tok_hash(word, n);
        c = &bpe->cache[h % CACHE_SHARDS];
        pthread_mutex_lock(&c->lock);
        if (c->slots) {
            cache_entry_t *e = cache_slot(c, word, n, h);
            if (e->key) {
                bool ok = append_bytes(units, units_len, units_cap, e->units, e->units_len);
                if (ok)
                    *n_units += e->n_units;
                pthread_mutex_unlock(&c->lock);
                return ok ? SHARD_OK
                          : shard_error_set(err, SHARD_ERR_NOMEM,
                                            "shard_tokenizer: out of memory in BPE");
            }
        }
        pthread_mutex_unlock(&c->lock);
    }
    size_t before_len = *units_len, before_n = *n_units;
    size_t chars = 0;
    for (size_t i = 0; i < n && chars <= DIRECT_MAX_CHARS; i += char_len((unsigned char)word[i]))
        chars++;
    shard_status_t st = chars <= DIRECT_MAX_CHARS
                            ? shard_tok_bpe_word_direct(bpe, word, n, units, units_len,
                                                        units_cap, n_units, err)
                            : shard_tok_bpe_word_heap(bpe, word, n, units, units_len, units_cap,
                                                      n_units, err);
    if (st || !cacheable)
        return st;
    /* Store a copy; failing to cache only costs speed. */
    pthread_mutex_lock(&c->lock);
    if (!c->slots)
        c->slots = calloc(CACHE_SHARD_CAPACITY * 2, sizeof *c->slots);
    if (c->slots) {
        if (c->count >= CACHE_SHARD_CAPACITY)
            cache_clear(c);
        cache_entry_t *e = cache_slot(c, word, n, h);
        if (!e->key) {
            char *key = dup_n(word, n);
            char *val = dup_n(*units + before_len, *units_len - before_len);
            if (key && val) {
                e->key = key;
                e->key_len = n;
                e->units = val;
                e->units_len = *units_len - before_len;
                e->n_units = *n_units - before_n;
                e->hash = h;
                c->count++;
            } else {
                free(key);
                free(val);
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return SHARD_OK;
}
