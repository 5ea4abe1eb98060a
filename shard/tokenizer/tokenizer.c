/* tokenizer.c: opening an XLM tokenizer from a checkpoint folder (vocab.json,
 * merges.txt, tokenizer_config.json, special_tokens_map.json) and the small
 * accessors. Encoding and decoding are in tokenizer_encode.c.
 *
 * Special tokens follow HF 4.43: tokenizer_config.json gives the added
 * tokens (added_tokens_decoder) and the special token strings;
 * special_tokens_map.json overrides the strings; every special token that is
 * not yet an added token becomes one, with its vocab.json id. */
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_VOCAB_ID = 1 << 28, MAX_FILE_BYTES = 1 << 30 };

/* ---------------------------------------------------------------- files */

static shard_status_t read_file(const char *dir, const char *name, bool required, char **data,
                                size_t *len, shard_error_t *err)
{
    *data = NULL;
    *len = 0;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_open: path too long: %s/%s",
                               dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (!required && errno == ENOENT)
            return SHARD_OK;
        return shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_open: cannot open %s: %s",
                               path, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    shard_status_t st = SHARD_OK;
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) {
            if (ferror(f))
                st = shard_error_set(err, SHARD_ERR_IO, "shard_tokenizer_open: cannot read %s",
                                     path);
            break;
        }
        if (cap >= MAX_FILE_BYTES) {
            st = shard_error_set(err, SHARD_ERR_FORMAT,
                                 "shard_tokenizer_open: %s is larger than %d bytes", path,
                                 MAX_FILE_BYTES);
            break;
        }
        cap *= 2;
        char *b = realloc(buf, cap + 1);
        if (!b) {
            free(buf);
            buf = NULL;
        } else {
            buf = b;
        }
    }
    fclose(f);
    if (!buf)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory reading %s",
                               path);
    if (st) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return SHARD_OK;
}

static shard_status_t read_json(const char *dir, const char *name, bool required, cJSON **out,
                                shard_error_t *err)
{
    char *data;
    size_t len;
    *out = NULL;
    shard_status_t st = read_file(dir, name, required, &data, &len, err);
    if (st || !data)
        return st;
    *out = cJSON_ParseWithLength(data, len);
    free(data);
    if (!*out)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "shard_tokenizer_open: %s/%s is not valid JSON", dir, name);
    return SHARD_OK;
}

/* A special token value: a string or an AddedToken object {"content": ...}. */
static const char *token_string(const cJSON *v)
{
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c))
            return c->valuestring;
    }
    return NULL;
}

static bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* ---------------------------------------------------------------- vocabulary */

/* Ids 0-13 of an original XLM dictionary, before the units of `vocab`. */
static const char *const fastbpe_specials[] = {
    "<s>", "</s>", "<pad>", "<unk>", "<special0>", "<special1>", "<special2>",
    "<special3>", "<special4>", "<special5>", "<special6>", "<special7>",
    "<special8>", "<special9>"};

/* One `vocab` unit in vocab.json's spelling: fastBPE writes a word-final
 * unit plainly and a word-internal one with "@@"; HF writes "x</w>" and
 * "x" (HF's conversion script does the same). */
static cJSON *fastbpe_unit(cJSON *root, const char *unit, size_t len, int64_t id)
{
    char name[1024];
    if (len >= 2 && unit[len - 2] == '@' && unit[len - 1] == '@')
        snprintf(name, sizeof name, "%.*s", (int)(len - 2), unit);
    else
        snprintf(name, sizeof name, "%.*s</w>", (int)len, unit);
    return cJSON_AddNumberToObject(root, name, (double)id);
}

/* An original XLM checkpoint's fastBPE `vocab` (one "unit count" a line,
 * ids from 14 in file order) as a vocab.json object; NULL root when the
 * folder has no `vocab` either. */
