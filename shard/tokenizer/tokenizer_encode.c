/* tokenizer_encode.c: text to tokens and ids, ids back to text, and saving
 * the vocabulary, as HF's PreTrainedTokenizer / XLMTokenizer do them.
 *
 *   tokenize(text):  lowercase everything but the special tokens (when the
 *                    checkpoint lowercases), cut the text at added tokens,
 *                    run XLM's _tokenize on every other piece
 *   _tokenize(piece): moses_pipeline, [Romanian], Moses words,
 *                    lowercase_and_remove_accent, BPE of every word
 *   encode:          <s> A </s> [B </s>] with type ids, masks and langs */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- units */

static void units_free(shard_tok_units_t *u)
{
    free(u->text);
    free(u->ids);
    memset(u, 0, sizeof *u);
}

static bool units_reserve_ids(shard_tok_units_t *u, size_t n)
{
    if (n <= u->ids_cap)
        return true;
    size_t cap = u->ids_cap ? u->ids_cap : 64;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(int64_t))
            return false;
        cap *= 2;
    }
    int64_t *ids = realloc(u->ids, cap * sizeof *ids);
    if (!ids)
        return false;
    u->ids = ids;
    u->ids_cap = cap;
    return true;
}

static int64_t unit_id(const shard_tokenizer_t *tok, const char *unit, size_t len)
{
    int64_t id;
    if (shard_tok_map_get(&tok->added_ids, unit, len, &id))
        return id;
    if (shard_tok_map_get(&tok->vocab, unit, len, &id))
        return id;
    return tok->ids.unk;
}

