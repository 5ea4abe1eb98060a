/* fuzz_wire.c: libFuzzer targets for the wire codec (proto/codec.c), one
 * per envelope, chosen at build time with FUZZ_WIRE:
 *   1  ClientMessage  (what the broker's frontend decodes)
 *   2  ServiceMessage (what libxlmclient decodes)
 *   3  WorkerMessage  (what the broker's backend and the workers decode)
 *
 * Every message that decodes is then used as its reader uses it: a client
 * request checked against a pipeline's limits, a worker's Ready used as
 * those limits for a fixed request; and it must survive a round trip
 * (pack, decode again: accepted once, accepted again). Error messages must
 * be terminated strings within their buffers. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

#ifndef FUZZ_WIRE
#error "FUZZ_WIRE must be 1 (client), 2 (service) or 3 (worker)"
#endif

/* A small size limit: the decoders refuse larger inputs first, and the
 * fuzzer's inputs are far smaller anyway. */
enum { FUZZ_LIMIT = 1 << 20 };

static void check_error(const proto_error_t *err)
{
    if (memchr(err->message, 0, sizeof err->message) == NULL ||
        memchr(err->id, 0, sizeof err->id) == NULL)
        __builtin_trap();
}

/* Where the reads' sums go, so the compiler keeps the reads. */
double fuzz_wire_sink;

#if FUZZ_WIRE == 1
/* The limits of a plausible pipeline: requests are checked against them. */
static Xlm__Ready pipeline_ready(void)
{
    static char *codes[] = {"en", "fr"};
    static Xlm__Task tasks[] = {XLM__TASK__TASK_BASE, XLM__TASK__TASK_LM, XLM__TASK__TASK_SEQ_CLS,
                                XLM__TASK__TASK_QA, XLM__TASK__TASK_CLM_SCORE,
                                XLM__TASK__TASK_GENERATE, XLM__TASK__TASK_MULTIPLE_CHOICE};
    Xlm__Ready ready = XLM__READY__INIT;
    ready.model = "m";
    ready.n_stages = 2;
    ready.credit = 3;
    ready.max_batch_tokens = 4096;
    ready.vocab_size = 100;
    ready.max_position_embeddings = 64;
    ready.n_langs = 2;
    ready.n_lang_codes = 2;
    ready.lang_codes = codes;
    ready.n_tasks = sizeof tasks / sizeof tasks[0];
    ready.tasks = tasks;
    ready.heartbeat_ms = 500;
    ready.instance = 1;
    return ready;
}

static void use(const Xlm__ClientMessage *msg)
{
    if (msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST) {
        Xlm__Ready ready = pipeline_ready();
        proto_error_t err = {0};
        proto_request_check_model(msg->request, &ready, &err);
        check_error(&err);
    }
}
#define DECODE(data, size, out, err) proto_client_decode(data, size, FUZZ_LIMIT, out, &shape, err)
#define PACK proto_client_pack
#define FREE proto_client_free
typedef Xlm__ClientMessage message_t;
#elif FUZZ_WIRE == 2
static void use(const Xlm__ServiceMessage *msg)
{
    if (msg->body_case != XLM__SERVICE_MESSAGE__BODY_RESPONSE)
        return;
    /* Read every value a checked response claims to hold. */
    double f = 0;
    uint64_t i = 0; /* unsigned: the sums of hostile values wrap */
    for (size_t t = 0; t < msg->response->n_outputs; t++) {
        const Xlm__Tensor *x = msg->response->outputs[t];
        for (size_t k = 0; k < x->n_f32; k++)
            f += x->f32[k];
        for (size_t k = 0; k < x->n_i64; k++)
            i += (uint64_t)x->i64[k];
        for (size_t k = 0; k < x->n_text; k++)
            i += strlen(x->text[k]);
    }
    fuzz_wire_sink += (double)f + (double)i;
}
#define DECODE(data, size, out, err) proto_service_decode(data, size, FUZZ_LIMIT, out, err)
#define PACK proto_service_pack
#define FREE proto_service_free
typedef Xlm__ServiceMessage message_t;
#else
static void use(const Xlm__WorkerMessage *msg)
{
    if (msg->body_case != XLM__WORKER_MESSAGE__BODY_READY)
        return;
    /* A hostile Ready as the limits of a normal request. */
    static int64_t ids[] = {0, 5, 7, 99, 3}, lengths[] = {3, 2};
    Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
    tokens.n_input_ids = 5;
    tokens.input_ids = ids;
    tokens.n_lengths = 2;
    tokens.lengths = lengths;
    Xlm__Request request = XLM__REQUEST__INIT;
    request.id = "r";
    request.task = XLM__TASK__TASK_CLM_SCORE;
    request.input_case = XLM__REQUEST__INPUT_TOKENS;
    request.tokens = &tokens;
    proto_error_t err = {0};
    if (proto_request_check(&request, NULL, &err) != PROTO_STATUS_OK)
        __builtin_trap();
    proto_request_check_model(&request, msg->ready, &err);
    check_error(&err);
}
#define DECODE(data, size, out, err) proto_worker_decode(data, size, FUZZ_LIMIT, out, err)
#define PACK proto_worker_pack
#define FREE proto_worker_free
typedef Xlm__WorkerMessage message_t;
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_shape_t shape;
    proto_error_t err = {0};
    message_t *msg = NULL;
    (void)shape;
    proto_status_t rc = DECODE(data, size, &msg, &err);
    check_error(&err);
    if (rc != PROTO_STATUS_OK) {
        if (msg)
            __builtin_trap(); /* refused, yet a message handed out */
        return 0;
    }
    use(msg);
    uint8_t *packed = NULL;
    size_t packed_size = 0;
    if (PACK(msg, &packed, &packed_size, &err) != PROTO_STATUS_OK)
        __builtin_trap();
    message_t *again = NULL;
    if (DECODE(packed, packed_size, &again, &err) != PROTO_STATUS_OK)
        __builtin_trap(); /* accepted once, refused after a round trip */
    FREE(&again);
    free(packed);
    FREE(&msg);
    if (msg)
        __builtin_trap();
    return 0;
}
