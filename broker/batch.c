/* batch.c: which queued requests share a micro-batch.
 *
 * The workers compute only the real tokens of a micro-batch (padding is
 * packed away), so what a micro-batch costs is the sum of its row lengths,
 * which must stay within the pipeline's budget; the padded size rows *
 * longest row only sizes buffers and is kept within PROTO_PADDED_FACTOR
 * times the budget. Requests of any length may share a micro-batch. The
 * oldest request always goes first, so no request waits behind a stream of
 * better-fitting ones. No timer: with credit available a request leaves at
 * once; under load the queue fills while the pipelines are busy and batches
 * form by themselves.
 */
#include "broker_internal.h"

broker_batch_key_t broker_batch_key_of(const Xlm__Request *rq)
{
    const proto_task_t task = (proto_task_t)rq->task;
    const proto_task_info_t *info = proto_task_info(task);
    return (broker_batch_key_t){.task = task,
                                .n_choices = info && info->n_choices ? rq->n_choices : 0};
}

bool broker_batch_key_equal(const broker_batch_key_t *a, const broker_batch_key_t *b)
{
    return a->task == b->task && a->n_choices == b->n_choices;
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
    int64_t rows = head->rows, longest = head->max_len, tokens = head->tokens;
    size_t count = 1;
    for (size_t i = 1; i < n && count < max_requests; i++) {
        const broker_batch_item_t *it = &items[i];
        if (it->alone || !broker_batch_key_equal(&it->key, &head->key))
            continue;
        int64_t new_longest = it->max_len > longest ? it->max_len : longest;
        int64_t new_rows = rows + it->rows, new_tokens = tokens + it->tokens;
        /* rows and lengths are bounded by the codec (2^16 rows of 2^20), no overflow. */
        if ((uint64_t)new_tokens > budget ||
            (uint64_t)(new_rows * new_longest) > PROTO_PADDED_FACTOR * budget)
            continue;
        rows = new_rows;
        longest = new_longest;
        tokens = new_tokens;
        chosen[count++] = i;
    }
    return count;
}
