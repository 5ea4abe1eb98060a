/* test_tokenizer_stages.c: each stage of the XLM tokenizer alone, against
 * values worked out from the reference rules (sacremoses / HF), including
 * the cases where the order of the rules matters. */
#include "tokenizer_internal.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---------------------------------------------------------------- helpers */

static shard_tok_prefixes_t *prefixes;

static int setup(void **state)
{
    (void)state;
    shard_error_t err = {0};
    return shard_tok_prefixes_build(&prefixes, &err) == SHARD_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    shard_tok_prefixes_free(prefixes);
    prefixes = NULL;
    return 0;
}

static char *to_utf8(const shard_tok_text_t *t)
{
    char *s = malloc(t->len * 4 + 1);
    size_t o = 0;
    for (size_t i = 0; i < t->len; i++)
        o += shard_tok_utf8_put(t->cp[i], s + o);
    s[o] = '\0';
    return s;
}

typedef enum { ST_UNICODE_PUNCT, ST_PUNCT_NORM, ST_NON_PRINTING, ST_ROMANIAN, ST_MOSES } stage_t;

/* Runs one stage on text with the rules of lang; returns malloc'd UTF-8. */
static char *run_stage(stage_t stage, const char *lang, const char *text)
{
    shard_tok_work_t w = {0};
    shard_error_t err = {0};
    shard_tok_rules_t rules;
    shard_tok_rules_init(&rules, lang, prefixes);
    assert_int_equal(shard_tok_utf8_decode(text, strlen(text), 0, &w.cur, &err), SHARD_OK);
    shard_status_t st = SHARD_OK;
    switch (stage) {
    case ST_UNICODE_PUNCT: st = shard_tok_replace_unicode_punct(&w, &err); break;
    case ST_PUNCT_NORM: st = shard_tok_punct_norm(&w, &rules, &err); break;
    case ST_NON_PRINTING: shard_tok_remove_non_printing(&w.cur); break;
    case ST_ROMANIAN: shard_tok_romanian(&w.cur); break;
    case ST_MOSES: st = shard_tok_moses(&w, &rules, &err); break;
    }
    assert_int_equal(st, SHARD_OK);
    char *s = to_utf8(&w.cur);
    shard_tok_work_free(&w);
    return s;
}

#define CHECK_STAGE(stage, lang, in, want)                                            \
    do {                                                                              \
        char *got_ = run_stage((stage), (lang), (in));                                \
        assert_string_equal(got_, (want));                                            \
        free(got_);                                                                   \
    } while (0)

/* ---------------------------------------------------------------- normalisation */

static void test_replace_unicode_punct(void **state)
{
    (void)state;
    /* "。" and "．" also eat the whitespace after them. */
    CHECK_STAGE(ST_UNICODE_PUNCT, "en", "a，b。  c．d…", "a,b. c. d...");
    CHECK_STAGE(ST_UNICODE_PUNCT, "en", "（１２３）！？：；～％", "(123)!?:;~%");
    CHECK_STAGE(ST_UNICODE_PUNCT, "en", "「x」《y》〈z〉【w】━’“”", "\"x\"\"y\"<z>[w]-'\"\"");
    CHECK_STAGE(ST_UNICODE_PUNCT, "en", "plain ascii, untouched.", "plain ascii, untouched.");
}

static void test_punct_norm_quotes_commas(void **state)
{
    (void)state;
    /* English moves a quote after a following comma; French does not. */
    CHECK_STAGE(ST_PUNCT_NORM, "en", "He said \"hi\",  (ok) .", "He said \"hi,\" (ok).");
    CHECK_STAGE(ST_PUNCT_NORM, "fr", "He said \"hi\",  (ok) .", "He said \"hi\", (ok).");
    /* German: „ and “ become ", the quote moves before the period, `` and ''
     * become " (penn), dashes, ellipsis, ´ -> '. */
    CHECK_STAGE(ST_PUNCT_NORM, "de", "„Er kam.\"  Dann ``ging'' er – schnell — weg… ´s",
                "\"Er kam\". Dann \" ging \" er - schnell - weg... 's");
}

