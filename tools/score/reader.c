/* reader.c: pairs from TSV (4 or 2 columns) or JSON lines, with line numbers. */
#include "score.h"
#include "errors.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct score_reader {
    FILE *file;
    bool owns_file;
    score_format_t format;
    char src_lang[SCORE_LANG_MAX], tgt_lang[SCORE_LANG_MAX];
    char *line;
    size_t capacity;
    int64_t number;
};

void score_pair_clear(score_pair_t *pair)
{
    free(pair->src);
    free(pair->tgt);
    memset(pair, 0, sizeof *pair);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

score_reader_t *score_reader_open(const char *path, score_format_t format, const char *src_lang,
                                  const char *tgt_lang, char *error, size_t error_size)
{
    score_reader_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    if ((src_lang && strlen(src_lang) >= SCORE_LANG_MAX) || (tgt_lang && strlen(tgt_lang) >= SCORE_LANG_MAX)) {
        snprintf(error, error_size, "language codes are at most %d bytes", SCORE_LANG_MAX - 1);
        free(r);
        return NULL;
    }
    snprintf(r->src_lang, sizeof r->src_lang, "%s", src_lang ? src_lang : "");
    snprintf(r->tgt_lang, sizeof r->tgt_lang, "%s", tgt_lang ? tgt_lang : "");
    r->format = format;
    if (format == SCORE_FORMAT_AUTO && (ends_with(path, ".jsonl") || ends_with(path, ".json")))
        r->format = SCORE_FORMAT_JSONL;
    if (strcmp(path, "-") == 0) {
        r->file = stdin;
    } else {
        r->file = fopen(path, "r");
        r->owns_file = true;
        if (!r->file) {
            snprintf(error, error_size, "cannot open %s: %m", path);
            free(r);
            return NULL;
        }
    }
    return r;
}

void score_reader_destroy(score_reader_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    score_reader_t *r = *self_p;
    if (r->owns_file)
        fclose(r->file);
    free(r->line);
    free(r);
    *self_p = NULL;
}

static void pair_error(score_pair_t *pair, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    /* A line that is not a pair is the request's fault, as the service
     * would say of it (errors.h's vocabulary). */
    snprintf(pair->error_code, sizeof pair->error_code, "bad_request");
    vsnprintf(pair->error_message, sizeof pair->error_message, fmt, args);
    va_end(args);
}

static bool set_lang(score_pair_t *pair, char *dst, const char *value, const char *fallback,
                     const char *which)
{
    const char *lang = value && *value ? value : fallback;
    if (!lang || !*lang) {
        pair_error(pair, "no %s language: give it in the line or with --%s-lang", which, which);
        return false;
    }
    if (strlen(lang) >= SCORE_LANG_MAX) {
        pair_error(pair, "%s language \"%.20s\" is longer than %d bytes", which, lang,
                   SCORE_LANG_MAX - 1);
        return false;
    }
    snprintf(dst, SCORE_LANG_MAX, "%s", lang);
    return true;
}

static void parse_tsv(score_reader_t *r, char *line, score_pair_t *pair)
{
    char *fields[5] = {0};
    int n = 0;
    for (char *at = line; n < 5;) {
        fields[n++] = at;
        char *tab = strchr(at, '\t');
        if (!tab)
            break;
        *tab = '\0';
        at = tab + 1;
    }
    const char *src_lang, *src, *tgt_lang, *tgt;
    if (n == 4) {
        src_lang = fields[0], src = fields[1], tgt_lang = fields[2], tgt = fields[3];
    } else if (n == 2) {
        src_lang = NULL, src = fields[0], tgt_lang = NULL, tgt = fields[1];
    } else {
        pair_error(pair, "expected 4 tab-separated columns (src_lang, src, tgt_lang, tgt) or 2 "
                         "(src, tgt) with --src-lang/--tgt-lang, got %d", n == 5 ? 5 : n);
        return;
    }
    if (!set_lang(pair, pair->src_lang, src_lang, r->src_lang, "src") ||
        !set_lang(pair, pair->tgt_lang, tgt_lang, r->tgt_lang, "tgt"))
        return;
    pair->src = strdup(src);
    pair->tgt = strdup(tgt);
    if (!pair->src || !pair->tgt)
        pair_error(pair, "out of memory");
}

static void parse_jsonl(score_reader_t *r, const char *line, size_t len, score_pair_t *pair)
{
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(o)) {
        pair_error(pair, "not a JSON object");
        cJSON_Delete(o);
        return;
    }
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "src");
    const cJSON *tgt = cJSON_GetObjectItemCaseSensitive(o, "tgt");
    const cJSON *src_lang = cJSON_GetObjectItemCaseSensitive(o, "src_lang");
    const cJSON *tgt_lang = cJSON_GetObjectItemCaseSensitive(o, "tgt_lang");
    if (!cJSON_IsString(src) || !cJSON_IsString(tgt)) {
        pair_error(pair, "expected string fields \"src\" and \"tgt\"");
    } else if ((src_lang && !cJSON_IsString(src_lang)) || (tgt_lang && !cJSON_IsString(tgt_lang))) {
        pair_error(pair, "\"src_lang\" and \"tgt_lang\" must be strings");
    } else if (set_lang(pair, pair->src_lang, src_lang ? src_lang->valuestring : NULL, r->src_lang, "src") &&
               set_lang(pair, pair->tgt_lang, tgt_lang ? tgt_lang->valuestring : NULL, r->tgt_lang, "tgt")) {
        pair->src = strdup(src->valuestring);
        pair->tgt = strdup(tgt->valuestring);
        if (!pair->src || !pair->tgt)
            pair_error(pair, "out of memory");
    }
    cJSON_Delete(o);
}

int score_reader_next(score_reader_t *r, score_pair_t *pair)
{
    memset(pair, 0, sizeof *pair);
    ssize_t len = getline(&r->line, &r->capacity, r->file);
    if (len < 0)
        return ferror(r->file) ? -1 : 0;
    pair->line = ++r->number;
    while (len > 0 && (r->line[len - 1] == '\n' || r->line[len - 1] == '\r'))
        r->line[--len] = '\0';
    if ((size_t)len != strlen(r->line)) {
        pair_error(pair, "the line contains a NUL byte");
        return 1;
    }
    const size_t valid = tools_utf8_valid_prefix(r->line, (size_t)len);
    if (valid != (size_t)len) {
        pair_error(pair, "the line is not valid UTF-8 (byte 0x%02X at byte %zu): texts and "
                   "languages must be UTF-8", (unsigned char)r->line[valid], valid + 1);
        return 1;
    }
    if (r->format == SCORE_FORMAT_AUTO) /* decided by the first line */
        r->format = r->line[0] == '{' ? SCORE_FORMAT_JSONL : SCORE_FORMAT_TSV;
    if (len == 0)
        pair_error(pair, "empty line");
    else if (r->format == SCORE_FORMAT_JSONL)
        parse_jsonl(r, r->line, (size_t)len, pair);
    else
        parse_tsv(r, r->line, pair);
    if (pair->error_code[0]) {
        free(pair->src);
        free(pair->tgt);
        pair->src = pair->tgt = NULL;
    }
    return 1;
}
