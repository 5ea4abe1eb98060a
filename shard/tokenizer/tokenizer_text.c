/* tokenizer_text.c: code point buffers, UTF-8, the character classes of the
 * reference tokenizer, and a small string map.
 *
 * Character classes come from utf8proc (general category, bidi class, case
 * mapping) plus the two derived properties utf8proc lacks, generated into
 * tokenizer_tables.c. The quirks of sacremoses' character lists are kept on
 * purpose, since the goal is the reference's output, not Unicode purity. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- buffers */

void shard_tok_text_free(shard_tok_text_t *t)
{
    free(t->cp);
    t->cp = NULL;
    t->len = t->cap = 0;
}

bool shard_tok_text_reserve(shard_tok_text_t *t, size_t n)
{
    if (n <= t->cap)
        return true;
    if (n > SIZE_MAX / sizeof(uint32_t) / 2)
        return false;
    size_t cap = t->cap ? t->cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *cp = realloc(t->cp, cap * sizeof *cp);
    if (!cp)
        return false;
    t->cp = cp;
    t->cap = cap;
    return true;
}

shard_status_t shard_tok_work_begin(shard_tok_work_t *w, size_t factor, shard_error_t *err)
{
    /* Every stage grows its input by at most factor per code point plus a
     * few padding spaces; checked here once so the stages can write freely. */
    enum { SLACK = 16 };
    if (w->cur.len > (SIZE_MAX / sizeof(uint32_t) / 4 - SLACK) / factor)
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "shard_tokenizer: text of %zu code points is too long",
                               w->cur.len);
    if (!shard_tok_text_reserve(&w->next, w->cur.len * factor + SLACK))
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "shard_tokenizer: out of memory for %zu code points",
                               w->cur.len * factor + SLACK);
    w->next.len = 0;
    return SHARD_OK;
}

void shard_tok_work_swap(shard_tok_work_t *w)
{
    shard_tok_text_t t = w->cur;
    w->cur = w->next;
    w->next = t;
}

void shard_tok_work_free(shard_tok_work_t *w)
{
    shard_tok_text_free(&w->cur);
    shard_tok_text_free(&w->next);
}

/* ---------------------------------------------------------------- UTF-8 */

