/* xlm_tokenize.c: the XLM tokenizer over JSON lines.
 *
 *   xlm-tokenize --model DIR [--lang-rules] < in.jsonl > out.jsonl
 *
 * One output line per input line: the encoding, or {"error": {"code",
 * "message"}} when that line cannot be tokenised (the next lines go on).
 * Exit status: 0 when every line was read (even with error lines), 1 on a
 * usage or model error, 2 on an output error. */
#include "cli.h"
#include "errors.h"
#include "shard_checkpoint.h"
#include "shard_tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: xlm-tokenize --model DIR [--lang-rules] < in.jsonl > out.jsonl\n"
          "\n"
          "Tokenizes JSON lines with the XLM tokenizer of the checkpoint in DIR\n"
          "(vocab.json, merges.txt, tokenizer_config.json), token for token as\n"
          "HuggingFace's XLMTokenizer (transformers 4.43).\n"
          "\n"
          "input line:  {\"lang\": \"fr\", \"text\": \"...\"[, \"text_pair\": \"...\", \"lang_pair\": \"en\"]}\n"
          "             lang defaults to \"en\", lang_pair to lang\n"
          "output line: {\"tokens\": [...], [\"tokens_pair\": [...],] \"input_ids\": [...],\n"
          "              \"token_type_ids\": [...], \"special_tokens_mask\": [...], \"langs\": [...],\n"
          "              \"decoded\": \"...\", \"decoded_skip_special\": \"...\"}\n"
          "             or {\"error\": {\"code\": \"...\", \"message\": \"...\"}}\n"
          "\n"
          "options:\n"
          "  --model DIR    checkpoint folder\n"
          "  --lang-rules   apply each segment's language rules (Moses nonbreaking\n"
          "                 prefixes, apostrophes, punctuation, Romanian diacritics), as\n"
          "                 XLM's own preprocessing did; without it the English rules\n"
          "                 always apply, exactly as HuggingFace does. Chinese, Thai and\n"
          "                 Japanese text must be pre-segmented (words separated by\n"
          "                 spaces) in this mode.\n"
          "  --version      the project's and the wire protocol's versions\n"
          "  --help         this text\n",
          f);
}

/* JSON "\u0000" becomes a NUL that C strings cannot carry. A NUL and U+0001
 * are both control characters that the tokenizer deletes before anything
 * else looks at them, so the escape is rewritten to "\u0001": same tokens. */
static void rewrite_nul_escapes(char *line, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (line[i] != '\\')
            continue;
        if (line[i + 1] == 'u' && len - i >= 6 && memcmp(line + i + 2, "0000", 4) == 0)
            line[i + 5] = '1';
        i++; /* skip the escaped character */
    }
}

static cJSON *error_line(shard_status_t code, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", shard_status_str(code));
    char said[1024];
    tools_user_message(message, said, sizeof said);
    cJSON_AddStringToObject(e, "message", said);
    return root;
}

static cJSON *int_array(const int64_t *v, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[i]));
    return a;
}

static cJSON *token_array(const shard_encoding_t *enc, size_t from, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(shard_encoding_token(enc, from + i)));
    return a;
}

static const char *string_field(const cJSON *obj, const char *key, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsString(v)) {
        *bad = true;
        return NULL;
    }
    return v->valuestring;
}

