/* test_kernels.c: the numeric kernels of shard/engine/ (engine_internal.h) against
 * hand-computed values.
 *
 * Every expected number below was worked out by hand or with a desk
 * calculator in double precision; the tolerances are a few float32 ulps of
 * the values involved, so a kernel that is off by an operand, a transpose,
 * a missing bias or an unstable formula fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dnnl_matmul.h"
#include "engine_internal.h"

/* |got - want| <= tol, with both numbers in the failure message. */
#define assert_close(got, want, tol)                                                        \
    do {                                                                                    \
        double got_ = (double)(got), want_ = (double)(want);                                \
        if (!(fabs(got_ - want_) <= (tol)))                                                 \
            fail_msg("%s = %.9g, expected %.9g (tolerance %g)", #got, got_, want_,          \
                     (double)(tol));                                                        \
    } while (0)

/* ------------------------------------------------------------ shard_linear */

/* W [3 out][2 in] = [[1, 2], [3, 4], [5, 6]], b = [0.5, -1, 2].
 * x = [1, -1] -> x W^T = [1-2, 3-4, 5-6] = [-1, -1, -1]
 * x = [2, 0.5] -> [2+1, 6+2, 10+3] = [3, 8, 13]
 * x = [0, 3]   -> [6, 12, 18] */
static const float linear_w[6] = {1, 2, 3, 4, 5, 6};
static const float linear_b[3] = {0.5f, -1.0f, 2.0f};
static const float linear_x[3][2] = {{1, -1}, {2, 0.5f}, {0, 3}};
static const float linear_xw[3][3] = {{-1, -1, -1}, {3, 8, 13}, {6, 12, 18}};

static void test_linear_one_row_with_bias(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = linear_b, .in = 2, .out = 3};
    float y[3] = {99, 99, 99};
    shard_linear(&lin, linear_x[1], 1, y);
    for (int o = 0; o < 3; o++)
        assert_close(y[o], linear_xw[1][o] + linear_b[o], 1e-6);
}

static void test_linear_one_row_without_bias(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = NULL, .in = 2, .out = 3};
    /* Whatever y held before must be overwritten, not accumulated. */
    float y[3] = {1e30f, -7, 123};
    shard_linear(&lin, linear_x[0], 1, y);
    for (int o = 0; o < 3; o++)
        assert_close(y[o], linear_xw[0][o], 1e-6);
}

static void test_linear_many_rows_with_bias(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = linear_b, .in = 2, .out = 3};
    float y[3][3];
    memset(y, 0x7f, sizeof y);
    shard_linear(&lin, &linear_x[0][0], 3, &y[0][0]);
    for (int r = 0; r < 3; r++)
        for (int o = 0; o < 3; o++)
            assert_close(y[r][o], linear_xw[r][o] + linear_b[o], 1e-6);
}

static void test_linear_many_rows_without_bias(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = NULL, .in = 2, .out = 3};
    float y[3][3];
    for (int i = 0; i < 9; i++)
        (&y[0][0])[i] = 1e30f;
    shard_linear(&lin, &linear_x[0][0], 3, &y[0][0]);
    for (int r = 0; r < 3; r++)
        for (int o = 0; o < 3; o++)
            assert_close(y[r][o], linear_xw[r][o], 1e-6);
}

/* Uninitialised scratch memory may hold NaN bit patterns: a linear layer
 * without bias must still write x W^T, not NaN. */
static void test_linear_without_bias_overwrites_nan(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = NULL, .in = 2, .out = 3};
    float one[3] = {NAN, NAN, NAN}, many[3][3];
    for (int i = 0; i < 9; i++)
        (&many[0][0])[i] = NAN;
    shard_linear(&lin, linear_x[2], 1, one);
    shard_linear(&lin, &linear_x[0][0], 3, &many[0][0]);
    for (int o = 0; o < 3; o++) {
        assert_close(one[o], linear_xw[2][o], 1e-6);
        for (int r = 0; r < 3; r++)
            assert_close(many[r][o], linear_xw[r][o], 1e-6);
    }
}