static shard_status_t fastbpe_vocab(const char *dir, cJSON **root, shard_error_t *err)
{
    char *data;
    size_t len;
    *root = NULL;
    shard_status_t st = read_file(dir, "vocab", false, &data, &len, err);
    if (st || !data)
        return st;
    shard_tok_text_t check = {0};
    st = shard_tok_utf8_decode(data, len, 0, &check, err);
    shard_tok_text_free(&check);
    *root = st ? NULL : cJSON_CreateObject();
    int64_t id = 0;
    for (size_t i = 0; *root && !st && i < sizeof fastbpe_specials / sizeof *fastbpe_specials; i++)
        if (!cJSON_AddNumberToObject(*root, fastbpe_specials[i], (double)id++))
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    size_t line = 1;
    for (char *p = data; *root && !st && p < data + len; line++) {
        char *end = memchr(p, '\n', (size_t)(data + len - p));
        size_t n = end ? (size_t)(end - p) : (size_t)(data + len - p);
        char *space = memchr(p, ' ', n);
        size_t unit = space ? (size_t)(space - p) : 0;
        if (unit == 0 || unit >= 1000)
            st = shard_error_set(err, SHARD_ERR_FORMAT, "shard_tokenizer_open: %s/vocab line %zu: "
                                 "expected \"unit count\" with a unit of 1 to 999 bytes", dir, line);
        else if (!fastbpe_unit(*root, p, unit, id++))
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
        p += n + 1;
    }
    free(data);
    if (st || !*root) {
        cJSON_Delete(*root);
        *root = NULL;
        return st ? st : shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    }
    return SHARD_OK;
}

static shard_status_t load_vocab(shard_tokenizer_t *tok, const char *dir, shard_error_t *err)
{
    cJSON *root;
    shard_status_t st = read_json(dir, "vocab.json", false, &root, err);
    if (!st && !root)
        st = fastbpe_vocab(dir, &root, err);
    if (!st && !root) /* neither: vocab.json's message */
        st = read_json(dir, "vocab.json", true, &root, err);
    if (st)
        return st;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "shard_tokenizer_open: %s/vocab.json is not a JSON object", dir);
    }
    size_t n = (size_t)cJSON_GetArraySize(root);
    int64_t max_id = -1;
    if (!shard_tok_map_init(&tok->vocab, n)) {
        cJSON_Delete(root);
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        double v = item->valuedouble;
        if (!cJSON_IsNumber(item) || v != (double)(int64_t)v || v < 0 || v >= MAX_VOCAB_ID) {
            st = shard_error_set(err, SHARD_ERR_FORMAT,
                                 "shard_tokenizer_open: vocab.json: id of token \"%.64s\" is "
                                 "not an integer in [0, %d)",
                                 item->string, MAX_VOCAB_ID);
            break;
        }
        if (!shard_tok_map_put(&tok->vocab, item->string, strlen(item->string), (int64_t)v)) {
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
            break;
        }
        if ((int64_t)v > max_id)
            max_id = (int64_t)v;
    }
    if (!st) {
        tok->decoder_len = (size_t)(max_id + 1);
        tok->decoder = calloc(tok->decoder_len + 1, sizeof *tok->decoder);
        if (!tok->decoder)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    }
    /* decoder = {v: k}: the token listed last wins an id. */
    cJSON_ArrayForEach(item, root)
    {
        if (st)
            break;
        size_t id = (size_t)item->valuedouble;
        char *copy = strdup(item->string);
        if (!copy) {
            st = shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
            break;
        }
        free(tok->decoder[id]);
        tok->decoder[id] = copy;
    }
    cJSON_Delete(root);
    return st;
}

static shard_status_t load_merges(shard_tokenizer_t *tok, const char *dir, shard_error_t *err)
{
    char *data;
    size_t len;
    /* fastBPE's codes are merges.txt under another name. */
    const char *name = "merges.txt";
    shard_status_t st = read_file(dir, name, false, &data, &len, err);
    if (!st && !data) {
        name = "codes";
        st = read_file(dir, name, false, &data, &len, err);
    }
    if (!st && !data) {
        name = "merges.txt";
        st = read_file(dir, name, true, &data, &len, err);
    }
    if (st)
        return st;
    shard_tok_text_t check = {0};
    /* Python reads the file as UTF-8 and would fail on anything else. */
    st = shard_tok_utf8_decode(data, len, 0, &check, err);
    shard_tok_text_free(&check);
    if (st) {
        free(data);
        return shard_error_set(err, SHARD_ERR_FORMAT, "shard_tokenizer_open: %s/%s: %s",
                               dir, name, err ? err->message : "invalid UTF-8");
    }
    tok->bpe = shard_tok_bpe_new(data, len, err);
    free(data);
    return tok->bpe ? SHARD_OK : (err ? err->code : SHARD_ERR_FORMAT);
}

