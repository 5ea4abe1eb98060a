/* tokenizer_moses.c: sacremoses' MosesTokenizer.tokenize as XLMTokenizer
 * calls it (aggressive_dash_splits=False, escape=False, no protected
 * patterns), plus the per-language rules (nonbreaking prefixes,
 * apostrophes) it depends on.
 *
 * The reference is a chain of regular expression substitutions over the
 * whole sentence; each is emulated by a pass with the same left-to-right,
 * non-overlapping match semantics. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- prefixes */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_word(char **words, size_t n, const char *word)
{
    return n && bsearch(&word, words, n, sizeof *words, cmp_str) != NULL;
}

/* sacremoses: an entry "X ... #NUMERIC_ONLY#" (whitespace before the
 * marker) makes "X" (the entry up to its last space) numeric-only; the
 * entry itself stays in the main list, where it can never equal a token. */
static bool numeric_only(const char *word, size_t *prefix_len)
{
    const char *mark = strstr(word, "#NUMERIC_ONLY#");
    while (mark) {
        if (mark > word && (mark[-1] == ' ' || mark[-1] == '\t')) {
            const char *space = strrchr(word, ' ');
            *prefix_len = space ? (size_t)(space - word) : 0;
            return true;
        }
        mark = strstr(mark + 1, "#NUMERIC_ONLY#");
    }
    return false;
}

static void free_list(shard_tok_prefixes_t *p)
{
    for (size_t i = 0; i < p->n_words; i++)
        free(p->words[i]);
    for (size_t i = 0; i < p->n_numeric; i++)
        free(p->numeric[i]);
    free(p->words);
    free(p->numeric);
}

static bool build_list(const shard_tok_prefix_list_t *src, shard_tok_prefixes_t *p)
{
    memset(p, 0, sizeof *p);
    p->words = calloc(src->count + 1, sizeof *p->words);
    p->numeric = calloc(src->count + 1, sizeof *p->numeric);
    if (!p->words || !p->numeric)
        return false;
    for (size_t i = 0; i < src->count; i++) {
        if (!(p->words[p->n_words] = strdup(src->words[i])))
            return false;
        p->n_words++;
        size_t len;
        if (numeric_only(src->words[i], &len)) {
            char *prefix = malloc(len + 1);
            if (!prefix)
                return false;
            memcpy(prefix, src->words[i], len);
            prefix[len] = '\0';
            p->numeric[p->n_numeric++] = prefix;
        }
    }
    qsort(p->words, p->n_words, sizeof *p->words, cmp_str);
    qsort(p->numeric, p->n_numeric, sizeof *p->numeric, cmp_str);
    return true;
}

shard_status_t shard_tok_prefixes_build(shard_tok_prefixes_t **out, shard_error_t *err)
{
    size_t n = shard_tok_prefix_list_count;
    shard_tok_prefixes_t *lists = calloc(n, sizeof *lists);
    if (!lists)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!build_list(&shard_tok_prefix_lists[i], &lists[i])) {
            for (size_t k = 0; k <= i; k++)
                free_list(&lists[k]);
            free(lists);
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
        }
    }
    *out = lists;
    return SHARD_OK;
}

void shard_tok_prefixes_free(shard_tok_prefixes_t *lists)
{
    if (!lists)
        return;
    for (size_t i = 0; i < shard_tok_prefix_list_count; i++)
        free_list(&lists[i]);
    free(lists);
}

static bool is_one_of(const char *code, const char *const *codes)
{
    for (; *codes; codes++)
        if (strcmp(code, *codes) == 0)
            return true;
    return false;
}

void shard_tok_rules_init(shard_tok_rules_t *rules, const char *code,
                          const shard_tok_prefixes_t *lists)
{
    memset(rules, 0, sizeof *rules);
    snprintf(rules->code, sizeof rules->code, "%s", code ? code : "en");
    const char *c = rules->code;
    static const char *const fr_it[] = {"fr", "it", NULL};
    static const char *const de_es_fr[] = {"de", "es", "fr", NULL};
    static const char *const comma_numbers[] = {"de", "es", "cz", "cs", "fr", NULL};
    static const char *const segmented[] = {"zh", "th", "ja", NULL};
    rules->apostrophes = strcmp(c, "en") == 0 ? SHARD_TOK_APOS_EN
                         : is_one_of(c, fr_it) ? SHARD_TOK_APOS_FR_IT
                                               : SHARD_TOK_APOS_OTHER;
    rules->quotes = strcmp(c, "en") == 0 ? SHARD_TOK_QUOTES_EN
                    : is_one_of(c, de_es_fr) ? SHARD_TOK_QUOTES_DE_ES_FR
                                             : SHARD_TOK_QUOTES_NONE;
    rules->numbers_with_comma = is_one_of(c, comma_numbers);
    rules->romanian = strcmp(c, "ro") == 0;
    rules->hangul_alpha = strcmp(c, "ko") == 0;
    rules->segmented = is_one_of(c, segmented);
    /* sacremoses falls back to the English list for a language it has no
     * list for. */
    size_t en = 0;
    rules->prefixes = NULL;
    for (size_t i = 0; i < shard_tok_prefix_list_count; i++) {
        if (strcmp(shard_tok_prefix_lists[i].lang, "en") == 0)
            en = i;
        if (strcmp(shard_tok_prefix_lists[i].lang, c) == 0)
            rules->prefixes = &lists[i];
    }
    if (!rules->prefixes)
        rules->prefixes = &lists[en];
}

