/* test_tasks.c: the client library's task table agrees with proto's.
 *
 * Every public task names a wire task with a proto_task_info row of the
 * same name, and every wire task of the schema (found from the enum
 * descriptor, so a new one cannot be forgotten) has a public task. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "proto.h"
#include "xlmclient.h"

static void every_public_task_is_a_wire_task(void **state)
{
    (void)state;
    for (int t = 0; t < XLM_TASK_COUNT_; t++) {
        const char *name = xlm_task_name((xlm_task_t)t);
        proto_task_t wire = proto_task_from_name(name);
        const proto_task_info_t *info = proto_task_info(wire);
        if (!info)
            fail_msg("public task %d (%s) has no wire task", t, name);
        assert_string_equal(info->name, name);
        assert_int_equal((int)xlm_task_from_name(name), t);
    }
    assert_string_equal(xlm_task_name(XLM_TASK_COUNT_), "unknown");
    assert_int_equal(xlm_task_from_name("no_such_task"), XLM_TASK_COUNT_);
    assert_int_equal(xlm_task_from_name(NULL), XLM_TASK_COUNT_);
}

static void every_wire_task_is_a_public_task(void **state)
{
    (void)state;
    const ProtobufCEnumDescriptor *d = &xlm__task__descriptor;
    assert_int_equal(d->n_values, XLM_TASK_COUNT_);
    for (unsigned i = 0; i < d->n_values; i++) {
        const proto_task_info_t *info = proto_task_info((proto_task_t)d->values[i].value);
        assert_non_null(info);
        xlm_task_t t = xlm_task_from_name(info->name);
        if (t == XLM_TASK_COUNT_)
            fail_msg("wire task %s has no public task", d->values[i].name);
        assert_string_equal(xlm_task_name(t), info->name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_public_task_is_a_wire_task),
        cmocka_unit_test(every_wire_task_is_a_public_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