shard_status_t shard_tok_utf8_decode(const char *s, size_t len, size_t base,
                                     shard_tok_text_t *t, shard_error_t *err)
{
    if (len > SIZE_MAX / sizeof(uint32_t) / 4 || !shard_tok_text_reserve(t, t->len + len))
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "shard_tokenizer: out of memory for %zu bytes of text", len);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t c = p[i];
        if (c < 0x80) {
            t->cp[t->len++] = c;
            i++;
            continue;
        }
        size_t need;
        uint32_t min;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1, min = 0x80, c &= 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, min = 0x800, c &= 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, min = 0x10000, c &= 0x07;
        } else {
            return shard_error_set(err, SHARD_ERR_UTF8,
                                   "shard_tokenizer: invalid UTF-8 at byte offset %zu "
                                   "(byte 0x%02X cannot start a character)",
                                   base + i, p[i]);
        }
        if (len - i <= need)
            return shard_error_set(err, SHARD_ERR_UTF8,
                                   "shard_tokenizer: invalid UTF-8 at byte offset %zu "
                                   "(character truncated by the end of the text)",
                                   base + i);
        for (size_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return shard_error_set(err, SHARD_ERR_UTF8,
                                       "shard_tokenizer: invalid UTF-8 at byte offset %zu "
                                       "(byte 0x%02X is not a continuation byte)",
                                       base + i + k, p[i + k]);
            c = (c << 6) | (p[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return shard_error_set(err, SHARD_ERR_UTF8,
                                   "shard_tokenizer: invalid UTF-8 at byte offset %zu "
                                   "(overlong form, surrogate or value above U+10FFFF)",
                                   base + i);
        t->cp[t->len++] = c;
        i += need + 1;
    }
    return SHARD_OK;
}

size_t shard_tok_utf8_length(const uint32_t *cp, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += cp[i] < 0x80 ? 1 : cp[i] < 0x800 ? 2 : cp[i] < 0x10000 ? 3 : 4;
    return bytes;
}

size_t shard_tok_utf8_put(uint32_t c, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- classes */

static bool in_ranges(uint32_t c, const shard_tok_range_t *r, size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < r[mid].lo)
            hi = mid;
        else if (c > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* sacremoses adds the Indic viramas and nuktas to its letter classes
 * (sacremoses/indic.py) so that words in those scripts stay whole. */
static const uint32_t indic_signs[] = {
    0x093C, 0x094D, 0x09BC, 0x09CD, 0x0A3C, 0x0A4D, 0x0ABC, 0x0ACD, 0x0AFD, 0x0AFE,
    0x0AFF, 0x0B3C, 0x0B4D, 0x0BCD, 0x0C4D, 0x0CBC, 0x0CCD, 0x0D3B, 0x0D3C, 0x0D4D,
    0x0DCA, 0x0EBA, 0x1039, 0x1714, 0x1BAB, 0x1C37, 0xA8C4, 0xA8F3, 0xA8F4, 0xA953,
    0xAAF6, 0x10A3F, 0x11046, 0x110B9, 0x110BA, 0x11133, 0x11173, 0x111C0, 0x111CA,
    0x11235, 0x11236, 0x112E9, 0x112EA, 0x1133C, 0x1134D, 0x11442, 0x11446, 0x114C2,
    0x114C3, 0x115BF, 0x115C0, 0x1163F, 0x116B6, 0x116B7, 0x11839, 0x1183A, 0x119E0,
    0x11A34, 0x11C3F, 0x11D42, 0x11D45, 0x11D97, 0x1E94A,
};

static bool is_indic_sign(uint32_t c)
{
    size_t lo = 0, hi = sizeof indic_signs / sizeof indic_signs[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < indic_signs[mid])
            hi = mid;
        else if (c > indic_signs[mid])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* Code points of the Han script and the Hangul syllables: sacremoses' lists
 * were extracted without them (its Chinese/Korean modes add them back). */
static bool is_han(uint32_t c)
{
    return c == 0x3005 || c == 0x3007 || (c >= 0x3021 && c <= 0x3029) ||
           (c >= 0x3038 && c <= 0x303B) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF);
}

static bool is_hangul_syllable(uint32_t c)
{
    return c >= 0xAC00 && c <= 0xD7A3;
}

enum { DOTTED_CIRCLE = 0x25CC };

static utf8proc_category_t category(uint32_t c)
{
    return c > 0x10FFFF ? UTF8PROC_CATEGORY_CN : utf8proc_category((utf8proc_int32_t)c);
}

bool shard_tok_is_alpha(uint32_t c, bool hangul)
{
    if (c < 0x80)
        return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    if (is_indic_sign(c) || c == DOTTED_CIRCLE)
        return true;
    if (c > 0xFFFF || is_han(c))
        return false;
    if (is_hangul_syllable(c))
        return hangul;
    switch (category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
        return true;
    default:
        return in_ranges(c, shard_tok_other_alphabetic, shard_tok_other_alphabetic_count);
    }
}

bool shard_tok_is_alnum(uint32_t c, bool hangul)
{
    if (c < 0x80)
        return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9');
    if (c <= 0xFFFF && category(c) == UTF8PROC_CATEGORY_ND)
        return true;
    return shard_tok_is_alpha(c, hangul);
}

bool shard_tok_is_number(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    if (c > 0xFFFF || is_han(c))
        return false;
    utf8proc_category_t cat = category(c);
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
           cat == UTF8PROC_CATEGORY_NO;
}

bool shard_tok_is_lower(uint32_t c)
{
    if (c < 0x80)
        return c >= 'a' && c <= 'z';
    if (c == DOTTED_CIRCLE)
        return true;
    if (c > 0xFFFF)
        return false;
    return category(c) == UTF8PROC_CATEGORY_LL ||
           in_ranges(c, shard_tok_other_lowercase, shard_tok_other_lowercase_count);
}

bool shard_tok_is_space(uint32_t c)
{
    /* Python: bidirectional class WS, B or S, or category Zs. */
    if (c < 0x80)
        return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    if (c > 0x10FFFF)
        return false;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

bool shard_tok_is_decimal(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    return category(c) == UTF8PROC_CATEGORY_ND;
}

bool shard_tok_is_other_cat(uint32_t c)
{
    if (c < 0x80)
        return c < 0x20 || c == 0x7F;
    switch (category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
        return true;
    default:
        return false;
    }
}

bool shard_tok_is_nonspacing(uint32_t c)
{
    return c >= 0x300 && category(c) == UTF8PROC_CATEGORY_MN;
}

size_t shard_tok_lower(uint32_t c, uint32_t out[2])
{
    if (c < 0x80) {
        out[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        return 1;
    }
    /* The only unconditional multi-character lowercase mapping in
     * SpecialCasing.txt; utf8proc gives simple mappings only. */
    if (c == 0x130) {
        out[0] = 'i';
        out[1] = 0x307;
        return 2;
    }
    out[0] = c > 0x10FFFF ? c : (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
    return 1;
}

/* ---------------------------------------------------------------- hashing */

uint64_t shard_tok_hash(const void *data, size_t len)
{
    /* FNV-1a: keys are short tokens, so simplicity beats throughput. */
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

bool shard_tok_map_init(shard_tok_map_t *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < expected * 2) {
        if (cap > SIZE_MAX / 4 / sizeof(char *))
            return false;
        cap *= 2;
    }
    m->keys = calloc(cap, sizeof *m->keys);
    m->key_lens = calloc(cap, sizeof *m->key_lens);
    m->values = calloc(cap, sizeof *m->values);
    m->cap = cap;
    if (!m->keys || !m->key_lens || !m->values) {
        shard_tok_map_free(m);
        return false;
    }
    return true;
}

void shard_tok_map_free(shard_tok_map_t *m)
{
    if (m->keys)
        for (size_t i = 0; i < m->cap; i++)
            free(m->keys[i]);
    free(m->keys);
    free(m->key_lens);
    free(m->values);
    memset(m, 0, sizeof *m);
}

static size_t map_slot(const shard_tok_map_t *m, const char *key, size_t len)
{
    size_t i = (size_t)shard_tok_hash(key, len) & (m->cap - 1);
    while (m->keys[i] && (m->key_lens[i] != len || memcmp(m->keys[i], key, len) != 0))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static bool map_grow(shard_tok_map_t *m)
{
    shard_tok_map_t bigger;
    if (m->cap > SIZE_MAX / 8 / sizeof(char *) || !shard_tok_map_init(&bigger, m->cap))
        return false;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        size_t j = map_slot(&bigger, m->keys[i], m->key_lens[i]);
        bigger.keys[j] = m->keys[i];
        bigger.key_lens[j] = m->key_lens[i];
        bigger.values[j] = m->values[i];
        bigger.count++;
        m->keys[i] = NULL;
    }
    shard_tok_map_free(m);
    *m = bigger;
    return true;
}

bool shard_tok_map_put(shard_tok_map_t *m, const char *key, size_t len, int64_t value)
{
    if ((m->count + 1) * 2 > m->cap && !map_grow(m))
        return false;
    size_t i = map_slot(m, key, len);
    if (!m->keys[i]) {
        char *copy = malloc(len + 1);
        if (!copy)
            return false;
        memcpy(copy, key, len);
        copy[len] = '\0';
        m->keys[i] = copy;
        m->key_lens[i] = len;
        m->count++;
    }
    m->values[i] = value;
    return true;
}

bool shard_tok_map_get(const shard_tok_map_t *m, const char *key, size_t len, int64_t *value)
{
    if (!m->cap)
        return false;
    size_t i = map_slot(m, key, len);
    if (!m->keys[i])
        return false;
    *value = m->values[i];
    return true;
}
