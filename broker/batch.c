/* batch.c: which queued requests share a micro-batch.
 *
 * The worker pads a micro-batch to its longest row, so the cost of a
 * micro-batch is rows * longest row ("padded tokens"), which must stay
 * within the pipeline's budget. Requests are grouped by length bucket
 * (quarter octaves: lengths of one bucket differ by less than 25%), so the
 * padding stays small without sorting the queue. The oldest request always
 * goes first, so no request waits behind a stream of better-fitting ones.
 * No timer: with credit available a request leaves at once; under load the
 * queue fills while the pipelines are busy and batches form by themselves.
 */
#include "broker_internal.h"

int broker_batch_bucket(int64_t len)
{
    if (len <= 1)
        return 0;
    int octave = 63 - __builtin_clzll((unsigned long long)len);
    /* The two bits below the leading one: the quarter within the octave. */
    int quarter = octave >= 2 ? (int)((len >> (octave - 2)) & 3) : (int)((len << (2 - octave)) & 3);
    return 4 * octave + quarter;
}

size_t broker_batch_select(const broker_batch_item_t *items, size_t n, uint64_t budget,
                           size_t max_requests, size_t *chosen)
{
    if (n == 0 || max_requests == 0)
        return 0;
    chosen[0] = 0;
    const broker_batch_item_t *head = &items[0];
    if (head->alone)
        return 1;
    int bucket = broker_batch_bucket(head->max_len);
    int64_t rows = head->rows, longest = head->max_len;
    size_t count = 1;
    for (size_t i = 1; i < n && count < max_requests; i++) {
        const broker_batch_item_t *it = &items[i];
        if (it->alone || it->key != head->key || broker_batch_bucket(it->max_len) != bucket)
            continue;
        int64_t new_longest = it->max_len > longest ? it->max_len : longest;
        int64_t new_rows = rows + it->rows;
        /* rows and lengths are bounded by the codec (2^16 rows of 2^20), no overflow. */
        if ((uint64_t)(new_rows * new_longest) > budget)
            continue;
        rows = new_rows;
        longest = new_longest;
        chosen[count++] = i;
    }
    return count;
}