/* ---------------------------------------------------------------- passes */

/* r"([^{IsAlnum}\s\.'\`\,\-])" -> r" \1 " */
static void pad_not_alnum(shard_tok_work_t *w, bool hangul)
{
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    for (size_t i = 0; i < in->len; i++) {
        uint32_t c = in->cp[i];
        bool keep = c == '.' || c == '\'' || c == '`' || c == ',' || c == '-' ||
                    shard_tok_is_alnum(c, hangul) || shard_tok_is_space_fast(c);
        if (keep) {
            shard_tok_put(out, c);
        } else {
            shard_tok_put(out, ' ');
            shard_tok_put(out, c);
            shard_tok_put(out, ' ');
        }
    }
}

static bool has_literal(const shard_tok_text_t *t, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= t->len; i++) {
        size_t k = 0;
        while (k < n && t->cp[i + k] == (uint32_t)(unsigned char)s[k])
            k++;
        if (k == n)
            return true;
    }
    return false;
}

/* Runs of two or more dots stay one token. sacremoses rewrites them as
 * " DOTMULTI..." and loops until they read "DOTDOT...MULTI", separated
 * from what follows by a space, and restores the dots at the end. The
 * effect is computed in one pass: " " + placeholder(run) + (" " when text
 * follows). */
static void replace_multidots(shard_tok_work_t *w)
{
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t i = 0;
    while (i < in->len) {
        if (in->cp[i] == '.' && i + 1 < in->len && in->cp[i + 1] == '.') {
            size_t j = i;
            while (j < in->len && in->cp[j] == '.')
                j++;
            shard_tok_put(out, ' ');
            /* A run longer than a placeholder holds takes several in a row;
             * they stay one token and expand back the same. */
            for (size_t left = j - i; left > 0;) {
                size_t k = left < 0xFFFFFF ? left : 0xFFFFFF;
                shard_tok_put(out, SHARD_TOK_DOTRUN | (uint32_t)k);
                left -= k;
            }
            if (j < in->len)
                shard_tok_put(out, ' ');
            i = j;
            continue;
        }
        shard_tok_put(out, in->cp[i++]);
    }
}

/* The literal algorithm, for the rare text that already contains the word
 * "DOTMULTI" (only cased checkpoints can see it): sacremoses then also
 * rewrites the user's own letters, so it must be reproduced step by step. */
static shard_status_t sub_literal_text(shard_tok_work_t *w, const char *pat, const char *rep,
                                       bool need_non_dot, shard_error_t *err)
{
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t n = strlen(pat), i = 0;
    while (i < in->len) {
        size_t k = 0;
        while (k < n && i + k < in->len && in->cp[i + k] == (uint32_t)(unsigned char)pat[k])
            k++;
        if (k == n && (!need_non_dot || (i + n < in->len && in->cp[i + n] != '.'))) {
            for (const char *r = rep; *r; r++)
                shard_tok_put(out, (uint32_t)(unsigned char)*r);
            i += n;
            if (need_non_dot) /* the pattern consumed the character after */
                shard_tok_put(out, in->cp[i++]);
        } else {
            shard_tok_put(out, in->cp[i++]);
        }
    }
    shard_tok_work_swap(w);
    return SHARD_OK;
}

enum { LITERAL_WORK_MAX = 200000000 }; /* code points visited, about a second */

