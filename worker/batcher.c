/* batcher.c: stage 0's batcher: a Batch from the broker into micro-batches
 * (requests decoded, checked against the model, prepared, grouped by
 * signature within the stages' token budget) and generation jobs; and
 * cancelled tickets taken out before they run. Calls prepare.c, queue.c and
 * generate.c. */
#include "first.h"

#include <stdlib.h>
#include <string.h>

static bool same_signature(const worker_prepared_t *a, const worker_prepared_t *b)
{
    return (a->langs != NULL) == (b->langs != NULL) && (a->types != NULL) == (b->types != NULL);
}

bool worker_fits_budget(const worker_prepared_t *p, uint64_t budget)
{
    return (uint64_t)p->tokens <= budget &&
           (uint64_t)(p->item.rows * p->item.seq) <= PROTO_PADDED_FACTOR * budget;
}

size_t worker_group_end(const worker_prepared_t *preps, size_t first, size_t n, uint64_t budget)
{
    size_t end = first + 1;
    int64_t rows = preps[first].item.rows, seq = preps[first].item.seq;
    int64_t tokens = preps[first].tokens;
    while (end < n && preps[end].item.task != PROTO_TASK_GENERATE &&
           same_signature(&preps[first], &preps[end])) {
        const int64_t longer = preps[end].item.seq > seq ? preps[end].item.seq : seq;
        if ((uint64_t)(tokens + preps[end].tokens) > budget ||
            (uint64_t)((rows + preps[end].item.rows) * longer) > PROTO_PADDED_FACTOR * budget)
            break;
        rows += preps[end].item.rows;
        tokens += preps[end].tokens;
        seq = longer;
        end++;
    }
    return end;
}

/* Micro-batch of prepared requests [first, end) (same signature). */
static worker_micro_t *build_micro(first_t *f, worker_prepared_t *preps, size_t first, size_t end)
{
    int64_t rows = 0, seq = 0;
    bool p_mask = false;
    for (size_t i = first; i < end; i++) {
        rows += preps[i].item.rows;
        seq = preps[i].item.seq > seq ? preps[i].item.seq : seq;
        p_mask |= preps[i].p_mask != NULL;
    }
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, rows, seq, (int)(end - first),
                                         preps[first].langs != NULL, preps[first].types != NULL,
                                         p_mask);
    if (!m)
        return NULL;
    m->micro_id = ++f->st->micro_counter;
    m->n_stages = f->st->n_stages;
    int64_t row = 0;
    for (size_t i = first; i < end; i++) {
        worker_prepared_t *p = &preps[i];
        const int64_t n = p->item.seq;
        for (int64_t r = 0; r < p->item.rows; r++) {
            const int64_t src = r * n, dst = (row + r) * seq;
            memcpy(m->input_ids + dst, p->ids + src, (size_t)n * sizeof(int64_t));
            for (int64_t s = n; s < seq; s++)
                m->input_ids[dst + s] = f->st->config->pad_index;
            memcpy(m->attention_mask + dst, p->mask + src, (size_t)n * sizeof(int64_t));
            memcpy(m->position_ids + dst, p->positions + src, (size_t)n * sizeof(int64_t));
            if (p->langs)
                memcpy(m->langs + dst, p->langs + src, (size_t)n * sizeof(int64_t));
            if (p->types)
                memcpy(m->token_type_ids + dst, p->types + src, (size_t)n * sizeof(int64_t));
            if (p->p_mask)
                memcpy(m->p_mask + dst, p->p_mask + src, (size_t)n * sizeof(float));
        }
        m->items[i - first] = p->item;
        m->items[i - first].row0 = row;
        p->item.windows = NULL; /* moved into the micro-batch */
        p->item.copies = NULL;
        row += p->item.rows;
    }
    return m;
}


