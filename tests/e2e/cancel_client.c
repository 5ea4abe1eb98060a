/* cancel_client.c: the client half of tests/e2e/cancel.sh. Submits N
 * scoring requests, waits until the broker has sent some of them to a
 * pipeline (its stats' in_flight), then cancels all N and collects them.
 * Prints "in_flight K" and "cancelled C"; status 0 when every request
 * finished CANCELLED.
 * Usage: e2e-cancel-client ENDPOINT N */
#include "xlmclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REQUESTS = 256, ROW = 12 };

/* The model's in_flight in a stats object: its first "in_flight" (a
 * model's own fields come before its pipelines'). -1 when absent. */
static long first_in_flight(const char *json)
{
    const char *at = strstr(json, "\"in_flight\":");
    return at ? strtol(at + strlen("\"in_flight\":"), NULL, 10) : -1;
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 3 || atoi(argv[2]) < 1 || atoi(argv[2]) > MAX_REQUESTS) {
        fprintf(stderr, "usage: e2e-cancel-client ENDPOINT N (1..%d)\n", MAX_REQUESTS);
        return 2;
    }
    const int n = atoi(argv[2]);
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = argv[1];
    config.window = (size_t)n + 1;
    /* One send each: a retry would dispatch the request again. */
    config.attempt_timeout_ms = 60000;
    config.max_attempts = 1;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client) {
        fprintf(stderr, "e2e-cancel-client: %s\n", err.message);
        return 1;
    }
    static char ids[MAX_REQUESTS][XLM_ID_SIZE];
    int64_t input[ROW], length = ROW;
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < ROW; t++)
            input[t] = 5 + (i * 7 + t * 3) % 50;
        xlm_tokens_t tokens = {.rows = 1, .lengths = &length, .input_ids = input};
        xlm_request_t request;
        xlm_request_init(&request);
        request.task = XLM_TASK_CLM_SCORE;
        request.tokens = &tokens;
        if (xlm_client_submit(client, &request, ids[i]) != XLM_OK) {
            fprintf(stderr, "e2e-cancel-client: submit: %s\n", xlm_client_error(client));
            return 1;
        }
    }
    long in_flight = 0;
    for (int tries = 0; tries < 100 && in_flight < 1; tries++) {
        char *json = NULL;
        if (xlm_client_stats_json(client, 2000, &json) == XLM_OK)
            in_flight = first_in_flight(json);
        free(json);
        if (in_flight < 1)
            pause_ms(20);
    }
    printf("in_flight %ld\n", in_flight);
    for (int i = 0; i < n; i++)
        if (xlm_client_cancel(client, ids[i]) != XLM_OK)
            fprintf(stderr, "e2e-cancel-client: cancel %s: %s\n", ids[i], xlm_client_error(client));
    int cancelled = 0;
    for (int i = 0; i < n; i++) {
        xlm_result_t *result = NULL;
        if (xlm_client_collect(client, NULL, 5000, &result) != XLM_OK)
            break;
        cancelled += xlm_result_code(result) == XLM_CODE_CANCELLED;
        xlm_result_destroy(&result);
    }
    printf("cancelled %d\n", cancelled);
    /* The cancels must reach the broker before the socket closes. */
    char *json = NULL;
    xlm_client_stats_json(client, 2000, &json);
    free(json);
    xlm_client_destroy(&client);
    return cancelled == n && in_flight >= 1 ? 0 : 1;
}