static shard_status_t replace_multidots_literal(shard_tok_work_t *w, shard_error_t *err)
{
    /* re.sub(r"\.([\.]+)", r" DOTMULTI\1") */
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    const shard_tok_text_t *in = &w->cur;
    size_t i = 0;
    while (i < in->len) {
        if (in->cp[i] == '.' && i + 1 < in->len && in->cp[i + 1] == '.') {
            if (!shard_tok_text_reserve(&w->next, w->next.len + in->len - i + 16))
                return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
            for (const char *r = " DOTMULTI"; *r; r++)
                shard_tok_put(&w->next, (uint32_t)*r);
            i++;
            while (i < in->len && in->cp[i] == '.')
                shard_tok_put(&w->next, in->cp[i++]);
            continue;
        }
        shard_tok_put(&w->next, in->cp[i++]);
    }
    shard_tok_work_swap(w);
    /* Each round of the loop below eats one dot after every "DOTMULTI", so
     * it runs as many rounds as the longest such run of dots, over the
     * whole text each time: refuse what would take minutes rather than
     * hang a service on it. */
    size_t longest = 0;
    const shard_tok_text_t *t = &w->cur;
    for (size_t k = 0; k + 8 <= t->len; k++) {
        static const char word[] = "DOTMULTI";
        size_t m = 0;
        while (m < 8 && t->cp[k + m] == (uint32_t)word[m])
            m++;
        if (m < 8)
            continue;
        size_t dots = 0;
        while (k + 8 + dots < t->len && t->cp[k + 8 + dots] == '.')
            dots++;
        if (dots > longest)
            longest = dots;
    }
    if (longest && longest > LITERAL_WORK_MAX / (t->len + 1))
        return shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                               "shard_tokenizer: the text holds sacremoses' placeholder word "
                               "DOTMULTI next to %zu dots in %zu characters; reproducing "
                               "sacremoses there takes quadratic time, so it is refused",
                               longest, t->len);
    while (has_literal(&w->cur, "DOTMULTI.")) {
        /* "DOTMULTI.x" -> "DOTDOTMULTI x", then "DOTMULTI." -> "DOTDOTMULTI" */
        if ((st = sub_literal_text(w, "DOTMULTI.", "DOTDOTMULTI ", true, err)))
            return st;
        if ((st = sub_literal_text(w, "DOTMULTI.", "DOTDOTMULTI", false, err)))
            return st;
    }
    return SHARD_OK;
}

static shard_status_t restore_multidots_literal(shard_tok_work_t *w, shard_error_t *err)
{
    shard_status_t st;
    while (has_literal(&w->cur, "DOTDOTMULTI"))
        if ((st = sub_literal_text(w, "DOTDOTMULTI", "DOTMULTI.", false, err)))
            return st;
    return sub_literal_text(w, "DOTMULTI", ".", false, err);
}

static void restore_multidots(shard_tok_work_t *w)
{
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    for (size_t i = 0; i < in->len; i++) {
        uint32_t c = in->cp[i];
        if (c & SHARD_TOK_DOTRUN) {
            for (uint32_t k = 0; k < (c & 0xFFFFFF); k++)
                shard_tok_put(out, '.');
        } else {
            shard_tok_put(out, c);
        }
    }
}

static bool is_n(uint32_t c)
{
    return !(c & SHARD_TOK_DOTRUN) && shard_tok_is_number(c);
}

/* COMMA_SEPARATE_1..3: split commas off except inside numbers (5,300). */
static void comma_separate(shard_tok_work_t *w)
{
    /* r"([^{IsN}])[,]" -> r"\1 , " */
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t i = 0;
    while (i < in->len) {
        if (i + 1 < in->len && in->cp[i + 1] == ',' && !is_n(in->cp[i])) {
            shard_tok_put(out, in->cp[i]);
            shard_tok_put(out, ' ');
            shard_tok_put(out, ',');
            shard_tok_put(out, ' ');
            i += 2;
            continue;
        }
        shard_tok_put(out, in->cp[i++]);
    }
}

static void comma_separate_2(shard_tok_work_t *w)
{
    /* r"[,]([^{IsN}])" -> r" , \1" */
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t i = 0;
    while (i < in->len) {
        if (in->cp[i] == ',' && i + 1 < in->len && !is_n(in->cp[i + 1])) {
            shard_tok_put(out, ' ');
            shard_tok_put(out, ',');
            shard_tok_put(out, ' ');
            shard_tok_put(out, in->cp[i + 1]);
            i += 2;
            continue;
        }
        shard_tok_put(out, in->cp[i++]);
    }
    /* r"([{IsN}])[,]$" -> r"\1 , " */
    if (out->len >= 2 && out->cp[out->len - 1] == ',' && is_n(out->cp[out->len - 2])) {
        out->len--;
        shard_tok_put(out, ' ');
        shard_tok_put(out, ',');
        shard_tok_put(out, ' ');
    }
}

