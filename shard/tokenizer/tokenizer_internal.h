/* tokenizer_internal.h: the XLM tokenizer's stages, shared by tokenizer*.c.
 *
 * Text moves through the stages as arrays of Unicode code points
 * (shard_tok_text_t), because every rule of the reference (Python regular
 * expressions over str) is defined on code points. Each stage reads one
 * buffer and writes the other of a shard_tok_work_t, then swaps them.
 *
 *   UTF-8 --decode--> lowercase (special tokens kept) --split on added tokens-->
 *   piece --replace_unicode_punct--> --punct_norm--> --remove_non_printing-->
 *         [--romanian (ro, lang rules)-->] --moses--> words
 *   word --lowercase_and_remove_accent--> --bpe--> units
 *
 * Not part of the public API; tests include it to check stages alone.
 */
#ifndef XLM_SHARD_TOKENIZER_INTERNAL_H
#define XLM_SHARD_TOKENIZER_INTERNAL_H

#include "shard_tokenizer.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- text */

/* Placeholder for a run of k >= 2 dots while the Moses tokenizer runs
 * (sacremoses writes "DOTDOT...MULTI" there); above the Unicode range so it
 * can never collide with text. */
enum { SHARD_TOK_DOTRUN = 0x40000000u };

typedef struct {
    uint32_t *cp; /* [cap] code points, cp[0..len) in use */
    size_t len;
    size_t cap;
} shard_tok_text_t;

/* Two buffers: stages read cur and write next, then swap. */
typedef struct {
    shard_tok_text_t cur;
    shard_tok_text_t next;
} shard_tok_work_t;

void shard_tok_text_free(shard_tok_text_t *t);
/* Makes room for n code points in total; false on overflow or no memory. */
bool shard_tok_text_reserve(shard_tok_text_t *t, size_t n);
/* Ensures next can hold factor * cur.len + slack code points and empties it. */
shard_status_t shard_tok_work_begin(shard_tok_work_t *w, size_t factor,
                                    shard_error_t *err);
void shard_tok_work_swap(shard_tok_work_t *w);
void shard_tok_work_free(shard_tok_work_t *w);

static inline void shard_tok_put(shard_tok_text_t *t, uint32_t c)
{
    t->cp[t->len++] = c; /* capacity reserved by the caller */
}

/* Decodes UTF-8 into t (appending). Invalid input: SHARD_ERR_UTF8 naming the
 * byte offset (offsets start at base, so callers can report offsets in a
 * larger text). */
shard_status_t shard_tok_utf8_decode(const char *s, size_t len, size_t base,
                                     shard_tok_text_t *t, shard_error_t *err);
/* Bytes needed to encode cp[0..n) (code points must be valid scalars). */
size_t shard_tok_utf8_length(const uint32_t *cp, size_t n);
/* Encodes one code point at out, returns the bytes written (1..4). */
size_t shard_tok_utf8_put(uint32_t c, char *out);

/* ---------------------------------------------------------------- character classes */

/* The Perl character classes of sacremoses (its perluniprops lists):
 * Basic Multilingual Plane only, without the Han script and Hangul syllables
 * (absent from those lists), plus U+25CC (the dotted circle the lists print
 * before combining marks). hangul: the Korean tokenizer adds Hangul. */
bool shard_tok_is_alpha(uint32_t c, bool hangul);
bool shard_tok_is_alnum(uint32_t c, bool hangul);
bool shard_tok_is_number(uint32_t c);     /* IsN: general category N* */
bool shard_tok_is_lower(uint32_t c);      /* IsLower */
bool shard_tok_is_space(uint32_t c);      /* Python str.isspace() / regex \s */
bool shard_tok_is_decimal(uint32_t c);    /* Python regex \d: category Nd */
bool shard_tok_is_other_cat(uint32_t c);  /* general category C* */
bool shard_tok_is_nonspacing(uint32_t c); /* general category Mn */
/* Python str.lower() of the one-character string c (full case mapping):
 * writes 1 or 2 code points to out, returns the count. */
size_t shard_tok_lower(uint32_t c, uint32_t out[2]);

typedef struct {
    uint32_t lo, hi;
} shard_tok_range_t;

/* Generated tables (tokenizer_tables.c). */
extern const shard_tok_range_t shard_tok_other_alphabetic[];
extern const size_t shard_tok_other_alphabetic_count;
extern const shard_tok_range_t shard_tok_other_lowercase[];
extern const size_t shard_tok_other_lowercase_count;

typedef struct {
    const char *lang;
    const char *const *words; /* stripped, comment lines dropped */
    size_t count;
} shard_tok_prefix_list_t;

