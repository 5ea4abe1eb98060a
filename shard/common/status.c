/* status.c: status codes and error messages. */
#include "shard_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *shard_status_str(shard_status_t status)
{
    switch (status) {
    case SHARD_OK: return "ok";
    case SHARD_ERR_IO: return "io_error";
    case SHARD_ERR_FORMAT: return "bad_checkpoint";
    case SHARD_ERR_CONFIG: return "bad_config";
    case SHARD_ERR_UNSUPPORTED: return "unsupported";
    case SHARD_ERR_INPUT: return "bad_input";
    case SHARD_ERR_NOMEM: return "out_of_memory";
    case SHARD_ERR_HEAD: return "bad_head";
    case SHARD_ERR_UTF8: return "invalid_utf8";
    case SHARD_ERR_LANG: return "unknown_language";
    case SHARD_ERR_RANGE: return "bad_range";
    case SHARD_STATUS_COUNT_: break;
    }
    return "unknown_error";
}

shard_status_t shard_error_set(shard_error_t *err, shard_status_t code,
                               const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
    }
    return code;
}