/* ---------------------------------------------------------------- special tokens */

/* The special token attributes, in HF's SPECIAL_TOKENS_ATTRIBUTES order. */
enum { SP_BOS, SP_EOS, SP_UNK, SP_SEP, SP_PAD, SP_CLS, SP_MASK, SP_COUNT };
static const char *const sp_keys[SP_COUNT] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};
/* XLMTokenizer's defaults. */
static const char *const sp_defaults[SP_COUNT] = {"<s>", NULL, "<unk>", "</s>",
                                                  "<pad>", "</s>", "<special1>"};

typedef struct {
    char *sp[SP_COUNT];
    char **additional;
    size_t n_additional;
} special_strings_t;

static void special_strings_free(special_strings_t *s)
{
    for (int i = 0; i < SP_COUNT; i++)
        free(s->sp[i]);
    for (size_t i = 0; i < s->n_additional; i++)
        free(s->additional[i]);
    free(s->additional);
    memset(s, 0, sizeof *s);
}

static bool set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? strdup(src) : NULL;
    return !src || *dst;
}

static bool read_specials(const cJSON *obj, special_strings_t *s)
{
    if (!obj)
        return true;
    for (int i = 0; i < SP_COUNT; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, sp_keys[i]);
        if (!v)
            continue;
        if (!set_str(&s->sp[i], cJSON_IsNull(v) ? NULL : token_string(v)))
            return false;
    }
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(obj, "additional_special_tokens");
    if (cJSON_IsArray(add)) {
        for (size_t i = 0; i < s->n_additional; i++)
            free(s->additional[i]);
        free(s->additional);
        s->n_additional = 0;
        size_t n = (size_t)cJSON_GetArraySize(add);
        s->additional = calloc(n + 1, sizeof *s->additional);
        if (!s->additional)
            return false;
        const cJSON *it;
        cJSON_ArrayForEach(it, add)
        {
            const char *str = token_string(it);
            if (str && !(s->additional[s->n_additional++] = strdup(str)))
                return false;
        }
    }
    return true;
}

static int64_t lookup_id(const shard_tokenizer_t *tok, const char *token)
{
    int64_t id;
    if (shard_tok_map_get(&tok->added_ids, token, strlen(token), &id))
        return id;
    if (shard_tok_map_get(&tok->vocab, token, strlen(token), &id))
        return id;
    return -1;
}

