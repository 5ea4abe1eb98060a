/* dnnl_matmul.h: oneDNN matmul primitives for the reduced-precision
 * kernels (kernels_int8.c, kernels_bf16.c), one per shape and cached for
 * the process. Internal to the engine. */
#ifndef XLM_SHARD_DNNL_MATMUL_H
#define XLM_SHARD_DNNL_MATMUL_H

#include "shard_engine.h"

#include <oneapi/dnnl/dnnl_types.h>

typedef struct shard_matmul shard_matmul_t;

/* The primitive for dst[M][n] (dst type) = src[M][k] (src type) times the
 * weights read as B[k][n] from W[n][ldw] (transposed, wei type), M given
 * at each run; created on first request, the same pointer after. NULL
 * with err set when oneDNN has no implementation. */
const shard_matmul_t *shard_matmul_get(dnnl_data_type_t src, dnnl_data_type_t wei,
                                       dnnl_data_type_t dst, int64_t k, int64_t n, int64_t ldw,
                                       shard_error_t *err);
/* Runs it for m rows; false when oneDNN failed (out of memory). */
bool shard_matmul_run(const shard_matmul_t *matmul, int64_t m, const void *src,
                      const void *weights, void *dst);
/* The implementation oneDNN picked, e.g. "gemm:jit". */
const char *shard_matmul_impl(const shard_matmul_t *matmul);

#endif