static void test_punct_norm_pseudo_spaces(void **state)
{
    (void)state;
    /* NBSP before ":" goes (a plain space before "?" stays), French quotes
     * become ", NBSP between digits is a thousands separator: "," in
     * French, "." in English. */
    CHECK_STAGE(ST_PUNCT_NORM, "fr", "Prix\u00a0: 1\u00a0000\u00a0€ «\u00a0oui\u00a0»",
                "Prix: 1,000\u00a0€ \"oui\"");
    CHECK_STAGE(ST_PUNCT_NORM, "en", "Prix\u00a0: 1\u00a0000\u00a0€ «\u00a0oui\u00a0»",
                "Prix: 1.000\u00a0€ \"oui\"");
    CHECK_STAGE(ST_PUNCT_NORM, "fr", "réglage nº\u00a03 à 5\u00a0cm ou 20\u00a0ºC ?",
                "réglage nº 3 à 5 cm ou 20 ºC ?");
    /* \r vanishes, runs of spaces collapse, the result is stripped. */
    CHECK_STAGE(ST_PUNCT_NORM, "en", "  a\r\n b   c  ", "a\n b c");
}

static void test_remove_non_printing(void **state)
{
    (void)state;
    /* Tabs and newlines are control characters too: they are deleted, not
     * turned into spaces (XLM's behaviour). ZWJ, soft hyphen, private use,
     * unassigned: all gone. */
    CHECK_STAGE(ST_NON_PRINTING, "en", "a\tb\x04" "c\u200dd\u00ade\ue000f\n", "abcdef");
    CHECK_STAGE(ST_NON_PRINTING, "en", "keep é ß 中 😀", "keep é ß 中 😀");
}

static void test_romanian(void **state)
{
    (void)state;
    CHECK_STAGE(ST_ROMANIAN, "ro", "Şedinţa Țară ș ț Ăă Ââ Îî", "Sedinta Tara s t Aa Aa Ii");
}

static void test_lower_strip_accents(void **state)
{
    (void)state;
    struct {
        const char *in, *want;
    } cases[] = {
        {"Ça", "ca"},
        {"İstanbul", "istanbul"}, /* İ -> i + U+0307, the dot is a mark */
        {"Größe", "große"},
        {"ÉCOLE", "ecole"},
        {"Ολυμπιακοί", "ολυμπιακοι"},
        {"한", "\u1112\u1161\u11ab"}, /* Hangul decomposes into jamo */
        {"\u0307", ""},               /* only a mark: nothing left */
        {"ABC", "abc"},
    };
    shard_tok_text_t out = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        shard_tok_text_t in = {0};
        shard_error_t err = {0};
        assert_int_equal(shard_tok_utf8_decode(cases[i].in, strlen(cases[i].in), 0, &in, &err),
                         SHARD_OK);
        assert_int_equal(shard_tok_lower_strip_accents(in.cp, in.len, &out, &err), SHARD_OK);
        char *got = to_utf8(&out);
        assert_string_equal(got, cases[i].want);
        free(got);
        shard_tok_text_free(&in);
    }
    shard_tok_text_free(&out);
}

static void test_character_classes(void **state)
{
    (void)state;
    assert_true(shard_tok_is_alpha('a', false));
    assert_true(shard_tok_is_alpha(0x00E9, false));  /* é */
    assert_true(shard_tok_is_alpha(0x093E, false));  /* Devanagari vowel sign: Other_Alphabetic */
    assert_true(shard_tok_is_alpha(0x094D, false));  /* virama, added by sacremoses */
    assert_false(shard_tok_is_alpha(0x0307, false)); /* combining dot above */
    assert_false(shard_tok_is_alpha(0x4E2D, false)); /* 中: absent from sacremoses' lists */
    assert_false(shard_tok_is_alpha(0xAC00, false)); /* 가 ... */
    assert_true(shard_tok_is_alpha(0xAC00, true));   /* ... unless Korean */
    assert_false(shard_tok_is_alpha(0x1D400, false)); /* lists are BMP only */
    assert_true(shard_tok_is_alnum('7', false));
    assert_true(shard_tok_is_number(0x00B2));        /* ² */
    assert_false(shard_tok_is_alnum(0x00B2, false));
    assert_true(shard_tok_is_lower(0x00AA));         /* ª: Other_Lowercase */
    assert_true(shard_tok_is_lower(0x24D0));         /* ⓐ */
    assert_false(shard_tok_is_lower('A'));
    assert_true(shard_tok_is_space(0x00A0));
    assert_true(shard_tok_is_space(0x1C));           /* Python counts it as space */
    assert_false(shard_tok_is_space(0x200B));
    uint32_t low[2];
    assert_int_equal(shard_tok_lower(0x0130, low), 2);
    assert_int_equal(low[0], 'i');
    assert_int_equal(low[1], 0x0307);
    assert_int_equal(shard_tok_lower(0x03A3, low), 1);
    assert_int_equal(low[0], 0x03C3); /* one Σ alone is σ, never final ς */
}