static shard_status_t add_token(shard_tokenizer_t *tok, const char *content, int64_t id,
                                const cJSON *flags, bool special, shard_error_t *err)
{
    if (!content[0])
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: added token %lld is an empty string",
                               (long long)id);
    shard_tok_added_t *a = realloc(tok->added, (tok->n_added + 1) * sizeof *a);
    if (!a)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    tok->added = a;
    a = &tok->added[tok->n_added];
    memset(a, 0, sizeof *a);
    a->len = strlen(content);
    a->content = strdup(content);
    a->id = id;
    a->special = flags ? json_bool(flags, "special", special) : special;
    a->lstrip = flags && json_bool(flags, "lstrip", false);
    a->rstrip = flags && json_bool(flags, "rstrip", false);
    a->single_word = flags && json_bool(flags, "single_word", false);
    a->normalized = flags ? json_bool(flags, "normalized", !a->special) : !special;
    if (a->single_word) {
        /* HF glues a single_word token to a neighbouring word; no XLM
         * checkpoint uses it, so it is refused rather than approximated. */
        tok->n_added++;
        return shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                               "shard_tokenizer_open: added token \"%.32s\" has single_word "
                               "set, which this tokenizer does not support",
                               content);
    }
    shard_tok_text_t t = {0};
    shard_status_t st = a->content ? shard_tok_utf8_decode(content, a->len, 0, &t, err)
                                   : SHARD_ERR_NOMEM;
    a->cp = t.cp;
    a->n_cp = t.len;
    tok->n_added++;
    if (st == SHARD_ERR_NOMEM || !a->content)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    if (st)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: added token %lld is not UTF-8",
                               (long long)id);
    if (!shard_tok_map_put(&tok->added_ids, content, a->len, id))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    return SHARD_OK;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static shard_status_t build_specials(shard_tokenizer_t *tok, const cJSON *config,
                                     const special_strings_t *s, shard_error_t *err)
{
    shard_status_t st;
    if (!shard_tok_map_init(&tok->added_ids, 32))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    /* added_tokens_decoder, by id */
    const cJSON *dec = config ? cJSON_GetObjectItemCaseSensitive(config, "added_tokens_decoder")
                              : NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, dec)
    {
        char *end;
        long long id = strtoll(it->string, &end, 10);
        const char *content = token_string(it);
        if (*end || end == it->string || id < 0 || id >= MAX_VOCAB_ID || !content)
            return shard_error_set(err, SHARD_ERR_CONFIG,
                                   "shard_tokenizer_open: tokenizer_config.json: "
                                   "added_tokens_decoder entry \"%.32s\" is not an id with "
                                   "a content",
                                   it->string);
        if ((st = add_token(tok, content, id, it, true, err)))
            return st;
    }

    /* all_special_tokens: attributes in order, then the additional ones,
     * without repeats. */
    if (s->n_additional > MAX_VOCAB_ID)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: %zu additional special tokens, at most %d",
                               s->n_additional, MAX_VOCAB_ID);
    size_t max = SP_COUNT + s->n_additional;
    tok->special = calloc(max + 1, sizeof *tok->special);
    if (!tok->special)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    for (size_t i = 0; i < max; i++) {
        const char *str = i < SP_COUNT ? s->sp[i] : s->additional[i - SP_COUNT];
        if (!str)
            continue;
        bool seen = false;
        for (size_t k = 0; k < tok->n_special && !seen; k++)
            seen = strcmp(tok->special[k], str) == 0;
        if (seen)
            continue;
        if (!(tok->special[tok->n_special++] = strdup(str)))
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    }
    tok->additional = calloc(s->n_additional + 1, sizeof *tok->additional);
    if (!tok->additional)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    for (size_t i = 0; i < s->n_additional; i++)
        if (!(tok->additional[tok->n_additional++] = strdup(s->additional[i])))
            return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");

    /* Special tokens that are not added tokens yet become ones. */
    int64_t next_id = (int64_t)tok->decoder_len;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id >= next_id)
            next_id = tok->added[i].id + 1;
    for (size_t i = 0; i < tok->n_special; i++) {
        int64_t id;
        if (shard_tok_map_get(&tok->added_ids, tok->special[i], strlen(tok->special[i]), &id))
            continue;
        if (!shard_tok_map_get(&tok->vocab, tok->special[i], strlen(tok->special[i]), &id))
            id = next_id++;
        if ((st = add_token(tok, tok->special[i], id, NULL, true, err)))
            return st;
    }

    tok->special_ids = calloc(tok->n_special + 1, sizeof *tok->special_ids);
    if (!tok->special_ids)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    for (size_t i = 0; i < tok->n_special; i++) {
        int64_t id = lookup_id(tok, tok->special[i]);
        if (id >= 0)
            tok->special_ids[tok->n_special_ids++] = id;
    }
    qsort(tok->special_ids, tok->n_special_ids, sizeof *tok->special_ids, cmp_id);

    /* Kept out of lowercasing: special tokens, then non-special normalized
     * added tokens. */
    tok->protect = calloc(tok->n_special + tok->n_added + 1, sizeof *tok->protect);
    tok->protect_len = calloc(tok->n_special + tok->n_added + 1, sizeof *tok->protect_len);
    if (!tok->protect || !tok->protect_len)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    for (size_t i = 0; i < tok->n_special + tok->n_added; i++) {
        const char *str;
        if (i < tok->n_special)
            str = tok->special[i];
        else if (!tok->added[i - tok->n_special].special && tok->added[i - tok->n_special].normalized)
            str = tok->added[i - tok->n_special].content;
        else
            continue;
        shard_tok_text_t t = {0};
        if ((st = shard_tok_utf8_decode(str, strlen(str), 0, &t, err))) {
            shard_tok_text_free(&t);
            return shard_error_set(err, SHARD_ERR_CONFIG,
                                   "shard_tokenizer_open: special token \"%.32s\" is not UTF-8",
                                   str);
        }
        if (t.len == 0) {
            shard_tok_text_free(&t);
            return shard_error_set(err, SHARD_ERR_CONFIG,
                                   "shard_tokenizer_open: a special token is an empty string");
        }
        tok->protect[tok->n_protect] = t.cp;
        tok->protect_len[tok->n_protect++] = t.len;
        uint32_t c = t.cp[0] < 128 ? t.cp[0] : 128;
        tok->protect_first[c / 64] |= 1ull << (c % 64);
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        uint32_t c = tok->added[i].cp[0] < 128 ? tok->added[i].cp[0] : 128;
        tok->added_first[c / 64] |= 1ull << (c % 64);
    }

    tok->ids.bos = s->sp[SP_BOS] ? lookup_id(tok, s->sp[SP_BOS]) : -1;
    tok->ids.eos_sep = s->sp[SP_SEP] ? lookup_id(tok, s->sp[SP_SEP]) : -1;
    tok->ids.cls = s->sp[SP_CLS] ? lookup_id(tok, s->sp[SP_CLS]) : -1;
    tok->ids.pad = s->sp[SP_PAD] ? lookup_id(tok, s->sp[SP_PAD]) : -1;
    tok->ids.mask = s->sp[SP_MASK] ? lookup_id(tok, s->sp[SP_MASK]) : -1;
    /* Unknown units take vocab.json's id of the unknown token. */
    int64_t unk = -1;
    if (s->sp[SP_UNK])
        shard_tok_map_get(&tok->vocab, s->sp[SP_UNK], strlen(s->sp[SP_UNK]), &unk);
    tok->ids.unk = unk;
    if (!set_str(&tok->unk_token, s->sp[SP_UNK] ? s->sp[SP_UNK] : "<unk>"))
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    if (tok->ids.unk < 0)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: the unknown token \"%.32s\" is not in "
                               "vocab.json",
                               tok->unk_token);
    if (tok->ids.bos < 0 || tok->ids.eos_sep < 0)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: the bos/sep tokens \"%.32s\"/\"%.32s\" "
                               "have no id",
                               s->sp[SP_BOS] ? s->sp[SP_BOS] : "(none)",
                               s->sp[SP_SEP] ? s->sp[SP_SEP] : "(none)");
    return SHARD_OK;
}

