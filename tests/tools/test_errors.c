/* test_errors.c: tools/errors.c, the one error vocabulary and the text a
 * user reads.
 *
 * - the vocabulary is the wire's status names, in the wire's order;
 * - every engine status maps to the code the worker answers for it;
 * - the case format's step limit is the protocol's;
 * - UTF-8: what a strict decoder accepts, nothing else (overlong forms,
 *   surrogates, past U+10FFFF, truncated sequences);
 * - repair and JSON quoting give valid UTF-8 and valid JSON whatever comes in;
 * - user messages lose internal function names and keep the rest.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "cases.h"
#include "errors.h"

#include <stdlib.h>
#include <string.h>

#ifdef XLM_TEST_SERVICE
#include "proto.h"
#include "worker_internal.h"
#include "xlmclient.h"
#endif

static void test_vocabulary_is_the_wire_names(void **state)
{
    (void)state;
    size_t n = 0;
    const char *const *codes = tools_codes(&n);
    assert_string_equal(codes[0], "ok");
    for (size_t i = 0; i < n; i++)
        assert_true(tools_code_known(codes[i]));
    assert_false(tools_code_known("bad_input"));
    assert_false(tools_code_known("bad_line"));
    assert_false(tools_code_known(NULL));
#ifdef XLM_TEST_SERVICE
    assert_int_equal(n, XLM_CODE_COUNT_);
    for (int code = 0; code < XLM_CODE_COUNT_; code++)
        assert_string_equal(codes[code], xlm_code_str((xlm_code_t)code));
#endif
}

static void test_engine_statuses_map_as_the_worker_does(void **state)
{
    (void)state;
    for (int status = 1 - SHARD_STATUS_COUNT_; status <= 0; status++) { /* SHARD_OK = 0 down */
        const char *code = tools_code_of((shard_status_t)status);
        assert_true(tools_code_known(code));
#ifdef XLM_TEST_SERVICE
        const char *worker = proto_status_str(worker_status_of((shard_status_t)status));
        if (strcmp(code, worker) != 0)
            fail_msg("engine status %s: the tools say %s, the worker %s",
                     shard_status_str((shard_status_t)status), code, worker);
#endif
    }
    assert_string_equal(tools_code_of(SHARD_ERR_INPUT), "bad_request");
    assert_string_equal(tools_code_of(SHARD_ERR_UTF8), "bad_request");
    assert_string_equal(tools_code_of(SHARD_ERR_LANG), "bad_request");
    assert_string_equal(tools_code_of(SHARD_ERR_HEAD), "unknown_task");
    assert_string_equal(tools_code_of(SHARD_ERR_NOMEM), "internal");
    assert_string_equal(tools_code_of((shard_status_t)-1000), "internal");
}

static void test_step_limit_is_the_protocol_s(void **state)
{
    (void)state;
#ifdef XLM_TEST_SERVICE
    assert_int_equal(CASE_MAX_STEPS, PROTO_MAX_STEPS);
#else
    skip();
#endif
}

static void expect_valid(const char *s, size_t n, size_t want)
{
    size_t got = tools_utf8_valid_prefix(s, n);
    if (got != want)
        fail_msg("valid prefix of %zu bytes starting %02x: %zu, expected %zu", n,
                 (unsigned char)s[0], got, want);
}

