/* tensor_file.c: the reader-independent part of tensor_file_t (dtype names
 * and sizes, lookup, teardown). The readers live in safetensors.c and
 * torch.c; both fill entries with malloc'd names and set release for
 * whatever backs the data. */
#include "shard_checkpoint.h"

#include <stdlib.h>
#include <string.h>

/* Indexed by tensor_dtype_t; names follow the safetensors spelling. */
static const char *const tensor_dtype_names[TENSOR_DTYPE_COUNT_] = {
    [TENSOR_F32] = "F32", [TENSOR_F16] = "F16", [TENSOR_BF16] = "BF16",
    [TENSOR_F64] = "F64", [TENSOR_I64] = "I64", [TENSOR_I32] = "I32",
    [TENSOR_I8] = "I8",   [TENSOR_U8] = "U8",   [TENSOR_BOOL] = "BOOL",
};

static const size_t tensor_dtype_sizes[TENSOR_DTYPE_COUNT_] = {
    [TENSOR_F32] = 4, [TENSOR_F16] = 2, [TENSOR_BF16] = 2,
    [TENSOR_F64] = 8, [TENSOR_I64] = 8, [TENSOR_I32] = 4,
    [TENSOR_I8] = 1,  [TENSOR_U8] = 1,  [TENSOR_BOOL] = 1,
};

const char *tensor_dtype_name(tensor_dtype_t dtype)
{
    if ((unsigned)dtype >= (unsigned)TENSOR_DTYPE_COUNT_)
        return "unknown";
    return tensor_dtype_names[dtype];
}

/* 0 for a value outside the enum, so a caller multiplying by it gets an
 * empty tensor rather than reading past an array. */
size_t tensor_dtype_size(tensor_dtype_t dtype)
{
    if ((unsigned)dtype >= (unsigned)TENSOR_DTYPE_COUNT_)
        return 0;
    return tensor_dtype_sizes[dtype];
}

void tensor_file_destroy(tensor_file_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    tensor_file_t *self = *self_p;
    if (self->entries != NULL) {
        for (size_t i = 0; i < self->count; i++)
            free(self->entries[i].name);
        free(self->entries);
    }
    /* release runs after the entries are gone but before path, so a reader
     * may still name the file in a message from its teardown. */
    if (self->release != NULL)
        self->release(self);
    free(self->path);
    free(self);
    *self_p = NULL;
}

/* Linear scan: a checkpoint holds a few hundred tensors and lookups happen
 * once per weight at load time, so an index would not pay for itself. */
const tensor_entry_t *tensor_file_find(const tensor_file_t *file, const char *name)
{
    if (file == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < file->count; i++) {
        if (file->entries[i].name != NULL && strcmp(file->entries[i].name, name) == 0)
            return &file->entries[i];
    }
    return NULL;
}
