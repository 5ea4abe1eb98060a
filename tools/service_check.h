/* service_check.h: one stats request before a job streams, so that a broker
 * that is not there, a model that is not served or a task the model does
 * not serve fails the job once, at once, instead of failing every line
 * after the retries run out. xlm-client infer and xlm-score say it the same
 * way, and exit with status 2 (could not run). */
#ifndef XLM_TOOLS_SERVICE_CHECK_H
#define XLM_TOOLS_SERVICE_CHECK_H

#include "xlmclient.h"

#include <stdbool.h>
#include <stddef.h>

enum { TOOLS_SERVED_NAME_MAX = 256 };

/* The model a job will use, as the broker reports it. */
typedef struct {
    char name[TOOLS_SERVED_NAME_MAX];
    bool tasks_known;       /* false for a broker that does not report them */
    bool tasks[XLM_TASK_COUNT_];
    char task_list[256];    /* "base, lm, clm_score, generate" */
} tools_served_t;

/* 0 when the broker at endpoint answered within timeout_ms and serves model
 * (NULL: the one it would choose); served describes it. -1 and a message
 * for the user in error otherwise. */
int tools_service_check(xlm_client_t *client, const char *endpoint, const char *model,
                        int timeout_ms, tools_served_t *served, char *error, size_t error_size);

/* 0 when the served model runs task (or the broker does not say which it
 * runs); -1 and "task T is not served by model 'M' (it serves ...)" in
 * error otherwise. */
int tools_service_check_task(const tools_served_t *served, xlm_task_t task, char *error,
                             size_t error_size);

#endif /* XLM_TOOLS_SERVICE_CHECK_H */
