/* test_tokenizer.c: the XLM tokenizer through its public API and its CLI:
 * every golden case in both modes, special tokens, hard characters, decode,
 * errors, save_vocabulary, concurrent use. */
#include "shard_tokenizer.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <pthread.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#define MODEL XLM_GOLDEN_DIR "/mlm_multi-base"

static shard_tokenizer_t *tok;

static int setup(void **state)
{
    (void)state;
    shard_error_t err = {0};
    tok = shard_tokenizer_open(MODEL, &err);
    if (!tok)
        fprintf(stderr, "setup: %s\n", err.message);
    return tok ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    shard_tokenizer_destroy(&tok);
    return 0;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = '\0';
    if (len)
        *len = got;
    return buf;
}

static void write_all(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void check_tokens(const shard_encoding_t *enc, size_t from, size_t n, const cJSON *want)
{
    assert_int_equal((size_t)cJSON_GetArraySize(want), n);
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, want)
    {
        assert_string_equal(shard_encoding_token(enc, from + i), t->valuestring);
        i++;
    }
}

static void check_ids(const int64_t *got, size_t n, const cJSON *want)
{
    assert_int_equal((size_t)cJSON_GetArraySize(want), n);
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, want)
        assert_int_equal(got[i++], (int64_t)t->valuedouble);
}

/* ---------------------------------------------------------------- golden */

/* An original XLM checkpoint folder (fastBPE vocab and codes, no
 * vocab.json or merges.txt) tokenizes every golden text to the same ids as
 * its HF twin (HF mode: the language rules need the config's languages,
 * which such a folder keeps in model.pth). */
static void test_fastbpe_files(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_tokenizer_t *orig = shard_tokenizer_open(MODEL "-xlmorig", &err);
    if (!orig)
        fail_msg("%s", err.message);
    assert_int_equal(shard_tokenizer_vocab_size(orig), shard_tokenizer_vocab_size(tok));
    assert_int_equal(shard_tokenizer_token_to_id(orig, "re"), shard_tokenizer_token_to_id(tok, "re"));
    assert_int_equal(shard_tokenizer_token_to_id(orig, "de</w>"),
                     shard_tokenizer_token_to_id(tok, "de</w>"));
    size_t len;
    char *data = read_all(MODEL "/tokenizer_cases.jsonl", &len);
    assert_non_null(data);
    size_t cases = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *g = cJSON_Parse(line);
        const char *text = cJSON_GetObjectItem(g, "text")->valuestring;
        shard_tokenizer_segment_t a = {text, strlen(text), "en"};
        shard_encoding_t x, y;
        shard_encoding_init(&x);
        shard_encoding_init(&y);
        assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &x,
                                                &err), SHARD_OK);
        assert_int_equal(shard_tokenizer_encode(orig, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &y,
                                                &err), SHARD_OK);
        assert_int_equal(x.length, y.length);
        assert_memory_equal(x.input_ids, y.input_ids, x.length * sizeof *x.input_ids);
        shard_encoding_clear(&x);
        shard_encoding_clear(&y);
        cJSON_Delete(g);
        cases++;
    }
    free(data);
    assert_true(cases >= 100);
    shard_tokenizer_destroy(&orig);
}