/* The one-row (gemv) and many-row (gemm) paths agree on a larger layer. */
static void test_linear_paths_agree(void **state)
{
    (void)state;
    enum { IN = 37, OUT = 29, ROWS = 5 };
    float w[OUT * IN], b[OUT], x[ROWS * IN], y_many[ROWS * OUT], y_one[OUT];
    for (int i = 0; i < OUT * IN; i++)
        w[i] = (float)((i * 37 % 101) - 50) / 64.0f;
    for (int i = 0; i < OUT; i++)
        b[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < ROWS * IN; i++)
        x[i] = (float)((i * 53 % 97) - 48) / 32.0f;
    shard_linear_t lin = {.weight = w, .bias = b, .in = IN, .out = OUT};
    shard_linear(&lin, x, ROWS, y_many);
    for (int r = 0; r < ROWS; r++) {
        shard_linear(&lin, x + r * IN, 1, y_one);
        for (int o = 0; o < OUT; o++) {
            double want = b[o];
            for (int i = 0; i < IN; i++)
                want += (double)x[r * IN + i] * w[o * IN + i];
            /* Inputs are multiples of 1/2048 with small numerators: the
             * products and sums are exact in float32. */
            assert_close(y_many[r * OUT + o], want, 0.0);
            assert_close(y_one[o], want, 0.0);
        }
    }
}

/* A single row (a cached generation step) runs as itself on oneDNN, not in
 * a padded tile: its bits must be those the row gets inside a batch, in
 * every precision, on the machine the test runs on. */
static void test_one_row_products_match_the_batch(void **state)
{
    (void)state;
    enum { IN = 256, OUT = 512, ROWS = 40 };
    static float w[OUT * IN], b[OUT], x[ROWS * IN], y_batch[ROWS * OUT], y_one[OUT], scale[OUT];
    static uint16_t w_bf16[OUT * IN];
    static int8_t w_i8[OUT * IN];
    srand(7);
    for (int i = 0; i < OUT * IN; i++) {
        w[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * 0.2f;
        w_bf16[i] = shard_float_to_bf16(w[i]);
        w_i8[i] = (int8_t)(rand() % 127 - 63);
    }
    for (int o = 0; o < OUT; o++) {
        b[o] = (float)(o % 11) * 0.01f;
        scale[o] = 0.001f * (float)(1 + o % 5);
    }
    for (int i = 0; i < ROWS * IN; i++)
        x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    const shard_linear_t linears[] = {
        {.weight = w, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_FP32},
        {.bf16 = w_bf16, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_BF16},
        {.i8 = w_i8, .scale = scale, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_INT8},
    };
    const int rows[] = {0, 3, 31, 32, 35, 39}; /* in the full tiles and in the padded rest */
    for (size_t l = 0; l < sizeof linears / sizeof *linears; l++) {
        shard_linear(&linears[l], x, ROWS, y_batch);
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
            shard_linear(&linears[l], x + rows[r] * IN, 1, y_one);
            if (memcmp(y_one, y_batch + rows[r] * OUT, sizeof y_one) != 0)
                fail_msg("%s: row %d alone differs from the same row in %d rows (%.9g vs %.9g)",
                         shard_precision_name(linears[l].type), rows[r], ROWS, y_one[0],
                         y_batch[rows[r] * OUT]);
        }
    }
}

/* Weights reordered once for oneDNN (model.c packs every layer and the LM
 * projection at open) give the bits of the weights as stored, for a single
 * row, padded tiles and more than one chunk, and for the LM projection's
 * panels: a whole panel, the short last one, and all of them at once. */
