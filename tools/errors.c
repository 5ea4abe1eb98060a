/* errors.c: the tools' error vocabulary, user messages and UTF-8 repair. */
#include "errors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xlm.proto's Status names, in its order; tests/tools/test_errors.c checks
 * them against the client library's xlm_code_str. */
static const char *const codes[] = {
    "ok", "bad_request", "unknown_model", "unknown_task", "overloaded", "deadline_exceeded",
    "cancelled", "internal", "unavailable", "too_large", "malformed", "bad_version", "not_found",
    "permission_denied",
};

/* The engine's statuses as the service reports them: what the worker
 * answers for the same failure (worker_status_of; the test checks that
 * the two agree for every status). A line's own fault is bad_request, a
 * head the checkpoint lacks unknown_task; whatever else fails in the
 * engine is the service's (internal), not the line's. */
static const struct {
    shard_status_t status;
    const char *code;
} engine_codes[] = {
    {SHARD_OK, "ok"},
    {SHARD_ERR_INPUT, "bad_request"},
    {SHARD_ERR_UTF8, "bad_request"},
    {SHARD_ERR_LANG, "bad_request"},
    {SHARD_ERR_HEAD, "unknown_task"},
    {SHARD_ERR_IO, "internal"},
    {SHARD_ERR_FORMAT, "internal"},
    {SHARD_ERR_CONFIG, "internal"},
    {SHARD_ERR_UNSUPPORTED, "internal"},
    {SHARD_ERR_NOMEM, "internal"},
    {SHARD_ERR_RANGE, "internal"},
};

const char *tools_code_of(shard_status_t status)
{
    for (size_t i = 0; i < sizeof engine_codes / sizeof *engine_codes; i++)
        if (engine_codes[i].status == status)
            return engine_codes[i].code;
    return "internal";
}

bool tools_code_known(const char *code)
{
    for (size_t i = 0; code && i < sizeof codes / sizeof *codes; i++)
        if (strcmp(code, codes[i]) == 0)
            return true;
    return false;
}

const char *const *tools_codes(size_t *n_out)
{
    *n_out = sizeof codes / sizeof *codes;
    return codes;
}

/* ------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 sequence at p (left bytes remain), 0 when the
 * bytes there are not one (RFC 3629's table). */
static size_t sequence_length(const unsigned char *p, size_t left)
{
    const unsigned char b = p[0];
    if (b < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (b >= 0xC2 && b <= 0xDF)
        n = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        n = 3;
        if (b == 0xE0)
            lo = 0xA0; /* no overlong forms */
        if (b == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else
        return 0;
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

size_t tools_utf8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t at = 0;
    while (at < n) {
        size_t len = sequence_length(p + at, n - at);
        if (!len)
            return at;
        at += len;
    }
    return n;
}

static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

char *tools_utf8_repair(const char *s, size_t n)
{
    /* Each byte becomes at most the 3 bytes of U+FFFD. */
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t used = 0;
    for (size_t at = 0; at < n;) {
        size_t len = sequence_length(p + at, n - at);
        if (len) {
            memcpy(out + used, s + at, len);
            used += len;
            at += len;
        } else {
            memcpy(out + used, replacement, 3);
            used += 3;
            at++;
        }
    }
    out[used] = '\0';
    return out;
}

char *tools_json_quote(const char *s)
{
    char *valid = tools_utf8_repair(s ? s : "", s ? strlen(s) : 0);
    if (!valid)
        return NULL;
    const size_t n = strlen(valid);
    /* At most 6 bytes (\u00XX) per byte, the quotes and the NUL. */
    char *out = n <= (SIZE_MAX - 3) / 6 ? malloc(6 * n + 3) : NULL;
    if (!out) {
        free(valid);
        return NULL;
    }
    size_t used = 0;
    out[used++] = '"';
    for (const unsigned char *p = (const unsigned char *)valid; *p; p++) {
        const char *escape = *p == '"' ? "\\\"" : *p == '\\' ? "\\\\" : *p == '\n' ? "\\n"
                           : *p == '\r' ? "\\r" : *p == '\t' ? "\\t" : NULL;
        if (escape) {
            memcpy(out + used, escape, 2);
            used += 2;
        } else if (*p < 0x20 || *p == 0x7F) {
            used += (size_t)snprintf(out + used, 7, "\\u%04x", *p);
        } else {
            out[used++] = (char)*p;
        }
    }
    out[used++] = '"';
    out[used] = '\0';
    free(valid);
    return out;
}

char *tools_json_repair(const char *json)
{
    return tools_utf8_repair(json, strlen(json));
}

/* ------------------------------------------------------------ user messages */

/* Prefixes of the project's function names (STYLE.md's module prefixes,
 * and the tools' own). */
static const char *const internal_prefixes[] = {"shard_", "proto_", "worker_", "broker_",
                                                "xlm_client_", "client_", "tools_", "score_",
                                                "case_"};

/* Length of "NAME: " at s when NAME is an internal function name, or a code
 * of the vocabulary echoed in front of a message (the code is said
 * beside the message already); 0 otherwise. */
static size_t internal_label(const char *s)
{
    size_t n = 0;
    while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_')
        n++;
    if (n == 0 || s[n] != ':' || s[n + 1] != ' ')
        return 0;
    for (size_t i = 0; i < sizeof internal_prefixes / sizeof *internal_prefixes; i++) {
        const size_t len = strlen(internal_prefixes[i]);
        if (n > len && strncmp(s, internal_prefixes[i], len) == 0)
            return n + 2;
    }
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (strlen(codes[i]) == n && strncmp(s, codes[i], n) == 0)
            return n + 2;
    return 0;
}

void tools_user_message(const char *raw, char *out, size_t size)
{
    if (!size)
        return;
    char *valid = tools_utf8_repair(raw ? raw : "", raw ? strlen(raw) : 0);
    size_t used = 0;
    const char *p = valid ? valid : "out of memory";
    bool part_start = true; /* at the start, or after ": " / "(" */
    while (*p && used + 1 < size) {
        size_t skip = part_start ? internal_label(p) : 0;
        if (skip) {
            p += skip;
            continue;
        }
        part_start = (p[0] == ':' && p[1] == ' ') || p[0] == '(';
        out[used++] = *p++;
        if (part_start && p[-1] == ':' && used + 1 < size)
            out[used++] = *p++; /* the space; the next part starts after it */
    }
    /* Truncation may cut a character in two: keep only whole ones. */
    out[tools_utf8_valid_prefix(out, used)] = '\0';
    free(valid);
}
