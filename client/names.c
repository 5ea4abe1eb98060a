/* names.c: names of the public enums. xlm_code_t is proto's status value
 * for value (the asserts keep them in step); xlm_task_t maps to the wire
 * task through one table. */
#include "client_internal.h"

_Static_assert((int)XLM_CODE_COUNT_ == (int)PROTO_STATUS_COUNT_,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_CODE_NOT_FOUND == (int)PROTO_STATUS_NOT_FOUND,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_CODE_PERMISSION_DENIED == (int)PROTO_STATUS_PERMISSION_DENIED,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_CODE_OVERLOADED == (int)PROTO_STATUS_OVERLOADED,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_ID_MAX == (int)PROTO_ID_MAX, "XLM_ID_MAX differs from PROTO_ID_MAX");

static const char *const status_names[XLM_STATUS_COUNT_] = {
    "ok", "bad_argument", "out_of_memory", "zmq", "timeout", "window_full", "not_found", "empty",
    "duplicate",
};

const char *xlm_status_str(xlm_status_t status)
{
    int index = -(int)status;
    if (index < 0 || index >= XLM_STATUS_COUNT_)
        return "unknown";
    return status_names[index];
}

const char *xlm_code_str(xlm_code_t code) { return proto_status_str((proto_status_t)code); }

/* The public task -> the wire task. One row per xlm_task_t; the test
 * test_tasks.c checks it against proto_task_info and the schema. */
static const proto_task_t task_to_wire[XLM_TASK_COUNT_] = {
    [XLM_TASK_BASE] = PROTO_TASK_BASE,
    [XLM_TASK_LM] = PROTO_TASK_LM,
    [XLM_TASK_SEQ_CLS] = PROTO_TASK_SEQ_CLS,
    [XLM_TASK_MULTIPLE_CHOICE] = PROTO_TASK_MULTIPLE_CHOICE,
    [XLM_TASK_TOKEN_CLS] = PROTO_TASK_TOKEN_CLS,
    [XLM_TASK_QA_SIMPLE] = PROTO_TASK_QA_SIMPLE,
    [XLM_TASK_QA] = PROTO_TASK_QA,
    [XLM_TASK_CLM_SCORE] = PROTO_TASK_CLM_SCORE,
    [XLM_TASK_GENERATE] = PROTO_TASK_GENERATE,
    [XLM_TASK_MLM_PLL] = PROTO_TASK_MLM_PLL,
};

proto_task_t client_task_to_wire(xlm_task_t task)
{
    if ((int)task < 0 || task >= XLM_TASK_COUNT_)
        return PROTO_TASK_COUNT_;
    return task_to_wire[task];
}

const char *xlm_task_name(xlm_task_t task)
{
    return proto_task_name(client_task_to_wire(task));
}

xlm_task_t xlm_task_from_name(const char *name)
{
    proto_task_t wire = proto_task_from_name(name);
    for (int t = 0; wire != PROTO_TASK_COUNT_ && t < XLM_TASK_COUNT_; t++)
        if (task_to_wire[t] == wire)
            return (xlm_task_t)t;
    return XLM_TASK_COUNT_;
}