static void test_packed_weights_give_the_stored_weights_bits(void **state)
{
    (void)state;
    enum { IN = 128, OUT = 640, PANEL = 256, ROWS = 300 };
    static float w[OUT * IN], b[OUT], x[ROWS * IN], y_plain[ROWS * OUT], y_packed[ROWS * OUT];
    static float scale[OUT];
    static uint16_t w_bf16[OUT * IN];
    static int8_t w_i8[OUT * IN];
    srand(11);
    for (int i = 0; i < OUT * IN; i++) {
        w[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * 0.2f;
        w_bf16[i] = shard_float_to_bf16(w[i]);
        w_i8[i] = (int8_t)(rand() % 255 - 127);
    }
    for (int o = 0; o < OUT; o++) {
        b[o] = (float)(o % 7) * 0.02f;
        scale[o] = 0.002f * (float)(1 + o % 3);
    }
    for (int i = 0; i < ROWS * IN; i++)
        x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    const shard_linear_t plain[] = {
        {.weight = w, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_FP32},
        {.bf16 = w_bf16, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_BF16},
        {.i8 = w_i8, .scale = scale, .bias = b, .in = IN, .out = OUT, .type = SHARD_PRECISION_INT8},
    };
    const dnnl_data_type_t types[][3] = {{dnnl_f32, dnnl_f32, dnnl_f32},
                                         {dnnl_bf16, dnnl_bf16, dnnl_f32},
                                         {dnnl_s8, dnnl_s8, dnnl_s32}};
    const void *stored[] = {w, w_bf16, w_i8};
    const size_t sizes[] = {sizeof *w, sizeof *w_bf16, sizeof *w_i8};
    const int64_t rows[] = {1, 32, 40, ROWS};
    const int64_t blocks[][2] = {{0, PANEL}, {2 * PANEL, OUT - 2 * PANEL}, {0, OUT}};
    int packed_count = 0;
    for (size_t l = 0; l < sizeof plain / sizeof *plain; l++) {
        if (plain[l].type == SHARD_PRECISION_BF16 && !shard_bf16_native())
            continue;
        for (int64_t panel = 0; panel <= PANEL; panel += PANEL) {
            shard_packed_t *p = NULL;
            shard_error_t err = {0};
            assert_int_equal(shard_matmul_pack(types[l][0], types[l][1], types[l][2], IN, OUT,
                                               IN, stored[l], sizes[l], panel, &p, &err),
                             SHARD_OK);
            if (!p)
                continue; /* oneDNN reads these weights as they are here */
            packed_count++;
            shard_linear_t packed = plain[l];
            packed.packed = p;
            packed.weight = NULL, packed.bf16 = NULL, packed.i8 = NULL;
            if (plain[l].type == SHARD_PRECISION_FP32 && !shard_fp32_onednn())
                packed.weight = w; /* OpenBLAS reads the stored weights */
            for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
                for (size_t k = 0; k < (panel ? 3 : 1); k++) {
                    const int64_t o0 = panel ? blocks[k][0] : 0;
                    const int64_t no = panel ? blocks[k][1] : OUT;
                    memset(y_packed, 0xff, sizeof y_packed);
                    shard_linear_outputs(&plain[l], o0, no, x, rows[r], y_plain);
                    shard_linear_outputs(&packed, o0, no, x, rows[r], y_packed);
                    if (memcmp(y_plain, y_packed, (size_t)(rows[r] * no) * sizeof *y_plain))
                        fail_msg("%s, panel %lld: outputs [%lld, %lld) of %lld rows differ "
                                 "from the stored weights' (%.9g vs %.9g)",
                                 shard_precision_name(plain[l].type), (long long)panel,
                                 (long long)o0, (long long)(o0 + no), (long long)rows[r],
                                 y_packed[0], y_plain[0]);
                }
            free(p);
        }
    }
    /* int8 is packed on every CPU oneDNN runs (VNNI or not) */
    assert_true(packed_count >= 2);
}

/* shard_linear_outputs_each's use: each row copied where it belongs. */
typedef struct {
    float *rows;
    int64_t count;
} copied_t;

static void copy_row(void *context, int64_t row, const float *values)
{
    const copied_t *c = context;
    memcpy(c->rows + row * c->count, values, (size_t)c->count * sizeof *values);
}
/* The ordered fp32 kernel (CPUs without AVX-512): within float rounding of
 * a double-precision product, and a row's bits the same wherever it sits
 * in the call, alone or among others, on 1 or 2 threads; sizes cover the
 * edges of its 4-row, 3-output tiles, its blocks and a K that is not a
 * multiple of its 8 lanes. */
static void test_ordered_sgemm_is_batch_invariant(void **state)
{
    (void)state;
    if (!shard_sgemm_ordered_available())
        skip();
    enum { ROWS = 70, OUT = 53, IN_MAX = 203 };
    static float w[OUT * IN_MAX], x[ROWS * IN_MAX], b[OUT], y[ROWS * OUT], y_part[ROWS * OUT];
    srand(11);
    for (int i = 0; i < OUT * IN_MAX; i++)
        w[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    for (int i = 0; i < ROWS * IN_MAX; i++)
        x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    for (int o = 0; o < OUT; o++)
        b[o] = 0.125f * (float)(o % 7);
    const int64_t ins[] = {1, 7, 8, 13, 64, 203};
    for (size_t k = 0; k < sizeof ins / sizeof *ins; k++) {
        const int64_t in = ins[k];
        shard_set_threads(2);
        shard_sgemm_ordered(ROWS, OUT, in, x, IN_MAX, w, IN_MAX, b, y, OUT);
        for (int r = 0; r < ROWS; r++)
            for (int o = 0; o < OUT; o++) {
                double want = b[o], size = fabs(b[o]);
                for (int64_t i = 0; i < in; i++) {
                    want += (double)x[r * IN_MAX + i] * (double)w[o * IN_MAX + i];
                    size += fabs((double)x[r * IN_MAX + i] * (double)w[o * IN_MAX + i]);
                }
                assert_close(y[r * OUT + o], want, 1e-6 * size + 1e-7);
            }
        /* Rows [first, first + count) on their own, 1 thread: the same bits. */
        shard_set_threads(1);
        const int cuts[][2] = {{0, 1}, {5, 1}, {69, 1}, {1, 3}, {2, 4}, {3, 33}, {7, 63}, {0, 70}};
        for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
            const int first = cuts[c][0], count = cuts[c][1];
            shard_sgemm_ordered(count, OUT, in, x + first * IN_MAX, IN_MAX, w, IN_MAX, b,
                                y_part, OUT);
            if (memcmp(y_part, y + first * OUT, (size_t)(count * OUT) * sizeof *y) != 0)
                fail_msg("K %lld: rows %d..%d alone differ from the same rows among %d",
                         (long long)in, first, first + count - 1, ROWS);
            /* and a few outputs alone, from another first output */
            shard_sgemm_ordered(count, 2, in, x + first * IN_MAX, IN_MAX, w + 17 * IN_MAX,
                                IN_MAX, b + 17, y_part, 2);
            for (int r = 0; r < count; r++)
                if (memcmp(y_part + r * 2, y + (first + r) * OUT + 17, 2 * sizeof *y) != 0)
                    fail_msg("K %lld: outputs 17, 18 of row %d alone differ", (long long)in,
                             first + r);
        }
    }
    shard_set_threads(1);
}

/* The int8 feed-forward block (each hidden row dequantised, activated and
 * quantised in cache, each output row normed in cache) gives the bits of
 * its steps apart, and so does the LM projection's prepared rows, for row
 * counts in and out of whole tiles; in fp32 the same calls take the steps
 * apart. */
static void test_int8_fused_steps_give_the_steps_bits(void **state)
{
    (void)state;
    enum { D = 64, H = 256, ROWS = 45 };
    static int8_t w_in[H * D], w_out[D * H];
    static float f_in[H * D], f_out[D * H];
    static uint16_t h_in[H * D], h_out[D * H];
    static float s_in[H], s_out[D], b_in[H], b_out[D], x[ROWS * D], g[D], beta[D];
    static float hidden[ROWS * H], y[ROWS * D], x_apart[ROWS * D], x_fused[ROWS * D];
    static float logits[ROWS * H], scratch[ROWS * H], copied[ROWS * H];
    srand(5);
    for (int i = 0; i < H * D; i++) {
        w_in[i] = (int8_t)(rand() % 255 - 127);
        w_out[i] = (int8_t)(rand() % 255 - 127);
        f_in[i] = (float)w_in[i] / 1024.0f;
        f_out[i] = (float)w_out[i] / 1024.0f;
        h_in[i] = shard_float_to_bf16(f_in[i] * 1.01f);
        h_out[i] = shard_float_to_bf16(f_out[i] * 0.99f);
    }
    for (int o = 0; o < H; o++) {
        s_in[o] = 0.002f * (float)(1 + o % 3);
        b_in[o] = 0.01f * (float)(o % 13) - 0.05f;
    }
    for (int o = 0; o < D; o++) {
        s_out[o] = 0.001f * (float)(1 + o % 4);
        b_out[o] = 0.02f * (float)(o % 5);
        g[o] = 1.0f + 0.01f * (float)(o % 3);
        beta[o] = 0.001f * (float)o;
    }
    for (int i = 0; i < ROWS * D; i++)
        x[i] = (float)rand() / (float)RAND_MAX * 4.0f - 2.0f;
    const shard_linear_t layers[3][2] = {
        {{.i8 = w_in, .scale = s_in, .bias = b_in, .in = D, .out = H, .type = SHARD_PRECISION_INT8},
         {.i8 = w_out, .scale = s_out, .bias = b_out, .in = H, .out = D,
          .type = SHARD_PRECISION_INT8}},
        {{.bf16 = h_in, .bias = b_in, .in = D, .out = H, .type = SHARD_PRECISION_BF16},
         {.bf16 = h_out, .bias = b_out, .in = H, .out = D, .type = SHARD_PRECISION_BF16}},
        {{.weight = f_in, .bias = b_in, .in = D, .out = H},
         {.weight = f_out, .bias = b_out, .in = H, .out = D}},
    };
    const shard_norm_t norm = {g, beta};
    const shard_activation_t acts[] = {SHARD_ACT_GELU, SHARD_ACT_RELU};
    const int64_t rows[] = {1, 2, 32, 45};
    shard_set_threads(2);
    for (int l = 0; l < 3; l++)
        for (size_t a = 0; a < sizeof acts / sizeof *acts; a++)
            for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
                const shard_linear_t *in = &layers[l][0], *out = &layers[l][1];
                const size_t bytes = (size_t)(rows[r] * D) * sizeof *x;
                memcpy(x_apart, x, bytes);
                shard_linear(in, x, rows[r], hidden);
                shard_activate(hidden, (size_t)(rows[r] * H), acts[a]);
                shard_linear(out, hidden, rows[r], y);
                shard_add_layer_norm(x_apart, y, rows[r], D, &norm, 1e-5);
                memcpy(x_fused, x, bytes);
                memset(hidden, 0xff, sizeof hidden);
                memset(y, 0xff, sizeof y);
                shard_linear_rows_t prepared;
                shard_linear_hidden_rows(in, out, acts[a], x, rows[r], hidden, &prepared);
                shard_linear_add_layer_norm(out, &prepared, y, x_fused, &norm, 1e-5);
                if (memcmp(x_apart, x_fused, bytes) != 0)
                    fail_msg("%s, activation %d, %lld rows: the fused block differs from its "
                             "steps", shard_precision_name(in->type), (int)acts[a],
                             (long long)rows[r]);
            }
    for (size_t r = 0; r < 2 * sizeof rows / sizeof *rows; r++) {
        const shard_linear_t *in = &layers[r % 2][0];
        shard_linear_rows_t prepared;
        shard_linear_rows_prepare(in, x, rows[r / 2], &prepared);
        if (r % 2 == 0)
            assert_non_null(prepared.q);
        else if (shard_bf16_native())
            assert_non_null(prepared.bf16);
        for (int64_t first = 0; first < H; first += 96) {
            const int64_t count = H - first < 96 ? H - first : 96;
            shard_linear_outputs(in, first, count, x, rows[r / 2], logits);
            memset(copied, 0xff, sizeof copied);
            shard_linear_outputs_each(in, first, count, &prepared, scratch, copy_row,
                                      &(copied_t){copied, count});
            if (memcmp(logits, copied, (size_t)(rows[r / 2] * count) * sizeof *copied) != 0)
                fail_msg("%s, %lld rows, outputs from %lld: prepared rows differ",
                         shard_precision_name(in->type), (long long)rows[r / 2],
                         (long long)first);
        }
    }
    shard_set_threads(1);
}