static void test_golden_cases(void **state)
{
    (void)state;
    size_t len;
    char *data = read_all(MODEL "/tokenizer_cases.jsonl", &len);
    assert_non_null(data);
    size_t cases = 0, pairs = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *g = cJSON_Parse(line);
        assert_non_null(g);
        const char *lang = cJSON_GetObjectItem(g, "lang")->valuestring;
        const cJSON *tp = cJSON_GetObjectItem(g, "text_pair");
        const cJSON *lp = cJSON_GetObjectItem(g, "lang_pair");
        const char *text = cJSON_GetObjectItem(g, "text")->valuestring;
        shard_tokenizer_segment_t a = {text, strlen(text), lang};
        shard_tokenizer_segment_t b = {tp ? tp->valuestring : NULL, tp ? strlen(tp->valuestring) : 0,
                                       lp ? lp->valuestring : lang};
        for (int mode = 0; mode < SHARD_TOKENIZER_MODE_COUNT_; mode++) {
            bool hf = mode == SHARD_TOKENIZER_MODE_HF;
            shard_encoding_t enc;
            shard_encoding_init(&enc);
            shard_error_t err = {0};
            assert_int_equal(shard_tokenizer_encode(tok, (shard_tokenizer_mode_t)mode, &a,
                                                    tp ? &b : NULL, true, &enc, &err),
                             SHARD_OK);
            check_tokens(&enc, enc.offset_a, enc.length_a,
                         cJSON_GetObjectItem(g, hf ? "tokens" : "tokens_lang"));
            if (tp)
                check_tokens(&enc, enc.offset_b, enc.length_b,
                             cJSON_GetObjectItem(g, hf ? "tokens_pair" : "tokens_pair_lang"));
            check_ids(enc.input_ids, enc.length,
                      cJSON_GetObjectItem(g, hf ? "input_ids" : "input_ids_lang"));
            const cJSON *types = cJSON_GetObjectItem(g, "token_type_ids");
            if (hf && types)
                check_ids(enc.token_type_ids, enc.length, types);
            if (hf) {
                char *text_out = NULL;
                assert_int_equal(shard_tokenizer_decode(tok, enc.input_ids, enc.length, false,
                                                        &text_out, NULL, &err),
                                 SHARD_OK);
                assert_string_equal(text_out, cJSON_GetObjectItem(g, "decoded")->valuestring);
                free(text_out);
                assert_int_equal(shard_tokenizer_decode(tok, enc.input_ids, enc.length, true,
                                                        &text_out, NULL, &err),
                                 SHARD_OK);
                assert_string_equal(text_out,
                                    cJSON_GetObjectItem(g, "decoded_skip_special")->valuestring);
                free(text_out);
            }
            /* special mask and langs follow the layout */
            int64_t la = shard_tokenizer_lang_id(tok, lang);
            int64_t lb = shard_tokenizer_lang_id(tok, b.lang);
            for (size_t i = 0; i < enc.length; i++) {
                bool special = i == 0 || i == enc.length_a + 1 || (tp && i == enc.length - 1);
                assert_int_equal(enc.special_tokens_mask[i], special);
                assert_int_equal(enc.langs[i], i <= enc.length_a + 1 ? la : lb);
            }
            shard_encoding_clear(&enc);
        }
        cases++;
        pairs += tp != NULL;
        cJSON_Delete(g);
    }
    free(data);
    assert_int_equal(cases, 110);
    assert_int_equal(pairs, 10);
}

/* The bundled model's reference tokens: 400 English/French pairs, tokenized
 * by HF with the standard call, with ids and langs. */
