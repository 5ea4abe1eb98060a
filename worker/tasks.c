/* tasks.c: the worker's one map from wire tasks to engine calls.
 *
 * proto/ says what a task is (proto_task_info); this table says which
 * engine call computes it and which head's weights that call needs, so no
 * code casts a wire task to an engine head. The test test_tasks.c walks
 * every value of the schema's Task enum through this map and compares each
 * call's result with the engine called directly. */
#include "worker_internal.h"

static const worker_task_t task_map[PROTO_TASK_COUNT_] = {
    [PROTO_TASK_BASE] = {PROTO_TASK_BASE, WORKER_CALL_HEAD, SHARD_HEAD_BASE},
    [PROTO_TASK_LM] = {PROTO_TASK_LM, WORKER_CALL_HEAD, SHARD_HEAD_LM},
    [PROTO_TASK_SEQ_CLS] = {PROTO_TASK_SEQ_CLS, WORKER_CALL_HEAD, SHARD_HEAD_SEQ_CLS},
    [PROTO_TASK_MULTIPLE_CHOICE] = {PROTO_TASK_MULTIPLE_CHOICE, WORKER_CALL_HEAD,
                                    SHARD_HEAD_MULTIPLE_CHOICE},
    [PROTO_TASK_TOKEN_CLS] = {PROTO_TASK_TOKEN_CLS, WORKER_CALL_HEAD, SHARD_HEAD_TOKEN_CLS},
    [PROTO_TASK_QA_SIMPLE] = {PROTO_TASK_QA_SIMPLE, WORKER_CALL_HEAD, SHARD_HEAD_QA_SIMPLE},
    [PROTO_TASK_QA] = {PROTO_TASK_QA, WORKER_CALL_HEAD, SHARD_HEAD_QA},
    [PROTO_TASK_CLM_SCORE] = {PROTO_TASK_CLM_SCORE, WORKER_CALL_CLM_SCORE, SHARD_HEAD_LM},
    [PROTO_TASK_GENERATE] = {PROTO_TASK_GENERATE, WORKER_CALL_NEXT_TOKEN, SHARD_HEAD_LM},
    [PROTO_TASK_MLM_PLL] = {PROTO_TASK_MLM_PLL, WORKER_CALL_MASKED_LOGPROB, SHARD_HEAD_LM},
};

const worker_task_t *worker_task(int64_t task)
{
    if (task < 0 || task >= PROTO_TASK_COUNT_)
        return NULL;
    return &task_map[task];
}
