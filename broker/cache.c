/* cache.c: replies already delivered, kept by client id for dedup_ms so
 * that a client's retry of a completed request gets the same reply again
 * instead of a second run. Oldest first in one list; since every entry
 * lives equally long that is also expiry order. Bounded in entries and
 * bytes: past either bound the oldest go first. */
#include "broker_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void done_drop(broker_t *b, broker_done_t *d)
{
    broker_list_remove(&d->link);
    broker_map_remove(b->done_ids, d->id, strlen(d->id));
    b->done_count--;
    b->done_bytes -= d->bytes;
    zmq_msg_close(&d->reply);
    free(d);
}

void broker_done_add(broker_t *b, const char *id, zmq_msg_t *reply)
{
    if (b->config.dedup_ms == 0 || b->config.dedup_max == 0)
        return;
    broker_done_t *old = broker_map_get(b->done_ids, id, strlen(id));
    if (old)
        done_drop(b, old);
    broker_done_t *d = calloc(1, sizeof *d);
    if (!d)
        return; /* a retry would run again: correct, only slower */
    snprintf(d->id, sizeof d->id, "%s", id);
    zmq_msg_init(&d->reply);
    if (zmq_msg_copy(&d->reply, reply) != 0 ||
        broker_map_put(b->done_ids, d->id, strlen(d->id), d) != BROKER_OK) {
        zmq_msg_close(&d->reply);
        free(d);
        return;
    }
    d->bytes = zmq_msg_size(&d->reply) + sizeof *d;
    d->expires_us = broker_now_us() + (int64_t)b->config.dedup_ms * 1000;
    broker_list_push_back(&b->done, &d->link);
    b->done_count++;
    b->done_bytes += d->bytes;
    while (b->done_count > b->config.dedup_max || b->done_bytes > b->config.dedup_bytes)
        done_drop(b, BROKER_CONTAINER(b->done.next, broker_done_t, link));
}

broker_done_t *broker_done_find(const broker_t *b, const char *id)
{
    broker_done_t *d = broker_map_get(b->done_ids, id, strlen(id));
    if (d && d->expires_us <= broker_now_us())
        return NULL; /* expired, dropped by the next broker_done_expire */
    return d;
}

void broker_done_expire(broker_t *b, int64_t now)
{
    while (!broker_list_empty(&b->done)) {
        broker_done_t *d = BROKER_CONTAINER(b->done.next, broker_done_t, link);
        if (d->expires_us > now)
            break;
        done_drop(b, d);
    }
}

void broker_done_clear(broker_t *b)
{
    while (!broker_list_empty(&b->done))
        done_drop(b, BROKER_CONTAINER(b->done.next, broker_done_t, link));
}
