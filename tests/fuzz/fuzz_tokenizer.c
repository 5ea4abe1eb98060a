/* fuzz_tokenizer.c: libFuzzer target for the XLM tokenizer.
 *
 * Input: byte 0 picks the mode, the languages and whether to split the rest
 * into a pair (at the first 0xFF byte, if any); the rest is the text, any
 * bytes at all. Every encode must either succeed with a consistent layout
 * or fail with a status (invalid UTF-8, ...); decoding the ids must succeed.
 * The stages are also run alone on the raw text, for the ones with their own
 * entry points. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static shard_tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    shard_error_t err = {0};
    tok = shard_tokenizer_open(XLM_FUZZ_MODEL, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.message);
        abort();
    }
    return 0;
}

static const char *const langs[] = {"en", "fr", "de", "ro"};

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_tokenizer: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    shard_tokenizer_mode_t mode = (ctl & 1) ? SHARD_TOKENIZER_MODE_LANG_RULES
                                            : SHARD_TOKENIZER_MODE_HF;
    bool specials = !(ctl & 2);
    shard_tokenizer_segment_t a = {text, len, langs[(ctl >> 2) & 3]};
    shard_tokenizer_segment_t b = {NULL, 0, langs[(ctl >> 4) & 3]};
    bool pair = false;
    const char *split = memchr(text, 0xFF, len);
    if ((ctl & 0x40) && split) {
        a.len = (size_t)(split - text);
        b.text = split + 1;
        b.len = len - a.len - 1;
        pair = true;
    }

    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    shard_status_t st = shard_tokenizer_encode(tok, mode, &a, pair ? &b : NULL, specials, &enc, &err);
    if (st == SHARD_OK) {
        size_t sp = specials ? 1 : 0;
        check(enc.length == sp + enc.length_a + sp + (pair ? enc.length_b + sp : 0), "length");
        for (size_t i = 0; i < enc.length; i++) {
            check(shard_encoding_token(&enc, i) != NULL, "token");
            check(enc.input_ids[i] >= 0 && enc.input_ids[i] < 1044, "id range");
            check(enc.special_tokens_mask[i] == 0 || enc.special_tokens_mask[i] == 1, "mask");
        }
        for (int skip = 0; skip < 2; skip++) {
            char *out = NULL;
            size_t out_len = 0;
            check(shard_tokenizer_decode(tok, enc.input_ids, enc.length, skip, &out, &out_len,
                                         &err) == SHARD_OK,
                  "decode");
            check(out && strlen(out) == out_len, "decode length");
            free(out);
        }
    } else {
        check((st == SHARD_ERR_UTF8 && strstr(err.message, "byte offset") != NULL) ||
                  st == SHARD_ERR_UNSUPPORTED,
              "only invalid UTF-8 (or a refused pathological text) may fail");
    }
    shard_encoding_clear(&enc);

    /* The stages on their own, with rules that HF never combines (Korean,
     * Chinese segmentation, any language's prefixes). */
    shard_tok_work_t w = {0};
    if (shard_tok_utf8_decode(text, len, 0, &w.cur, NULL) == SHARD_OK) {
        static const char *const all[] = {"en", "fr", "it", "de", "es", "ko", "zh", "pl", "ru", "sv"};
        shard_tok_rules_t rules;
        shard_tok_rules_init(&rules, all[ctl % 10], tok->prefixes);
        shard_error_t e2 = {0};
        if (shard_tok_punct_norm(&w, &rules, &e2) == SHARD_OK)
            (void)shard_tok_moses(&w, &rules, &e2);
    }
    shard_tok_work_free(&w);
    return 0;
}