static bool alpha(uint32_t c)
{
    /* The apostrophe rules were compiled from the class-level IsAlpha, which
     * the Korean mode does not change. */
    return !(c & SHARD_TOK_DOTRUN) && shard_tok_is_alpha(c, false);
}

typedef enum { ANY_NOT_ALPHA, ANY_ALPHA, NOT_ALPHA_NOR_N, ONLY_N, ONLY_S } cls_t;

static bool in_cls(uint32_t c, cls_t k)
{
    switch (k) {
    case ANY_NOT_ALPHA: return !alpha(c);
    case ANY_ALPHA: return alpha(c);
    case NOT_ALPHA_NOR_N: return !alpha(c) && !is_n(c);
    case ONLY_N: return is_n(c);
    case ONLY_S: return c == 's';
    }
    return false;
}

/* r"(A)[']([B])" -> "\1" + mid + "\2" */
static shard_status_t apostrophe_rule(shard_tok_work_t *w, cls_t a, cls_t b, const char *mid,
                                      shard_error_t *err)
{
    shard_status_t st = shard_tok_work_begin(w, 3, err);
    if (st)
        return st;
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t i = 0;
    while (i < in->len) {
        if (i + 2 < in->len && in->cp[i + 1] == '\'' && in_cls(in->cp[i], a) &&
            in_cls(in->cp[i + 2], b)) {
            shard_tok_put(out, in->cp[i]);
            for (const char *m = mid; *m; m++)
                shard_tok_put(out, (uint32_t)*m);
            shard_tok_put(out, in->cp[i + 2]);
            i += 3;
            continue;
        }
        shard_tok_put(out, in->cp[i++]);
    }
    shard_tok_work_swap(w);
    return SHARD_OK;
}

static shard_status_t apostrophes(shard_tok_work_t *w, shard_tok_apos_t kind, shard_error_t *err)
{
    bool any = false;
    for (size_t i = 0; i < w->cur.len && !any; i++)
        any = w->cur.cp[i] == '\'';
    if (!any)
        return SHARD_OK;
    shard_status_t st = SHARD_OK;
    switch (kind) {
    case SHARD_TOK_APOS_EN:
        if ((st = apostrophe_rule(w, ANY_NOT_ALPHA, ANY_NOT_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, NOT_ALPHA_NOR_N, ANY_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, ANY_ALPHA, ANY_NOT_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, ANY_ALPHA, ANY_ALPHA, " '", err)) ||
            (st = apostrophe_rule(w, ONLY_N, ONLY_S, " '", err)))
            return st;
        return SHARD_OK;
    case SHARD_TOK_APOS_FR_IT:
        if ((st = apostrophe_rule(w, ANY_NOT_ALPHA, ANY_NOT_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, ANY_NOT_ALPHA, ANY_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, ANY_ALPHA, ANY_NOT_ALPHA, " ' ", err)) ||
            (st = apostrophe_rule(w, ANY_ALPHA, ANY_ALPHA, "' ", err)))
            return st;
        return SHARD_OK;
    case SHARD_TOK_APOS_OTHER:
        if ((st = shard_tok_work_begin(w, 3, err)))
            return st;
        for (size_t i = 0; i < w->cur.len; i++) {
            if (w->cur.cp[i] == '\'') {
                shard_tok_put(&w->next, ' ');
                shard_tok_put(&w->next, '\'');
                shard_tok_put(&w->next, ' ');
            } else {
                shard_tok_put(&w->next, w->cur.cp[i]);
            }
        }
        shard_tok_work_swap(w);
        return SHARD_OK;
    }
    return SHARD_OK;
}

/* A token as UTF-8 in a stack buffer, or NULL when too long to be a
 * prefix (the longest listed prefix is far below the limit). */
static const char *token_utf8(const uint32_t *cp, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if ((cp[i] & SHARD_TOK_DOTRUN) || o + 5 > size)
            return NULL;
        o += shard_tok_utf8_put(cp[i], buf + o);
    }
    buf[o] = '\0';
    return buf;
}

/* handles_nonbreaking_prefixes: a token "X." keeps its period when X has a
 * dot and a letter (an abbreviation like "u.s."), X is a nonbreaking prefix,
 * or the next token starts in lowercase; a numeric-only prefix keeps it
 * before a number. Otherwise the period is split off. */
