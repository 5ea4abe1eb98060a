/* state.c: the run state, what one caller's compute calls write into.
 *
 * Weights are read-only after shard_model_open; everything a call computes
 * lives here, so two threads with two states share one model. Buffers grow
 * to the largest batch seen and are kept: no fresh pages per batch. */
#include "engine_internal.h"

#include <stdlib.h>
#include <string.h>

float *shard_buffer_get(shard_buffer_t *buffer, size_t count)
{
    if (buffer->count < count) {
        /* Contents are not kept: free first so the peak is one buffer. */
        free(buffer->data);
        buffer->data = malloc(count * sizeof *buffer->data);
        buffer->count = buffer->data ? count : 0;
    }
    return buffer->data;
}

float *shard_buffer_zeros(shard_buffer_t *buffer, size_t count)
{
    float *data = shard_buffer_get(buffer, count);
    if (data)
        memset(data, 0, count * sizeof *data);
    return data;
}

static void buffer_free(shard_buffer_t *buffer)
{
    free(buffer->data);
    buffer->data = NULL;
    buffer->count = 0;
}

shard_state_t *shard_state_new(void) { return calloc(1, sizeof(shard_state_t)); }

void shard_state_destroy(shard_state_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    shard_state_t *state = *self_p;
    /* Every buffer of struct shard_state (the assertion below counts them). */
    shard_buffer_t *buffers[] = {&state->qkv,
                                 &state->ctx,  &state->ffn,        &state->scores,
                                 &state->zero, &state->packed_out, &state->summary,
                                 &state->proj_x, &state->proj_logits};
    _Static_assert(sizeof buffers / sizeof buffers[0] * sizeof(shard_buffer_t) +
                       sizeof(shard_acts_t *) + sizeof(double) == sizeof(shard_state_t),
                   "shard_state_destroy frees every buffer");
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
        buffer_free(buffers[i]);
    shard_acts_destroy(&state->acts);
    free(state);
    *self_p = NULL;
}

shard_acts_t *shard_state_acts(shard_state_t *state, shard_error_t *err)
{
    if (!state->acts && !(state->acts = shard_acts_new()))
        shard_error_set(err, SHARD_ERR_NOMEM, "shard_state_acts: out of memory");
    return state->acts;
}
