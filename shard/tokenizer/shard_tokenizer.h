/* shard_tokenizer.h: the XLM tokenizer.
 *
 * Token-for-token the tokenizer of HuggingFace transformers 4.43
 * (XLMTokenizer over sacremoses): special tokens split out of the text,
 * Moses-style punctuation normalisation and word splitting, lowercasing and
 * accent removal (when the checkpoint asks for it), BPE with "</w>" word
 * ends, "<s> A </s> [B </s>]" around the ids.
 *
 * Two modes (a model is served and scored with the mode it was trained
 * with):
 *   SHARD_TOKENIZER_MODE_HF          exactly HF: the language is only used for
 *                                    the langs ids; the English rules always
 *                                    apply (HF drops the lang argument).
 *   SHARD_TOKENIZER_MODE_LANG_RULES  the segment's language picks the
 *                                    language-specific steps, as XLM's own
 *                                    preprocessing did: punctuation rules,
 *                                    nonbreaking prefixes, apostrophes, the
 *                                    Romanian diacritic rules for "ro".
 *                                    Chinese, Thai and Japanese ("zh", "th",
 *                                    "ja") need word segmenters that are not
 *                                    part of this library: their text must
 *                                    come pre-segmented (words separated by
 *                                    spaces); it is normalised and split on
 *                                    whitespace, as XLM does after its
 *                                    segmenter.
 *
 * Threads: after shard_tokenizer_open every call takes a const tokenizer and
 * may run concurrently; the cache of encoded words inside is locked.
 *
 * Text is UTF-8 with an explicit length (it may contain NUL). Invalid UTF-8
 * fails with SHARD_ERR_UTF8 and a message naming the byte offset. A language
 * code the checkpoint does not have fails with SHARD_ERR_LANG and a message
 * listing the checkpoint's languages.
 */
#ifndef XLM_SHARD_TOKENIZER_H
#define XLM_SHARD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shard_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct shard_tokenizer shard_tokenizer_t;

typedef enum {
    SHARD_TOKENIZER_MODE_HF = 0,
    SHARD_TOKENIZER_MODE_LANG_RULES,
    SHARD_TOKENIZER_MODE_COUNT_
} shard_tokenizer_mode_t;

/* "hf" or "lang_rules". */
const char *shard_tokenizer_mode_name(shard_tokenizer_mode_t mode);

/* Reads model_dir/vocab.json, merges.txt, tokenizer_config.json (and
 * special_tokens_map.json / config.json for what the former lacks). */
shard_tokenizer_t *shard_tokenizer_open(const char *model_dir, shard_error_t *err);
void shard_tokenizer_destroy(shard_tokenizer_t **self_p);

/* One text segment. lang: a language code of the checkpoint, or NULL for
 * "en" (checkpoints without languages accept any code; its id is 0). */
typedef struct {
    const char *text;
    size_t len;
    const char *lang;
} shard_tokenizer_segment_t;

/* The result of an encode call; every array has `length` entries. The
 * caller owns it: shard_encoding_init before use, shard_encoding_clear
 * after (and before reuse). */
typedef struct {
    size_t length;     /* positions, special tokens included */
    size_t length_a;   /* tokens of the first segment, specials excluded */
    size_t length_b;   /* tokens of the second segment (0 without one) */
    size_t offset_a;   /* position of the first segment's first token (1 with specials) */
    size_t offset_b;   /* position of the second segment's first token */
    bool has_pair;
    int64_t *input_ids;
    int64_t *token_type_ids;      /* 0 through the first "</s>", then 1 */
    int64_t *special_tokens_mask; /* 1 on the added <s> / </s> */
    int64_t *langs;               /* language id of each position's segment */
    char *token_text;             /* the tokens, NUL-terminated, back to back */
    size_t *token_offsets;        /* start of each token in token_text */
} shard_encoding_t;

void shard_encoding_init(shard_encoding_t *enc);
void shard_encoding_clear(shard_encoding_t *enc);
/* The token string at position i (borrowed from enc). */
const char *shard_encoding_token(const shard_encoding_t *enc, size_t i);

/* Tokenizes a (NULL b: single) segment pair. add_special_tokens: wrap as
 * "<s> A </s>" / "<s> A </s> B </s>" (HF's default); false: A then B only,
 * with zero masks and type ids. */
shard_status_t shard_tokenizer_encode(const shard_tokenizer_t *tok, shard_tokenizer_mode_t mode,
                                      const shard_tokenizer_segment_t *a,
                                      const shard_tokenizer_segment_t *b,
                                      bool add_special_tokens, shard_encoding_t *out,
                                      shard_error_t *err);

/* Ids back to text: tokens joined, "</w>" read as a space, and (when the
 * checkpoint's clean_up_tokenization_spaces is on) HF's clean-up of spaces
 * before punctuation. skip_special_tokens drops every special token (<unk>
 * included, as HF does). *text is malloc'd and NUL-terminated; the caller
 * frees it. Unknown ids decode as the unknown token. */
shard_status_t shard_tokenizer_decode(const shard_tokenizer_t *tok, const int64_t *ids,
                                      size_t n, bool skip_special_tokens, char **text,
                                      size_t *text_len, shard_error_t *err);

/* Writes dir/[prefix-]vocab.json and dir/[prefix-]merges.txt as HF's
 * save_vocabulary does (keys sorted, 2-space indent; merges by rank).
 * prefix may be NULL. */
shard_status_t shard_tokenizer_save_vocabulary(const shard_tokenizer_t *tok, const char *dir,
                                               const char *prefix, shard_error_t *err);

/* Languages the checkpoint's config names when the tokenizer's own files
 * (tokenizer_config.json, config.json) name none: an original XLM folder
 * keeps them in its .pth's params, which the checkpoint reader turns into
 * shard_config_t's lang_names. names[id] is the code of language id, ""
 * for an unnamed id. Nothing changes when the files named languages. */
shard_status_t shard_tokenizer_adopt_langs(shard_tokenizer_t *tok,
                                           const char (*names)[SHARD_LANG_NAME_MAX],
                                           int64_t n, shard_error_t *err);

/* Languages: the id of a code (-1 when unknown), how many, the code of an
 * id (NULL when none). */
int64_t shard_tokenizer_lang_id(const shard_tokenizer_t *tok, const char *lang);
size_t shard_tokenizer_n_langs(const shard_tokenizer_t *tok);
const char *shard_tokenizer_lang_name(const shard_tokenizer_t *tok, int64_t id);

/* Vocabulary: entries of vocab.json; id of a token (added tokens first,
 * -1 when absent); token of an id (NULL when none). */
size_t shard_tokenizer_vocab_size(const shard_tokenizer_t *tok);
int64_t shard_tokenizer_token_to_id(const shard_tokenizer_t *tok, const char *token);
const char *shard_tokenizer_id_to_token(const shard_tokenizer_t *tok, int64_t id);

typedef struct {
    int64_t bos, eos_sep, cls, pad, unk, mask; /* -1 when the checkpoint has none */
} shard_tokenizer_special_ids_t;

shard_tokenizer_special_ids_t shard_tokenizer_special_ids(const shard_tokenizer_t *tok);
/* Whether text is lowercased and stripped of accents (the checkpoint's
 * do_lowercase_and_remove_accent). */
bool shard_tokenizer_lowercases(const shard_tokenizer_t *tok);

#ifdef __cplusplus
}
#endif

#endif /* XLM_SHARD_TOKENIZER_H */
