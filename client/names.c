/* names.c: names of the public enums. The wire enums are proto's, value for
 * value; the asserts keep them in step. */
#include "client_internal.h"

_Static_assert((int)XLM_CODE_COUNT_ == (int)PROTO_STATUS_COUNT_,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_CODE_NOT_FOUND == (int)PROTO_STATUS_NOT_FOUND,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_CODE_OVERLOADED == (int)PROTO_STATUS_OVERLOADED,
               "xlm_code_t out of step with proto_status_t");
_Static_assert((int)XLM_TASK_COUNT_ == (int)PROTO_TASK_COUNT_,
               "xlm_task_t out of step with proto_task_t");
_Static_assert((int)XLM_TASK_MLM_PLL == (int)PROTO_TASK_MLM_PLL,
               "xlm_task_t out of step with proto_task_t");
_Static_assert((int)XLM_TASK_GENERATE == (int)PROTO_TASK_GENERATE,
               "xlm_task_t out of step with proto_task_t");
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

const char *xlm_task_name(xlm_task_t task) { return proto_task_name((proto_task_t)task); }

xlm_task_t xlm_task_from_name(const char *name)
{
    return (xlm_task_t)proto_task_from_name(name);
}