/* ---------------------------------------------------------------- languages */

static shard_status_t add_lang(shard_tokenizer_t *tok, const char *code, double id,
                               shard_error_t *err)
{
    if (strlen(code) == 0 || strlen(code) >= SHARD_LANG_NAME_MAX)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: language code \"%.32s\" must have 1 to %d "
                               "characters",
                               code, SHARD_LANG_NAME_MAX - 1);
    if (id != (double)(int64_t)id || id < 0 || id >= SHARD_MAX_LANGS)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: language \"%s\" has id %g, expected an "
                               "integer in [0, %d)",
                               code, id, SHARD_MAX_LANGS);
    for (size_t i = 0; i < tok->n_langs; i++)
        if (strcmp(tok->langs[i].code, code) == 0) {
            tok->langs[i].id = (int64_t)id;
            return SHARD_OK;
        }
    if (tok->n_langs >= SHARD_MAX_LANGS)
        return shard_error_set(err, SHARD_ERR_CONFIG,
                               "shard_tokenizer_open: more than %d languages", SHARD_MAX_LANGS);
    shard_tok_lang_t *l = realloc(tok->langs, (tok->n_langs + 1) * sizeof *l);
    if (!l)
        return shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
    tok->langs = l;
    snprintf(l[tok->n_langs].code, sizeof l[tok->n_langs].code, "%s", code);
    l[tok->n_langs].id = (int64_t)id;
    tok->n_langs++;
    return SHARD_OK;
}