static void test_bundled_model_examples(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_tokenizer_t *t = shard_tokenizer_open(XLM_MODELS_DIR "/tiny-clm-enfr", &err);
    assert_non_null(t);
    size_t checked = 0;
    const char *names[] = {"pairs", "shuffled"};
    for (int f = 0; f < 2; f++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tiny-clm-enfr/examples/%s.tsv", XLM_MODELS_DIR, names[f]);
        char *tsv = read_all(path, NULL);
        snprintf(path, sizeof path, "%s/tiny-clm-enfr/examples/%s_scores.jsonl", XLM_MODELS_DIR,
                 names[f]);
        char *refs = read_all(path, NULL);
        assert_non_null(tsv);
        assert_non_null(refs);
        /* lines of the TSV, by number */
        char *lines[1024];
        size_t n_lines = 0;
        for (char *save = NULL, *l = strtok_r(tsv, "\n", &save); l && n_lines < 1024;
             l = strtok_r(NULL, "\n", &save))
            lines[n_lines++] = l;
        char *save = NULL;
        for (char *l = strtok_r(refs, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            cJSON *ref = cJSON_Parse(l);
            size_t line = (size_t)cJSON_GetObjectItem(ref, "line")->valuedouble;
            assert_true(line >= 1 && line <= n_lines);
            char *col[4];
            char *p = lines[line - 1];
            for (int c = 0; c < 4; c++) {
                col[c] = p;
                p = strchr(p, '\t');
                if (c < 3) {
                    assert_non_null(p);
                    *p++ = '\0';
                }
            }
            shard_tokenizer_segment_t a = {col[1], strlen(col[1]), col[0]};
            shard_tokenizer_segment_t b = {col[3], strlen(col[3]), col[2]};
            shard_encoding_t enc;
            shard_encoding_init(&enc);
            assert_int_equal(shard_tokenizer_encode(t, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &enc,
                                                    &err),
                             SHARD_OK);
            check_tokens(&enc, enc.offset_a, enc.length_a, cJSON_GetObjectItem(ref, "src_tokens"));
            check_tokens(&enc, enc.offset_b, enc.length_b, cJSON_GetObjectItem(ref, "tgt_tokens"));
            check_ids(enc.input_ids, enc.length, cJSON_GetObjectItem(ref, "input_ids"));
            check_ids(enc.langs, enc.length, cJSON_GetObjectItem(ref, "langs"));
            shard_encoding_clear(&enc);
            cJSON_Delete(ref);
            checked++;
        }
        free(tsv);
        free(refs);
    }
    assert_int_equal(checked, 400);
    shard_tokenizer_destroy(&t);
}

/* ---------------------------------------------------------------- behaviour */

typedef struct {
    const char *lang, *text;
    const char *tokens;   /* space-separated */
    const char *tokens_lang;
} expect_t;

static void check_case(const expect_t *e)
{
    for (int mode = 0; mode < SHARD_TOKENIZER_MODE_COUNT_; mode++) {
        shard_tokenizer_segment_t a = {e->text, strlen(e->text), e->lang};
        shard_encoding_t enc;
        shard_encoding_init(&enc);
        shard_error_t err = {0};
        assert_int_equal(shard_tokenizer_encode(tok, (shard_tokenizer_mode_t)mode, &a, NULL, true,
                                                &enc, &err),
                         SHARD_OK);
        char joined[1024] = "";
        for (size_t i = 0; i < enc.length_a; i++) {
            if (i)
                strcat(joined, " ");
            strcat(joined, shard_encoding_token(&enc, enc.offset_a + i));
        }
        assert_string_equal(joined, mode == SHARD_TOKENIZER_MODE_HF ? e->tokens : e->tokens_lang);
        shard_encoding_clear(&enc);
    }
}

static void test_special_tokens_in_text(void **state)
{
    (void)state;
    /* Special tokens are cut out whole; "<S>" is lowercased first, so it
     * becomes <s> too (HF lowercases before cutting). */
    expect_t cases[] = {
        {"en", "<s>Hello<special1> world</s>", "<s> h el lo</w> <special1> wor ld</w> </s>",
         "<s> h el lo</w> <special1> wor ld</w> </s>"},
        {"en", "<S>Hi", "<s> h i</w>", "<s> h i</w>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i]);
    shard_tokenizer_segment_t a = {"<special1>", 10, "en"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, NULL),
                     SHARD_OK);
    assert_int_equal(enc.length, 3);
    assert_int_equal(enc.input_ids[1], 5);
    assert_int_equal(enc.special_tokens_mask[1], 0); /* in the text: not an added special */
    shard_encoding_clear(&enc);
}

static void test_hard_characters(void **state)
{
    (void)state;
    expect_t cases[] = {
        /* capital sigma: lowercased one character at a time, never final ς */
        {"en", "ΟΔΟΣ ΣΑΣ", "ο δ ο σ</w> σ α σ</w>", "ο δ ο σ</w> σ α σ</w>"},
        /* dotted capital I: its dot is a mark that Moses splits off */
        {"en", "İstanbul", "i</w> st an b ul</w>", "i</w> st an b ul</w>"},
        /* emoji, variation selector, Chinese: each its own word */
        {"en", "I ❤️ 中文 😀!", "i</w> ❤</w> 中</w> 文</w> 😀</w> !</w>",
         "i</w> ❤</w> 中</w> 文</w> 😀</w> !</w>"},
        /* tab and control characters are deleted */
        {"en", "a\tb\x04" "c", "ab c</w>", "ab c</w>"},
        /* Romanian: cedilla and comma forms, both modes end without accents */
        {"ro", "Şedinţa în ţară", "se din ta</w> in</w> t ara</w>", "se din ta</w> in</w> t ara</w>"},
        /* French elision: English rules attach the apostrophe to the right */
        {"fr", "l'école d'été", "l</w> ' e co le</w> d</w> ' e te</w>",
         "l '</w> e co le</w> d '</w> e te</w>"},
        {"en", "", "", ""},
        {"en", " \t\n ", "", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i]);
    /* Characters outside the vocabulary are <unk> (3). */
    shard_tokenizer_segment_t a = {"中", strlen("中"), "en"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, NULL),
                     SHARD_OK);
    assert_int_equal(enc.length, 3);
    assert_int_equal(enc.input_ids[1], 3);
    shard_encoding_clear(&enc);
}

static void test_pair_layout(void **state)
{
    (void)state;
    shard_tokenizer_segment_t a = {"Hello", 5, "en"}, b = {"Bonjour", 7, "fr"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &enc, &err),
                     SHARD_OK);
    assert_true(enc.has_pair);
    assert_int_equal(enc.length, 1 + enc.length_a + 1 + enc.length_b + 1);
    assert_int_equal(enc.offset_b, enc.length_a + 2);
    assert_int_equal(enc.input_ids[0], 0);
    assert_int_equal(enc.input_ids[enc.length_a + 1], 1);
    assert_int_equal(enc.input_ids[enc.length - 1], 1);
    for (size_t i = 0; i < enc.length; i++) {
        assert_int_equal(enc.token_type_ids[i], i > enc.length_a + 1);
        assert_int_equal(enc.langs[i], i > enc.length_a + 1 ? 1 : 0);
    }
    /* without special tokens: the two texts back to back, all zeros */
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, &b, false, &enc, &err),
                     SHARD_OK);
    assert_int_equal(enc.length, enc.length_a + enc.length_b);
    assert_int_equal(enc.offset_a, 0);
    for (size_t i = 0; i < enc.length; i++)
        assert_int_equal(enc.token_type_ids[i] + enc.special_tokens_mask[i], 0);
    shard_encoding_clear(&enc);
}

