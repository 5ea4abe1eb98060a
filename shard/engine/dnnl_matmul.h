/* dnnl_matmul.h: oneDNN matmul primitives for the reduced-precision
 * kernels (kernels_int8.c, kernels_bf16.c), one per shape and cached for
 * the process. Internal to the engine. */
#ifndef XLM_SHARD_DNNL_MATMUL_H
#define XLM_SHARD_DNNL_MATMUL_H

#include "engine_internal.h"

#include <oneapi/dnnl/dnnl_types.h>

typedef struct shard_matmul shard_matmul_t;

/* oneDNN's fast kernels (brgemm, AMX) need the row count when the
 * primitive is made; a row count left to run time gets the slower
 * gemm:jit (4x slower for int8 here, bench/row_tiles.md). Products run in
 * chunks of SHARD_MATMUL_ROWS rows, the last one a multiple of
 * SHARD_ROW_TILE: a handful of fixed-row primitives per shape. */
enum { SHARD_MATMUL_ROWS = 256 };

/* The primitive for dst[rows][n] (dst type) = src[rows][k] (src type) times
 * the weights read as B[k][n] from W[n][ldw] (transposed, wei type); rows 0:
 * given at each run. Created on first request, the same pointer after. NULL
 * with err set when oneDNN has no implementation. */
const shard_matmul_t *shard_matmul_get(dnnl_data_type_t src, dnnl_data_type_t wei,
                                       dnnl_data_type_t dst, int64_t rows, int64_t k, int64_t n,
                                       int64_t ldw, shard_error_t *err);
/* Makes every fixed-row primitive shard_matmul_rows will use for this shape. */
shard_status_t shard_matmul_prepare(dnnl_data_type_t src, dnnl_data_type_t wei,
                                    dnnl_data_type_t dst, int64_t k, int64_t n, int64_t ldw,
                                    shard_error_t *err);
/* Runs it for m rows (the primitive's own when it has them); false when
 * oneDNN failed (out of memory). */
bool shard_matmul_run(const shard_matmul_t *matmul, int64_t m, const void *src,
                      const void *weights, void *dst);
/* dst[rows][n] = src[rows][k] W^T for rows a multiple of SHARD_ROW_TILE (or
 * 1: a generation step's one position), in chunks of fixed-row primitives
 * (elements of src_size and dst_size bytes). */
bool shard_matmul_rows(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                       int64_t k, int64_t n, int64_t ldw, int64_t rows, const void *x,
                       size_t src_size, const void *weights, void *y, size_t dst_size);
/* A layer's weights reordered once into the layout oneDNN's kernels read
 * (instead of at every run), in panels of `panel` output channels (the LM
 * projection's PROJECT_VOCAB blocks; 0: one panel). One allocation, freed
 * with free(). */
typedef struct shard_packed shard_packed_t;
/* *packed NULL (and SHARD_OK) where the kernel reads W[n][ldw] as it is;
 * wei_size: bytes of one weight. */
shard_status_t shard_matmul_pack(dnnl_data_type_t src, dnnl_data_type_t wei, dnnl_data_type_t dst,
                                 int64_t k, int64_t n, int64_t ldw, const void *weights,
                                 size_t wei_size, int64_t panel, shard_packed_t **packed,
                                 shard_error_t *err);
/* Outputs [o0, o0 + no) are whole panels (the last one may be short). */
bool shard_packed_covers(const shard_packed_t *packed, int64_t o0, int64_t no);
/* y[rows][no] = x[rows][k] W[o0:o0+no]^T from the packed weights, rows a
 * multiple of SHARD_ROW_TILE or 1; false when not covered or oneDNN failed. */
bool shard_matmul_packed_rows(const shard_packed_t *packed, int64_t o0, int64_t no,
                              int64_t rows, const void *x, size_t src_size, void *y,
                              size_t dst_size);
/* A product of outputs [o0, o0 + no) over inputs [c0, c0 + nc) of l that
 * its packed weights serve. */
static inline bool shard_linear_packed_covers(const shard_linear_t *l, int64_t o0, int64_t no,
                                              int64_t c0, int64_t nc)
{
    return l->packed && c0 == 0 && nc == l->in && shard_packed_covers(l->packed, o0, no);
}
/* The implementation oneDNN picked, e.g. "gemm:jit". */
const char *shard_matmul_impl(const shard_matmul_t *matmul);

#endif
