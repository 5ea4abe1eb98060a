/* test_tasks.c: the task table (proto_task_info) against the schema.
 *
 * Every value of the generated xlm.Task enum, found from protobuf-c's enum
 * descriptor (so a task appended to xlm.proto cannot be forgotten), has a
 * row whose id and name are the schema's, and the codec's option checks
 * follow the row. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <string.h>

#include "proto.h"

/* "TASK_MULTIPLE_CHOICE" -> "multiple_choice". */
static void schema_name(const char *value_name, char *out, size_t size)
{
    const char *s = strncmp(value_name, "TASK_", 5) == 0 ? value_name + 5 : value_name;
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

static void every_schema_task_has_a_row(void **state)
{
    (void)state;
    const ProtobufCEnumDescriptor *d = &xlm__task__descriptor;
    assert_int_equal(d->n_values, PROTO_TASK_COUNT_);
    for (unsigned i = 0; i < d->n_values; i++) {
        const ProtobufCEnumValue *v = &d->values[i];
        const proto_task_info_t *info = proto_task_info((proto_task_t)v->value);
        if (!info)
            fail_msg("wire task %s = %d has no proto_task_info row", v->name, v->value);
        char name[64];
        schema_name(v->name, name, sizeof name);
        assert_int_equal((int)info->task, v->value);
        assert_string_equal(info->name, name);
        assert_string_equal(proto_task_name((proto_task_t)v->value), name);
        assert_int_equal((int)proto_task_from_name(name), v->value);
        assert_true(info->kind >= PROTO_TASK_KIND_HEAD && info->kind < PROTO_TASK_KIND_COUNT_);
        /* Options belong to their kind. */
        if (info->generate)
            assert_int_equal(info->kind, PROTO_TASK_KIND_GENERATE);
        if (info->score_window || info->tokens_need_score_from)
            assert_int_equal(info->kind, PROTO_TASK_KIND_SCORE);
        if (info->kind != PROTO_TASK_KIND_HEAD)
            assert_true(info->needs_lm); /* scores and generation read the LM head */
    }
    assert_null(proto_task_info(PROTO_TASK_COUNT_));
    assert_null(proto_task_info((proto_task_t)-1));
    assert_string_equal(proto_task_name(PROTO_TASK_COUNT_), "unknown");
}

/* A request of task with one token row of 4 ids; options from the flags. */
static proto_status_t check_with(proto_task_t task, bool n_choices, bool generate, bool score,
                                 bool p_mask, proto_error_t *err)
{
    static int64_t ids[4] = {0, 5, 6, 1}, lengths[1] = {4}, from[1] = {1};
    static float pm[4] = {0, 0, 1, 1};
    Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
    tokens.n_input_ids = 4;
    tokens.input_ids = ids;
    tokens.n_lengths = 1;
    tokens.lengths = lengths;
    if (p_mask) {
        tokens.n_p_mask = 4;
        tokens.p_mask = pm;
    }
    Xlm__Generate g = XLM__GENERATE__INIT;
    g.steps = 2;
    Xlm__Request rq = XLM__REQUEST__INIT;
    rq.id = "r";
    rq.task = (Xlm__Task)task;
    rq.input_case = XLM__REQUEST__INPUT_TOKENS;
    rq.tokens = &tokens;
    rq.n_choices = n_choices ? 1 : 0;
    rq.generate = generate ? &g : NULL;
    if (score) {
        rq.n_score_from = 1;
        rq.score_from = from;
    }
    return proto_request_check(&rq, NULL, err);
}

/* Each task is accepted with exactly the options its row requires and
 * refused with one it does not take, the message naming the tasks that do. */
static void options_follow_the_table(void **state)
{
    (void)state;
    for (int t = 0; t < PROTO_TASK_COUNT_; t++) {
        const proto_task_info_t *info = proto_task_info((proto_task_t)t);
        proto_error_t err = {0};
        const bool score = info->tokens_need_score_from;
        proto_status_t rc = check_with((proto_task_t)t, info->n_choices, info->generate, score,
                                       false, &err);
        if (rc)
            fail_msg("task %s with its own options: %s", info->name, err.message);
        struct { bool choices, generate, score, p_mask, takes; const char *what; } extra[] = {
            {true, false, false, false, info->n_choices, "n_choices"},
            {false, true, false, false, info->generate, "generate"},
            {false, false, true, false, info->score_window, "score_from"},
            {false, false, false, true, info->p_mask, "p_mask"},
        };
        for (size_t k = 0; k < sizeof extra / sizeof extra[0]; k++) {
            if (extra[k].takes)
                continue;
            rc = check_with((proto_task_t)t, info->n_choices || extra[k].choices,
                            info->generate || extra[k].generate, score || extra[k].score,
                            extra[k].p_mask, &err);
            if (rc != PROTO_STATUS_BAD_REQUEST)
                fail_msg("task %s accepted %s", info->name, extra[k].what);
            assert_non_null(strstr(err.message, info->name));
        }
    }
}

static void messages_name_the_tasks_that_take_an_option(void **state)
{
    (void)state;
    proto_error_t err = {0};
    assert_int_equal(check_with(PROTO_TASK_LM, false, false, true, false, &err),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(err.message, "expected only for clm_score and mlm_pll"));
    assert_int_equal(check_with(PROTO_TASK_LM, false, false, false, true, &err),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(err.message, "expected only for qa"));
    assert_int_equal(check_with(PROTO_TASK_QA, true, false, false, false, &err),
                     PROTO_STATUS_BAD_REQUEST);
    assert_non_null(strstr(err.message, "(multiple_choice only)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_schema_task_has_a_row),
        cmocka_unit_test(options_follow_the_table),
        cmocka_unit_test(messages_name_the_tasks_that_take_an_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
