/* tensor_file.h (internal to shard/): a checkpoint weight file as a list of
 * named tensors. Two readers fill it: safetensors (memory-mapped, zero-copy)
 * and torch's pytorch_model.bin zip archive. */
#ifndef XLM_SHARD_TENSOR_FILE_H
#define XLM_SHARD_TENSOR_FILE_H

#include "shard.h"

typedef enum {
    TENSOR_F32 = 0,
    TENSOR_F16,
    TENSOR_BF16,
    TENSOR_F64,
    TENSOR_I64,
    TENSOR_I32,
    TENSOR_I8,
    TENSOR_U8,
    TENSOR_BOOL,
    TENSOR_DTYPE_COUNT_
} tensor_dtype_t;

const char *tensor_dtype_name(tensor_dtype_t dtype);
size_t tensor_dtype_size(tensor_dtype_t dtype);

enum { TENSOR_MAX_DIMS = 8 };

/* One tensor: a borrowed view of contiguous row-major data owned by the
 * tensor file (a mapped region or a buffer it allocated). */
typedef struct {
    char *name;
    tensor_dtype_t dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const void *data; /* NULL never: every entry's bytes were checked */
    size_t nbytes;    /* = numel * dtype size, checked */
} tensor_entry_t;

typedef struct tensor_file tensor_file_t;

struct tensor_file {
    char *path;
    size_t count;
    tensor_entry_t *entries;
    /* Reader-specific teardown of what backs the entries' data. */
    void (*release)(tensor_file_t *self);
    void *backing;
    size_t backing_size;
};

/* Opens model.safetensors: mmap, header checked (JSON, dtypes, shapes,
 * offsets inside the data block, no overlaps needed). */
tensor_file_t *tensor_file_open_safetensors(const char *path, shard_error_t *err);

/* Opens pytorch_model.bin (torch zip archive holding a pickled state dict).
 * Tensors that share a storage point into the same bytes. */
tensor_file_t *tensor_file_open_torch(const char *path, shard_error_t *err);

/* Frees entries and calls release; accepts NULL. */
void tensor_file_destroy(tensor_file_t **self_p);

/* Finds an entry by exact name, or NULL. */
const tensor_entry_t *tensor_file_find(const tensor_file_t *file, const char *name);

#endif