static cJSON *process_line(const shard_tokenizer_t *tok, shard_tokenizer_mode_t mode, char *line,
                           size_t len)
{
    rewrite_nul_escapes(line, len);
    cJSON *in = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(in)) {
        cJSON_Delete(in);
        return error_line(SHARD_ERR_INPUT, "xlm-tokenize: the line is not a JSON object");
    }
    bool bad = false;
    const char *text = string_field(in, "text", &bad);
    const char *lang = string_field(in, "lang", &bad);
    const char *pair = string_field(in, "text_pair", &bad);
    const char *lang_pair = string_field(in, "lang_pair", &bad);
    if (bad || !text) {
        cJSON_Delete(in);
        return error_line(SHARD_ERR_INPUT,
                          "xlm-tokenize: \"text\" must be a string; \"lang\", \"text_pair\" and "
                          "\"lang_pair\" strings when given");
    }
    shard_tokenizer_segment_t a = {text, strlen(text), lang};
    shard_tokenizer_segment_t b = {pair, pair ? strlen(pair) : 0, lang_pair ? lang_pair : lang};
    shard_encoding_t enc;
    shard_encoding_init(&enc);
    shard_error_t err = {0};
    char *decoded = NULL, *skipped = NULL;
    cJSON *out = NULL;
    shard_status_t st = shard_tokenizer_encode(tok, mode, &a, pair ? &b : NULL, true, &enc, &err);
    if (!st)
        st = shard_tokenizer_decode(tok, enc.input_ids, enc.length, false, &decoded, NULL, &err);
    if (!st)
        st = shard_tokenizer_decode(tok, enc.input_ids, enc.length, true, &skipped, NULL, &err);
    if (st) {
        out = error_line(st, err.message);
    } else {
        out = cJSON_CreateObject();
        cJSON_AddItemToObject(out, "tokens", token_array(&enc, enc.offset_a, enc.length_a));
        if (enc.has_pair)
            cJSON_AddItemToObject(out, "tokens_pair",
                                  token_array(&enc, enc.offset_b, enc.length_b));
        cJSON_AddItemToObject(out, "input_ids", int_array(enc.input_ids, enc.length));
        cJSON_AddItemToObject(out, "token_type_ids", int_array(enc.token_type_ids, enc.length));
        cJSON_AddItemToObject(out, "special_tokens_mask",
                              int_array(enc.special_tokens_mask, enc.length));
        cJSON_AddItemToObject(out, "langs", int_array(enc.langs, enc.length));
        cJSON_AddStringToObject(out, "decoded", decoded);
        cJSON_AddStringToObject(out, "decoded_skip_special", skipped);
    }
    free(decoded);
    free(skipped);
    shard_encoding_clear(&enc);
    cJSON_Delete(in);
    return out;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    shard_tokenizer_mode_t mode = SHARD_TOKENIZER_MODE_HF;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            tools_print_version(stdout, "xlm-tokenize");
            return 0;
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(argv[i], "--lang-rules") == 0) {
            mode = SHARD_TOKENIZER_MODE_LANG_RULES;
        } else {
            fprintf(stderr, "xlm-tokenize: %s '%s'; see --help\n",
                    strcmp(argv[i], "--model") == 0 ? "option needs a value:" : "unknown option",
                    argv[i]);
            return 1;
        }
    }
    if (!model) {
        fputs("xlm-tokenize: --model DIR is required; see --help\n", stderr);
        return 1;
    }
    shard_error_t err = {0};
    shard_tokenizer_t *tok = shard_tokenizer_open(model, &err);
    if (!tok) {
        char said[1024];
        tools_user_message(err.message, said, sizeof said);
        fprintf(stderr, "xlm-tokenize: %s\n", said);
        return 1;
    }
    /* An original XLM folder's languages are in its checkpoint's params;
     * a folder of tokenizer files alone has no config to read (SHARD_ERR_IO). */
    static shard_config_t config;
    shard_status_t loaded = shard_tokenizer_n_langs(tok) > 0
                                ? SHARD_OK
                                : shard_checkpoint_load_config(model, &config, &err);
    if ((loaded == SHARD_OK
         && shard_tokenizer_adopt_langs(tok, config.lang_names, config.n_langs, &err) != SHARD_OK)
        || (loaded != SHARD_OK && loaded != SHARD_ERR_IO)) {
        char said[1024];
        tools_user_message(err.message, said, sizeof said);
        fprintf(stderr, "xlm-tokenize: %s\n", said);
        shard_tokenizer_destroy(&tok);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n')
            len--;
        if (len && line[len - 1] == '\r')
            len--;
        cJSON *out = process_line(tok, mode, line, len);
        char *printed = out ? cJSON_PrintUnformatted(out) : NULL;
        /* Tokens and texts echo the input's bytes: the line must be UTF-8. */
        char *s = printed ? tools_json_repair(printed) : NULL;
        cJSON_Delete(out);
        free(printed);
        if (!s || puts(s) == EOF) {
            fputs("xlm-tokenize: cannot write the output\n", stderr);
            free(s);
            rc = 2;
            break;
        }
        free(s);
    }
    free(line);
    shard_tokenizer_destroy(&tok);
    if (fflush(stdout) != 0)
        rc = 2;
    return rc;
}
