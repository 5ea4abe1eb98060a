/* tokenizer_norm.c: the normalisation stages before and after the Moses
 * tokenizer: HF's replace_unicode_punct, sacremoses' MosesPunctNormalizer,
 * removal of non-printing characters, the Romanian rules and XLM's
 * lowercase_and_remove_accent.
 *
 * Each rule of the reference is a Python re.sub applied to the whole text in
 * a fixed order; the order matters (an earlier rule's output feeds a later
 * rule), so rules are kept as separate passes, in the reference's order, and
 * a pass is skipped outright when its trigger character is absent. A match
 * consumes its characters and the scan resumes after it, as re.sub does. */
#include "tokenizer_internal.h"

#include <string.h>
#include <utf8proc.h>

enum { NBSP = 0x00A0 };

static bool contains(const shard_tok_text_t *t, uint32_t c)
{
    for (size_t i = 0; i < t->len; i++)
        if (t->cp[i] == c)
            return true;
    return false;
}

static void put_str(shard_tok_text_t *t, const char *ascii)
{
    while (*ascii)
        shard_tok_put(t, (uint32_t)(unsigned char)*ascii++);
}

/* re.sub(literal pattern, literal replacement): pattern of code points. */
static shard_status_t sub_literal(shard_tok_work_t *w, const uint32_t *pat, size_t n,
                                  const char *rep, shard_error_t *err)
{
    const shard_tok_text_t *in = &w->cur;
    /* Most rules match nothing in most sentences: find the first match
     * before copying anything. */
    size_t i = 0;
    while (i + n <= in->len &&
           (in->cp[i] != pat[0] || memcmp(in->cp + i, pat, n * sizeof *pat) != 0))
        i++;
    if (i + n > in->len)
        return SHARD_OK;
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    memcpy(w->next.cp, in->cp, i * sizeof *in->cp);
    w->next.len = i;
    while (i < in->len) {
        if (in->cp[i] == pat[0] && in->len - i >= n &&
            memcmp(in->cp + i, pat, n * sizeof *pat) == 0) {
            put_str(&w->next, rep);
            i += n;
        } else {
            shard_tok_put(&w->next, in->cp[i++]);
        }
    }
    shard_tok_work_swap(w);
    return SHARD_OK;
}

#define SUB(w, rep, err, ...)                                                         \
    sub_literal((w), (const uint32_t[]){__VA_ARGS__},                                 \
                sizeof((const uint32_t[]){__VA_ARGS__}) / sizeof(uint32_t), (rep), (err))

/* " +" -> " " */
static shard_status_t collapse_spaces(shard_tok_work_t *w, shard_error_t *err)
{
    (void)err;
    shard_tok_text_t *t = &w->cur;
    size_t o = 0;
    uint32_t prev = 0;
    for (size_t i = 0; i < t->len; i++) {
        uint32_t c = t->cp[i];
        if (c != ' ' || prev != ' ')
            t->cp[o++] = c;
        prev = c;
    }
    t->len = o;
    return SHARD_OK;
}

static bool in_set(uint32_t c, const char *set)
{
    return c < 0x80 && c != 0 && strchr(set, (int)c) != NULL;
}

