/* output.c: result lines in input order, resumable after a kill.
 *
 * A run killed at any moment leaves complete lines plus at most one partial
 * line at the end. Restarted with the same arguments, the partial line is
 * cut off and scoring continues after the last complete line: the final file
 * holds every input line once, in order. */
#include "score.h"
#include "errors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct score_output {
    FILE *file;
    bool owns_file;
    int64_t written;
    char *line; /* reused buffer */
    size_t capacity;
};

void score_result_clear(score_result_t *result)
{
    if (result->tokens)
        for (int64_t i = 0; i < result->n_target_tokens; i++)
            free(result->tokens[i]);
    free(result->tokens);
    free(result->token_scores);
    memset(result, 0, sizeof *result);
}

void score_result_error(score_result_t *result, int64_t line, const char *code, const char *fmt, ...)
{
    score_result_clear(result);
    result->line = line;
    result->ok = false;
    snprintf(result->code, sizeof result->code, "%s", code);
    va_list args;
    va_start(args, fmt);
    vsnprintf(result->message, sizeof result->message, fmt, args);
    va_end(args);
}

/* Scans an existing output: complete lines, and where the last one ends. */
static int scan_existing(FILE *file, int64_t *lines, off_t *keep, char *error, size_t error_size)
{
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;
    off_t offset = 0;
    *lines = 0;
    *keep = 0;
    while ((len = getline(&line, &capacity, file)) > 0) {
        if (line[len - 1] != '\n')
            break; /* a partial last line: cut off below */
        offset += len;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *number = cJSON_GetObjectItemCaseSensitive(o, "line");
        bool in_order = cJSON_IsNumber(number) && (int64_t)number->valuedouble == *lines + 1;
        cJSON_Delete(o);
        if (!in_order) {
            snprintf(error, error_size, "line %lld of the existing output is not the result of "
                     "input line %lld: not an output of this job? (remove it to start over)",
                     (long long)*lines + 1, (long long)*lines + 1);
            free(line);
            return -1;
        }
        (*lines)++;
        *keep = offset;
    }
    free(line);
    return 0;
}

score_output_t *score_output_open(const char *path, int64_t *done, char *error, size_t error_size)
{
    score_output_t *out = calloc(1, sizeof *out);
    *done = 0;
    if (!out) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    if (strcmp(path, "-") == 0) {
        out->file = stdout;
        return out;
    }
    out->owns_file = true;
    out->file = fopen(path, "a+");
    if (!out->file) {
        snprintf(error, error_size, "cannot open %s: %s", path, strerror(errno));
        free(out);
        return NULL;
    }
    off_t keep = 0;
    rewind(out->file);
    if (scan_existing(out->file, done, &keep, error, error_size) != 0)
        goto fail;
    if (ftruncate(fileno(out->file), keep) != 0) {
        snprintf(error, error_size, "cannot cut the partial last line of %s: %s", path, strerror(errno));
        goto fail;
    }
    fseeko(out->file, 0, SEEK_END);
    out->written = *done;
    return out;
fail:
    fclose(out->file);
    free(out);
    return NULL;
}

static void append(score_output_t *out, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void append(score_output_t *out, size_t *used, const char *fmt, ...)
{
    for (;;) {
        va_list args;
        va_start(args, fmt);
        int n = vsnprintf(out->line ? out->line + *used : NULL, out->line ? out->capacity - *used : 0,
                          fmt, args);
        va_end(args);
        if (n < 0)
            return;
        if (out->line && *used + (size_t)n < out->capacity) {
            *used += (size_t)n;
            return;
        }
        size_t capacity = out->capacity ? out->capacity * 2 : 1024;
        while (capacity < *used + (size_t)n + 1)
            capacity *= 2;
        char *grown = realloc(out->line, capacity);
        if (!grown)
            return;
        out->line = grown;
        out->capacity = capacity;
    }
}

/* A JSON string literal, valid UTF-8 whatever s holds. */
static void append_string(score_output_t *out, size_t *used, const char *s)
{
    char *quoted = tools_json_quote(s);
    append(out, used, "%s", quoted ? quoted : "\"\"");
    free(quoted);
}

static void append_number(score_output_t *out, size_t *used, double value)
{
    if (isfinite(value))
        append(out, used, "%.17g", value);
    else
        append(out, used, "null");
}

int score_output_write(score_output_t *out, const score_result_t *r, bool token_scores)
{
    size_t used = 0;
    append(out, &used, "{\"line\":%lld", (long long)r->line);
    if (r->ok) {
        append(out, &used, ",\"score\":");
        append_number(out, &used, r->score);
        append(out, &used, ",\"n_target_tokens\":%lld,\"mean\":", (long long)r->n_target_tokens);
        append_number(out, &used, r->n_target_tokens ? r->score / (double)r->n_target_tokens : NAN);
        if (token_scores && r->token_scores) {
            append(out, &used, ",\"token_scores\":[");
            for (int64_t i = 0; i < r->n_target_tokens; i++)
                append(out, &used, i ? ",%.9g" : "%.9g", (double)r->token_scores[i]);
            append(out, &used, "]");
        }
        if (token_scores && r->tokens) {
            append(out, &used, ",\"tokens\":[");
            for (int64_t i = 0; i < r->n_target_tokens; i++) {
                if (i)
                    append(out, &used, ",");
                append_string(out, &used, r->tokens[i]);
            }
            append(out, &used, "]");
        }
    } else {
        append(out, &used, ",\"error\":{\"code\":");
        append_string(out, &used, r->code);
        char said[SCORE_MESSAGE_MAX];
        tools_user_message(r->message, said, sizeof said);
        append(out, &used, ",\"message\":");
        append_string(out, &used, said);
        append(out, &used, "}");
    }
    append(out, &used, "}\n");
    if (!out->line || fwrite(out->line, 1, used, out->file) != used)
        return -1;
    out->written++;
    return 0;
}

int score_output_write_raw(score_output_t *out, const char *line, size_t length)
{
    if (fwrite(line, 1, length, out->file) != length)
        return -1;
    out->written++;
    return 0;
}

int score_output_flush(score_output_t *out) { return fflush(out->file) == 0 ? 0 : -1; }

int score_output_close(score_output_t **self_p)
{
    if (!self_p || !*self_p)
        return 0;
    score_output_t *out = *self_p;
    int rc = fflush(out->file) == 0 ? 0 : -1;
    if (out->owns_file) {
        if (fsync(fileno(out->file)) != 0 && errno != EINVAL)
            rc = -1;
        if (fclose(out->file) != 0)
            rc = -1;
    }
    free(out->line);
    free(out);
    *self_p = NULL;
    return rc;
}
