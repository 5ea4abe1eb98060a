/* shard_common.h: what the three shard libraries (tokenizer, checkpoint,
 * engine) share: status codes, the error struct, and file reading with every
 * size checked.
 *
 * Owns no model knowledge: no config, no tensors, no text rules. It may not
 * include any other shard header.
 *
 * Errors: functions return SHARD_OK (0) or a negative shard_status_t and fill
 * the caller's shard_error_t with a message naming the function, the bad value
 * and what was expected. Constructors return NULL and fill the error.
 */
#ifndef XLM_SHARD_COMMON_H
#define XLM_SHARD_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */

typedef enum {
    SHARD_OK = 0,
    SHARD_ERR_IO = -1,          /* a file could not be opened, read or mapped */
    SHARD_ERR_FORMAT = -2,      /* a checkpoint file is malformed */
    SHARD_ERR_CONFIG = -3,      /* config.json is malformed or inconsistent */
    SHARD_ERR_UNSUPPORTED = -4, /* valid, but not something this engine runs */
    SHARD_ERR_INPUT = -5,       /* a request's inputs are invalid */
    SHARD_ERR_NOMEM = -6,       /* an allocation failed or a size overflowed */
    SHARD_ERR_HEAD = -7,        /* the head is unknown or not in this checkpoint */
    SHARD_ERR_UTF8 = -8,        /* text is not valid UTF-8 */
    SHARD_ERR_LANG = -9,        /* a language code the checkpoint does not have */
    SHARD_ERR_RANGE = -10,      /* a layer range or stage mismatch */
    SHARD_STATUS_COUNT_ = 11
} shard_status_t;

enum { SHARD_ERROR_MESSAGE_MAX = 512 };

typedef struct {
    shard_status_t code;
    char message[SHARD_ERROR_MESSAGE_MAX];
} shard_error_t;

/* A short stable identifier ("bad_input", "bad_checkpoint", ...) used as the
 * error code on the wire and in JSON output. */
const char *shard_status_str(shard_status_t status);

/* Sets err (may be NULL) and returns code. printf-style message. */
shard_status_t shard_error_set(shard_error_t *err, shard_status_t code,
                               const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Languages of one checkpoint, as both its config and its tokenizer files
 * list them: at most this many, codes shorter than SHARD_LANG_NAME_MAX. */
enum { SHARD_MAX_LANGS = 256, SHARD_LANG_NAME_MAX = 16 };

/* Reads a whole file (at most max_bytes) into a NUL-terminated buffer. */
shard_status_t shard_read_file(const char *path, size_t max_bytes, char **text_out,
                               size_t *size_out, shard_error_t *err);

/* Joins dir and name into out (size bytes); fails when it does not fit. */
shard_status_t shard_path_join(char *out, size_t size, const char *dir, const char *name,
                               shard_error_t *err);

/* a * b, failing on overflow of size_t. */
static inline bool shard_mul_overflows(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

#ifdef __cplusplus
}
#endif

#endif /* XLM_SHARD_COMMON_H */
