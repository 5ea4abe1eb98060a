/* client_internal.h: what the files of libxlmclient share; not installed.
 *
 * The window is a fixed array of slots, one per request submitted and not
 * yet collected, with an open-addressing index by id. A slot is pending
 * (sent, or waiting out a backoff) until a final reply, a timeout or a
 * cancel finishes it; it then holds its result on the finished list, in
 * finishing order, until collected.
 */
#ifndef XLM_CLIENT_INTERNAL_H
#define XLM_CLIENT_INTERNAL_H

#include "xlmclient.h"

#include "proto.h"

#include <stdarg.h>
#include <stddef.h>

typedef enum {
    SLOT_FREE = 0,
    SLOT_SENT,    /* sent; due_us: the attempt times out */
    SLOT_BACKOFF, /* answered OVERLOADED/UNAVAILABLE; due_us: send again */
    SLOT_DONE     /* result set, on the finished list */
} slot_state_t;

typedef struct {
    slot_state_t state;
    char id[XLM_ID_SIZE];
    uint8_t *message;     /* the packed ClientMessage, sent again on retries */
    size_t size;
    int attempts;         /* sends so far */
    int64_t submitted_us;
    int64_t due_us;
    int64_t deadline_us;  /* 0: none on the client side */
    uint32_t deadline_ms; /* as sent, for messages */
    xlm_result_t *result; /* SLOT_DONE */
    int32_t prev, next;   /* finished list; next also links the free list */
} client_slot_t;

struct xlm_client {
    xlm_client_config_t config;
    char *endpoint;           /* owned copy of config.endpoint */
    void *context, *socket;
    void *monitor;            /* PAIR: the socket's handshake failures */
    char handshake_error[200];/* why the broker may not answer: the latest handshake failure
                                 or PERMISSION_DENIED; "" while none */
    char prefix[17];          /* random, per client: ids are prefix-counter */
    uint64_t counter;
    uint64_t rng;             /* xorshift state for backoff jitter */

    client_slot_t *slots;     /* [config.window] */
    size_t used;              /* slots not free */
    int32_t free_head;
    int32_t *index;           /* [index_mask + 1]: slot number or -1 */
    size_t index_mask;
    int32_t done_head, done_tail;
    int64_t next_timer_us;    /* no pending timer before this */

    bool stats_wanted;
    Xlm__ServiceMessage *stats; /* reply to the stats call under way */

    uint64_t dropped;         /* replies for ids not awaited, or undecodable */
    char error[256];
};

struct xlm_result {
    char id[XLM_ID_SIZE];
    xlm_code_t code;
    const char *message;       /* into msg, or owned_message */
    char *owned_message;
    Xlm__ServiceMessage *msg;  /* NULL for results made by the client */
    xlm_tensor_t *tensors;     /* [count], views into msg */
    size_t count;
    xlm_timings_t timings;
};

/* client.c */
xlm_status_t client_fail(xlm_client_t *client, xlm_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int64_t client_now_us(void);

/* Copies a caller's versioned struct (struct_size first) into the library's
 * own, which holds the defaults for the fields the caller's header did not
 * have. Refuses a struct_size below min_size (not set by the init
 * function), and one above ours unless the unknown tail is zero (a newer
 * header whose new fields are unused). */
bool client_struct_copy(void *ours, size_t our_size, size_t min_size, const void *theirs,
                        const char *fn, const char *what, char *error, size_t error_size);
/* The offset just past a field: the struct_size of a header that ended there. */
#define CLIENT_SIZE_TO(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))


/* The wire task of a public task (names.c's table); PROTO_TASK_COUNT_ when
 * task is out of range. */
proto_task_t client_task_to_wire(xlm_task_t task);

/* request.c: the xlm_request_t -> ClientMessage bytes, checked with
 * proto_request_check. id and deadline_ms replace the request's own. */
xlm_status_t client_encode_request(xlm_client_t *client, const xlm_request_t *request,
                                   const char *id, uint32_t deadline_ms, uint8_t **data,
                                   size_t *size);
/* The same from the bytes of an xlm.Request, which carries its id: the id
 * and deadline are read back into id_out and deadline_out. */
xlm_status_t client_encode_packed(xlm_client_t *client, const void *bytes, size_t length,
                                  char *id_out, uint32_t *deadline_out, uint8_t **data,
                                  size_t *size);
/* ClientMessage with a cancel or a stats request. */
xlm_status_t client_encode_cancel(xlm_client_t *client, const char *id, uint8_t **data,
                                  size_t *size);
xlm_status_t client_encode_stats(xlm_client_t *client, uint8_t **data, size_t *size);

/* result.c */
/* Takes *msg_p (a decoded ServiceMessage with a response). NULL when out of
 * memory (msg freed). */
xlm_result_t *result_from_message(Xlm__ServiceMessage **msg_p);
/* A result made by the client: no outputs. NULL when out of memory. */
xlm_result_t *result_local(const char *id, xlm_code_t code, const char *fmt, va_list args);

/* stats.c */
/* JSON text of a protobuf message, field names as in the schema. NULL when
 * out of memory. */
char *message_to_json(const ProtobufCMessage *msg);

#endif /* XLM_CLIENT_INTERNAL_H */
