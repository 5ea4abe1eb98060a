/* fuzz_unpickle.c: libFuzzer target for the strict pickle machine
 * (shard/checkpoint/unpickle.c), alone: no archive, no storage bytes.
 *
 * Each input runs twice: once as one whole pickle (data.pkl of a zip
 * archive), once as a stream of pickles read one after the other (torch's
 * legacy format), sharing the storage table and arena as the legacy reader
 * does. Every result is walked, so a value the machine built wrongly (a
 * dangling item, a bad kind) shows under ASan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "unpickle.h"

/* Visits every value reachable from v without recursion depth limits the
 * machine does not have: an explicit stack, bounded by a step budget. */
static size_t walk(const pk_value_t *root)
{
    enum { STACK = 4096, BUDGET = 1 << 20 };
    const pk_value_t *stack[STACK];
    size_t n = 0, steps = 0, sum = 0;
    stack[n++] = root;
    while (n > 0 && steps++ < BUDGET) {
        const pk_value_t *v = stack[--n];
        sum += (size_t)v->kind;
        switch (v->kind) {
        case PK_STR:
        case PK_BIGINT: sum += v->u.str.len + (size_t)(unsigned char)v->u.str.bytes[0]; break;
        case PK_TUPLE:
        case PK_LIST:
            for (size_t i = 0; i < v->u.seq.count && n < STACK; i++)
                stack[n++] = v->u.seq.items[i];
            break;
        case PK_DICT:
            for (size_t i = 0; i < v->u.dict.count && n + 1 < STACK; i++) {
                stack[n++] = v->u.dict.pairs[i].key;
                stack[n++] = v->u.dict.pairs[i].value;
            }
            break;
        default: break;
        }
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the walks' sums go, so the compiler keeps the reads. */
size_t fuzz_unpickle_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t sink = 0;
    shard_error_t err = {0};
    pk_unpickler_t u;
    const pk_value_t *result = NULL;

    pk_unpickler_init(&u, "fuzz", "input", &err);
    if (size > 0 && pk_load(&u, "data.pkl", data, size, false, &result, NULL) == SHARD_OK)
        sink += walk(result);
    pk_unpickler_free(&u);

    pk_unpickler_init(&u, "fuzz", "input", &err);
    size_t pos = 0;
    for (int k = 0; k < 8 && pos < size; k++) {
        size_t used = 0;
        if (pk_load(&u, "stream", data + pos, size - pos, true, &result, &used) != SHARD_OK)
            break;
        sink += walk(result);
        pos += used;
    }
    for (size_t i = 0; i < u.n_storages; i++)
        sink += strlen(u.storages[i].key) + u.storages[i].nbytes;
    pk_unpickler_free(&u);
    fuzz_unpickle_sink += sink;
    return 0;
}
