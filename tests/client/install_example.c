/* install_example.c: built against the installed libxlmclient through
 * pkg-config by install_check.sh. Without a broker it can still make a
 * client, refuse a bad request, and time out a call. */
#include <xlmclient.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    xlm_client_config_t config;
    xlm_client_config_defaults(&config);
    config.endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:1";
    config.attempt_timeout_ms = 50;
    config.max_attempts = 2;
    xlm_error_t err;
    xlm_client_t *client = xlm_client_new(&config, &err);
    if (!client) {
        fprintf(stderr, "install_example: %s\n", err.message);
        return 1;
    }
    const int64_t ids[3] = {0, 5, 1}, lengths[1] = {3};
    const xlm_tokens_t tokens = {.rows = 1, .lengths = lengths, .input_ids = ids};
    xlm_request_t request;
    xlm_request_init(&request);
    request.task = XLM_TASK_SEQ_CLS;
    request.tokens = &tokens;
    xlm_result_t *result = NULL;
    xlm_status_t status = xlm_client_call(client, &request, 2000, &result);
    int rc = status == XLM_OK && xlm_result_code(result) == XLM_CODE_UNAVAILABLE ? 0 : 1;
    printf("install_example: %s %s: %s\n", xlm_status_str(status),
           result ? xlm_code_str(xlm_result_code(result)) : "-",
           result ? xlm_result_message(result) : xlm_client_error(client));
    xlm_result_destroy(&result);
    /* The API of issue 12 links and behaves the same without a broker: the
     * descriptor for event loops, and a pair that finishes UNAVAILABLE. */
    int fd = -1;
    if (xlm_client_fd(client, &fd) != XLM_OK || fd < 0)
        rc = 1;
    const xlm_pair_t pair = {"en", "a cat", "fr", "un chat"};
    xlm_score_options_t options;
    xlm_score_options_init(&options);
    xlm_pair_score_t score;
    status = xlm_client_score_pairs(client, &pair, 1, &options, &score);
    if (status != XLM_OK || score.code != XLM_CODE_UNAVAILABLE)
        rc = 1;
    printf("install_example: score_pairs %s %s\n", xlm_status_str(status), xlm_code_str(score.code));
    xlm_pair_scores_clear(&score, 1);
    xlm_client_destroy(&client);
    return rc;
}