static void test_linear_zero_rows_writes_nothing(void **state)
{
    (void)state;
    shard_linear_t lin = {.weight = linear_w, .bias = linear_b, .in = 2, .out = 3};
    float y[3] = {42, 42, 42};
    shard_linear(&lin, linear_x[0], 0, y);
    for (int o = 0; o < 3; o++)
        assert_close(y[o], 42, 0.0);
}

/* ------------------------------------------------------------ shard_layer_norm */

/* [1, 2, 3, 4]: mean 2.5, variance 1.25, (x - 2.5) / sqrt(1.25) =
 * [-1.34164079, -0.447213595, 0.447213595, 1.34164079]. */
static const double norm_unit[4] = {-1.3416407865, -0.4472135955, 0.4472135955, 1.3416407865};

static void test_layer_norm_unit_affine(void **state)
{
    (void)state;
    const float ones[4] = {1, 1, 1, 1}, zeros[4] = {0, 0, 0, 0};
    shard_norm_t norm = {ones, zeros};
    float x[4] = {1, 2, 3, 4};
    shard_layer_norm(x, 1, 4, &norm, 1e-12);
    for (int i = 0; i < 4; i++)
        assert_close(x[i], norm_unit[i], 1e-6);
}

static void test_layer_norm_applies_weight_and_bias(void **state)
{
    (void)state;
    const float weight[4] = {2, -1, 0.5f, 0}, bias[4] = {0.5f, 1, -1, 3};
    shard_norm_t norm = {weight, bias};
    float x[4] = {1, 2, 3, 4};
    shard_layer_norm(x, 1, 4, &norm, 1e-12);
    for (int i = 0; i < 4; i++)
        assert_close(x[i], norm_unit[i] * weight[i] + bias[i], 2e-6);
}