static shard_status_t units_add_token(shard_tok_units_t *u, const char *s, size_t len,
                                      int64_t id, shard_error_t *err)
{
    if (!units_reserve_ids(u, u->n + 1) || len > SIZE_MAX / 4 - u->text_len)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
    if (u->text_len + len + 1 > u->text_cap) {
        size_t cap = u->text_cap ? u->text_cap : 256;
        while (cap < u->text_len + len + 1)
            cap *= 2;
        char *t = realloc(u->text, cap);
        if (!t)
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
        u->text = t;
        u->text_cap = cap;
    }
    memcpy(u->text + u->text_len, s, len);
    u->text[u->text_len + len] = '\0';
    u->text_len += len + 1;
    u->ids[u->n++] = id;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- _tokenize */

typedef struct {
    shard_tok_work_t w;
    shard_tok_text_t word;
    char *utf8;
    size_t utf8_cap;
} scratch_t;

static void scratch_free(scratch_t *s)
{
    shard_tok_work_free(&s->w);
    shard_tok_text_free(&s->word);
    free(s->utf8);
}

static shard_status_t bpe_word(const shard_tokenizer_t *tok, scratch_t *s, const uint32_t *cp,
                               size_t n, shard_tok_units_t *out, shard_error_t *err)
{
    size_t bytes = shard_tok_utf8_length(cp, n);
    if (bytes + 1 > s->utf8_cap) {
        char *b = realloc(s->utf8, bytes + 1);
        if (!b)
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
        s->utf8 = b;
        s->utf8_cap = bytes + 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += shard_tok_utf8_put(cp[i], s->utf8 + o);
    size_t before_len = out->text_len, before_n = out->n, added = 0;
    shard_status_t st = shard_tok_bpe_word(tok->bpe, s->utf8, o, &out->text, &out->text_len,
                                           &out->text_cap, &added, err);
    if (st)
        return st;
    if (!units_reserve_ids(out, before_n + added))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
    const char *p = out->text + before_len;
    for (size_t k = 0; k < added; k++) {
        size_t l = strlen(p);
        out->ids[out->n++] = unit_id(tok, p, l);
        p += l + 1;
    }
    return SHARD_OK;
}

/* XLMTokenizer._tokenize of one piece of text (no added tokens in it). */
static shard_status_t tokenize_piece(const shard_tokenizer_t *tok, const uint32_t *cp, size_t n,
                                     const shard_tok_rules_t *rules, scratch_t *s,
                                     shard_tok_units_t *out, shard_error_t *err)
{
    shard_tok_work_t *w = &s->w;
    w->cur.len = 0;
    if (!shard_tok_text_reserve(&w->cur, n + 16))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
    memcpy(w->cur.cp, cp, n * sizeof *cp);
    w->cur.len = n;
    shard_status_t st;
    if ((st = shard_tok_replace_unicode_punct(w, err)) ||
        (st = shard_tok_punct_norm(w, rules, err)))
        return st;
    shard_tok_remove_non_printing(&w->cur);
    if (rules->segmented) {
        st = shard_tok_split_whitespace(w, err);
    } else {
        if (rules->romanian)
            shard_tok_romanian(&w->cur);
        st = shard_tok_moses(w, rules, err);
    }
    if (st)
        return st;
    const shard_tok_text_t *t = &w->cur;
    size_t i = 0;
    while (i < t->len) {
        size_t b = i;
        while (i < t->len && t->cp[i] != ' ')
            i++;
        if (i > b) {
            const uint32_t *word = t->cp + b;
            size_t len = i - b;
            if (tok->lowercase) {
                if ((st = shard_tok_lower_strip_accents(word, len, &s->word, err)))
                    return st;
                word = s->word.cp;
                len = s->word.len;
            }
            if (len && (st = bpe_word(tok, s, word, len, out, err)))
                return st;
        }
        i++;
    }
    return SHARD_OK;
}

/* ---------------------------------------------------------------- tokenize */

/* Lowercases text except where a protected string (a special token) starts:
 * HF's re.sub(r"(tok1|tok2|...)|(.+?)", ...), first alternative wins. */
static bool may_start(const uint64_t first[3], uint32_t c)
{
    uint32_t k = c < 128 ? c : 128;
    return (first[k / 64] >> (k % 64)) & 1;
}

static void lowercase_protected(const shard_tokenizer_t *tok, const shard_tok_text_t *in,
                                shard_tok_text_t *out)
{
    size_t i = 0;
    while (i < in->len) {
        size_t hit = 0;
        bool check = may_start(tok->protect_first, in->cp[i]);
        for (size_t k = 0; check && k < tok->n_protect && !hit; k++) {
            size_t l = tok->protect_len[k];
            if (l <= in->len - i && in->cp[i] == tok->protect[k][0] &&
                memcmp(in->cp + i, tok->protect[k], l * sizeof *in->cp) == 0)
                hit = l;
        }
        if (hit) {
            memcpy(out->cp + out->len, in->cp + i, hit * sizeof *in->cp);
            out->len += hit;
            i += hit;
            continue;
        }
        uint32_t low[2];
        size_t nl = shard_tok_lower(in->cp[i++], low);
        for (size_t k = 0; k < nl; k++)
            out->cp[out->len++] = low[k];
    }
}

/* The longest added token starting at cp[i], or -1. */
static ptrdiff_t added_at(const shard_tokenizer_t *tok, const uint32_t *cp, size_t n, size_t i)
{
    ptrdiff_t best = -1;
    size_t best_len = 0;
    if (!may_start(tok->added_first, cp[i]))
        return -1;
    for (size_t k = 0; k < tok->n_added; k++) {
        const shard_tok_added_t *a = &tok->added[k];
        if (a->n_cp > n - i || a->n_cp <= best_len || cp[i] != a->cp[0])
            continue;
        if (memcmp(cp + i, a->cp, a->n_cp * sizeof *cp) == 0) {
            best = (ptrdiff_t)k;
            best_len = a->n_cp;
        }
    }
    return best;
}

typedef struct {
    size_t start, end;
    ptrdiff_t added; /* index into tok->added, -1 for text */
} piece_t;

shard_status_t shard_tok_encode_text(const shard_tokenizer_t *tok, const char *text, size_t len,
                                     const shard_tok_rules_t *rules, shard_tok_units_t *out,
                                     shard_error_t *err)
{
    shard_tok_text_t src = {0}, low = {0};
    scratch_t s = {0};
    piece_t *pieces = NULL;
    shard_status_t st = shard_tok_utf8_decode(text, len, 0, &src, err);
    if (st)
        goto done;
    const shard_tok_text_t *t = &src;
    if (tok->lowercase) {
        if (src.len > SIZE_MAX / 8 || !shard_tok_text_reserve(&low, src.len * 2 + 1)) {
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
            goto done;
        }
        lowercase_protected(tok, &src, &low);
        t = &low;
    }

    /* Cut at added tokens: leftmost, longest first (HF's trie). */
    size_t n_pieces = 0, cap = 16;
    pieces = malloc(cap * sizeof *pieces);
    if (!pieces) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
        goto done;
    }
    size_t text_start = 0, i = 0;
    while (i <= t->len) {
        ptrdiff_t a = i < t->len ? added_at(tok, t->cp, t->len, i) : -1;
        if (a < 0 && i < t->len) {
            i++;
            continue;
        }
        if (n_pieces + 2 > cap) {
            piece_t *p = realloc(pieces, cap * 2 * sizeof *p);
            if (!p) {
                st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer: out of memory");
                goto done;
            }
            pieces = p;
            cap *= 2;
        }
        if (i > text_start)
            pieces[n_pieces++] = (piece_t){text_start, i, -1};
        if (a < 0)
            break;
        pieces[n_pieces++] = (piece_t){i, i + tok->added[a].n_cp, a};
        i += tok->added[a].n_cp;
        text_start = i;
    }
    /* Added tokens with lstrip/rstrip eat the whitespace beside them. */
    for (size_t k = 0; k < n_pieces; k++) {
        if (pieces[k].added < 0)
            continue;
        const shard_tok_added_t *a = &tok->added[pieces[k].added];
        if (a->rstrip && k + 1 < n_pieces && pieces[k + 1].added < 0)
            while (pieces[k + 1].start < pieces[k + 1].end &&
                   shard_tok_is_space(t->cp[pieces[k + 1].start]))
                pieces[k + 1].start++;
        if (a->lstrip && k > 0 && pieces[k - 1].added < 0)
            while (pieces[k - 1].end > pieces[k - 1].start &&
                   shard_tok_is_space(t->cp[pieces[k - 1].end - 1]))
                pieces[k - 1].end--;
    }
    for (size_t k = 0; k < n_pieces && !st; k++) {
        if (pieces[k].added >= 0) {
            const shard_tok_added_t *a = &tok->added[pieces[k].added];
            st = units_add_token(out, a->content, a->len, a->id, err);
        } else if (pieces[k].end > pieces[k].start) {
            st = tokenize_piece(tok, t->cp + pieces[k].start, pieces[k].end - pieces[k].start,
                                rules, &s, out, err);
        }
    }
done:
    free(pieces);
    shard_tok_text_free(&src);
    shard_tok_text_free(&low);
    scratch_free(&s);
    return st;
}

/* ---------------------------------------------------------------- encode */

void shard_encoding_init(shard_encoding_t *enc)
{
    memset(enc, 0, sizeof *enc);
}

void shard_encoding_clear(shard_encoding_t *enc)
{
    if (!enc)
        return;
    free(enc->input_ids);
    free(enc->token_type_ids);
    free(enc->special_tokens_mask);
    free(enc->langs);
    free(enc->token_text);
    free(enc->token_offsets);
    memset(enc, 0, sizeof *enc);
}

const char *shard_encoding_token(const shard_encoding_t *enc, size_t i)
{
    return enc && i < enc->length ? enc->token_text + enc->token_offsets[i] : NULL;
}

static shard_status_t segment_lang(const shard_tokenizer_t *tok, const char *lang,
                                   const char *what, int64_t *id, shard_error_t *err)
{
    if (!lang)
        lang = "en";
    if (tok->n_langs == 0) {
        *id = 0;
        return SHARD_OK;
    }
    *id = shard_tokenizer_lang_id(tok, lang);
    if (*id >= 0)
        return SHARD_OK;
    char list[SHARD_ERROR_MESSAGE_MAX / 2] = "";
    size_t o = 0;
    for (size_t i = 0; i < tok->n_langs && o + SHARD_LANG_NAME_MAX + 2 < sizeof list; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", tok->langs[i].code);
    return shard_error_set(err, SHARD_ERR_LANG,
                           "shard_tokenizer_encode: %s language \"%.32s\" is not one of the "
                           "checkpoint's languages (%s)",
                           what, lang, list);
}

static shard_status_t encode_segment(const shard_tokenizer_t *tok, shard_tokenizer_mode_t mode,
                                     const shard_tokenizer_segment_t *seg, const char *what,
                                     shard_tok_units_t *u, int64_t *lang_id, shard_error_t *err)
{
    if (!seg->text && seg->len)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_tokenizer_encode: %s is NULL with length %zu", what,
                               seg->len);
    shard_status_t st = segment_lang(tok, seg->lang, what, lang_id, err);
    if (st)
        return st;
    shard_tok_rules_t rules;
    shard_tok_rules_init(&rules, mode == SHARD_TOKENIZER_MODE_LANG_RULES && seg->lang ? seg->lang
                                                                                       : "en",
                         tok->prefixes);
    st = shard_tok_encode_text(tok, seg->text ? seg->text : "", seg->len, &rules, u, err);
    if (st == SHARD_ERR_UTF8 && err) {
        /* Say which text the offset is in. */
        char msg[SHARD_ERROR_MESSAGE_MAX];
        snprintf(msg, sizeof msg, "%s", err->message);
        shard_error_set(err, SHARD_ERR_UTF8, "%s: %s", what, msg);
    }
    return st;
}

shard_status_t shard_tokenizer_encode(const shard_tokenizer_t *tok, shard_tokenizer_mode_t mode,
                                      const shard_tokenizer_segment_t *a,
                                      const shard_tokenizer_segment_t *b,
                                      bool add_special_tokens, shard_encoding_t *out,
                                      shard_error_t *err)
{
    if (!tok || !a || !out)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_tokenizer_encode: tokenizer, segment and output are "
                               "required");
    if ((int)mode < 0 || mode >= SHARD_TOKENIZER_MODE_COUNT_)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_tokenizer_encode: mode %d, expected 0..%d", (int)mode,
                               SHARD_TOKENIZER_MODE_COUNT_ - 1);
    shard_encoding_clear(out);
    shard_tok_units_t ua = {0}, ub = {0};
    int64_t lang_a = 0, lang_b = 0;
    shard_status_t st = encode_segment(tok, mode, a, "text", &ua, &lang_a, err);
    if (!st && b)
        st = encode_segment(tok, mode, b, "text_pair", &ub, &lang_b, err);
    if (st)
        goto done;

    size_t sp = add_special_tokens ? 1 : 0;
    size_t length = sp + ua.n + sp + (b ? ub.n + sp : 0);
    const char *bos = shard_tokenizer_id_to_token(tok, tok->ids.bos);
    const char *sep = shard_tokenizer_id_to_token(tok, tok->ids.eos_sep);
    size_t bos_len = bos ? strlen(bos) : 0, sep_len = sep ? strlen(sep) : 0;
    size_t text_bytes = ua.text_len + ub.text_len + 3 * (bos_len + sep_len + 2);
    out->input_ids = malloc((length + 1) * sizeof *out->input_ids);
    out->token_type_ids = malloc((length + 1) * sizeof *out->token_type_ids);
    out->special_tokens_mask = malloc((length + 1) * sizeof *out->special_tokens_mask);
    out->langs = malloc((length + 1) * sizeof *out->langs);
    out->token_offsets = malloc((length + 1) * sizeof *out->token_offsets);
    out->token_text = malloc(text_bytes + 1);
    if (!out->input_ids || !out->token_type_ids || !out->special_tokens_mask || !out->langs ||
        !out->token_offsets || !out->token_text) {
        st = shard_error_set(err, SHARD_ERR_NOMEM,
                             "shard_tokenizer_encode: out of memory for %zu tokens", length);
        goto done;
    }
    size_t pos = 0, o = 0;
