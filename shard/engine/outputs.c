/* outputs.c: named output tensors. */
#include "engine_internal.h"

#include <stdlib.h>
#include <string.h>

void shard_outputs_init(shard_outputs_t *outputs) { memset(outputs, 0, sizeof *outputs); }

void shard_outputs_clear(shard_outputs_t *outputs)
{
    for (int i = 0; i < outputs->count; i++) {
        free(outputs->tensors[i].f32);
        free(outputs->tensors[i].i64);
        free(outputs->tensors[i].row_lengths);
    }
    shard_outputs_init(outputs);
}

int64_t shard_tensor_numel(const shard_tensor_t *tensor)
{
    if (tensor->row_lengths) {
        int64_t total = 0;
        for (int64_t i = 0; i < tensor->shape[0]; i++)
            total += tensor->row_lengths[i];
        return total;
    }
    int64_t numel = 1;
    for (int d = 0; d < tensor->ndim; d++)
        numel *= tensor->shape[d];
    return numel;
}

shard_tensor_t *shard_outputs_add(shard_outputs_t *outputs, const char *name, shard_elem_t elem,
                                  int ndim, const int64_t *shape, shard_error_t *err)
{
    if (outputs->count >= SHARD_MAX_OUTPUTS || ndim < 1 || ndim > SHARD_MAX_DIMS) {
        shard_error_set(err, SHARD_ERR_INPUT, "shard_outputs_add: cannot add %s", name);
        return NULL;
    }
    shard_tensor_t *tensor = &outputs->tensors[outputs->count];
    memset(tensor, 0, sizeof *tensor);
    snprintf(tensor->name, sizeof tensor->name, "%s", name);
    tensor->elem = elem;
    tensor->ndim = ndim;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || shard_mul_overflows(numel, (size_t)shape[d], &numel)) {
            shard_error_set(err, SHARD_ERR_NOMEM, "shard_outputs_add: %s too large", name);
            return NULL;
        }
        tensor->shape[d] = shape[d];
    }
    if (numel == 0)
        numel = 1;
    if (elem == SHARD_F32)
        tensor->f32 = calloc(numel, sizeof *tensor->f32);
    else
        tensor->i64 = calloc(numel, sizeof *tensor->i64);
    if (!tensor->f32 && !tensor->i64) {
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_outputs_add: out of memory for %s", name);
        return NULL;
    }
    outputs->count++;
    return tensor;
}

const shard_tensor_t *shard_outputs_find(const shard_outputs_t *outputs, const char *name)
{
    for (int i = 0; i < outputs->count; i++)
        if (strcmp(outputs->tensors[i].name, name) == 0)
            return &outputs->tensors[i];
    return NULL;
}
