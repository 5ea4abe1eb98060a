/* make_wire_seeds.c: writes the seed corpora of the wire fuzzers, one
 * valid message per file, encoded by the project's own packers (so the
 * seeds follow the schema as it is, with no binary files in the tree):
 *   DIR/client/   requests (tokens, text, generate, clm_score), a cancel, stats
 *   DIR/service/  responses with tensors, an error response, stats
 *   DIR/worker/   ready, credit, batch, reply, heartbeat, disconnect, cancel
 *   DIR/packet/   stage packets: scoring with windows, mlm_pll copies, qa
 * Usage: make_wire_seeds DIR */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto.h"
#include "worker_internal.h"

static const char *top;

static int save(const char *kind, const char *name, const void *data, size_t size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", top, kind);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return -1;
    snprintf(path, sizeof path, "%s/%s/%s", top, kind, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        fprintf(stderr, "make_wire_seeds: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

#define SAVE_PACKED(kind, name, packer, msg)                                             \
    do {                                                                                 \
        uint8_t *data_;                                                                  \
        size_t size_;                                                                    \
        if (packer(msg, &data_, &size_, NULL) != PROTO_STATUS_OK ||                      \
            save(kind, name, data_, size_) != 0)                                         \
            return -1;                                                                   \
        free(data_);                                                                     \
    } while (0)

static int client_seeds(void)
{
    int64_t ids[] = {0, 5, 7, 9, 11}, lengths[] = {3, 2}, mask[] = {1, 1, 1, 1, 0};
    int64_t langs[] = {0, 0, 1, 1, 1}, score_from[] = {1, 1};
    Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
    tokens.n_input_ids = 5;
    tokens.input_ids = ids;
    tokens.n_lengths = 2;
    tokens.lengths = lengths;
    tokens.n_attention_mask = 5;
    tokens.attention_mask = mask;
    tokens.n_langs = 5;
    tokens.langs = langs;
    Xlm__Request rq = XLM__REQUEST__INIT;
    rq.id = "req-1";
    rq.model = "tiny";
    rq.task = XLM__TASK__TASK_CLM_SCORE;
    rq.input_case = XLM__REQUEST__INPUT_TOKENS;
    rq.tokens = &tokens;
    rq.n_score_from = 2;
    rq.score_from = score_from;
    rq.return_tokens = 1;
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_REQUEST;
    msg.request = &rq;
    SAVE_PACKED("client", "clm_score_tokens", proto_client_pack, &msg);

    Xlm__TextSegment src = XLM__TEXT_SEGMENT__INIT, tgt = XLM__TEXT_SEGMENT__INIT;
    src.text = "the house is small";
    src.lang = "en";
    tgt.text = "la maison est petite";
    tgt.lang = "fr";
    Xlm__TextSegment *segments[] = {&src, &tgt};
    Xlm__TextRow row = XLM__TEXT_ROW__INIT;
    row.n_segments = 2;
    row.segments = segments;
    Xlm__TextRow *rows[] = {&row};
    Xlm__TextInput text = XLM__TEXT_INPUT__INIT;
    text.n_rows = 1;
    text.rows = rows;
    rq.input_case = XLM__REQUEST__INPUT_TEXT;
    rq.text = &text;
    rq.n_score_from = 0;
    SAVE_PACKED("client", "clm_score_text", proto_client_pack, &msg);

    Xlm__Generate generate = XLM__GENERATE__INIT;
    generate.steps = 4;
    generate.lang_fill_case = XLM__GENERATE__LANG_FILL_LANG_FILL_CODE;
    generate.lang_fill_code = "fr";
    rq.task = XLM__TASK__TASK_GENERATE;
    rq.generate = &generate;
    SAVE_PACKED("client", "generate_text", proto_client_pack, &msg);

    float p_mask[] = {0, 0, 1, 0, 0.5f};
    tokens.n_p_mask = 5;
    tokens.p_mask = p_mask;
    rq.task = XLM__TASK__TASK_QA;
    rq.generate = NULL;
    rq.input_case = XLM__REQUEST__INPUT_TOKENS;
    rq.tokens = &tokens;
    SAVE_PACKED("client", "qa_tokens", proto_client_pack, &msg);

    Xlm__Cancel cancel = XLM__CANCEL__INIT;
    cancel.id = "req-1";
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_CANCEL;
    msg.cancel = &cancel;
    SAVE_PACKED("client", "cancel", proto_client_pack, &msg);
    Xlm__StatsRequest stats = XLM__STATS_REQUEST__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_STATS;
    msg.stats = &stats;
    SAVE_PACKED("client", "stats", proto_client_pack, &msg);
    return 0;
}

static int service_seeds(void)
{
    int64_t shape[] = {2, 3}, row_lengths[] = {3, 1};
    float values[] = {-1.5f, -0.25f, -3, -2};
    Xlm__Tensor scores = XLM__TENSOR__INIT;
    scores.name = "token_logprobs";
    scores.n_shape = 2;
    scores.shape = shape;
    scores.n_row_lengths = 2;
    scores.row_lengths = row_lengths;
    scores.n_f32 = 4;
    scores.f32 = values;
    char *words[] = {"la</w>", "maison</w>", "est</w>", "</s>"};
    Xlm__Tensor tokens = XLM__TENSOR__INIT;
    tokens.name = "tokens";
    tokens.n_shape = 2;
    tokens.shape = shape;
    tokens.n_row_lengths = 2;
    tokens.row_lengths = row_lengths;
    tokens.n_text = 4;
    tokens.text = words;
    int64_t sum_shape[] = {2}, ids[] = {4, 9};
    Xlm__Tensor counts = XLM__TENSOR__INIT;
    counts.name = "n_scored";
    counts.n_shape = 1;
    counts.shape = sum_shape;
    counts.n_i64 = 2;
    counts.i64 = ids;
    Xlm__Tensor *outputs[] = {&scores, &tokens, &counts};
    uint64_t stage_us[] = {120, 340};
    Xlm__Timings timings = XLM__TIMINGS__INIT;
    timings.queue_us = 10;
    timings.n_stage_us = 2;
    timings.stage_us = stage_us;
    timings.batch_requests = 3;
    timings.batch_tokens = 64;
    Xlm__Response response = XLM__RESPONSE__INIT;
    response.id = "req-1";
    response.n_outputs = 3;
    response.outputs = outputs;
    response.timings = &timings;
    Xlm__ServiceMessage msg = XLM__SERVICE_MESSAGE__INIT;
    msg.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    msg.response = &response;
    SAVE_PACKED("service", "response", proto_service_pack, &msg);
    response.status = XLM__STATUS__STATUS_TOO_LARGE;
    response.message = "row 0 has 600 tokens, the model takes 512";
    response.n_outputs = 0;
    SAVE_PACKED("service", "error", proto_service_pack, &msg);

    Xlm__StageStats s0 = XLM__STAGE_STATS__INIT, s1 = XLM__STAGE_STATS__INIT;
    s1.stage = 1;
    s0.batches = s1.batches = 7;
    s0.total_us = 700;
    s1.total_us = 900;
    Xlm__StageStats *stages[] = {&s0, &s1};
    Xlm__PipelineStats p = XLM__PIPELINE_STATS__INIT;
    p.id = "tiny@host/j1/p0";
    p.n_stages = 2;
    Xlm__PipelineStats *pipelines[] = {&p};
    Xlm__ModelStats model = XLM__MODEL_STATS__INIT;
    model.name = "tiny";
    model.pipelines_alive = 1;
    model.n_stages = 2;
    model.stages = stages;
    model.n_pipelines = 1;
    model.pipelines = pipelines;
    Xlm__ModelStats *models[] = {&model};
    Xlm__GoneModel gone = XLM__GONE_MODEL__INIT;
    gone.name = "old";
    gone.since = "2026-01-31T12:00:00Z";
    Xlm__GoneModel *gones[] = {&gone};
    Xlm__Stats stats = XLM__STATS__INIT;
    stats.uptime_ms = 1000;
    stats.accepting = 1;
    stats.n_models = 1;
    stats.models = models;
    stats.n_models_gone = 1;
    stats.models_gone = gones;
    msg.body_case = XLM__SERVICE_MESSAGE__BODY_STATS;
    msg.stats = &stats;
    SAVE_PACKED("service", "stats", proto_service_pack, &msg);
    return 0;
}

static int worker_seeds(void)
{
    char *codes[] = {"en", "fr"};
    Xlm__Task tasks[] = {XLM__TASK__TASK_CLM_SCORE, XLM__TASK__TASK_LM, XLM__TASK__TASK_GENERATE};
    Xlm__Ready ready = XLM__READY__INIT;
    ready.model = "tiny";
    ready.n_stages = 2;
    ready.credit = 3;
    ready.max_batch_tokens = 4096;
    ready.vocab_size = 1000;
    ready.max_position_embeddings = 512;
    ready.n_langs = 2;
    ready.n_lang_codes = 2;
    ready.lang_codes = codes;
    ready.n_tasks = 3;
    ready.tasks = tasks;
    ready.heartbeat_ms = 500;
    ready.instance = 77;
    Xlm__WorkerMessage msg = XLM__WORKER_MESSAGE__INIT;
    msg.pipeline = "tiny@host/j1/p0";
    msg.body_case = XLM__WORKER_MESSAGE__BODY_READY;
    msg.ready = &ready;
    SAVE_PACKED("worker", "ready", proto_worker_pack, &msg);

    Xlm__Credit credit = XLM__CREDIT__INIT;
    credit.credit = 2;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_CREDIT;
    msg.credit = &credit;
    SAVE_PACKED("worker", "credit", proto_worker_pack, &msg);

    uint64_t tickets[] = {11, 12, 13}, queue_us[] = {5, 6, 7};
    uint32_t remaining[] = {1000, 900, 800};
    Xlm__Batch batch = XLM__BATCH__INIT;
    batch.batch_id = 4;
    batch.task = XLM__TASK__TASK_CLM_SCORE;
    batch.n_tickets = 3;
    batch.tickets = tickets;
    batch.n_queue_us = 3;
    batch.queue_us = queue_us;
    batch.n_remaining_ms = 3;
    batch.remaining_ms = remaining;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_BATCH;
    msg.batch = &batch;
    SAVE_PACKED("worker", "batch", proto_worker_pack, &msg);

    Xlm__Status statuses[] = {XLM__STATUS__STATUS_OK, XLM__STATUS__STATUS_BAD_REQUEST,
                              XLM__STATUS__STATUS_OK};
    uint64_t stage_us[] = {300, 450};
    Xlm__Reply reply = XLM__REPLY__INIT;
    reply.batch_id = 4;
    reply.n_tickets = 3;
    reply.tickets = tickets;
    reply.n_statuses = 3;
    reply.statuses = statuses;
    reply.n_stage_us = 2;
    reply.stage_us = stage_us;
    reply.credit = 1;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_REPLY;
    msg.reply = &reply;
    SAVE_PACKED("worker", "reply", proto_worker_pack, &msg);

    Xlm__Heartbeat heartbeat = XLM__HEARTBEAT__INIT;
    heartbeat.heartbeat_ms = 500;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &heartbeat;
    SAVE_PACKED("worker", "heartbeat", proto_worker_pack, &msg);

    Xlm__Disconnect disconnect = XLM__DISCONNECT__INIT;
    disconnect.reason = "that id is served by another live pipeline";
    disconnect.refused = 1;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_DISCONNECT;
    msg.disconnect = &disconnect;
    SAVE_PACKED("worker", "disconnect", proto_worker_pack, &msg);

    Xlm__CancelTickets cancel = XLM__CANCEL_TICKETS__INIT;
    cancel.n_tickets = 2;
    cancel.tickets = tickets;
    msg.body_case = XLM__WORKER_MESSAGE__BODY_CANCEL;
    msg.cancel = &cancel;
    SAVE_PACKED("worker", "cancel", proto_worker_pack, &msg);
    return 0;
}

/* A micro-batch of 3 rows of 5 positions, 7 packed positions of width 4,
 * and two items: task (and with it the records an item carries) varies. */
static int save_packet(const char *name, int32_t task, bool with_copies)
{
    worker_micro_t *m = worker_micro_new(MICRO_BATCH, 3, 5, 2, false, false, true);
    if (!m || shard_acts_reserve(m->acts, 3, 5, 4, 7, NULL) != SHARD_OK)
        return -1;
    m->micro_id = 42;
    m->n_stages = 2;
    m->stage_us[0] = 17;
    for (int i = 0; i < 15; i++) {
        m->input_ids[i] = 100 + i;
        m->attention_mask[i] = i % 5 < 4;
        m->p_mask[i] = (float)i / 8.0f;
    }
    const int64_t starts[4] = {0, 3, 5, 7};
    memcpy(m->acts->row_start, starts, sizeof starts);
    for (int t = 0; t < 7; t++) {
        m->acts->position[t] = t < 3 ? t : t < 5 ? t - 3 : t - 5;
        m->acts->is_real[t] = t != 4;
        for (int d = 0; d < 4; d++)
            m->acts->hidden[t * 4 + d] = (float)t + 0.25f * (float)d;
    }
    m->items[0] = (worker_item_t){.ticket = 7, .batch_id = 9, .task = task, .row0 = 0,
                                  .rows = 2, .seq = 5, .orig_rows = 2};
    snprintf(m->items[0].id, sizeof m->items[0].id, "request-a");
    m->items[0].windows = calloc(2, sizeof *m->items[0].windows);
    m->items[0].windows[0] = (worker_window_t){1, 5};
    m->items[0].windows[1] = (worker_window_t){1, 4};
    if (with_copies) {
        m->items[0].orig_rows = 1;
        m->items[0].windows[0] = (worker_window_t){2, 4};
        m->items[0].copies = calloc(2, sizeof *m->items[0].copies);
        m->items[0].copies[0] = (worker_pll_copy_t){0, 2, 31};
        m->items[0].copies[1] = (worker_pll_copy_t){0, 3, 32};
        m->items[0].n_copies = 2;
    }
    m->items[1] = (worker_item_t){.ticket = 8, .batch_id = 9, .task = PROTO_TASK_QA, .row0 = 2,
                                  .rows = 1, .seq = 4, .orig_rows = 1, .credit = 1};
    snprintf(m->items[1].id, sizeof m->items[1].id, "request-b");
    size_t size = worker_packet_size(m);
    void *buffer = malloc(size);
    int rc = buffer && worker_packet_write(m, buffer, size) == size ? save("packet", name, buffer, size) : -1;
    free(buffer);
    worker_micro_destroy(&m);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_wire_seeds DIR\n");
        return 2;
    }
    top = argv[1];
    if (mkdir(top, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_wire_seeds: cannot create %s: %s\n", top, strerror(errno));
        return 1;
    }
    if (client_seeds() || service_seeds() || worker_seeds() ||
        save_packet("clm_score", PROTO_TASK_CLM_SCORE, false) ||
        save_packet("mlm_pll", PROTO_TASK_MLM_PLL, true))
        return 1;
    return 0;
}
