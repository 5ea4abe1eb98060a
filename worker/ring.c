/* ring.c: the MPI ring of a pipeline: packets to the next stage, and the
 * loop of stages 1.. (receive, run the layers, pass on or, on the last
 * stage, finish). Calls micro.c, link.c and last.c. */
#include "stage.h"

#include <stdlib.h>
#include <time.h>

void worker_idle_pause(uint64_t idle_since_us)
{
    uint64_t idle = worker_now_us() - idle_since_us;
    long ns = idle < 10000 ? 20 * 1000 : idle < 1000000 ? 200 * 1000 : 2 * 1000 * 1000;
    struct timespec pause = {0, ns};
    nanosleep(&pause, NULL);
}

worker_status_t worker_send_next(worker_stage_t *st, slot_t *slots, int *next_slot,
                                 worker_micro_t *m, worker_error_t *err)
{
    slot_t *slot = &slots[*next_slot];
    *next_slot ^= 1;
    worker_status_t rc = WORKER_OK;
    if (slot->request != MPI_REQUEST_NULL &&
        (rc = WORKER_MPI(MPI_Wait(&slot->request, MPI_STATUS_IGNORE), err)))
        return rc;
    size_t size = worker_packet_write(m, slot->buffer, st->packet_capacity);
    if (size == 0 || size > (size_t)INT32_MAX)
        return worker_error_set(err, WORKER_ERR_PACKET, "worker_send_next: micro-batch %llu "
                                "does not fit a packet of %zu bytes",
                                (unsigned long long)m->micro_id, st->packet_capacity);
    return WORKER_MPI(MPI_Isend(slot->buffer, (int)size, MPI_BYTE, st->stage + 1, TAG_ACTIVATIONS,
                                st->comm, &slot->request), err);
}

static worker_status_t finish_sends(slot_t *slots, worker_error_t *err)
{
    worker_status_t rc = WORKER_OK;
    for (int i = 0; i < 2 && rc == WORKER_OK; i++)
        if (slots[i].request != MPI_REQUEST_NULL)
            rc = WORKER_MPI(MPI_Wait(&slots[i].request, MPI_STATUS_IGNORE), err);
    return rc;
}

/* Handles one received packet; *shutdown set when it was the shutdown. */
static worker_status_t handle_packet(worker_stage_t *st, const void *data, size_t size,
                                     slot_t *send_slots, int *send_slot, bool *shutdown,
                                     worker_error_t *err)
{
    shard_error_t serr = {0};
    worker_micro_t *m = worker_packet_read(data, size, &serr);
    if (!m)
        return worker_error_set(err, WORKER_ERR_PACKET, "stage %d: %s", st->stage, serr.message);
    const bool last = st->stage == st->n_stages - 1;
    worker_status_t rc = WORKER_OK;
    if (m->kind == MICRO_SHUTDOWN) {
        *shutdown = true;
        if (!last)
            rc = worker_send_next(st, send_slots, send_slot, m, err);
        worker_micro_destroy(&m);
        return rc;
    }
    uint64_t start = worker_now_us();
    /* A step a stage before could not continue passes on uncomputed. */
    if (!m->kv_missed &&
        (rc = worker_kv_run_layers(st->kv, st->model, st->state, m, st->stage, st->log, err))) {
        worker_micro_destroy(&m);
        return rc;
    }
    m->stage_us[st->stage] = worker_now_us() - start;
    if (!last) {
        rc = worker_send_next(st, send_slots, send_slot, m, err);
    } else {
        int64_t token = -1;
        rc = worker_finish_micro(st, m, &token, err);
        if (rc == WORKER_OK)
            rc = worker_note_progress(st, m->kind != MICRO_GENERATE, err);
        if (rc == WORKER_OK && m->kind == MICRO_GENERATE) {
            int64_t feedback[2] = {(int64_t)m->items[0].gen_job, token};
            rc = WORKER_MPI(MPI_Send(feedback, 2, MPI_INT64_T, 0, TAG_FEEDBACK, st->comm), err);
        }
    }
    worker_micro_destroy(&m);
    return rc;
}

static worker_status_t post_receive(worker_stage_t *st, slot_t *slot, worker_error_t *err)
{
    return WORKER_MPI(MPI_Irecv(slot->buffer, (int)st->packet_capacity, MPI_BYTE, st->stage - 1,
                                TAG_ACTIVATIONS, st->comm, &slot->request), err);
}