static void test_decode(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    /* "the</w>" ".</w>": the space before the period is cleaned up */
    int64_t ids[] = {0, 170, 22, 3, 1};
    assert_int_equal(shard_tokenizer_decode(tok, ids, 5, false, &text, &len, NULL), SHARD_OK);
    assert_string_equal(text, "<s>the. <unk></s>");
    assert_int_equal(len, strlen(text));
    free(text);
    /* skipping special tokens drops <unk> too */
    assert_int_equal(shard_tokenizer_decode(tok, ids, 5, true, &text, NULL, NULL), SHARD_OK);
    assert_string_equal(text, "the.");
    free(text);
    /* an id outside the vocabulary reads as the unknown token */
    int64_t odd[] = {999999, -4};
    assert_int_equal(shard_tokenizer_decode(tok, odd, 2, true, &text, NULL, NULL), SHARD_OK);
    assert_string_equal(text, "<unk><unk>");
    free(text);
    assert_int_equal(shard_tokenizer_decode(tok, NULL, 0, false, &text, NULL, NULL), SHARD_OK);
    assert_string_equal(text, "");
    free(text);
}

static void test_lang_errors(void **state)
{
    (void)state;
    shard_tokenizer_segment_t a = {"hi", 2, "xx"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, &err),
                     SHARD_ERR_LANG);
    assert_non_null(strstr(err.message, "\"xx\""));
    assert_non_null(strstr(err.message, "en, fr, de, ro"));
    assert_int_equal(enc.length, 0);
    assert_int_equal(shard_tokenizer_lang_id(tok, "ro"), 3);
    assert_int_equal(shard_tokenizer_lang_id(tok, "zz"), -1);
    assert_int_equal(shard_tokenizer_n_langs(tok), 4);
    assert_string_equal(shard_tokenizer_lang_name(tok, 1), "fr");
    assert_null(shard_tokenizer_lang_name(tok, 9));
}