static void test_layer_norm_uses_eps(void **state)
{
    (void)state;
    /* eps = 0.75: (x - 2.5) / sqrt(1.25 + 0.75) = (x - 2.5) / sqrt(2). */
    const float ones[4] = {1, 1, 1, 1}, zeros[4] = {0, 0, 0, 0};
    shard_norm_t norm = {ones, zeros};
    float x[4] = {1, 2, 3, 4};
    shard_layer_norm(x, 1, 4, &norm, 0.75);
    for (int i = 0; i < 4; i++)
        assert_close(x[i], ((i + 1) - 2.5) / sqrt(2.0), 1e-6);
}

static void test_layer_norm_rows_are_independent(void **state)
{
    (void)state;
    /* Row 1 is row 0 scaled by 10 and shifted by 1e4: a large offset must
     * not cost precision, and the normalised rows are equal. Row 2 is
     * constant: it normalises to the bias. */
    const float ones[4] = {1, 1, 1, 1}, bias[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    shard_norm_t norm = {ones, bias};
    float x[3][4] = {{1, 2, 3, 4}, {10010, 10020, 10030, 10040}, {7, 7, 7, 7}};
    shard_layer_norm(&x[0][0], 3, 4, &norm, 1e-12);
    for (int i = 0; i < 4; i++) {
        assert_close(x[0][i], norm_unit[i] + 0.25, 1e-6);
        assert_close(x[1][i], norm_unit[i] + 0.25, 1e-6);
        assert_close(x[2][i], 0.25, 0.0);
    }
}

/* Large enough to run on the engine's threads: every row comes out as the
 * row normalised alone, and the fused residual as the add before the norm. */
static void test_add_layer_norm_parallel_rows_match_single_rows(void **state)
{
    (void)state;
    enum { ROWS = 96, DIM = 1024 };
    static float x[ROWS][DIM], y[ROWS][DIM], want[ROWS][DIM], weight[DIM], bias[DIM];
    for (int i = 0; i < DIM; i++) {
        weight[i] = 1.0f + (float)(i % 7) / 8.0f;
        bias[i] = (float)(i % 5) / 16.0f - 0.125f;
    }
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < DIM; i++) {
            x[r][i] = sinf((float)(r * DIM + i)) * (float)(1 + r % 3);
            y[r][i] = cosf((float)(r + 3 * i));
        }
    const shard_norm_t norm = {weight, bias};
    memcpy(want, x, sizeof want);
    for (int r = 0; r < ROWS; r++) {
        shard_add(want[r], y[r], DIM);
        shard_layer_norm(want[r], 1, DIM, &norm, 1e-12);
    }
    shard_set_threads(2);
    shard_add_layer_norm(&x[0][0], &y[0][0], ROWS, DIM, &norm, 1e-12);
    shard_set_threads(1);
    assert_memory_equal(x, want, sizeof want);
}

