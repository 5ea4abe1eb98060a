/* service_check.h: one stats request before a job streams, so that a broker
 * that is not there or a model that is not served fails the job once, at
 * once, instead of failing every line after the retries run out. */
#ifndef XLM_TOOLS_SERVICE_CHECK_H
#define XLM_TOOLS_SERVICE_CHECK_H

#include "xlmclient.h"

#include <stddef.h>

/* 0 when the broker at endpoint answered within timeout_ms and serves model
 * (NULL: exactly one model is served); resolved gets the served model's
 * name. -1 and a message for the user in error otherwise. */
int tools_service_check(xlm_client_t *client, const char *endpoint, const char *model,
                        int timeout_ms, char *resolved, size_t resolved_size, char *error,
                        size_t error_size);

#endif /* XLM_TOOLS_SERVICE_CHECK_H */