static shard_status_t load_langs(shard_tokenizer_t *tok, const cJSON *obj, shard_error_t *err)
{
    const cJSON *l2i = cJSON_GetObjectItemCaseSensitive(obj, "lang2id");
    const cJSON *i2l = cJSON_GetObjectItemCaseSensitive(obj, "id2lang");
    const cJSON *it;
    shard_status_t st;
    if (cJSON_IsObject(l2i)) {
        cJSON_ArrayForEach(it, l2i)
        {
            if (!cJSON_IsNumber(it))
                return shard_error_set(err, SHARD_ERR_CONFIG,
                                       "shard_tokenizer_open: lang2id[\"%.32s\"] is not a number",
                                       it->string);
            if ((st = add_lang(tok, it->string, it->valuedouble, err)))
                return st;
        }
    } else if (cJSON_IsObject(i2l)) {
        cJSON_ArrayForEach(it, i2l)
        {
            char *end;
            double id = strtod(it->string, &end);
            if (*end || !cJSON_IsString(it))
                return shard_error_set(err, SHARD_ERR_CONFIG,
                                       "shard_tokenizer_open: id2lang entry \"%.32s\" is not "
                                       "id: code",
                                       it->string);
            if ((st = add_lang(tok, it->valuestring, id, err)))
                return st;
        }
    }
    return SHARD_OK;
}

static int cmp_lang(const void *a, const void *b)
{
    int64_t x = ((const shard_tok_lang_t *)a)->id, y = ((const shard_tok_lang_t *)b)->id;
    return x < y ? -1 : x > y;
}

/* ---------------------------------------------------------------- open */

shard_tokenizer_t *shard_tokenizer_open(const char *model_dir, shard_error_t *err)
{
    if (!model_dir) {
        shard_error_set(err, SHARD_ERR_INPUT, "shard_tokenizer_open: model_dir is NULL");
        return NULL;
    }
    shard_tokenizer_t *tok = calloc(1, sizeof *tok);
    special_strings_t sp = {0};
    cJSON *config = NULL, *map = NULL, *model_config = NULL;
    if (!tok) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
        return NULL;
    }
    shard_status_t st;
    if ((st = load_vocab(tok, model_dir, err)) || (st = load_merges(tok, model_dir, err)) ||
        (st = read_json(model_dir, "tokenizer_config.json", false, &config, err)) ||
        (st = read_json(model_dir, "special_tokens_map.json", false, &map, err)))
        goto fail;
    if ((config && !cJSON_IsObject(config)) || (map && !cJSON_IsObject(map))) {
        st = shard_error_set(err, SHARD_ERR_CONFIG,
                             "shard_tokenizer_open: tokenizer_config.json and "
                             "special_tokens_map.json must hold JSON objects");
        goto fail;
    }
    tok->lowercase = json_bool(config, "do_lowercase_and_remove_accent", true);
    tok->clean_up = json_bool(config, "clean_up_tokenization_spaces", true);

    for (int i = 0; i < SP_COUNT; i++)
        if (!set_str(&sp.sp[i], sp_defaults[i]))
            goto nomem;
    sp.additional = calloc(10, sizeof *sp.additional);
    if (!sp.additional)
        goto nomem;
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof name, "<special%d>", i);
        if (!(sp.additional[sp.n_additional++] = strdup(name)))
            goto nomem;
    }
    if (!read_specials(config, &sp) || !read_specials(map, &sp))
        goto nomem;
    if ((st = build_specials(tok, config, &sp, err)))
        goto fail;

    if (config && (st = load_langs(tok, config, err)))
        goto fail;
    if (tok->n_langs == 0) {
        if ((st = read_json(model_dir, "config.json", false, &model_config, err)))
            goto fail;
        if (cJSON_IsObject(model_config) && (st = load_langs(tok, model_config, err)))
            goto fail;
    }
    /* Languages in id order, so listings read like the checkpoint's. */
    if (tok->n_langs)
        qsort(tok->langs, tok->n_langs, sizeof *tok->langs, cmp_lang);
    if ((st = shard_tok_prefixes_build(&tok->prefixes, err)))
        goto fail;

    special_strings_free(&sp);
    cJSON_Delete(config);
    cJSON_Delete(map);
    cJSON_Delete(model_config);
    return tok;
nomem:
    shard_error_set(err, SHARD_ERR_NOMEM, "shard_tokenizer_open: out of memory");
fail:
    special_strings_free(&sp);
    cJSON_Delete(config);
    cJSON_Delete(map);
    cJSON_Delete(model_config);
    shard_tokenizer_destroy(&tok);
    return NULL;
}