static void test_utf8_error_names_offset(void **state)
{
    (void)state;
    shard_tokenizer_segment_t a = {"fine", 4, "en"}, b = {"caf\xC3\x28 x", 7, "fr"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &enc, &err),
                     SHARD_ERR_UTF8);
    assert_non_null(strstr(err.message, "text_pair"));
    assert_non_null(strstr(err.message, "byte offset 4"));
    /* text with NUL bytes is text: the NUL is a control character, deleted */
    shard_tokenizer_segment_t n = {"a\0b", 3, "en"};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &n, NULL, true, &enc, &err),
                     SHARD_OK);
    shard_encoding_t ab;
    shard_encoding_init(&ab);
    shard_tokenizer_segment_t s = {"ab", 2, "en"};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &s, NULL, true, &ab, &err),
                     SHARD_OK);
    assert_int_equal(enc.length, ab.length);
    assert_memory_equal(enc.input_ids, ab.input_ids, ab.length * sizeof *ab.input_ids);
    shard_encoding_clear(&ab);
    shard_encoding_clear(&enc);
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_COUNT_, &a, NULL, true, &enc,
                                            &err),
                     SHARD_ERR_INPUT);
    assert_int_equal(shard_tokenizer_encode(NULL, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, &err),
                     SHARD_ERR_INPUT);
}

static void test_long_inputs(void **state)
{
    (void)state;
    /* one word of 100000 letters */
    size_t n = 100000;
    char *word = malloc(n);
    for (size_t i = 0; i < n; i++)
        word[i] = "abcdefghij"[i % 10];
    shard_tokenizer_segment_t a = {word, n, "en"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, &err),
                     SHARD_OK);
    assert_true(enc.length_a > 10000);
    const char *last = shard_encoding_token(&enc, enc.length - 2);
    assert_non_null(strstr(last, "</w>"));
    free(word);
    /* 2 MB of sentences */
    size_t big = 2 << 20, o = 0;
    char *text = malloc(big + 64);
    while (o < big)
        o += (size_t)sprintf(text + o, "Sentence %zu, with \"quotes\" and e.g. dots... ", o);
    shard_tokenizer_segment_t s = {text, o, "fr"};
    assert_int_equal(shard_tokenizer_encode(tok, SHARD_TOKENIZER_MODE_LANG_RULES, &s, NULL, true, &enc,
                                            &err),
                     SHARD_OK);
    assert_true(enc.length > 300000);
    free(text);
    shard_encoding_clear(&enc);
}

static void test_accessors(void **state)
{
    (void)state;
    assert_int_equal(shard_tokenizer_vocab_size(tok), 1044);
    assert_int_equal(shard_tokenizer_token_to_id(tok, "the</w>"), 170);
    assert_int_equal(shard_tokenizer_token_to_id(tok, "<special1>"), 5);
    assert_int_equal(shard_tokenizer_token_to_id(tok, "no such token"), -1);
    assert_string_equal(shard_tokenizer_id_to_token(tok, 170), "the</w>");
    assert_null(shard_tokenizer_id_to_token(tok, 5000));
    shard_tokenizer_special_ids_t ids = shard_tokenizer_special_ids(tok);
    assert_int_equal(ids.bos, 0);
    assert_int_equal(ids.eos_sep, 1);
    assert_int_equal(ids.cls, 1);
    assert_int_equal(ids.pad, 2);
    assert_int_equal(ids.unk, 3);
    assert_int_equal(ids.mask, 5);
    assert_true(shard_tokenizer_lowercases(tok));
    assert_string_equal(shard_tokenizer_mode_name(SHARD_TOKENIZER_MODE_LANG_RULES), "lang_rules");
}

/* ---------------------------------------------------------------- files */