static void nonbreaking_prefixes(shard_tok_work_t *w, const shard_tok_rules_t *rules)
{
    const shard_tok_text_t *in = &w->cur;
    shard_tok_text_t *out = &w->next;
    size_t i = 0;
    while (i < in->len) {
        while (i < in->len && in->cp[i] == ' ')
            i++;
        if (i >= in->len)
            break;
        size_t b = i;
        while (i < in->len && in->cp[i] != ' ')
            i++;
        size_t e = i; /* token [b, e) */
        size_t nb = i;
        while (nb < in->len && in->cp[nb] == ' ')
            nb++;
        bool has_next = nb < in->len;
        if (out->len)
            shard_tok_put(out, ' ');
        bool split = false;
        if (e - b >= 2 && in->cp[e - 1] == '.') {
            const uint32_t *p = in->cp + b;
            size_t n = e - b - 1;
            bool dot = false, letter = false;
            for (size_t k = 0; k < n; k++) {
                dot |= p[k] == '.';
                letter |= !(p[k] & SHARD_TOK_DOTRUN) && shard_tok_is_alpha(p[k], rules->hangul_alpha);
            }
            char buf[256];
            const char *prefix = token_utf8(p, n, buf, sizeof buf);
            const shard_tok_prefixes_t *l = rules->prefixes;
            bool numeric = prefix && has_word(l->numeric, l->n_numeric, prefix);
            if ((dot && letter) || (prefix && has_word(l->words, l->n_words, prefix) && !numeric) ||
                (has_next && shard_tok_is_lower(in->cp[nb]))) {
                split = false;
            } else if (numeric && has_next && in->cp[nb] >= '0' && in->cp[nb] <= '9') {
                split = false;
            } else {
                split = true;
            }
        }
        for (size_t k = b; k < e - (split ? 1 : 0); k++)
            shard_tok_put(out, in->cp[k]);
        if (split) {
            shard_tok_put(out, ' ');
            shard_tok_put(out, '.');
        }
    }
}

/* r"\.' ?$" -> " . ' " */
static void trailing_dot_apostrophe(shard_tok_text_t *t)
{
    size_t n = t->len;
    if (n >= 2 && t->cp[n - 2] == '.' && t->cp[n - 1] == '\'') {
        t->len = n - 2;
        shard_tok_put(t, ' ');
        shard_tok_put(t, '.');
        shard_tok_put(t, ' ');
        shard_tok_put(t, '\'');
        shard_tok_put(t, ' ');
    }
}

#define STEP(call)                                                                    \
    do {                                                                              \
        if ((st = shard_tok_work_begin(w, 3, err)))                                   \
            return st;                                                                \
        call;                                                                         \
        shard_tok_work_swap(w);                                                       \
    } while (0)

shard_status_t shard_tok_moses(shard_tok_work_t *w, const shard_tok_rules_t *rules,
                               shard_error_t *err)
{
    shard_status_t st;
    shard_tok_collapse_spaces(&w->cur); /* DEDUPLICATE_SPACE, then strip() */
    {
        /* ASCII_JUNK: r"[\000-\037]" -> "" (whitespace among them is gone). */
        shard_tok_text_t *t = &w->cur;
        size_t o = 0;
        for (size_t i = 0; i < t->len; i++)
            if (t->cp[i] >= 0x20)
                t->cp[o++] = t->cp[i];
        t->len = o;
        shard_tok_collapse_spaces(t);
    }
    STEP(pad_not_alnum(w, rules->hangul_alpha));
    bool literal = has_literal(&w->cur, "DOTMULTI");
    if (literal) {
        if ((st = replace_multidots_literal(w, err)))
            return st;
    } else {
        STEP(replace_multidots(w));
    }
    STEP(comma_separate(w));
    STEP(comma_separate_2(w));
    if ((st = apostrophes(w, rules->apostrophes, err)))
        return st;
    STEP(nonbreaking_prefixes(w, rules));
    shard_tok_collapse_spaces(&w->cur);
    if (!shard_tok_text_reserve(&w->cur, w->cur.len + 8))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
    trailing_dot_apostrophe(&w->cur);
    if (literal) {
        if ((st = restore_multidots_literal(w, err)))
            return st;
    } else {
        /* A run expands back to its length in dots. */
        size_t dots = 0;
        for (size_t i = 0; i < w->cur.len; i++)
            if (w->cur.cp[i] & SHARD_TOK_DOTRUN)
                dots += w->cur.cp[i] & 0xFFFFFF;
        if (dots) {
            if (dots > SIZE_MAX / 8 - w->cur.len ||
                !shard_tok_text_reserve(&w->next, w->cur.len + dots + 16))
                return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
            w->next.len = 0;
            restore_multidots(w);
            shard_tok_work_swap(w);
        }
    }
    shard_tok_collapse_spaces(&w->cur);
    return SHARD_OK;
}
