/* beat.c: every rank's heartbeat thread. A micro-batch may compute for
 * longer than the broker waits for a sign of life, and a stage in the
 * middle of a ring has no socket of its own: so each rank beats from a
 * thread and socket of its own, saying which stage it is and how much its
 * process has computed (the engine's work count). A stopped or killed
 * process stops beating; a long product still shows its count grow. The
 * thread never touches MPI. */
#include "stage.h"

#include <string.h>

static void *beat_main(void *arg)
{
    worker_beat_t *beat = arg;
    /* A beat that fails now and then shows as missed heartbeats; only a
     * thread that cannot start beating says so. */
    worker_error_t err;
    worker_link_t *link = worker_link_new(beat->context, beat->endpoint, beat->pipeline, beat->curve,
                                          &err);
    if (!link)
        worker_log(beat->log, WORKER_LOG_ERROR, "stage %u: heartbeat thread: %s", beat->stage,
                   err.message);
    while (link && !atomic_load(&beat->stop)) {
        Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
        Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
        heartbeat.heartbeat_ms = beat->heartbeat_ms;
        heartbeat.stage_beat = true;
        heartbeat.stage = beat->stage;
        heartbeat.instance = beat->instance;
        heartbeat.work = shard_work_count();
        msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
        msg.heartbeat = &heartbeat;
        worker_link_send(link, &msg, NULL, NULL, 0, &err);
        /* The broker answers nothing here; whatever comes is dropped. */
        Xlm__WorkerMessage *reply = NULL;
        uint8_t **frames = NULL;
        size_t *sizes = NULL, n_frames = 0;
        bool got = false;
        worker_link_recv(link, (int)beat->heartbeat_ms, &got, &reply, &frames, &sizes, &n_frames,
                         &err);
        proto_worker_free(&reply);
        worker_link_frames_free(frames, sizes, n_frames);
    }
    worker_link_destroy(&link);
    return NULL;
}

void worker_beat_start(worker_stage_t *st)
{
    worker_beat_t *beat = &st->beat;
    *beat = (worker_beat_t){.context = st->zmq_context, .endpoint = st->options->broker,
                            .pipeline = st->pipeline_id, .curve = &st->curve,
                            .heartbeat_ms = st->options->heartbeat_ms,
                            .stage = (uint32_t)st->stage, .instance = st->instance, .log = st->log};
    beat->started = pthread_create(&beat->thread, NULL, beat_main, beat) == 0;
    if (!beat->started)
        worker_log(st->log, WORKER_LOG_ERROR, "stage %d: no heartbeat thread: the broker will "
                   "take this pipeline for a dead one", st->stage);
}

void worker_beat_stop(worker_stage_t *st)
{
    atomic_store(&st->beat.stop, 1);
    if (st->beat.started)
        pthread_join(st->beat.thread, NULL);
    st->beat.started = false;
}