static void test_save_vocabulary(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tokenizer_save", XLM_TEST_TMP);
    mkdir(XLM_TEST_TMP, 0755);
    mkdir(dir, 0755);
    shard_error_t err = {0};
    assert_int_equal(shard_tokenizer_save_vocabulary(tok, dir, "x", &err), SHARD_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/x-vocab.json", dir);
    char *got = read_all(path, NULL);
    char *want = read_all(MODEL "/vocab.json", NULL);
    assert_non_null(got);
    assert_non_null(want);
    /* The golden vocab.json was written by HF the same way. */
    size_t wl = strlen(want);
    if (wl && want[wl - 1] != '\n')
        assert_memory_equal(got, want, wl);
    else
        assert_string_equal(got, want);
    free(got);
    free(want);
    /* merges.txt: HF writes the pairs without the counts */
    snprintf(path, sizeof path, "%s/x-merges.txt", dir);
    got = read_all(path, NULL);
    want = read_all(MODEL "/merges.txt", NULL);
    char *g = got, *w = want;
    size_t lines = 0;
    while (*w) {
        char *we = strchr(w, '\n'), *ge = strchr(g, '\n');
        assert_non_null(ge);
        char *sp = strchr(w, ' ');
        char *sp2 = strchr(sp + 1, ' ');
        size_t pair_len = (size_t)((sp2 && sp2 < we ? sp2 : we) - w);
        assert_int_equal((size_t)(ge - g), pair_len);
        assert_memory_equal(g, w, pair_len);
        g = ge + 1;
        w = we + 1;
        lines++;
    }
    assert_int_equal(*g, '\0');
    assert_int_equal(lines, 900);
    free(got);
    free(want);
    assert_int_equal(shard_tokenizer_save_vocabulary(tok, "/nonexistent/dir", NULL, &err), SHARD_ERR_IO);
}

static void test_open_errors(void **state)
{
    (void)state;
    shard_error_t err = {0};
    assert_null(shard_tokenizer_open("/nonexistent/model", &err));
    assert_int_equal(err.code, SHARD_ERR_IO);
    assert_non_null(strstr(err.message, "vocab.json"));
    assert_null(shard_tokenizer_open(NULL, &err));
    assert_int_equal(err.code, SHARD_ERR_INPUT);

    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/tokenizer_bad", XLM_TEST_TMP);
    mkdir(XLM_TEST_TMP, 0755);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_all(path, "a b\n");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_all(path, "[1, 2]");
    assert_null(shard_tokenizer_open(dir, &err));
    assert_int_equal(err.code, SHARD_ERR_FORMAT);
    write_all(path, "{\"<s>\": 0, \"</s>\": 1.5}");
    assert_null(shard_tokenizer_open(dir, &err));
    assert_int_equal(err.code, SHARD_ERR_FORMAT);
    assert_non_null(strstr(err.message, "</s>"));
    /* no <unk> in the vocabulary */
    write_all(path, "{\"<s>\": 0, \"</s>\": 1}");
    assert_null(shard_tokenizer_open(dir, &err));
    assert_int_equal(err.code, SHARD_ERR_CONFIG);
    /* minimal valid checkpoint: defaults for everything else */
    write_all(path, "{\"<s>\": 0, \"</s>\": 1, \"<unk>\": 2, \"a</w>\": 3}");
    shard_tokenizer_t *t = shard_tokenizer_open(dir, &err);
    assert_non_null(t);
    assert_int_equal(shard_tokenizer_n_langs(t), 0);
    shard_tokenizer_segment_t a = {"A a", 3, "anything"};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    assert_int_equal(shard_tokenizer_encode(t, SHARD_TOKENIZER_MODE_HF, &a, NULL, true, &enc, &err),
                     SHARD_OK);
    assert_int_equal(enc.length, 4);
    assert_int_equal(enc.input_ids[1], 3);
    assert_int_equal(enc.langs[1], 0);
    shard_encoding_clear(&enc);
    shard_tokenizer_destroy(&t);
    assert_null(t);
    shard_tokenizer_destroy(NULL);
    /* bad merges.txt encoding */
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_all(path, "a \xff\n");
    assert_null(shard_tokenizer_open(dir, &err));
    assert_int_equal(err.code, SHARD_ERR_FORMAT);
}

/* ---------------------------------------------------------------- threads */

enum { THREADS = 4 };

typedef struct {
    uint64_t sum;
} thread_result_t;

static const char *const thread_texts[] = {
    "The scheduler related call wasn't succesful.", "Rebut à la fin du caractère",
    "Die vertikale Ausrichtung, von 0 (oben) bis 1 (unten).", "Şedinţa în ţară",
    "Consider using tablespaces instead.",
};

/* A hash of every id of many encodings (unsigned: it wraps). */
static uint64_t encode_sum(void)
{
    uint64_t sum = 0;
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    for (int rep = 0; rep < 50; rep++)
        for (size_t i = 0; i < sizeof thread_texts / sizeof thread_texts[0]; i++) {
            shard_tokenizer_segment_t a = {thread_texts[i], strlen(thread_texts[i]), "fr"};
            if (shard_tokenizer_encode(tok, (shard_tokenizer_mode_t)(rep % 2), &a, NULL, true, &enc,
                                       NULL) != SHARD_OK)
                return 0;
            for (size_t k = 0; k < enc.length; k++)
                sum = sum * 31 + (uint64_t)enc.input_ids[k];
        }
    shard_encoding_clear(&enc);
    return sum;
}

static void *thread_main(void *arg)
{
    thread_result_t *r = arg;
    r->sum = encode_sum();
    return NULL;
}

static void test_concurrent_encode(void **state)
{
    (void)state;
    uint64_t want = encode_sum();
    assert_true(want != 0);
    pthread_t th[THREADS];
    thread_result_t res[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &res[i]), 0);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_true(res[i].sum == want);
    }
}