/* The size of a completed receive, checked against what was posted. */
static worker_status_t received_size(const worker_stage_t *st, MPI_Status *status, size_t *size,
                                     worker_error_t *err)
{
    int count = 0;
    worker_status_t rc = WORKER_MPI(MPI_Get_count(status, MPI_BYTE, &count), err);
    if (rc)
        return rc;
    if (count == MPI_UNDEFINED || count < 0 || (size_t)count > st->packet_capacity)
        return worker_error_set(err, WORKER_ERR_PACKET, "stage %d: received a packet of %d "
                                "bytes, expected 0 to %zu", st->stage, count, st->packet_capacity);
    *size = (size_t)count;
    return WORKER_OK;
}

worker_status_t worker_run_next(worker_stage_t *st, worker_error_t *err)
{
    slot_t recv_slots[2], send_slots[2];
    int oldest = 0, send_slot = 0;
    worker_status_t rc = WORKER_OK;
    for (int i = 0; i < 2; i++) {
        recv_slots[i].buffer = malloc(st->packet_capacity);
        send_slots[i].buffer = malloc(st->packet_capacity);
        recv_slots[i].request = send_slots[i].request = MPI_REQUEST_NULL;
        if (!recv_slots[i].buffer || !send_slots[i].buffer)
            rc = worker_error_set(err, WORKER_ERR_NOMEM, "worker_run_next: out of memory for "
                                  "packets of %zu bytes", st->packet_capacity);
    }
    /* Both receives posted early: the next packet lands while this one runs. */
    for (int i = 0; rc == WORKER_OK && i < 2; i++)
        rc = post_receive(st, &recv_slots[i], err);
    uint64_t stop_seen_us = 0, idle_since = worker_now_us(), heard_us = 0;
    bool shutdown = false;
    while (rc == WORKER_OK && !shutdown) {
        int done = 0;
        MPI_Status status;
        if ((rc = WORKER_MPI(MPI_Test(&recv_slots[oldest].request, &done, &status), err)))
            break;
        /* The last stage hears the broker too: when stage 0 hangs, the
         * order to end the job reaches this rank, which the broker knows
         * from its beats even before it ever replied. */
        if (st->link && worker_now_us() - heard_us > 50000) {
            heard_us = worker_now_us();
            if ((rc = worker_link_check_stalled(st->link, err)))
                break;
            worker_error_t beat_err;
            if (worker_tail_beat(st, &beat_err)) /* missed: the next one may go */
                worker_log(st->log, WORKER_LOG_DEBUG, "%s", beat_err.message);
        }
        if (!done) {
            /* Stopping is driven by stage 0's shutdown packet; this is the
             * fallback when stage 0 is gone. */
            if (atomic_load(st->stop) && !stop_seen_us)
                stop_seen_us = worker_now_us();
            if (stop_seen_us && worker_now_us() - stop_seen_us > 30u * 1000000u) {
                worker_log(st->log, WORKER_LOG_WARN, "stage %d: no shutdown from stage 0 in 30 s",
                           st->stage);
                break;
            }
            worker_idle_pause(idle_since);
            continue;
        }
        idle_since = worker_now_us();
        size_t size = 0;
        if ((rc = received_size(st, &status, &size, err)) ||
            (rc = handle_packet(st, recv_slots[oldest].buffer, size, send_slots, &send_slot,
                                &shutdown, err)) ||
            shutdown)
            break;
        rc = post_receive(st, &recv_slots[oldest], err);
        oldest ^= 1;
    }
    /* A hung next stage never takes its packets: do not wait for it. */
    if (rc != WORKER_ERR_STALLED) {
        worker_error_t drain_err;
        if (finish_sends(send_slots, &drain_err) && rc == WORKER_OK)
            rc = worker_error_set(err, drain_err.code, "%s", drain_err.message);
    }
    for (int i = 0; i < 2; i++) {
        if (recv_slots[i].request != MPI_REQUEST_NULL) {
            MPI_Cancel(&recv_slots[i].request);
            MPI_Request_free(&recv_slots[i].request);
        }
        free(recv_slots[i].buffer);
        if (send_slots[i].request == MPI_REQUEST_NULL)
            free(send_slots[i].buffer); /* else MPI may still read it: left to the process's end */
    }
    return rc;
}