extern const shard_tok_prefix_list_t shard_tok_prefix_lists[];
extern const size_t shard_tok_prefix_list_count;

/* ---------------------------------------------------------------- language rules */

typedef enum {
    SHARD_TOK_APOS_EN = 0, /* English contractions: "it 's", "n't" */
    SHARD_TOK_APOS_FR_IT,  /* French/Italian elisions: "l' homme" */
    SHARD_TOK_APOS_OTHER,  /* every apostrophe split off */
} shard_tok_apos_t;

typedef enum {
    SHARD_TOK_QUOTES_EN = 0, /* "text", -> text", */
    SHARD_TOK_QUOTES_DE_ES_FR,
    SHARD_TOK_QUOTES_NONE,
} shard_tok_quotes_t;

/* A nonbreaking prefix list with its numeric-only part resolved. */
typedef struct {
    char **words;    /* sorted, for bsearch; entries as in the data file */
    size_t n_words;
    char **numeric;  /* sorted: prefixes that only hold before a digit */
    size_t n_numeric;
} shard_tok_prefixes_t;

/* Everything the language changes in the pipeline (sacremoses keys each of
 * these on the language code separately). */
typedef struct {
    char code[SHARD_LANG_NAME_MAX];
    shard_tok_apos_t apostrophes;
    shard_tok_quotes_t quotes;
    bool numbers_with_comma; /* "1 000" with NBSP -> "1,000" instead of "1.000" */
    bool romanian;           /* Sennrich's normalise + remove-diacritics */
    bool hangul_alpha;       /* Korean: Hangul syllables are letters */
    bool segmented;          /* zh/th/ja: pre-segmented text, no Moses */
    const shard_tok_prefixes_t *prefixes;
} shard_tok_rules_t;

/* Builds the prefix lists of every bundled language; index i matches
 * shard_tok_prefix_lists[i]. */
shard_status_t shard_tok_prefixes_build(shard_tok_prefixes_t **out,
                                        shard_error_t *err);
void shard_tok_prefixes_free(shard_tok_prefixes_t *lists);
/* Rules for a language code (prefix lists from lists; English's when the
 * language has none, as sacremoses does). */
void shard_tok_rules_init(shard_tok_rules_t *rules, const char *code,
                          const shard_tok_prefixes_t *lists);

/* ---------------------------------------------------------------- stages */

/* HF moses_pipeline, part 1: replace_unicode_punct. */
shard_status_t shard_tok_replace_unicode_punct(shard_tok_work_t *w, shard_error_t *err);
/* sacremoses MosesPunctNormalizer(lang).normalize (penn, quote commas,
 * numbers on; strips the result). */
shard_status_t shard_tok_punct_norm(shard_tok_work_t *w, const shard_tok_rules_t *rules,
                                    shard_error_t *err);
/* HF remove_non_printing_char: drops every C* code point. */
void shard_tok_remove_non_printing(shard_tok_text_t *t);
/* HF romanian_preprocessing. */
void shard_tok_romanian(shard_tok_text_t *t);
/* sacremoses MosesTokenizer(lang).tokenize(aggressive_dash_splits=False,
 * escape=False) joined by single spaces (no leading/trailing space). */
shard_status_t shard_tok_moses(shard_tok_work_t *w, const shard_tok_rules_t *rules,
                               shard_error_t *err);
/* Collapses whitespace runs to one space and strips: text.split() joined. */
shard_status_t shard_tok_split_whitespace(shard_tok_work_t *w, shard_error_t *err);
/* shard_tok_is_space with ASCII answered without the table. */
static inline bool shard_tok_is_space_fast(uint32_t c)
{
    if (c < 0x80)
        return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    return shard_tok_is_space(c);
}

/* Runs of whitespace to one space, none at either end. */
void shard_tok_collapse_spaces(shard_tok_text_t *t);
/* HF lowercase_and_remove_accent of one word: lower, NFD, drop Mn, lower. */
shard_status_t shard_tok_lower_strip_accents(const uint32_t *word, size_t n,
                                             shard_tok_text_t *out, shard_error_t *err);

/* ---------------------------------------------------------------- BPE */

typedef struct shard_tok_bpe shard_tok_bpe_t;

/* vocab: token -> id lookups for the final units are done by the caller. */
shard_tok_bpe_t *shard_tok_bpe_new(const char *merges, size_t merges_len,
                                   shard_error_t *err);
void shard_tok_bpe_destroy(shard_tok_bpe_t **self_p);
size_t shard_tok_bpe_n_merges(const shard_tok_bpe_t *bpe);
/* The merges.txt line of rank r as HF saves it ("left right"), NULL when a
 * later identical line took over the rank. */
