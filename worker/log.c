/* log.c: the worker's one place for messages (stderr, with rank and time). */
#include "worker_internal.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

/* Set once by worker_log_init from what worker_run was given. */
static int log_rank = -1;
static worker_log_level_t log_level = WORKER_LOG_INFO;

static const char *const level_names[WORKER_LOG_COUNT_] = {
    [WORKER_LOG_ERROR] = "error", [WORKER_LOG_WARN] = "warn",
    [WORKER_LOG_INFO] = "info", [WORKER_LOG_DEBUG] = "debug"};

worker_log_level_t worker_log_level_from_name(const char *name)
{
    for (int l = 0; name && l < WORKER_LOG_COUNT_; l++)
        if (strcmp(name, level_names[l]) == 0)
            return (worker_log_level_t)l;
    return WORKER_LOG_COUNT_;
}

void worker_log_init(int world_rank, worker_log_level_t level)
{
    log_rank = world_rank;
    log_level = level;
}

void worker_log(worker_log_level_t level, const char *fmt, ...)
{
    if (level > log_level)
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
    fprintf(stderr, "%s xlm-worker [%s] rank %d: %s\n", when, level_names[level], log_rank, line);
}

uint64_t worker_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int worker_mpi_check(int rc, const char *what, const char *file, int line)
{
    if (rc == MPI_SUCCESS)
        return 0;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    worker_log(WORKER_LOG_ERROR, "%s failed at %s:%d: %s", what, file, line, text);
    return -1;
}
