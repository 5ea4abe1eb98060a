/* test_pack.c: packing, including allocation failure (malloc is wrapped
 * with -Wl,--wrap=malloc for this program only). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proto.h"

void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);

static int fail_next_malloc;

void *__wrap_malloc(size_t size)
{
    if (fail_next_malloc) {
        fail_next_malloc = 0;
        return NULL;
    }
    return __real_malloc(size);
}

static void test_pack_sets_version(void **state)
{
    (void)state;
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    Xlm__Heartbeat hb = XLM__HEARTBEAT__INIT;
    msg.pipeline = "p";
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    uint8_t *data;
    size_t size;
    assert_int_equal(proto_worker_pack(&msg, &data, &size, NULL), PROTO_STATUS_OK);
    assert_int_equal(msg.version, PROTO_VERSION);
    Xlm__WorkerMessage *out;
    assert_int_equal(proto_worker_decode(data, size, 1024, &out, NULL), PROTO_STATUS_OK);
    assert_int_equal(out->body_case, XLM__WORKER_MESSAGE__BODY_HEARTBEAT);
    proto_worker_free(&out);
    free(data);
}

static void test_pack_allocation_failure(void **state)
{
    (void)state;
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    Xlm__StatsRequest stats = XLM__STATS_REQUEST__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_STATS;
    msg.stats = &stats;
    uint8_t *data = (uint8_t *)0x1;
    size_t size = 99;
    proto_error_t err;
    proto_error_clear(&err);
    fail_next_malloc = 1;
    assert_int_equal(proto_client_pack(&msg, &data, &size, &err), PROTO_STATUS_INTERNAL);
    assert_null(data);
    assert_int_equal(size, 0);
    assert_non_null(strstr(err.message, "proto_client_pack: cannot allocate"));
    /* And the next one works. */
    assert_int_equal(proto_client_pack(&msg, &data, &size, &err), PROTO_STATUS_OK);
    assert_non_null(data);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_sets_version),
        cmocka_unit_test(test_pack_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