#define PUT(id_, str_, len_, type_, special_, lang_)                                    \
    do {                                                                                \
        out->input_ids[pos] = (id_);                                                    \
        out->token_type_ids[pos] = (type_);                                             \
        out->special_tokens_mask[pos] = (special_);                                     \
        out->langs[pos] = (lang_);                                                      \
        out->token_offsets[pos] = o;                                                    \
        memcpy(out->token_text + o, (str_), (len_));                                    \
        o += (len_);                                                                    \
        out->token_text[o++] = '\0';                                                    \
        pos++;                                                                          \
    } while (0)
    if (sp)
        PUT(tok->ids.bos, bos ? bos : "", bos_len, 0, 1, lang_a);
    const char *p = ua.text;
    for (size_t k = 0; k < ua.n; k++) {
        size_t l = strlen(p);
        PUT(ua.ids[k], p, l, 0, 0, lang_a);
        p += l + 1;
    }
    if (sp)
        PUT(tok->ids.eos_sep, sep ? sep : "", sep_len, 0, 1, lang_a);
    if (b) {
        int64_t type = add_special_tokens ? 1 : 0;
        p = ub.text;
        for (size_t k = 0; k < ub.n; k++) {
            size_t l = strlen(p);
            PUT(ub.ids[k], p, l, type, 0, lang_b);
            p += l + 1;
        }
        if (sp)
            PUT(tok->ids.eos_sep, sep ? sep : "", sep_len, type, 1, lang_b);
    }