/* ------------------------------------------------------------ activations */

static void test_gelu_known_values(void **state)
{
    (void)state;
    /* x * Phi(x), Phi the standard normal CDF. */
    float x[6] = {0, 1, -1, 2, -3, 0.5f};
    const double want[6] = {0, 0.8413447461, -0.1586552539, 1.9544997361, -0.0040496941,
                            0.3457312306};
    shard_gelu(x, 6);
    for (int i = 0; i < 6; i++)
        assert_close(x[i], want[i], 1e-6);
}

static void test_relu_known_values(void **state)
{
    (void)state;
    float x[5] = {-1, 0, 2.5f, -1e-30f, 1e30f};
    const float want[5] = {0, 0, 2.5f, 0, 1e30f};
    shard_relu(x, 5);
    for (int i = 0; i < 5; i++)
        assert_close(x[i], want[i], 0.0);
}

static void test_activate_each_function(void **state)
{
    (void)state;
    const float in[4] = {-1, 0, 0.5f, 2};
    const struct {
        shard_activation_t act;
        double want[4];
    } table[] = {
        {SHARD_ACT_NONE, {-1, 0, 0.5, 2}},
        {SHARD_ACT_TANH, {-0.7615941560, 0, 0.4621171573, 0.9640275801}},
        {SHARD_ACT_RELU, {0, 0, 0.5, 2}},
        {SHARD_ACT_GELU, {-0.1586552539, 0, 0.3457312306, 1.9544997361}},
        {SHARD_ACT_SIGMOID, {0.2689414214, 0.5, 0.6224593312, 0.8807970780}},
    };
    for (size_t t = 0; t < sizeof table / sizeof table[0]; t++) {
        float x[4];
        memcpy(x, in, sizeof x);
        shard_activate(x, 4, table[t].act);
        for (int i = 0; i < 4; i++)
            if (!(fabs(x[i] - table[t].want[i]) <= 1e-6))
                fail_msg("activation %d of %g = %.9g, expected %.9g", (int)table[t].act,
                         (double)in[i], (double)x[i], table[t].want[i]);
    }
}

