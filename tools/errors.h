/* errors.h: what every tool tells its user about a line or a job that
 * failed, said one way.
 *
 * - One vocabulary of error codes: the service's status names (xlm.proto's
 *   Status: bad_request, too_large, unknown_task, ...). A line gets the same
 *   code from xlm-infer, xlm-client infer and xlm-score, in process or
 *   through the service; the engine's statuses map onto it in one table.
 * - Messages for users: the libraries' messages name the function that
 *   failed (for their logs and for developers); what a user reads says what
 *   was wrong without those names.
 * - Text that is valid UTF-8 whatever came in: JSON must be, and the C
 *   libraries pass invalid bytes of names and texts through.
 */
#ifndef XLM_TOOLS_ERRORS_H
#define XLM_TOOLS_ERRORS_H

#include "shard_common.h"

#include <stdbool.h>
#include <stddef.h>

/* The code of a line the engine refused with status (never NULL). */
const char *tools_code_of(shard_status_t status);

/* True when code is one of the vocabulary's names. */
bool tools_code_known(const char *code);

/* The vocabulary, in xlm.proto's Status order ("ok" first); n_out gets
 * the count. */
const char *const *tools_codes(size_t *n_out);

/* Bytes of s[0, n) that form valid UTF-8 from the start (n when all do),
 * as a strict decoder reads it: no overlong forms, no surrogates, nothing
 * above U+10FFFF. */
size_t tools_utf8_valid_prefix(const char *s, size_t n);

/* s with every byte that is not part of a valid UTF-8 sequence replaced by
 * U+FFFD (malloc'd, NUL-terminated; NULL when out of memory). */
char *tools_utf8_repair(const char *s, size_t n);

/* A JSON string literal of s, quotes included (malloc'd; NULL when out of
 * memory): control characters escaped, invalid UTF-8 replaced by U+FFFD,
 * so that the result is valid JSON and valid UTF-8 whatever s holds. */
char *tools_json_quote(const char *s);

/* A printed JSON text (cJSON's printer passes a string's bytes through)
 * made valid UTF-8: a malloc'd copy, NULL when out of memory. Only bytes
 * inside strings can be invalid, so the copy is still the same JSON. */
char *tools_json_repair(const char *json);

/* raw as a user reads it, into out: internal function names in front of a
 * message part ("shard_model_forward: ", "xlm_client_submit: bad_request: ")
 * dropped, invalid UTF-8 replaced, truncated to size. */
void tools_user_message(const char *raw, char *out, size_t size);

#endif /* XLM_TOOLS_ERRORS_H */
