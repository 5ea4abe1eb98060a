/* tensor_file.c: the reader-independent part of tensor_file_t (dtype names
 * and sizes, lookup, teardown). The readers live in safetensors.c and
 * torch.c; both fill entries with malloc'd names and set release for
 * whatever backs the data. */
#include "shard_checkpoint.h"

#include <stdio.h>
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
    for (size_t i = 0; i < self->n_copies; i++)
        free(self->copies[i]);
    free(self->copies);
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

/* Rows and columns swapped into a new buffer the file owns: the engine
 * wants [out, in] where TF stores [in, out]. */
static shard_status_t transpose_entry(tensor_file_t *file, tensor_entry_t *e, shard_error_t *err)
{
    size_t elem = tensor_dtype_size(e->dtype);
    size_t rows = (size_t)e->shape[0], cols = (size_t)e->shape[1];
    void **copies = realloc(file->copies, (file->n_copies + 1) * sizeof *copies);
    uint8_t *out = malloc(e->nbytes > 0 ? e->nbytes : 1);
    if (copies != NULL)
        file->copies = copies;
    if (copies == NULL || out == NULL) {
        free(out);
        return shard_error_set(err, SHARD_ERR_NOMEM,
                               "tensor_file_fetch: %s: out of memory transposing %s",
                               file->path, e->name);
    }
    /* Stored as [cols][rows]; element (r, c) of the result is (c, r) there. */
    const uint8_t *in = e->data;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            memcpy(out + (r * cols + c) * elem, in + (c * rows + r) * elem, elem);
    file->copies[file->n_copies++] = out;
    e->data = out;
    e->held = true;
    e->transpose = false; /* done once; a second fetch sees the copy */
    return SHARD_OK;
}

shard_status_t tensor_file_fetch(tensor_file_t *file, const char *name,
                                 const tensor_entry_t **out, shard_error_t *err)
{
    *out = NULL;
    tensor_entry_t *e = (tensor_entry_t *)tensor_file_find(file, name);
    if (e == NULL)
        return SHARD_OK;
    size_t index = (size_t)(e - file->entries);
    shard_status_t st = SHARD_OK;
    if (!e->resolved && file->resolve != NULL)
        st = file->resolve(file, index, err);
    if (st == SHARD_OK && !e->resolved)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_fetch: %s: tensor %s has "
                             "no dtype or shape", file->path, name);
    if (st == SHARD_OK && e->data == NULL && file->load != NULL)
        st = file->load(file, index, err);
    if (st == SHARD_OK && e->data == NULL)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_fetch: %s: tensor %s has "
                             "no data", file->path, name);
    if (st == SHARD_OK && e->transpose)
        st = transpose_entry(file, e, err);
    if (st == SHARD_OK)
        *out = e;
    return st;
}

void tensor_file_discard(tensor_file_t *file, const char *name)
{
    tensor_entry_t *e = (tensor_entry_t *)tensor_file_find(file, name);
    if (e != NULL && e->data != NULL && file->discard != NULL)
        file->discard(file, (size_t)(e - file->entries));
}

shard_status_t tensor_file_translate(tensor_file_t *file, tensor_translate_fn fn,
                                     shard_error_t *err)
{
    size_t kept = 0;
    for (size_t i = 0; i < file->count; i++) {
        tensor_entry_t e = file->entries[i];
        char name[512];
        bool transpose = false;
        if (!fn(e.name, name, sizeof name, &transpose)) {
            free(e.name);
            continue;
        }
        char *renamed = NULL;
        shard_status_t st = SHARD_OK;
        if (transpose && e.resolved && e.ndim != 2)
            st = shard_error_set(err, SHARD_ERR_FORMAT,
                                 "tensor_file_translate: %s: tensor %s has %d dimensions, "
                                 "a kernel to transpose needs 2", file->path, e.name, e.ndim);
        else if ((renamed = strdup(name)) == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_translate: out of memory");
        if (st != SHARD_OK) {
            /* Keeps the entries not yet renamed so destroy frees their names. */
            memmove(&file->entries[kept], &file->entries[i],
                    (file->count - i) * sizeof file->entries[0]);
            file->count = kept + (file->count - i);
            return st;
        }
        free(e.name);
        e.name = renamed;
        if (transpose) {
            int64_t rows = e.shape[0];
            e.shape[0] = e.shape[1];
            e.shape[1] = rows;
            e.transpose = !e.transpose;
        }
        file->entries[kept++] = e;
    }
    file->count = kept;
    return SHARD_OK;
}