/* ------------------------------------------------------------ softmax, log-sum-exp */

/* softmax([1, 2, 3]) = e^(x-3) / (e^-2 + e^-1 + 1). */
static const double softmax_123[3] = {0.0900305732, 0.2447284711, 0.6652409558};

static void test_softmax_known_values(void **state)
{
    (void)state;
    float x[3] = {1, 2, 3};
    shard_softmax(x, 3);
    double sum = 0;
    for (int i = 0; i < 3; i++) {
        assert_close(x[i], softmax_123[i], 1e-7);
        sum += x[i];
    }
    assert_close(sum, 1.0, 1e-6);
}

static void test_softmax_stable_for_large_inputs(void **state)
{
    (void)state;
    /* exp(1000) overflows float and double: only a max-shifted softmax
     * gets these right. */
    float big[3] = {1001, 1002, 1003}, neg[3] = {-1003, -1002, -1001};
    shard_softmax(big, 3);
    shard_softmax(neg, 3);
    for (int i = 0; i < 3; i++) {
        assert_close(big[i], softmax_123[i], 1e-6);
        assert_close(neg[i], softmax_123[i], 1e-6);
    }
}

static void test_softmax_sums_to_one(void **state)
{
    (void)state;
    enum { N = 1000 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)((i * 7919) % 1000) / 37.0f - 10.0f;
    shard_softmax(x, N);
    double sum = 0;
    for (int i = 0; i < N; i++) {
        assert_true(x[i] >= 0.0f && x[i] <= 1.0f);
        sum += x[i];
    }
    assert_close(sum, 1.0, 1e-5);
}

static void test_softmax_masked_and_single(void **state)
{
    (void)state;
    /* A p_mask'd logit of -1e30 gets probability 0; one value gets 1. */
    float masked[3] = {-1e30f, 0, 0}, single[1] = {-123.5f};
    shard_softmax(masked, 3);
    shard_softmax(single, 1);
    assert_close(masked[0], 0.0, 0.0);
    assert_close(masked[1], 0.5, 1e-7);
    assert_close(masked[2], 0.5, 1e-7);
    assert_close(single[0], 1.0, 0.0);
    float untouched[1] = {5};
    shard_softmax(untouched, 0);
    assert_close(untouched[0], 5.0, 0.0);
}

static void test_log_sum_exp_known_values(void **state)
{
    (void)state;
    const float zeros[2] = {0, 0}, x123[3] = {1, 2, 3}, one[1] = {-4.25f};
    assert_close(shard_log_sum_exp(zeros, 2), log(2.0), 1e-12);
    /* 3 + log(1 + e^-1 + e^-2) */
    assert_close(shard_log_sum_exp(x123, 3), 3.4076059644, 1e-9);
    assert_close(shard_log_sum_exp(one, 1), -4.25, 0.0);
}

static void test_log_sum_exp_stable(void **state)
{
    (void)state;
    const float big[2] = {1000, 1000}, small[2] = {-1000, -1000}, masked[2] = {-1e30f, 0};
    assert_close(shard_log_sum_exp(big, 2), 1000.0 + log(2.0), 1e-9);
    assert_close(shard_log_sum_exp(small, 2), -1000.0 + log(2.0), 1e-9);
    assert_close(shard_log_sum_exp(masked, 2), 0.0, 0.0);
}