void shard_tokenizer_destroy(shard_tokenizer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    shard_tokenizer_t *tok = *self_p;
    shard_tok_map_free(&tok->vocab);
    if (tok->decoder)
        for (size_t i = 0; i < tok->decoder_len; i++)
            free(tok->decoder[i]);
    free(tok->decoder);
    shard_tok_bpe_destroy(&tok->bpe);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].cp);
    }
    free(tok->added);
    shard_tok_map_free(&tok->added_ids);
    for (size_t i = 0; i < tok->n_special; i++)
        free(tok->special[i]);
    free(tok->special);
    for (size_t i = 0; i < tok->n_additional; i++)
        free(tok->additional[i]);
    free(tok->additional);
    free(tok->special_ids);
    for (size_t i = 0; i < tok->n_protect; i++)
        free(tok->protect[i]);
    free(tok->protect);
    free(tok->protect_len);
    free(tok->unk_token);
    free(tok->langs);
    shard_tok_prefixes_free(tok->prefixes);
    free(tok);
    *self_p = NULL;
}

/* ---------------------------------------------------------------- accessors */

const char *shard_tokenizer_mode_name(shard_tokenizer_mode_t mode)
{
    switch (mode) {
    case SHARD_TOKENIZER_MODE_HF: return "hf";
    case SHARD_TOKENIZER_MODE_LANG_RULES: return "lang_rules";
    case SHARD_TOKENIZER_MODE_COUNT_: break;
    }
    return "unknown";
}

shard_status_t shard_tokenizer_adopt_langs(shard_tokenizer_t *tok,
                                           const char (*names)[SHARD_LANG_NAME_MAX],
                                           int64_t n, shard_error_t *err)
{
    if (!tok || (!names && n > 0) || n < 0 || n > SHARD_MAX_LANGS)
        return shard_error_set(err, SHARD_ERR_INPUT, "shard_tokenizer_adopt_langs: %lld "
                               "languages, expected a list of 0 to %d",
                               (long long)n, SHARD_MAX_LANGS);
    if (tok->n_langs > 0)
        return SHARD_OK;
    shard_status_t st = SHARD_OK;
    for (int64_t id = 0; id < n && st == SHARD_OK; id++)
        if (names[id][0] != '\0')
            st = add_lang(tok, names[id], (double)id, err);
    if (st != SHARD_OK) {
        tok->n_langs = 0; /* all or nothing */
        return st;
    }
    if (tok->n_langs)
        qsort(tok->langs, tok->n_langs, sizeof *tok->langs, cmp_lang);
    return SHARD_OK;
}

int64_t shard_tokenizer_lang_id(const shard_tokenizer_t *tok, const char *lang)
{
    if (!tok || !lang)
        return -1;
    for (size_t i = 0; i < tok->n_langs; i++)
        if (strcmp(tok->langs[i].code, lang) == 0)
            return tok->langs[i].id;
    return -1;
}

size_t shard_tokenizer_n_langs(const shard_tokenizer_t *tok)
{
    return tok ? tok->n_langs : 0;
}

const char *shard_tokenizer_lang_name(const shard_tokenizer_t *tok, int64_t id)
{
    for (size_t i = 0; tok && i < tok->n_langs; i++)
        if (tok->langs[i].id == id)
            return tok->langs[i].code;
    return NULL;
}

size_t shard_tokenizer_vocab_size(const shard_tokenizer_t *tok)
{
    return tok ? tok->vocab.count : 0;
}

int64_t shard_tokenizer_token_to_id(const shard_tokenizer_t *tok, const char *token)
{
    return tok && token ? lookup_id(tok, token) : -1;
}

const char *shard_tokenizer_id_to_token(const shard_tokenizer_t *tok, int64_t id)
{
    if (!tok || id < 0)
        return NULL;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id == id)
            return tok->added[i].content;
    return (size_t)id < tok->decoder_len ? tok->decoder[id] : NULL;
}

shard_tokenizer_special_ids_t shard_tokenizer_special_ids(const shard_tokenizer_t *tok)
{
    shard_tokenizer_special_ids_t none = {-1, -1, -1, -1, -1, -1};
    return tok ? tok->ids : none;
}

bool shard_tokenizer_lowercases(const shard_tokenizer_t *tok)
{
    return tok && tok->lowercase;
}