/* ---------------------------------------------------------------- Moses */

static void test_moses_english(void **state)
{
    (void)state;
    CHECK_STAGE(ST_MOSES, "en", "Mr. Smith's car isn't here... He paid $5,300.50, ok?",
                "Mr. Smith 's car isn 't here ... He paid $ 5,300.50 , ok ?");
    CHECK_STAGE(ST_MOSES, "en", "L'homme d'affaires, aujourd'hui.",
                "L 'homme d 'affaires , aujourd 'hui .");
    CHECK_STAGE(ST_MOSES, "en", "1990's and 1990s", "1990 's and 1990s");
}

static void test_moses_french_apostrophes(void **state)
{
    (void)state;
    CHECK_STAGE(ST_MOSES, "fr", "L'homme d'affaires, aujourd'hui.",
                "L' homme d' affaires , aujourd' hui .");
    /* German has no apostrophe rule: every apostrophe is split off. */
    CHECK_STAGE(ST_MOSES, "de", "Er sagte: 'Nein.'", "Er sagte : ' Nein . '");
}

static void test_moses_nonbreaking_prefixes(void **state)
{
    (void)state;
    /* "No" holds its period only before a number; "etc" is not an English
     * prefix; abbreviations with inner dots keep theirs. */
    CHECK_STAGE(ST_MOSES, "en", "No. 5 is No. Five, etc. Next", "No. 5 is No . Five , etc . Next");
    CHECK_STAGE(ST_MOSES, "en", "e.g. this and i.e. that. U.S. gov. 1990s",
                "e.g. this and i.e. that . U.S. gov . 1990s");
    /* Romanian list: "Dl" and "pt" are prefixes there. */
    CHECK_STAGE(ST_MOSES, "ro", "Dl. Popescu a spus: pt. 2.", "Dl. Popescu a spus : pt. 2 .");
    /* A lowercase next word keeps any period. */
    CHECK_STAGE(ST_MOSES, "en", "lost. attempting", "lost. attempting");
}

/* The lists bundled beyond the first eleven languages (sacremoses ships
 * them): one prefix of each, missing from the English list, keeps its
 * period in its language and is split from it under the English rules. */