/* ---------------------------------------------------------------- CLI */

static void test_cli(void **state)
{
    (void)state;
    char in[512], cmd[2048];
    snprintf(in, sizeof in, "%s/tokenizer_cli_in.jsonl", XLM_TEST_TMP);
    mkdir(XLM_TEST_TMP, 0755);
    write_all(in, "{\"lang\": \"en\", \"text\": \"Hello world.\", \"text_pair\": \"Bonjour\", "
                  "\"lang_pair\": \"fr\"}\n"
                  "not json\n"
                  "{\"lang\": \"xx\", \"text\": \"hi\"}\n"
                  "{\"lang\": \"en\", \"text\": \"bad \xff byte\"}\n"
                  "{\"lang\": \"en\", \"text\": \"nul\\u0000here\"}\n"
                  "{\"lang\": \"fr\", \"text\": \"l'eau\"}\n");
    for (int lang_rules = 0; lang_rules < 2; lang_rules++) {
        snprintf(cmd, sizeof cmd, "%s/xlm-tokenize --model %s %s < %s", XLM_BIN_DIR, MODEL,
                 lang_rules ? "--lang-rules" : "", in);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[8192];
        cJSON *out[6] = {0};
        int n = 0;
        while (n < 6 && fgets(line, sizeof line, p))
            out[n++] = cJSON_Parse(line);
        assert_int_equal(pclose(p), 0);
        assert_int_equal(n, 6);
        /* 1: a pair */
        assert_non_null(cJSON_GetObjectItem(out[0], "tokens_pair"));
        assert_string_equal(cJSON_GetObjectItem(out[0], "decoded_skip_special")->valuestring,
                            "hello world. bonjour");
        cJSON *langs = cJSON_GetObjectItem(out[0], "langs");
        assert_int_equal((int)cJSON_GetArrayItem(langs, 0)->valuedouble, 0);
        assert_int_equal((int)cJSON_GetArrayItem(langs, cJSON_GetArraySize(langs) - 1)->valuedouble, 1);
        /* 2-4: error lines, and the stream goes on */
        const char *codes[] = {"bad_input", "unknown_language", "invalid_utf8"};
        for (int i = 0; i < 3; i++) {
            cJSON *e = cJSON_GetObjectItem(out[1 + i], "error");
            assert_non_null(e);
            assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, codes[i]);
        }
        assert_non_null(strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(out[3], "error"), "message")
                                   ->valuestring,
                               "byte offset 4"));
        /* 5: the NUL is deleted like any control character */
        cJSON *t5 = cJSON_GetObjectItem(out[4], "tokens");
        assert_non_null(t5);
        assert_string_equal(cJSON_GetObjectItem(out[4], "decoded_skip_special")->valuestring,
                            "nulhere");
        /* 6: French elision only with --lang-rules */
        cJSON *t6 = cJSON_GetObjectItem(out[5], "tokens");
        assert_string_equal(cJSON_GetArrayItem(t6, 0)->valuestring, lang_rules ? "l" : "l</w>");
        for (int i = 0; i < n; i++)
            cJSON_Delete(out[i]);
    }
    snprintf(cmd, sizeof cmd, "%s/xlm-tokenize --help > /dev/null", XLM_BIN_DIR);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/xlm-tokenize --model /nonexistent < /dev/null 2> /dev/null",
             XLM_BIN_DIR);
    assert_int_not_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_cases),
        cmocka_unit_test(test_fastbpe_files),
        cmocka_unit_test(test_bundled_model_examples),
        cmocka_unit_test(test_special_tokens_in_text),
        cmocka_unit_test(test_hard_characters),
        cmocka_unit_test(test_pair_layout),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_lang_errors),
        cmocka_unit_test(test_utf8_error_names_offset),
        cmocka_unit_test(test_long_inputs),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_save_vocabulary),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_concurrent_encode),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