static void test_utf8_strict(void **state)
{
    (void)state;
    expect_valid("", 0, 0);
    expect_valid("plain ascii", 11, 11);
    expect_valid("caf\xC3\xA9", 5, 5);                 /* é */
    expect_valid("\xE2\x82\xAC", 3, 3);                /* € */
    expect_valid("\xF0\x9F\x98\x80", 4, 4);            /* U+1F600 */
    expect_valid("\xF4\x8F\xBF\xBF", 4, 4);            /* U+10FFFF */
    expect_valid("ab\xFF" "cd", 5, 2);                 /* never a UTF-8 byte */
    expect_valid("\xC0\xAF", 2, 0);                    /* overlong '/' */
    expect_valid("\xE0\x80\xAF", 3, 0);                /* overlong */
    expect_valid("\xF0\x80\x80\xAF", 4, 0);            /* overlong */
    expect_valid("\xED\xA0\x80", 3, 0);                /* U+D800, a surrogate */
    expect_valid("\xF4\x90\x80\x80", 4, 0);            /* U+110000 */
    expect_valid("x\xC3", 2, 1);                       /* cut short */
    expect_valid("x\xE2\x82", 3, 1);
    expect_valid("\x80", 1, 0);                        /* a lone continuation */
    expect_valid("\xC3\x28", 2, 0);                    /* continuation missing */
}

static void test_repair_and_quote(void **state)
{
    (void)state;
    char *fixed = tools_utf8_repair("a\xFF" "b\xC3", 4);
    assert_string_equal(fixed, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
    free(fixed);
    fixed = tools_utf8_repair("caf\xC3\xA9", 5);
    assert_string_equal(fixed, "caf\xC3\xA9"); /* valid text is kept as it is */
    free(fixed);

    char *quoted = tools_json_quote("say \"hi\"\\\n\t\x01\x7F caf\xC3\xA9 \xFE");
    assert_string_equal(quoted, "\"say \\\"hi\\\"\\\\\\n\\t\\u0001\\u007f caf\xC3\xA9 \xEF\xBF\xBD\"");
    assert_int_equal(tools_utf8_valid_prefix(quoted, strlen(quoted)), strlen(quoted));
    free(quoted);
    quoted = tools_json_quote(NULL);
    assert_string_equal(quoted, "\"\"");
    free(quoted);

    /* A printed JSON text keeps its structure: only string bytes change. */
    char *json = tools_json_repair("{\"name\":\"x\xFF\",\"n\":1}");
    assert_string_equal(json, "{\"name\":\"x\xEF\xBF\xBD\",\"n\":1}");
    free(json);
}

static void expect_message(const char *raw, const char *want)
{
    char said[256];
    tools_user_message(raw, said, sizeof said);
    if (strcmp(said, want) != 0)
        fail_msg("'%s' reads '%s', expected '%s'", raw, said, want);
}

static void test_user_messages(void **state)
{
    (void)state;
    expect_message("shard_model_forward: input_ids[0][1] = 5000, expected 0..1043",
                   "input_ids[0][1] = 5000, expected 0..1043");
    expect_message("xlm_client_submit: bad_request: proto_request_check: input_ids[1] = -3",
                   "input_ids[1] = -3");
    expect_message("text row 0: shard_tokenizer_encode: unknown language 'xx'",
                   "text row 0: unknown language 'xx'");
    expect_message("cannot open (shard_config_load: no config.json)",
                   "cannot open (no config.json)");
    /* What only looks like a name stays: words, the user's own text. */
    expect_message("head qa: the checkpoint has no weights for it",
                   "head qa: the checkpoint has no weights for it");
    expect_message("inputs: unknown field \"shard_x\" (expected input_ids)",
                   "inputs: unknown field \"shard_x\" (expected input_ids)");
    expect_message("model 'shard_test': no live pipeline", "model 'shard_test': no live pipeline");
    expect_message("language \"e\xFFn\"", "language \"e\xEF\xBF\xBDn\"");
    expect_message(NULL, "");

    /* Truncation keeps whole characters. */
    char small[6];
    tools_user_message("abcd\xC3\xA9", small, sizeof small);
    assert_string_equal(small, "abcd");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocabulary_is_the_wire_names),
        cmocka_unit_test(test_engine_statuses_map_as_the_worker_does),
        cmocka_unit_test(test_step_limit_is_the_protocol_s),
        cmocka_unit_test(test_utf8_strict),
        cmocka_unit_test(test_repair_and_quote),
        cmocka_unit_test(test_user_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