static void test_moses_prefix_lists_of_more_languages(void **state)
{
    (void)state;
    static const struct {
        const char *lang, *prefix, *next;
    } cases[] = {
        {"ca", "Sra", "Puig"},      {"cs", "MUDr", "Novák"},  {"el", "Άθαν", "Παπαδόπουλος"},
        {"fi", "dipl", "Insinööri"}, {"ga", "Uacht", "Éireann"}, {"hu", "Szt", "István"},
        {"is", "afs", "Jón"},       {"lv", "Inž", "Bērziņš"},  {"sk", "Mgr", "Novák"},
        {"sl", "itd", "Potem"},     {"ta", "திரு", "ராமன்"},     {"yue", "Ū", "Wong"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[128], kept[128], split[128];
        snprintf(text, sizeof text, "x %s. %s", cases[i].prefix, cases[i].next);
        snprintf(kept, sizeof kept, "x %s. %s", cases[i].prefix, cases[i].next);
        snprintf(split, sizeof split, "x %s . %s", cases[i].prefix, cases[i].next);
        print_message("%s: %s\n", cases[i].lang, text);
        CHECK_STAGE(ST_MOSES, cases[i].lang, text, kept);
        CHECK_STAGE(ST_MOSES, "en", text, split);
    }
}

static void test_moses_dots_commas(void **state)
{
    (void)state;
    CHECK_STAGE(ST_MOSES, "en", "Wait... what..? a..b.", "Wait ... what .. ? a .. b .");
    CHECK_STAGE(ST_MOSES, "en", "5,300 and a,b, 7,", "5,300 and a , b , 7 ,");
    CHECK_STAGE(ST_MOSES, "en", "www.example.com/a-b and a@b.co, #tag",
                "www.example.com / a-b and a @ b.co , # tag");
    /* Text that already holds sacremoses' placeholder word is rewritten by
     * it, as sacremoses does. */
    CHECK_STAGE(ST_MOSES, "en", "x DOTMULTI. y", "x .. y");
    CHECK_STAGE(ST_MOSES, "en", "x..DOTMULTI.. y", "x .. . .. y");
    CHECK_STAGE(ST_MOSES, "en", "", "");
    /* ... but not when that would take quadratic time: refused. */
    size_t n = 30000;
    char *text = malloc(n + 16);
    strcpy(text, "DOTMULTI");
    memset(text + 8, '.', n);
    text[8 + n] = '\0';
    shard_tok_work_t w = {0};
    shard_error_t err = {0};
    shard_tok_rules_t rules;
    shard_tok_rules_init(&rules, "en", prefixes);
    assert_int_equal(shard_tok_utf8_decode(text, strlen(text), 0, &w.cur, &err), SHARD_OK);
    assert_int_equal(shard_tok_moses(&w, &rules, &err), SHARD_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "DOTMULTI"));
    shard_tok_work_free(&w);
    /* plain long runs of dots are linear and fine */
    memset(text, '.', n);
    text[n] = '\0';
    assert_int_equal(shard_tok_utf8_decode(text, n, 0, &w.cur, &err), SHARD_OK);
    assert_int_equal(shard_tok_moses(&w, &rules, &err), SHARD_OK);
    assert_int_equal(w.cur.len, n);
    shard_tok_work_free(&w);
    free(text);
}

/* ---------------------------------------------------------------- BPE */

static char *bpe_units(shard_tok_bpe_t *bpe, const char *word, int algo)
{
    char *units = NULL;
    size_t len = 0, cap = 0, n = 0;
    shard_error_t err = {0};
    shard_status_t st =
        algo == 0 ? shard_tok_bpe_word(bpe, word, strlen(word), &units, &len, &cap, &n, &err)
        : algo == 1 ? shard_tok_bpe_word_direct(bpe, word, strlen(word), &units, &len, &cap, &n, &err)
                    : shard_tok_bpe_word_heap(bpe, word, strlen(word), &units, &len, &cap, &n, &err);
    assert_int_equal(st, SHARD_OK);
    /* NUL-separated -> space-separated */
    char *s = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        s[i] = units[i] ? units[i] : ' ';
    if (len)
        s[len - 1] = '\0';
    else
        s[0] = '\0';
    free(units);
    return s;
}

static void test_bpe_merges(void **state)
{
    (void)state;
    /* Lowest rank first, every occurrence of the pair, left to right. "x"
     * is a line without a pair: it keeps its rank but merges nothing. */
    const char merges[] = "a a 10\nb c\nx\naa aa\naa a</w>\n#partial";
    shard_error_t err = {0};
    shard_tok_bpe_t *bpe = shard_tok_bpe_new(merges, sizeof merges - 1, &err);
    assert_non_null(bpe);
    assert_int_equal(shard_tok_bpe_n_merges(bpe), 5); /* the unterminated last line is dropped */
    assert_string_equal(shard_tok_bpe_merge(bpe, 2), "x");
    for (int algo = 0; algo < 3; algo++) {
        /* (a,a) merges at 0-1 only: the pair at 2 is (a, a</w>). */
        char *u = bpe_units(bpe, "aaaa", algo);
        assert_string_equal(u, "aa a a</w>");
        free(u);
        u = bpe_units(bpe, "aaa", algo); /* aa + a</w>, then rank 4 */
        assert_string_equal(u, "aaa</w>");
        free(u);
        u = bpe_units(bpe, "abca", algo);
        assert_string_equal(u, "a bc a</w>");
        free(u);
        u = bpe_units(bpe, "z", algo);
        assert_string_equal(u, "z</w>");
        free(u);
    }
    shard_tok_bpe_destroy(&bpe);
    assert_null(bpe);
}

static uint64_t xorshift(uint64_t *r)
{
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    return *r;
}