#undef PUT
    out->length = length;
    out->length_a = ua.n;
    out->length_b = b ? ub.n : 0;
    out->offset_a = sp;
    out->offset_b = sp + ua.n + sp;
    out->has_pair = b != NULL;
done:
    if (st)
        shard_encoding_clear(out);
    units_free(&ua);
    units_free(&ub);
    return st;
}

/* ---------------------------------------------------------------- decode */

typedef struct {
    char *s;
    size_t len, cap;
} sbuf_t;

static bool sbuf_add(sbuf_t *b, const char *s, size_t n)
{
    if (n > SIZE_MAX / 4 - b->len)
        return false;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *t = realloc(b->s, cap);
        if (!t)
            return false;
        b->s = t;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return true;
}

/* Python str.strip() on UTF-8. */
static void py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    size_t i = 0;
    while (i < n) {
        shard_tok_text_t t = {0};
        size_t cl = (unsigned char)s[i] < 0x80 ? 1 : (unsigned char)s[i] >= 0xF0 ? 4
                                                 : (unsigned char)s[i] >= 0xE0 ? 3 : 2;
        bool space = cl <= n - i && shard_tok_utf8_decode(s + i, cl, 0, &t, NULL) == SHARD_OK &&
                     shard_tok_is_space(t.cp[0]);
        shard_tok_text_free(&t);
        if (!space)
            break;
        i += cl;
    }
    size_t j = n;
    while (j > i) {
        size_t k = j - 1;
        while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        shard_tok_text_t t = {0};
        bool space = shard_tok_utf8_decode(s + k, j - k, 0, &t, NULL) == SHARD_OK && t.len == 1 &&
                     shard_tok_is_space(t.cp[0]);
        shard_tok_text_free(&t);
        if (!space)
            break;
        j = k;
    }
    *b = i;
    *e = j;
}

