/* log.c: the worker's one place for messages (stderr, with rank and time). */
#include "worker_internal.h"

#include <stdarg.h>
#include <time.h>

static int log_rank = -1;
static worker_log_level_t log_level = WORKER_LOG_INFO;

void worker_log_init(int world_rank, worker_log_level_t level)
{
    log_rank = world_rank;
    log_level = level;
}

void worker_log(worker_log_level_t level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
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
    fprintf(stderr, "%02d:%02d:%02d.%03ld xlm-worker[%d] %s: %s\n", tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, log_rank, names[level], line);
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