/* The heap algorithm (long words) must give exactly HF's loop (short words),
 * also with merge tables whose ranks do not follow creation order. */
static void test_bpe_heap_equals_direct(void **state)
{
    (void)state;
    uint64_t r = 12345;
#define RND() xorshift(&r)
    for (int table = 0; table < 20; table++) {
        char merges[8192];
        size_t o = 0;
        const char *sym[] = {"a", "b", "c", "ab", "ba", "bc", "aa", "abc", "a</w>", "b</w>",
                             "c</w>", "aa</w>", "ab</w>", "bb", "cab", "ca"};
        size_t nsym = sizeof sym / sizeof sym[0];
        for (int m = 0; m < 40; m++)
            o += (size_t)snprintf(merges + o, sizeof merges - o, "%s %s\n", sym[RND() % nsym],
                                  sym[RND() % nsym]);
        shard_error_t err = {0};
        shard_tok_bpe_t *bpe = shard_tok_bpe_new(merges, o, &err);
        assert_non_null(bpe);
        for (int w = 0; w < 200; w++) {
            char word[64];
            size_t n = 1 + RND() % 40;
            for (size_t i = 0; i < n; i++)
                word[i] = "abc"[RND() % 3];
            word[n] = '\0';
            char *d = bpe_units(bpe, word, 1);
            char *h = bpe_units(bpe, word, 2);
            assert_string_equal(d, h);
            free(d);
            free(h);
        }
        shard_tok_bpe_destroy(&bpe);
    }
#undef RND
}

static void test_bpe_long_word(void **state)
{
    (void)state;
    const char merges[] = "a a\naa aa\naaaa aaaa\n";
    shard_error_t err = {0};
    shard_tok_bpe_t *bpe = shard_tok_bpe_new(merges, sizeof merges - 1, &err);
    size_t n = 200000;
    char *word = malloc(n + 1);
    memset(word, 'a', n);
    word[n] = '\0';
    char *units = NULL;
    size_t len = 0, cap = 0, count = 0;
    assert_int_equal(shard_tok_bpe_word(bpe, word, n, &units, &len, &cap, &count, &err), SHARD_OK);
    /* 199999 a's merge into 8-a units (24999 of them), 7 a's left as aaaa aa a,
     * and the last character carries the word end: a</w>. */
    assert_int_equal(count, 24999 + 3 + 1);
    assert_string_equal(units + len - 6, "a</w>");
    free(units);
    free(word);
    shard_tok_bpe_destroy(&bpe);
}

static void test_utf8_errors(void **state)
{
    (void)state;
    struct {
        const char *s;
        size_t len, offset;
    } bad[] = {
        {"ab\xC3(", 4, 3},        /* not a continuation byte: offset of that byte */
        {"abc\xE2\x82", 5, 3},    /* truncated at the end */
        {"\xC0\xAF", 2, 0},       /* overlong */
        {"x\xED\xA0\x80", 4, 1},  /* surrogate */
        {"x\xF4\x90\x80\x80", 5, 1}, /* above U+10FFFF */
        {"\xFF", 1, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        shard_tok_text_t t = {0};
        shard_error_t err = {0};
        assert_int_equal(shard_tok_utf8_decode(bad[i].s, bad[i].len, 0, &t, &err), SHARD_ERR_UTF8);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu ", bad[i].offset);
        assert_non_null(strstr(err.message, want));
        shard_tok_text_free(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replace_unicode_punct),
        cmocka_unit_test(test_punct_norm_quotes_commas),
        cmocka_unit_test(test_punct_norm_pseudo_spaces),
        cmocka_unit_test(test_remove_non_printing),
        cmocka_unit_test(test_romanian),
        cmocka_unit_test(test_lower_strip_accents),
        cmocka_unit_test(test_character_classes),
        cmocka_unit_test(test_moses_english),
        cmocka_unit_test(test_moses_french_apostrophes),
        cmocka_unit_test(test_moses_nonbreaking_prefixes),
        cmocka_unit_test(test_moses_prefix_lists_of_more_languages),
        cmocka_unit_test(test_moses_dots_commas),
        cmocka_unit_test(test_bpe_merges),
        cmocka_unit_test(test_bpe_heap_equals_direct),
        cmocka_unit_test(test_bpe_long_word),
        cmocka_unit_test(test_utf8_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
