/* kernels.c: the numeric building blocks. Matrix products go to BLAS; the
 * rest are simple loops over contiguous rows. */
#include "shard_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void shard_linear(const shard_linear_t *linear, const float *x, int64_t rows, float *y)
{
    if (rows <= 0)
        return;
    const int64_t in = linear->in, out = linear->out;
    if (linear->bias) {
        for (int64_t r = 0; r < rows; r++)
            memcpy(y + r * out, linear->bias, (size_t)out * sizeof *y);
    }
    if (rows == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)out, (blasint)in, 1.0f, linear->weight,
                    (blasint)in, x, 1, linear->bias ? 1.0f : 0.0f, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)out,
                (blasint)in, 1.0f, x, (blasint)in, linear->weight, (blasint)in,
                linear->bias ? 1.0f : 0.0f, y, (blasint)out);
}

void shard_layer_norm(float *x, int64_t rows, int64_t dim, const shard_norm_t *norm, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * dim;
        /* Two passes in double: the mean is subtracted before squaring, so
         * rows with a large offset keep their precision. */
        double mean = 0.0;
        for (int64_t i = 0; i < dim; i++)
            mean += row[i];
        mean /= (double)dim;
        double var = 0.0;
        for (int64_t i = 0; i < dim; i++) {
            double centered = row[i] - mean;
            var += centered * centered;
        }
        var /= (double)dim;
        float inv = (float)(1.0 / sqrt(var + eps));
        float fmean = (float)mean;
        for (int64_t i = 0; i < dim; i++)
            row[i] = (row[i] - fmean) * inv * norm->weight[i] + norm->bias[i];
    }
}

void shard_gelu(float *x, size_t count)
{
    /* The exact (erf) GELU, as XLM and torch's default gelu use. */
    const float inv_sqrt2 = 0.70710678118654752440f;
    for (size_t i = 0; i < count; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * inv_sqrt2));
}

void shard_relu(float *x, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void shard_activate(float *x, size_t count, shard_activation_t activation)
{
    switch (activation) {
    case SHARD_ACT_TANH:
        for (size_t i = 0; i < count; i++)
            x[i] = tanhf(x[i]);
        break;
    case SHARD_ACT_RELU: shard_relu(x, count); break;
    case SHARD_ACT_GELU: shard_gelu(x, count); break;
    case SHARD_ACT_SIGMOID:
        for (size_t i = 0; i < count; i++)
            x[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    case SHARD_ACT_NONE:
    case SHARD_ACT_COUNT_: break;
    }
}

void shard_softmax(float *x, int64_t count)
{
    if (count <= 0)
        return;
    float max = x[0];
    for (int64_t i = 1; i < count; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < count; i++)
        x[i] *= inv;
}

double shard_log_sum_exp(const float *x, int64_t count)
{
    float max = x[0];
    for (int64_t i = 1; i < count; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++)
        sum += exp((double)x[i] - (double)max);
    return (double)max + log(sum);
}

void shard_add(float *x, const float *y, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] += y[i];
}
