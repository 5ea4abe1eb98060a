/* fuzz_packet.c: libFuzzer target for the packets between pipeline stages
 * (worker/micro.c: worker_packet_read), the bytes a stage takes from the
 * one before it over MPI.
 *
 * A packet that parses is used as a stage uses it: the micro-batch's
 * inputs, each item's own rows (worker_item_inputs), its windows and
 * masked copies; then it must survive a round trip: its size, written
 * into a buffer as large as the input, read again, written to the same
 * bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the reads' sums go, so the compiler keeps the reads. */
uint64_t fuzz_packet_sink;
double fuzz_packet_values;

static void use(const worker_micro_t *m)
{
    uint64_t sink = 0; /* unsigned: the sums of hostile values wrap */
    double values = 0;
    shard_inputs_t all = worker_micro_inputs(m);
    for (int64_t c = 0; c < all.batch * all.seq; c++)
        sink += (uint64_t)all.input_ids[c] + (uint64_t)all.attention_mask[c];
    for (int64_t t = 0; t < m->acts->n_tokens * m->acts->emb_dim; t++)
        values += m->acts->hidden[t];
    for (int i = 0; i < m->n_items; i++) {
        const worker_item_t *it = &m->items[i];
        shard_inputs_t in;
        shard_error_t err = {0};
        if (worker_item_inputs(m, it, &in, &err) == SHARD_OK) {
            for (int64_t c = 0; c < in.batch * in.seq; c++)
                sink += (uint64_t)in.input_ids[c] + (uint64_t)in.attention_mask[c];
            for (int64_t c = 0; in.p_mask && c < in.batch * in.seq; c++)
                values += in.p_mask[c];
            worker_inputs_free(&in);
        }
        for (int64_t r = 0; it->windows && r < it->orig_rows; r++)
            sink += (uint64_t)it->windows[r].from + (uint64_t)it->windows[r].to;
        for (int64_t c = 0; c < it->n_copies; c++)
            sink += (uint64_t)it->copies[c].row + (uint64_t)it->copies[c].pos;
    }
    fuzz_packet_sink += sink;
    fuzz_packet_values += values;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    shard_error_t err = {0};
    worker_micro_t *m = worker_packet_read(data, size, &err);
    if (memchr(err.message, 0, sizeof err.message) == NULL)
        __builtin_trap();
    if (!m)
        return 0;
    use(m);
    size_t need = worker_packet_size(m);
    if (need > size)
        __builtin_trap(); /* a packet re-encodes to no more than it took */
    /* Written back into a buffer of the size it came in (the header's
     * bounds are relative to the packet's size), the rest zero. */
    unsigned char *buffer = calloc(size, 1);
    if (!buffer)
        __builtin_trap();
    if (worker_packet_write(m, buffer, size) != need)
        __builtin_trap();
    worker_micro_t *again = worker_packet_read(buffer, size, &err);
    if (!again)
        __builtin_trap(); /* read once, refused after a round trip */
    unsigned char *second = calloc(size, 1);
    if (!second || worker_packet_write(again, second, size) != need || memcmp(buffer, second, size) != 0)
        __builtin_trap();
    free(second);
    worker_micro_destroy(&again);
    free(buffer);
    worker_micro_destroy(&m);
    return 0;
}