static bool is_ascii_letter(uint32_t c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

/* ---------------------------------------------------------------- replace_unicode_punct */

/* HF's replace_unicode_punct: one replacement per fullwidth/CJK punctuation
 * mark. The marks map to ASCII that no other rule of the list touches, so
 * the sequence of str.replace calls is one pass; "。" and "．" also eat the
 * whitespace after them (r"。\s*"). */
shard_status_t shard_tok_replace_unicode_punct(shard_tok_work_t *w, shard_error_t *err)
{
    const shard_tok_text_t *in = &w->cur;
    bool any = false;
    for (size_t i = 0; i < in->len && !any; i++)
        any = in->cp[i] >= 0x2000;
    if (!any)
        return SHARD_OK;
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    shard_tok_text_t *out = &w->next;
    for (size_t i = 0; i < in->len; i++) {
        uint32_t c = in->cp[i];
        const char *rep = NULL;
        switch (c) {
        case 0xFF0C: rep = ","; break;   /* ， */
        case 0x3001: rep = ","; break;   /* 、 */
        case 0x201D: rep = "\""; break;  /* ” */
        case 0x201C: rep = "\""; break;  /* “ */
        case 0x2236: rep = ":"; break;   /* ∶ */
        case 0xFF1A: rep = ":"; break;   /* ： */
        case 0xFF1F: rep = "?"; break;   /* ？ */
        case 0x300A: rep = "\""; break;  /* 《 */
        case 0x300B: rep = "\""; break;  /* 》 */
        case 0xFF09: rep = ")"; break;   /* ） */
        case 0xFF01: rep = "!"; break;   /* ！ */
        case 0xFF08: rep = "("; break;   /* （ */
        case 0xFF1B: rep = ";"; break;   /* ； */
        case 0x300D: rep = "\""; break;  /* 」 */
        case 0x300C: rep = "\""; break;  /* 「 */
        case 0xFF5E: rep = "~"; break;   /* ～ */
        case 0x2019: rep = "'"; break;   /* ’ */
        case 0x2026: rep = "..."; break; /* … */
        case 0x2501: rep = "-"; break;   /* ━ */
        case 0x3008: rep = "<"; break;   /* 〈 */
        case 0x3009: rep = ">"; break;   /* 〉 */
        case 0x3010: rep = "["; break;   /* 【 */
        case 0x3011: rep = "]"; break;   /* 】 */
        case 0xFF05: rep = "%"; break;   /* ％ */
        case 0x3002:                     /* 。 */
        case 0xFF0E:                     /* ． */
            put_str(out, ". ");
            while (i + 1 < in->len && shard_tok_is_space(in->cp[i + 1]))
                i++;
            continue;
        default:
            /* The fullwidth digits that HF lists (every one of ０-９). */
            if (c >= 0xFF10 && c <= 0xFF19) {
                shard_tok_put(out, '0' + (c - 0xFF10));
                continue;
            }
            break;
        }
        if (rep)
            put_str(out, rep);
        else
            shard_tok_put(out, c);
    }
    shard_tok_work_swap(w);
    return SHARD_OK;
}

/* ---------------------------------------------------------------- punct_norm */

/* r"\) ([.!:?;,])" -> r")\1" (a space before other punctuation stays:
 * sacremoses has no such rule, and XLM's tokens depend on it). */
static void drop_space_after_paren(shard_tok_text_t *t)
{
    size_t o = 0, i = 0;
    while (i < t->len) {
        if (t->cp[i] == ')' && i + 2 < t->len && t->cp[i + 1] == ' ' &&
            in_set(t->cp[i + 2], ".!:?;,")) {
            t->cp[o++] = ')';
            t->cp[o++] = t->cp[i + 2];
            i += 3;
            continue;
        }
        t->cp[o++] = t->cp[i++];
    }
    t->len = o;
}

/* r"(\d) %" -> r"\1%" */
static void digit_space_percent(shard_tok_text_t *t)
{
    size_t o = 0, i = 0;
    while (i < t->len) {
        if (i + 2 < t->len && t->cp[i + 1] == ' ' && t->cp[i + 2] == '%' &&
            shard_tok_is_decimal(t->cp[i])) {
            t->cp[o++] = t->cp[i];
            t->cp[o++] = '%';
            i += 3;
            continue;
        }
        t->cp[o++] = t->cp[i++];
    }
    t->len = o;
}

/* r"([a-zA-Z])Q([a-zA-Z])" -> r"\1'\2" for a curly quote Q. */
static void letter_quote_letter(shard_tok_text_t *t, uint32_t quote)
{
    size_t i = 0;
    while (i < t->len) {
        if (i + 2 < t->len && t->cp[i + 1] == quote && is_ascii_letter(t->cp[i]) &&
            is_ascii_letter(t->cp[i + 2])) {
            t->cp[i + 1] = '\'';
            i += 3;
            continue;
        }
        i++;
    }
}

/* Single code points to short ASCII strings, for runs of rules whose
 * outputs feed none of the rules of the same run. */
typedef struct {
    uint32_t from;
    const char *to;
} char_map_t;

static shard_status_t map_chars(shard_tok_work_t *w, const char_map_t *map, size_t n,
                                shard_error_t *err)
{
    const shard_tok_text_t *in = &w->cur;
    bool any = false;
    for (size_t i = 0; i < in->len && !any; i++)
        for (size_t k = 0; k < n && !any; k++)
            any = in->cp[i] == map[k].from;
    if (!any)
        return SHARD_OK;
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    for (size_t i = 0; i < in->len; i++) {
        size_t k = 0;
        while (k < n && map[k].from != in->cp[i])
            k++;
        if (k < n)
            put_str(&w->next, map[k].to);
        else
            shard_tok_put(&w->next, in->cp[i]);
    }
    shard_tok_work_swap(w);
    return SHARD_OK;
}

/* English: r'"([,.]+)' -> r'\1"' */
static void en_quote_comma(shard_tok_text_t *t)
{
    size_t i = 0;
    while (i < t->len) {
        if (t->cp[i] == '"' && i + 1 < t->len && (t->cp[i + 1] == ',' || t->cp[i + 1] == '.')) {
            size_t j = i + 1;
            while (j < t->len && (t->cp[j] == ',' || t->cp[j] == '.'))
                j++;
            memmove(t->cp + i, t->cp + i + 1, (j - i - 1) * sizeof *t->cp);
            t->cp[j - 1] = '"';
            i = j;
            continue;
        }
        i++;
    }
}

/* German/Spanish/French: r'(\.+)"(\s*[^<])' -> r'"\1\2' (quote before the
 * dots unless the sentence ends there or a tag follows). */
static void de_quote_dots(shard_tok_text_t *t)
{
    size_t i = 0;
    while (i < t->len) {
        if (t->cp[i] != '.') {
            i++;
            continue;
        }
        size_t j = i;
        while (j < t->len && t->cp[j] == '.')
            j++;
        if (j >= t->len || t->cp[j] != '"') {
            i = j;
            continue;
        }
        /* \s* is greedy, then one [^<]; backtracking gives a whitespace
         * character to [^<] when the run is followed by '<' or the end. */
        size_t k = j + 1;
        while (k < t->len && shard_tok_is_space(t->cp[k]))
            k++;
        size_t end;
        if (k < t->len && t->cp[k] != '<')
            end = k + 1;
        else if (k > j + 1)
            end = k;
        else {
            i = j + 1;
            continue;
        }
        memmove(t->cp + i + 1, t->cp + i, (j - i) * sizeof *t->cp);
        t->cp[i] = '"';
        i = end;
    }
}

/* r"(\d)\u00A0(\d)" -> r"\1,\2" or r"\1.\2" */
static void digit_nbsp_digit(shard_tok_text_t *t, uint32_t sep)
{
    size_t i = 0;
    while (i < t->len) {
        if (i + 2 < t->len && t->cp[i + 1] == NBSP && shard_tok_is_decimal(t->cp[i]) &&
            shard_tok_is_decimal(t->cp[i + 2])) {
            t->cp[i + 1] = sep;
            i += 3;
            continue;
        }
        i++;
    }
}

static void strip_spaces(shard_tok_text_t *t)
{
    size_t b = 0, e = t->len;
    while (b < e && shard_tok_is_space(t->cp[b]))
        b++;
    while (e > b && shard_tok_is_space(t->cp[e - 1]))
        e--;
    if (b && e > b)
        memmove(t->cp, t->cp + b, (e - b) * sizeof *t->cp);
    t->len = e - b;
}

shard_status_t shard_tok_punct_norm(shard_tok_work_t *w, const shard_tok_rules_t *rules,
                                    shard_error_t *err)
{
    shard_status_t st = SHARD_OK;
    shard_tok_text_t *t = &w->cur;

    /* EXTRA_WHITESPACE */
    t = &w->cur;
    {
        size_t o = 0;
        for (size_t i = 0; i < t->len; i++)
            if (t->cp[i] != '\r')
                t->cp[o++] = t->cp[i];
        t->len = o;
    }
    if ((st = SUB(w, " (", err, '(')) || (st = SUB(w, ") ", err, ')')) ||
        (st = collapse_spaces(w, err)))
        return st;
    drop_space_after_paren(&w->cur);
    if ((st = SUB(w, "(", err, '(', ' ')) || (st = SUB(w, ")", err, ' ', ')')))
        return st;
    digit_space_percent(&w->cur);
    if ((st = SUB(w, ":", err, ' ', ':')) || (st = SUB(w, ";", err, ' ', ';')))
        return st;

    /* NORMALIZE_UNICODE_IF_NOT_PENN (inserted because penn=True) */
    for (size_t i = 0; i < w->cur.len; i++)
        if (w->cur.cp[i] == '`')
            w->cur.cp[i] = '\'';
    if ((st = SUB(w, " \" ", err, '\'', '\'')))
        return st;

    /* NORMALIZE_UNICODE */
    static const char_map_t dashes_quotes[] = {
        {0x201E, "\""}, {0x201C, "\""}, {0x201D, "\""}, {0x2013, "-"}, {0x2014, " - "},
    };
    if ((st = map_chars(w, dashes_quotes, 5, err)) || (st = collapse_spaces(w, err)))
        return st;
    for (size_t i = 0; i < w->cur.len; i++)
        if (w->cur.cp[i] == 0x00B4) /* ´ */
            w->cur.cp[i] = '\'';
    letter_quote_letter(&w->cur, 0x2018);
    letter_quote_letter(&w->cur, 0x2019);
    for (size_t i = 0; i < w->cur.len; i++)
        if (w->cur.cp[i] == 0x2018 || w->cur.cp[i] == 0x201A || w->cur.cp[i] == 0x2019)
            w->cur.cp[i] = '\'';
    if ((st = SUB(w, "\"", err, '\'', '\'')))
        return st;
    /* (u"´´" -> '"' can no longer match: every ´ became ' above.) */
    static const char_map_t ellipsis[] = {{0x2026, "..."}};
    if ((st = map_chars(w, ellipsis, 1, err)))
        return st;

    /* FRENCH_QUOTES */
    if ((st = SUB(w, "\"", err, NBSP, 0x00AB, NBSP)) || (st = SUB(w, "\"", err, 0x00AB, NBSP)) ||
        (st = SUB(w, "\"", err, 0x00AB)) || (st = SUB(w, "\"", err, NBSP, 0x00BB, NBSP)) ||
        (st = SUB(w, "\"", err, NBSP, 0x00BB)) || (st = SUB(w, "\"", err, 0x00BB)))
        return st;

    /* HANDLE_PSEUDO_SPACES */
    if ((st = SUB(w, "%", err, NBSP, '%')))
        return st;
    if (contains(&w->cur, NBSP)) {
        /* u"nº\u00A0" -> u"nº " keeps its º: replace the NBSP only. */
        shard_tok_text_t *c = &w->cur;
        size_t i = 0;
        while (i + 2 < c->len) {
            if (c->cp[i] == 'n' && c->cp[i + 1] == 0x00BA && c->cp[i + 2] == NBSP) {
                c->cp[i + 2] = ' ';
                i += 3;
            } else {
                i++;
            }
        }
        if ((st = SUB(w, ":", err, NBSP, ':')))
            return st;
        /* u"\u00A0ºC" -> u" ºC" */
        c = &w->cur;
        for (i = 0; i + 2 < c->len; i++)
            if (c->cp[i] == NBSP && c->cp[i + 1] == 0x00BA && c->cp[i + 2] == 'C') {
                c->cp[i] = ' ';
                i += 2;
            }
        for (i = 0; i + 2 < c->len; i++)
            if (c->cp[i] == NBSP && c->cp[i + 1] == 'c' && c->cp[i + 2] == 'm') {
                c->cp[i] = ' ';
                i += 2;
            }
        if ((st = SUB(w, "?", err, NBSP, '?')) || (st = SUB(w, "!", err, NBSP, '!')) ||
            (st = SUB(w, ";", err, NBSP, ';')))
            return st;
        c = &w->cur;
        for (i = 0; i + 1 < c->len; i++)
            if (c->cp[i] == ',' && c->cp[i + 1] == NBSP) {
                c->cp[i + 1] = ' ';
                i++;
            }
    }
    if ((st = collapse_spaces(w, err)))
        return st;

    /* Quotation followed by comma, then numbers: language-specific. */
    if (rules->quotes == SHARD_TOK_QUOTES_EN) {
        en_quote_comma(&w->cur);
    } else if (rules->quotes == SHARD_TOK_QUOTES_DE_ES_FR) {
        shard_tok_text_t *c = &w->cur;
        for (size_t i = 0; i + 1 < c->len; i++)
            if (c->cp[i] == ',' && c->cp[i + 1] == '"') {
                c->cp[i] = '"';
                c->cp[i + 1] = ',';
                i++;
            }
        de_quote_dots(&w->cur);
    }
    digit_nbsp_digit(&w->cur, rules->numbers_with_comma ? ',' : '.');
    strip_spaces(&w->cur);
    return SHARD_OK;
}

/* ---------------------------------------------------------------- other stages */

void shard_tok_remove_non_printing(shard_tok_text_t *t)
{
    size_t o = 0;
    for (size_t i = 0; i < t->len; i++)
        if (!shard_tok_is_other_cat(t->cp[i]))
            t->cp[o++] = t->cp[i];
    t->len = o;
}

void shard_tok_romanian(shard_tok_text_t *t)
{
    /* normalise-romanian.py turns cedillas into commas, remove-diacritics.py
     * then drops commas, breves and circumflexes: the composition of both. */
    for (size_t i = 0; i < t->len; i++) {
        switch (t->cp[i]) {
        case 0x015E: case 0x0218: t->cp[i] = 'S'; break;
        case 0x015F: case 0x0219: t->cp[i] = 's'; break;
        case 0x0162: case 0x021A: t->cp[i] = 'T'; break;
        case 0x0163: case 0x021B: t->cp[i] = 't'; break;
        case 0x0102: case 0x00C2: t->cp[i] = 'A'; break;
        case 0x0103: case 0x00E2: t->cp[i] = 'a'; break;
        case 0x00CE: t->cp[i] = 'I'; break;
        case 0x00EE: t->cp[i] = 'i'; break;
        default: break;
        }
    }
}

void shard_tok_collapse_spaces(shard_tok_text_t *t)
{
    /* r"\s+" -> " " then strip(). */
    size_t o = 0;
    for (size_t i = 0; i < t->len; i++) {
        const uint32_t c = t->cp[i];
        if (shard_tok_is_space_fast(c)) {
            if (o > 0 && t->cp[o - 1] != ' ')
                t->cp[o++] = ' ';
        } else {
            t->cp[o++] = c;
        }
    }
    if (o > 0 && t->cp[o - 1] == ' ')
        o--;
    t->len = o;
}

shard_status_t shard_tok_split_whitespace(shard_tok_work_t *w, shard_error_t *err)
{
    (void)err;
    shard_tok_collapse_spaces(&w->cur);
    return SHARD_OK;
}

/* Canonical ordering of combining marks (the second half of NFD). */
static void canonical_order(uint32_t *cp, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0; j--) {
            int a = utf8proc_get_property((utf8proc_int32_t)cp[j - 1])->combining_class;
            int b = utf8proc_get_property((utf8proc_int32_t)cp[j])->combining_class;
            if (b == 0 || a <= b)
                break;
            uint32_t tmp = cp[j - 1];
            cp[j - 1] = cp[j];
            cp[j] = tmp;
        }
    }
}