/* convert_tokens_to_string: "".join(tokens).replace("</w>", " ").strip(),
 * appended to the sub-texts (HF keeps an empty one only at the very end). */
static bool flush_text(sbuf_t *joined, size_t *n_tokens, bool final, sbuf_t *sub_texts,
                       size_t *n_sub)
{
    if (*n_tokens == 0)
        return true;
    sbuf_t r = {0};
    size_t i = 0;
    bool ok = true;
    while (ok && i < joined->len) {
        if (joined->len - i >= 4 && memcmp(joined->s + i, "</w>", 4) == 0) {
            ok = sbuf_add(&r, " ", 1);
            i += 4;
        } else {
            ok = sbuf_add(&r, joined->s + i, 1);
            i++;
        }
    }
    size_t b = 0, e = 0;
    if (ok && r.len)
        py_strip(r.s, r.len, &b, &e);
    if (ok && (e > b || final)) {
        if (*n_sub)
            ok = sbuf_add(sub_texts, " ", 1);
        ok = ok && sbuf_add(sub_texts, r.s + b, e - b);
        (*n_sub)++;
    }
    free(r.s);
    joined->len = 0;
    *n_tokens = 0;
    return ok;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static bool is_special_id(const shard_tokenizer_t *tok, int64_t id)
{
    return bsearch(&id, tok->special_ids, tok->n_special_ids, sizeof id, cmp_id) != NULL;
}

static bool is_legacy_added(const shard_tokenizer_t *tok, const char *token, int64_t id)
{
    /* Added tokens that are not special tokens, and additional special
     * tokens beyond the base vocabulary, are decoded on their own. */
    bool special = false;
    for (size_t i = 0; i < tok->n_special && !special; i++)
        special = strcmp(tok->special[i], token) == 0;
    int64_t aid;
    if (!special && shard_tok_map_get(&tok->added_ids, token, strlen(token), &aid))
        return true;
    for (size_t i = 0; i < tok->n_additional; i++)
        if (strcmp(tok->additional[i], token) == 0 && id >= (int64_t)tok->vocab.count)
            return true;
    return false;
}

static bool replace_all(sbuf_t *b, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    if (b->len < fl || !strstr(b->s, from))
        return true;
    sbuf_t r = {0};
    size_t i = 0;
    bool ok = true;
    while (ok && i < b->len) {
        if (b->len - i >= fl && memcmp(b->s + i, from, fl) == 0) {
            ok = sbuf_add(&r, to, tl);
            i += fl;
        } else {
            ok = sbuf_add(&r, b->s + i, 1);
            i++;
        }
    }
    if (!ok) {
        free(r.s);
        return false;
    }
    free(b->s);
    *b = r;
    return true;
}

shard_status_t shard_tokenizer_decode(const shard_tokenizer_t *tok, const int64_t *ids, size_t n,
                                      bool skip_special_tokens, char **text, size_t *text_len,
                                      shard_error_t *err)
{
    if (!tok || !text || (!ids && n))
        return shard_error_set(err, SHARD_ERR_INPUT, "shard_tokenizer_decode: NULL argument");
    *text = NULL;
    sbuf_t joined = {0}, out = {0};
    size_t n_sub = 0, n_tokens = 0;
    bool ok = sbuf_add(&out, "", 0);
    for (size_t i = 0; ok && i < n; i++) {
        if (skip_special_tokens && is_special_id(tok, ids[i]))
            continue;
        const char *t = shard_tokenizer_id_to_token(tok, ids[i]);
        if (!t)
            t = tok->unk_token;
        if (is_legacy_added(tok, t, ids[i])) {
            ok = flush_text(&joined, &n_tokens, false, &out, &n_sub);
            if (ok && n_sub)
                ok = sbuf_add(&out, " ", 1);
            ok = ok && sbuf_add(&out, t, strlen(t));
            n_sub++;
        } else {
            ok = sbuf_add(&joined, t, strlen(t));
            n_tokens++;
        }
    }
    ok = ok && flush_text(&joined, &n_tokens, true, &out, &n_sub);
    if (ok && tok->clean_up) {
        static const char *const rules[][2] = {
            {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
            {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
        };
        for (size_t k = 0; ok && k < sizeof rules / sizeof rules[0]; k++)
            ok = replace_all(&out, rules[k][0], rules[k][1]);
    }
    free(joined.s);
    if (!ok) {
        free(out.s);
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_decode: out of memory");
    }
    *text = out.s;
    if (text_len)
        *text_len = out.len;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- save */

typedef struct {
    const char *key;
    size_t len;
    int64_t id;
} entry_t;

static int cmp_entry(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* json.dumps(ensure_ascii=False) of a string. */
static void json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        default:
            if (c < 0x20)
                fprintf(f, "\\u%04x", c);
            else
                fputc(c, f);
        }
    }
    fputc('"', f);
}

shard_status_t shard_tokenizer_save_vocabulary(const shard_tokenizer_t *tok, const char *dir,
                                               const char *prefix, shard_error_t *err)
{
    if (!tok || !dir)
        return shard_error_set(err, SHARD_ERR_INPUT,
                               "shard_tokenizer_save_vocabulary: NULL argument");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return shard_error_set(err, SHARD_ERR_IO,
                               "shard_tokenizer_save_vocabulary: %s is not a directory", dir);
    char vpath[4096], mpath[4096];
    const char *dash = prefix && prefix[0] ? "-" : "";
    const char *pre = prefix ? prefix : "";
    if (snprintf(vpath, sizeof vpath, "%s/%s%svocab.json", dir, pre, dash) >= (int)sizeof vpath ||
        snprintf(mpath, sizeof mpath, "%s/%s%smerges.txt", dir, pre, dash) >= (int)sizeof mpath)
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_save_vocabulary: path too long");

    const shard_tok_map_t *v = &tok->vocab;
    entry_t *e = malloc((v->count + 1) * sizeof *e);
    if (!e)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_save_vocabulary: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < v->cap; i++)
        if (v->keys[i])
            e[n++] = (entry_t){v->keys[i], v->key_lens[i], v->values[i]};
    qsort(e, n, sizeof *e, cmp_entry);

    FILE *f = fopen(vpath, "wb");
    if (!f) {
        free(e);
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_save_vocabulary: cannot write %s: %s",
                               vpath, strerror(errno));
    }
    fputc('{', f);
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ",\n  " : "\n  ", f);
        json_string(f, e[i].key, e[i].len);
        fprintf(f, ": %lld", (long long)e[i].id);
    }
    fputs(n ? "\n}\n" : "}\n", f);
    free(e);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad)
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_save_vocabulary: cannot write %s",
                               vpath);

    f = fopen(mpath, "wb");
    if (!f)
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_save_vocabulary: cannot write %s: %s",
                               mpath, strerror(errno));
    for (size_t r = 0; r < shard_tok_bpe_n_merges(tok->bpe); r++) {
        const char *line = shard_tok_bpe_merge(tok->bpe, r);
        if (line) {
            fputs(line, f);
            fputc('\n', f);
        }
    }
    bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad)
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_save_vocabulary: cannot write %s",
                               mpath);
    return SHARD_OK;
}