const char *shard_tok_bpe_merge(const shard_tok_bpe_t *bpe, size_t r);

/* BPE of one word (UTF-8, n bytes): appends the units, each followed by a
 * NUL, to *units (realloc'd, *units_len bytes in use), and returns their
 * count in *n_units. The last unit ends in "</w>". */
shard_status_t shard_tok_bpe_word(const shard_tok_bpe_t *bpe, const char *word, size_t n,
                                  char **units, size_t *units_len, size_t *units_cap,
                                  size_t *n_units, shard_error_t *err);
/* Both BPE algorithms are exposed for the tests: the direct one (HF's loop,
 * used for short words) and the heap one (long words). */
shard_status_t shard_tok_bpe_word_direct(const shard_tok_bpe_t *bpe, const char *word,
                                         size_t n, char **units, size_t *units_len,
                                         size_t *units_cap, size_t *n_units,
                                         shard_error_t *err);
shard_status_t shard_tok_bpe_word_heap(const shard_tok_bpe_t *bpe, const char *word,
                                       size_t n, char **units, size_t *units_len,
                                       size_t *units_cap, size_t *n_units,
                                       shard_error_t *err);

/* ---------------------------------------------------------------- hashing */

uint64_t shard_tok_hash(const void *data, size_t len);

/* Open-addressing map from byte strings to int64 (strings owned by the map). */
typedef struct {
    char **keys;
    size_t *key_lens;
    int64_t *values;
    size_t cap;   /* power of two */
    size_t count;
} shard_tok_map_t;

bool shard_tok_map_init(shard_tok_map_t *m, size_t expected);
void shard_tok_map_free(shard_tok_map_t *m);
/* Inserts or overwrites (the last value wins, like a Python dict). */
bool shard_tok_map_put(shard_tok_map_t *m, const char *key, size_t len, int64_t value);
/* Returns true and sets *value when key is present. */
bool shard_tok_map_get(const shard_tok_map_t *m, const char *key, size_t len,
                       int64_t *value);


/* ---------------------------------------------------------------- the tokenizer */

typedef struct {
    char *content;    /* UTF-8 */
    size_t len;
    uint32_t *cp;     /* content as code points */
    size_t n_cp;
    int64_t id;
    bool special;
    bool lstrip, rstrip, single_word, normalized;
} shard_tok_added_t;

typedef struct {
    char code[SHARD_LANG_NAME_MAX];
    int64_t id;
} shard_tok_lang_t;

struct shard_tokenizer {
    shard_tok_map_t vocab;   /* vocab.json: token -> id */
    char **decoder;          /* [decoder_len] id -> token of vocab.json, NULL holes */
    size_t decoder_len;
    shard_tok_bpe_t *bpe;

    shard_tok_added_t *added; /* added tokens, in id order */
    size_t n_added;
    shard_tok_map_t added_ids; /* content -> id */
    /* all_special_tokens in HF's order (bos, eos, unk, sep, pad, cls, mask,
     * additional), deduplicated; strings owned. */
    char **special;
    size_t n_special;
    char **additional; /* additional_special_tokens */
    size_t n_additional;
    int64_t *special_ids; /* sorted ids of the special tokens */
    size_t n_special_ids;
    /* Strings kept out of the lowercasing: the special tokens, then the
     * non-special normalized added tokens (as code points). */
    uint32_t **protect;
    size_t *protect_len;
    size_t n_protect;
    /* First characters of the protected strings and of the added tokens:
     * bit c for ASCII c, bit 128 for "some start beyond ASCII". Lets the
     * scans skip most characters without comparing. */
    uint64_t protect_first[3];
    uint64_t added_first[3];

    char *unk_token;
    shard_tokenizer_special_ids_t ids;
    bool lowercase;    /* do_lowercase_and_remove_accent */
    bool clean_up;     /* clean_up_tokenization_spaces */

    shard_tok_lang_t *langs;
    size_t n_langs;

    shard_tok_prefixes_t *prefixes;
};

/* Encoding of one segment's text into tokens (units and ids appended). */
typedef struct {
    char *text;     /* units, NUL-terminated, back to back */
    size_t text_len, text_cap;
    int64_t *ids;
    size_t n, ids_cap;
} shard_tok_units_t;

shard_status_t shard_tok_encode_text(const shard_tokenizer_t *tok, const char *text, size_t len,
                                     const shard_tok_rules_t *rules, shard_tok_units_t *out,
                                     shard_error_t *err);

#endif /* XLM_SHARD_TOKENIZER_INTERNAL_H */