shard_status_t shard_tok_lower_strip_accents(const uint32_t *word, size_t n,
                                             shard_tok_text_t *out, shard_error_t *err)
{
    /* One code point decomposes into at most a handful; 4 * 2 per input is a
     * safe bound for lower (<= 2) then canonical decomposition (<= 4 each
     * in Unicode 13, Hangul 3). */
    out->len = 0;
    if (n > SIZE_MAX / 64 || !shard_tok_text_reserve(out, n * 8 + 8))
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "shard_tokenizer: out of memory for a word of %zu code points", n);
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = word[i] < 0x80;
    if (ascii) {
        for (size_t i = 0; i < n; i++) {
            uint32_t c = word[i];
            out->cp[out->len++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        }
        return SHARD_OK;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t low[2];
        size_t nl = shard_tok_lower(word[i], low);
        for (size_t k = 0; k < nl; k++) {
            utf8proc_int32_t buf[8];
            int last = 0;
            utf8proc_ssize_t m = utf8proc_decompose_char((utf8proc_int32_t)low[k], buf, 8,
                                                         UTF8PROC_DECOMPOSE, &last);
            if (m < 0 || m > 8) {
                buf[0] = (utf8proc_int32_t)low[k];
                m = 1;
            }
            if (out->len + (size_t)m + 2 > out->cap &&
                !shard_tok_text_reserve(out, out->len + (size_t)m + 16))
                return shard_error_set(err, SHARD_ERR_NOMEM,
                                       "shard_tokenizer: out of memory in accent removal");
            for (utf8proc_ssize_t j = 0; j < m; j++)
                out->cp[out->len++] = (uint32_t)buf[j];
        }
    }
    canonical_order(out->cp, out->len);
    size_t o = 0;
    for (size_t i = 0; i < out->len; i++) {
        if (shard_tok_is_nonspacing(out->cp[i]))
            continue;
        uint32_t low[2];
        size_t nl = shard_tok_lower(out->cp[i], low);
        /* lower() after NFD never grows a character here (no U+0130 can be
         * left: it decomposes to I + U+0307); keep the first to be safe. */
        out->cp[o++] = nl ? low[0] : out->cp[i];
    }
    out->len = o;
    return SHARD_OK;
}