void first_take_batch(first_t *f, const Xlm__Batch *batch, uint8_t **frames, size_t *sizes,
                      size_t n_frames)
{
    const uint64_t now = worker_now_us();
    const size_t n = batch->n_tickets;
    worker_prepared_t *preps = calloc(n ? n : 1, sizeof *preps);
    size_t n_prepared = 0;
    if (!f->accepting || !preps || n_frames != n) {
        for (size_t i = 0; i < n; i++)
            first_reply_error(f, batch->batch_id, batch->tickets[i], NULL,
                        f->accepting ? PROTO_STATUS_INTERNAL : PROTO_STATUS_UNAVAILABLE,
                        f->accepting ? "the worker could not take the batch" : "the worker is stopping",
                        i + 1 == n);
        free(preps);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Xlm__ClientMessage *cm = NULL;
        proto_error_t perr;
        proto_error_clear(&perr);
        proto_status_t status = proto_client_decode(frames[i], sizes[i], PROTO_DEFAULT_LIMIT, &cm,
                                                    NULL, &perr);
        if (status == PROTO_STATUS_OK && cm->body_case != XLM__CLIENT_MESSAGE__BODY_REQUEST)
            status = proto_error_set(&perr, PROTO_STATUS_MALFORMED, "batch frame %zu is not a request", i);
        if (status == PROTO_STATUS_OK)
            status = proto_request_check_model(cm->request, &f->ready, &perr);
        worker_prepared_t *p = &preps[n_prepared];
        p->item = (worker_item_t){.ticket = batch->tickets[i], .batch_id = batch->batch_id,
                                  .queue_us = i < batch->n_queue_us ? batch->queue_us[i] : 0,
                                  .received_us = now};
        if (status == PROTO_STATUS_OK)
            status = worker_prepare(p, f->st, cm->request, &perr);
        if (status != PROTO_STATUS_OK) {
            /* The credit travels with the Batch's last reply. */
            bool last_of_batch = i + 1 == n && n_prepared == 0;
            first_reply_error(f, batch->batch_id, batch->tickets[i],
                        cm ? cm->request->id : perr.id, status, perr.message, last_of_batch);
            worker_prepared_clear(p);
        } else {
            n_prepared++;
        }
        proto_client_free(&cm);
    }
    if (n_prepared)
        preps[n_prepared - 1].item.credit = 1;
    for (size_t first = 0; first < n_prepared;) {
        if (preps[first].item.task == PROTO_TASK_GENERATE) {
            gen_job_t *job = first_job_start(f, &preps[first]);
            if (job)
                first_job_step(f, job);
            else
                first_reply_error(f, batch->batch_id, preps[first].item.ticket, preps[first].item.id,
                                  PROTO_STATUS_INTERNAL, "out of memory starting the generation",
                                  preps[first].item.credit);
            first++;
            continue;
        }
        /* Requests of one signature share a micro-batch while its tokens
         * fit the stages' budget (padded positions: PROTO_PADDED_FACTOR x). */
        const uint64_t budget = f->st->batch_tokens;
        if (!worker_fits_budget(&preps[first], budget)) {
            char message[PROTO_ERROR_MAX];
            snprintf(message, sizeof message, "%lld rows of up to %lld tokens exceed the worker's "
                     "%llu tokens per micro-batch", (long long)preps[first].item.rows,
                     (long long)preps[first].item.seq, (unsigned long long)budget);
            first_reply_error(f, batch->batch_id, preps[first].item.ticket, preps[first].item.id,
                        PROTO_STATUS_TOO_LARGE, message, preps[first].item.credit);
            first++;
            continue;
        }
        const size_t end = worker_group_end(preps, first, n_prepared, budget);
        worker_micro_t *m = build_micro(f, preps, first, end);
        if (m) {
            first_enqueue(f, m);
        } else {
            for (size_t i = first; i < end; i++)
                first_reply_error(f, batch->batch_id, preps[i].item.ticket, preps[i].item.id,
                            PROTO_STATUS_INTERNAL, "out of memory", preps[i].item.credit);
        }
        first = end;
    }
    for (size_t i = 0; i < n_prepared; i++)
        worker_prepared_clear(&preps[i]);
    free(preps);
}

static bool ticket_listed(const Xlm__CancelTickets *cancel, uint64_t ticket)
{
    for (size_t i = 0; i < cancel->n_tickets; i++)
        if (cancel->tickets[i] == ticket)
            return true;
    return false;
}

/* Takes the requests out of a queued micro-batch that the broker
 * cancelled; true when nothing is left of it. */
static bool cancel_in_micro(first_t *f, worker_micro_t *m, const Xlm__CancelTickets *cancel,
                            uint32_t *credit)
{
    if (m->kind == MICRO_GENERATE) {
        gen_job_t **link = NULL;
        gen_job_t *job = first_job_find(f, m->items[0].gen_job, &link);
        if (!job || !job->cancelled)
            return false;
        first_job_drop(f, job, link); /* its step had not started: nothing in flight */
        return true;
    }
    for (int i = m->n_items - 1; i >= 0; i--) {
        if (!ticket_listed(cancel, m->items[i].ticket))
            continue;
        worker_log(f->st->log, WORKER_LOG_DEBUG, "ticket %llu (%s): cancelled, dropped before computing it",
                   (unsigned long long)m->items[i].ticket, m->items[i].id);
        *credit += m->items[i].credit;
        f->dropped++;
        worker_micro_drop_item(m, i);
    }
    return m->n_items == 0;
}

/* The broker no longer wants these tickets (cancelled, or past their
 * deadline): what has not started computing is dropped here, so the
 * pipeline spends nothing on them; the credit they held goes back. Work
 * already in the ring finishes and its reply is dropped by the broker. */
void first_cancel(first_t *f, const Xlm__CancelTickets *cancel)
{
    for (gen_job_t *job = f->jobs; job; job = job->next)
        job->cancelled |= ticket_listed(cancel, job->prep.item.ticket);
    uint32_t credit = 0;
    const uint64_t before = f->dropped;
    queued_t *prev = NULL;
    for (queued_t *q = f->head, *next; q; q = next) {
        next = q->next;
        if (!cancel_in_micro(f, q->micro, cancel, &credit)) {
            prev = q;
            continue;
        }
        if (prev)
            prev->next = next;
        else
            f->head = next;
        if (f->tail == q)
            f->tail = prev;
        worker_micro_destroy(&q->micro);
        free(q);
    }
    first_give_credit(f, credit);
    if (f->dropped > before)
        worker_log(f->st->log, WORKER_LOG_DEBUG, "dropped %llu cancelled requests before computing them "
                   "(%llu in all)", (unsigned long long)(f->dropped - before),
                   (unsigned long long)f->dropped);
}