/* log_softmax as the LM scorer forms it: x_t - lse(x) = log softmax(x)_t. */
static void test_log_sum_exp_matches_softmax(void **state)
{
    (void)state;
    float x[3] = {1, 2, 3}, p[3] = {1, 2, 3};
    shard_softmax(p, 3);
    double lse = shard_log_sum_exp(x, 3);
    for (int i = 0; i < 3; i++)
        assert_close(x[i] - lse, log((double)p[i]), 1e-6);
}

static void test_gelu_parallel_matches_one_value_at_a_time(void **state)
{
    (void)state;
    enum { COUNT = 100003 }; /* chunks of the parallel loop, and a remainder */
    static float x[COUNT], want[COUNT];
    for (int i = 0; i < COUNT; i++)
        x[i] = want[i] = 8.0f * sinf((float)i);
    for (int i = 0; i < COUNT; i++)
        shard_gelu(&want[i], 1);
    shard_set_threads(2);
    shard_gelu(x, COUNT);
    shard_set_threads(1);
    assert_memory_equal(x, want, sizeof want);
}

/* oneDNN splits a primitive's work for the threads there are when it is
 * made: a primitive made under one thread count must not serve another. */
static void test_matmul_primitive_per_thread_count(void **state)
{
    (void)state;
    shard_error_t err = {0};
    shard_set_threads(1);
    const shard_matmul_t *one = shard_matmul_get(dnnl_f32, dnnl_f32, dnnl_f32, 16, 64, 32, 64, &err);
    shard_set_threads(2);
    const shard_matmul_t *two = shard_matmul_get(dnnl_f32, dnnl_f32, dnnl_f32, 16, 64, 32, 64, &err);
    shard_set_threads(1);
    const shard_matmul_t *one_again =
        shard_matmul_get(dnnl_f32, dnnl_f32, dnnl_f32, 16, 64, 32, 64, &err);
    assert_non_null(one);
    assert_non_null(two);
    assert_ptr_not_equal(one, two);
    assert_ptr_equal(one, one_again);
}

static void test_add(void **state)
{
    (void)state;
    float x[3] = {1, -2, 0.5f};
    const float y[3] = {0.25f, 2, -0.5f};
    shard_add(x, y, 3);
    assert_close(x[0], 1.25, 0.0);
    assert_close(x[1], 0.0, 0.0);
    assert_close(x[2], 0.0, 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_one_row_with_bias),
        cmocka_unit_test(test_add_layer_norm_parallel_rows_match_single_rows),
        cmocka_unit_test(test_gelu_parallel_matches_one_value_at_a_time),
        cmocka_unit_test(test_matmul_primitive_per_thread_count),
        cmocka_unit_test(test_linear_one_row_without_bias),
        cmocka_unit_test(test_linear_many_rows_with_bias),
        cmocka_unit_test(test_linear_many_rows_without_bias),
        cmocka_unit_test(test_linear_without_bias_overwrites_nan),
        cmocka_unit_test(test_linear_paths_agree),
        cmocka_unit_test(test_one_row_products_match_the_batch),
        cmocka_unit_test(test_packed_weights_give_the_stored_weights_bits),
        cmocka_unit_test(test_ordered_sgemm_is_batch_invariant),
        cmocka_unit_test(test_int8_fused_steps_give_the_steps_bits),
        cmocka_unit_test(test_linear_zero_rows_writes_nothing),
        cmocka_unit_test(test_layer_norm_unit_affine),
        cmocka_unit_test(test_layer_norm_applies_weight_and_bias),
        cmocka_unit_test(test_layer_norm_uses_eps),
        cmocka_unit_test(test_layer_norm_rows_are_independent),
        cmocka_unit_test(test_gelu_known_values),
        cmocka_unit_test(test_relu_known_values),
        cmocka_unit_test(test_activate_each_function),
        cmocka_unit_test(test_softmax_known_values),
        cmocka_unit_test(test_softmax_stable_for_large_inputs),
        cmocka_unit_test(test_softmax_sums_to_one),
        cmocka_unit_test(test_softmax_masked_and_single),
        cmocka_unit_test(test_log_sum_exp_known_values),
        cmocka_unit_test(test_log_sum_exp_stable),
        cmocka_unit_test(test_log_sum_exp_matches_softmax),
        cmocka_unit_test(test_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
