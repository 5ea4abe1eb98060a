/* queue.c: stage 0's queue of micro-batches waiting to run, and its answers
 * without a computation (errors, credit given back). Calls link.c. */
#include "first.h"

#include <stdlib.h>
#include <string.h>

void first_enqueue(first_t *f, worker_micro_t *m)
{
    queued_t *q = calloc(1, sizeof *q);
    if (!q) {
        worker_log(f->st->log, WORKER_LOG_ERROR, "first_enqueue: out of memory queueing "
                   "micro-batch %llu", (unsigned long long)m->micro_id);
        worker_micro_destroy(&m);
        return;
    }
    q->micro = m;
    if (f->tail)
        f->tail->next = q;
    else
        f->head = q;
    f->tail = q;
}

worker_micro_t *first_dequeue(first_t *f)
{
    queued_t *q = f->head;
    if (!q)
        return NULL;
    f->head = q->next;
    if (!f->head)
        f->tail = NULL;
    worker_micro_t *m = q->micro;
    free(q);
    return m;
}

void first_reply_error(first_t *f, uint64_t batch_id, uint64_t ticket, const char *id,
                       proto_status_t status, const char *message, uint32_t credit)
{
    worker_item_t item = {.ticket = ticket, .batch_id = batch_id, .credit = credit,
                          .received_us = worker_now_us()};
    snprintf(item.id, sizeof item.id, "%s", id ? id : "");
    worker_reply_t reply;
    worker_error_t err;
    worker_status_t rc = worker_reply_pack(&reply, &item, status, message, NULL, NULL, NULL, 0, 0,
                                           0, &err);
    if (reply.frame && (rc = worker_replies_send(f->st->link, &reply, 1, NULL, 0, &err)) == WORKER_OK)
        return;
    worker_log(f->st->log, WORKER_LOG_ERROR, "answering ticket %llu: %s",
               (unsigned long long)ticket, err.message);
}

void first_give_credit(first_t *f, uint32_t credit)
{
    worker_error_t err;
    if (credit && worker_link_send_credit(f->st->link, credit, &err))
        worker_log(f->st->log, WORKER_LOG_ERROR, "%s", err.message);
}
