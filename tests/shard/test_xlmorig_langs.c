/* test_xlmorig_langs.c: an original XLM folder (-xlmorig: model.pth, codes,
 * vocab) has no tokenizer file naming its languages; they are in the
 * .pth's params (lang2id / id2lang). The tokenizer adopts them from the
 * checkpoint's config, so language codes give the same ids, and
 * xlm-tokenize and xlm-score (in process) give the same output, byte for
 * byte, as on the HuggingFace folder of the same weights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard_checkpoint.h"
#include "shard_tokenizer.h"

static const char *const multilingual[] = {"mlm_multi-base", "mlm_multi-lm", "clm-lm"};

static char tmp[4200];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "%s/xlmorig-langs-%d", XLM_TEST_TMP, (int)getpid());
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* The tokenizer of the -xlmorig folder names no language until it adopts
 * the config's; then every code has the HF folder's id, and an encoded
 * fr/en pair carries the HF folder's langs. */
static void adopts_params_langs(void **state)
{
    (void)state;
    for (size_t m = 0; m < sizeof multilingual / sizeof multilingual[0]; m++) {
        char hf_dir[1024], orig_dir[1100];
        snprintf(hf_dir, sizeof hf_dir, "%s/%s", XLM_GOLDEN_DIR, multilingual[m]);
        snprintf(orig_dir, sizeof orig_dir, "%s-xlmorig", hf_dir);
        shard_error_t err = {0};
        shard_tokenizer_t *hf = shard_tokenizer_open(hf_dir, &err);
        shard_tokenizer_t *orig = shard_tokenizer_open(orig_dir, &err);
        assert_non_null(hf);
        assert_non_null(orig);
        assert_true(shard_tokenizer_n_langs(hf) >= 2);
        assert_int_equal(shard_tokenizer_n_langs(orig), 0);
        static shard_config_t config;
        assert_int_equal(shard_checkpoint_load_config(orig_dir, &config, &err), SHARD_OK);
        assert_int_equal(shard_tokenizer_adopt_langs(orig, config.lang_names, config.n_langs,
                                                     &err), SHARD_OK);
        assert_int_equal(shard_tokenizer_n_langs(orig), shard_tokenizer_n_langs(hf));
        for (int64_t id = 0; id < (int64_t)shard_tokenizer_n_langs(hf); id++) {
            const char *code = shard_tokenizer_lang_name(hf, id);
            assert_non_null(code);
            assert_string_equal(shard_tokenizer_lang_name(orig, id), code);
            assert_int_equal(shard_tokenizer_lang_id(orig, code), id);
        }
        assert_int_equal(shard_tokenizer_lang_id(orig, "xx"), -1);
        shard_tokenizer_segment_t a = {"le chat", 7, "fr"}, b = {"the cat", 7, "en"};
        shard_encoding_t x, y;
        shard_encoding_init(&x);
        shard_encoding_init(&y);
        assert_int_equal(shard_tokenizer_encode(hf, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &x, &err),
                         SHARD_OK);
        assert_int_equal(shard_tokenizer_encode(orig, SHARD_TOKENIZER_MODE_HF, &a, &b, true, &y,
                                                &err), SHARD_OK);
        assert_int_equal(x.length, y.length);
        assert_memory_equal(x.langs, y.langs, x.length * sizeof *x.langs);
        assert_int_not_equal(x.langs[0], x.langs[x.length - 1]); /* fr, then en */
        shard_encoding_clear(&x);
        shard_encoding_clear(&y);
        /* A tokenizer whose files name languages keeps its own. */
        char renamed[SHARD_MAX_LANGS][SHARD_LANG_NAME_MAX] = {{0}};
        snprintf(renamed[0], sizeof renamed[0], "zz");
        assert_int_equal(shard_tokenizer_adopt_langs(hf, (const char(*)[SHARD_LANG_NAME_MAX])renamed,
                                                     1, &err), SHARD_OK);
        assert_int_equal(shard_tokenizer_lang_id(hf, "zz"), -1);
        shard_tokenizer_destroy(&hf);
        shard_tokenizer_destroy(&orig);
    }
}

/* Runs cmd, which writes tmp/<name>.out, for the HF folder and the
 * -xlmorig one (cmd has %s for the folder and %s for the output) and
 * requires both outputs to be equal and to hold want. */
static void same_output(const char *model, const char *name, const char *format,
                        const char *want)
{
    char out[2][4400], cmd[16000];
    for (int i = 0; i < 2; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s%s", XLM_GOLDEN_DIR, model, i ? "-xlmorig" : "");
        snprintf(out[i], sizeof out[i], "%s/%s-%s%d.out", tmp, model, name, i);
        snprintf(cmd, sizeof cmd, format, dir, out[i]);
        assert_int_equal(system(cmd), 0);
    }
    snprintf(cmd, sizeof cmd, "cmp '%s' '%s' && grep -qF '%s' '%s'", out[0], out[1], want, out[0]);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd, "diff '%s' '%s' | head -5", out[0], out[1]);
        (void)system(cmd);
        fail_msg("%s %s: -xlmorig output differs from the HF folder's (or lacks %s)", model,
                 name, want);
    }
}

static void tools_equal_on_both_folders(void **state)
{
    (void)state;
    char lines[4400], pairs[4400];
    snprintf(lines, sizeof lines, "%s/lines.jsonl", tmp);
    snprintf(pairs, sizeof pairs, "%s/pairs.tsv", tmp);
    FILE *f = fopen(lines, "w");
    assert_non_null(f);
    fputs("{\"lang\": \"fr\", \"text\": \"Bonjour le monde.\", \"text_pair\": \"Hello world.\", "
          "\"lang_pair\": \"en\"}\n{\"lang\": \"en\", \"text\": \"The cat sat.\"}\n"
          "{\"lang\": \"xx\", \"text\": \"no such language\"}\n", f);
    fclose(f);
    f = fopen(pairs, "w");
    assert_non_null(f);
    fputs("en\tthe cat sat\tfr\tle chat est assis\nfr\tbonjour\ten\thello\n", f);
    fclose(f);
    char tokenize[8000];
    snprintf(tokenize, sizeof tokenize, "'%s/xlm-tokenize' --model '%%s' --lang-rules < '%s' > '%%s'",
             XLM_BIN_DIR, lines);
    for (size_t m = 0; m < sizeof multilingual / sizeof multilingual[0]; m++)
        same_output(multilingual[m], "tokenize", tokenize, "\"langs\":[1,1,1");
    /* Scores by language: fr's language embedding differs from en's. */
    char score[8000];
    snprintf(score, sizeof score, "'%s/xlm-score' --model '%%s' --mode clm --input '%s' "
             "--output - > '%%s' 2>/dev/null", XLM_BIN_DIR, pairs);
    same_output("clm-lm", "score", score, "\"line\":2");
    snprintf(score, sizeof score, "'%s/xlm-score' --model '%%s' --mode clm --src-lang fr "
             "--tgt-lang en --input - --format tsv --output - > '%%s' 2>/dev/null "
             "<<'EOF'\nbonjour\thello\nEOF\n", XLM_BIN_DIR);
    same_output("clm-lm", "score-flags", score, "\"line\":1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(adopts_params_langs),
        cmocka_unit_test(tools_equal_on_both_folders),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
