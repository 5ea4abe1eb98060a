/* log.c: the broker's one place to log: stderr, one line per event, with
 * time and level; lines under the configured level are skipped. */
#include "broker_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const level_names[BROKER_LOG_COUNT_] = {
    [BROKER_LOG_DEBUG] = "debug",
    [BROKER_LOG_INFO] = "info",
    [BROKER_LOG_WARN] = "warn",
    [BROKER_LOG_ERROR] = "error",
};

broker_log_level_t broker_log_level_from_name(const char *name)
{
    for (int l = 0; name && l < BROKER_LOG_COUNT_; l++)
        if (strcmp(name, level_names[l]) == 0)
            return (broker_log_level_t)l;
    return BROKER_LOG_COUNT_;
}

const char *broker_status_str(broker_status_t status)
{
    switch (status) {
    case BROKER_OK: return "ok";
    case BROKER_ERR_ARG: return "bad_argument";
    case BROKER_ERR_ZMQ: return "zmq_error";
    case BROKER_ERR_NOMEM: return "out_of_memory";
    case BROKER_STATUS_COUNT_: break;
    }
    return "unknown_error";
}

int64_t broker_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void broker_iso_time(char out[BROKER_TIME_MAX])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, BROKER_TIME_MAX - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, BROKER_TIME_MAX - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
}

void broker_log(const broker_t *b, broker_log_level_t level, const char *fmt, ...)
{
    if (b && level < b->config.log_level)
        return;
    char line[1024], now[BROKER_TIME_MAX];
    broker_iso_time(now);
    int n = snprintf(line, sizeof line, "%s xlm-broker [%s] ", now, level_names[level]);
    va_list args;
    va_start(args, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, args);
    va_end(args);
    fprintf(stderr, "%s\n", line);
}
