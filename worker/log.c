/* log.c: the worker's one place for messages (stderr, with rank and time),
 * its error struct and the MPI check. No state of its own: the logger
 * context is the caller's. */
#include "worker_internal.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

static const char *const level_names[WORKER_LOG_COUNT_] = {
    [WORKER_LOG_ERROR] = "error", [WORKER_LOG_WARN] = "warn",
    [WORKER_LOG_INFO] = "info", [WORKER_LOG_DEBUG] = "debug"};

static const char *const status_names[WORKER_STATUS_COUNT_] = {
    [-WORKER_OK] = "ok",
    [-WORKER_ERR_MPI] = "mpi_error",
    [-WORKER_ERR_ZMQ] = "zmq_error",
    [-WORKER_ERR_NOMEM] = "out_of_memory",
    [-WORKER_ERR_PACKET] = "bad_packet",
    [-WORKER_ERR_ENGINE] = "engine_error",
    [-WORKER_ERR_CONFIG] = "bad_config",
    [-WORKER_ERR_WIRE] = "wire_error",
    [-WORKER_ERR_REFUSED] = "refused",
    [-WORKER_ERR_STALLED] = "stalled",
    [-WORKER_ERR_AUTH] = "auth_refused",
};

worker_log_level_t worker_log_level_from_name(const char *name)
{
    for (int l = 0; name && l < WORKER_LOG_COUNT_; l++)
        if (strcmp(name, level_names[l]) == 0)
            return (worker_log_level_t)l;
    return WORKER_LOG_COUNT_;
}

const char *worker_status_str(worker_status_t status)
{
    if (status > WORKER_OK || status <= -WORKER_STATUS_COUNT_)
        return "unknown";
    return status_names[-status];
}

worker_status_t worker_error_set(worker_error_t *err, worker_status_t code, const char *fmt, ...)
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

void worker_log(const worker_log_t *log, worker_log_level_t level, const char *fmt, ...)
{
    if (log && level > log->level)
        return;
    char line[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    size_t n = strftime(when, sizeof when - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
    /* The broker's layout: time, program, [level], then the rank. */
    fprintf(stderr, "%s xlm-worker [%s] rank %d: %s\n", when, level_names[level],
            log ? log->rank : -1, line);
}

uint64_t worker_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

worker_status_t worker_mpi_check(int rc, const char *call, const char *function,
                                 worker_error_t *err)
{
    if (rc == MPI_SUCCESS)
        return WORKER_OK;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    return worker_error_set(err, WORKER_ERR_MPI, "%s: %s failed: %s, expected MPI_SUCCESS",
                            function, call, text);
}
