/* test_attention: shard_attention_head against a double-precision
 * reference and against itself: a query's context has the same bits
 * whether it is computed alone (a generation step) or in any tile of a
 * longer run of queries, for head sizes on and off the vector widths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

enum { MAX_KEYS = 70, MAX_DH = 72, LD = 2 * MAX_DH + 5 };

/* Deterministic values in [-1, 1). */
static float pseudo_random(uint32_t *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return (float)(*seed >> 8) / (float)(1u << 23) - 1.0f;
}

typedef struct {
    float q[MAX_KEYS * LD], kv[MAX_KEYS * LD]; /* kv rows: [k ; v] */
    float ctx[MAX_KEYS * MAX_DH], alone[MAX_DH];
    float *work;
} attention_case_t;

static attention_case_t *case_new(int64_t dh, uint32_t seed)
{
    attention_case_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    for (int64_t i = 0; i < MAX_KEYS * LD; i++) {
        t->q[i] = 2.0f * pseudo_random(&seed);
        t->kv[i] = 2.0f * pseudo_random(&seed);
    }
    t->work = malloc(shard_attention_work_floats(MAX_KEYS, dh) * sizeof *t->work);
    assert_non_null(t->work);
    return t;
}

static void case_destroy(attention_case_t **t)
{
    free((*t)->work);
    free(*t);
    *t = NULL;
}

/* softmax(q k^T / sqrt(dh)) v of query i in double. */
static void reference(const attention_case_t *t, int64_t i, int64_t keys, int64_t dh, double *out)
{
    double scores[MAX_KEYS], max = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j < keys; j++) {
        double s = 0.0;
        for (int64_t c = 0; c < dh; c++)
            s += (double)t->q[i * LD + c] * t->kv[j * LD + c];
        scores[j] = s / sqrt((double)dh);
        max = fmax(max, scores[j]);
    }
    for (int64_t j = 0; j < keys; j++)
        sum += scores[j] = exp(scores[j] - max);
    for (int64_t c = 0; c < dh; c++) {
        out[c] = 0.0;
        for (int64_t j = 0; j < keys; j++)
            out[c] += scores[j] / sum * t->kv[j * LD + MAX_DH + c];
    }
}

static const int64_t head_sizes[] = {8, 64, 1, 13, 24, 72};

static void check_head_sizes(bool causal)
{
    for (size_t s = 0; s < sizeof head_sizes / sizeof *head_sizes; s++) {
        const int64_t dh = head_sizes[s];
        for (int64_t n = 1; n <= MAX_KEYS; n += n < 9 ? 1 : 29) {
            attention_case_t *t = case_new(dh, (uint32_t)(dh * 1000 + n));
            shard_attention_head(t->q, LD, n, t->kv, t->kv + MAX_DH, LD, n, 1, causal, dh,
                                 t->work, t->ctx, MAX_DH);
            for (int64_t i = 0; i < n; i++) {
                const int64_t keys = causal ? i + 1 : n;
                double want[MAX_DH];
                reference(t, i, keys, dh, want);
                for (int64_t c = 0; c < dh; c++)
                    if (!(fabs(t->ctx[i * MAX_DH + c] - want[c]) <= 1e-5))
                        fail_msg("dh=%lld n=%lld query %lld dim %lld: %.9g, reference %.9g",
                                 (long long)dh, (long long)n, (long long)i, (long long)c,
                                 (double)t->ctx[i * MAX_DH + c], want[c]);
                /* The same query alone: a causal one as the newest position
                 * of a cache holding its keys. */
                shard_attention_head(t->q + i * LD, LD, 1, t->kv, t->kv + MAX_DH, LD, keys,
                                     keys, causal, dh, t->work, t->alone, MAX_DH);
                if (memcmp(t->alone, t->ctx + i * MAX_DH, (size_t)dh * sizeof *t->alone) != 0)
                    fail_msg("dh=%lld n=%lld query %lld: alone differs from among %lld queries "
                             "(dim 0: %.9g vs %.9g)", (long long)dh, (long long)n, (long long)i,
                             (long long)n, (double)t->alone[0], (double)t->ctx[i * MAX_DH]);
            }
            case_destroy(&t);
        }
    }
}

static void test_attention_causal_matches_reference_and_alone(void **state)
{
    (void)state;
    check_head_sizes(true);
}

static void test_attention_full_matches_reference_and_alone(void **state)
{
    (void)state;
    check_head_sizes(false);
}

/* Queries starting mid-cache (several new positions of a generation): the
 * same bits as the whole causal run, row by row. */
static void test_attention_cache_continuation(void **state)
{
    (void)state;
    const int64_t dh = 64, n = 37, cached = 30;
    attention_case_t *t = case_new(dh, 7u);
    shard_attention_head(t->q, LD, n, t->kv, t->kv + MAX_DH, LD, n, 1, true, dh, t->work,
                         t->ctx, MAX_DH);
    float tail[MAX_KEYS * MAX_DH];
    shard_attention_head(t->q + cached * LD, LD, n - cached, t->kv, t->kv + MAX_DH, LD, n,
                         cached + 1, true, dh, t->work, tail, MAX_DH);
    for (int64_t i = 0; i < n - cached; i++)
        assert_memory_equal(tail + i * MAX_DH, t->ctx + (cached + i) * MAX_DH,
                            (size_t)dh * sizeof *tail);
    case_destroy(&t);
}

/* A large logit gap: the weights still sum to one and pick the top key. */
static void test_attention_one_key_dominates(void **state)
{
    (void)state;
    const int64_t dh = 8, n = 5;
    attention_case_t *t = case_new(dh, 11u);
    memset(t->q, 0, sizeof t->q);
    for (int64_t c = 0; c < dh; c++) {
        t->q[c] = 100.0f;
        t->kv[3 * LD + c] = 1.0f; /* score 800 / sqrt(8) against |others| < 283 */
        for (int64_t j = 0; j < n; j++)
            if (j != 3)
                t->kv[j * LD + c] = 0.1f * pseudo_random(&(uint32_t){(uint32_t)(j + c)});
    }
    shard_attention_head(t->q, LD, 1, t->kv, t->kv + MAX_DH, LD, n, n, false, dh, t->work,
                         t->ctx, MAX_DH);
    for (int64_t c = 0; c < dh; c++)
        assert_true(fabs(t->ctx[c] - t->kv[3 * LD + MAX_DH + c]) <= 1e-6);
    case_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_causal_matches_reference_and_alone),
        cmocka_unit_test(test_attention_full_matches_reference_and_alone),
        cmocka_unit_test(test_attention_cache_continuation),
        cmocka_unit_test(test_attention_one_key_dominates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
