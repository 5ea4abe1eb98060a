/* unpickle.h: the strict pickle machine the torch readers run (internal to
 * shard/checkpoint; the fuzzer links it alone).
 *
 * It knows the opcodes of protocols 2 to 5 a torch file uses and only the
 * globals a state dict names (collections.OrderedDict, torch's rebuild
 * functions, torch.<Type>Storage) plus the inert numpy ones of an original
 * XLM checkpoint's parameters; anything else is refused with the opcode
 * or global and its byte offset in the stream. Persistent ids
 * ('storage', type, key, location, numel[, None]) register storages in a
 * table the caller reads after the run; no storage bytes are touched here.
 *
 * Values live in an arena owned by the unpickler and are freed together
 * by pk_unpickler_free: the memo and the stack share values freely. The
 * machine never recurses, so nesting in the input cannot overflow the C
 * stack, and every array it grows is bounded by the stream's length. */
#ifndef XLM_SHARD_UNPICKLE_H
#define XLM_SHARD_UNPICKLE_H

#include "shard_checkpoint.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    PK_NONE = 0, PK_BOOL, PK_INT, PK_FLOAT, PK_STR, PK_TUPLE, PK_LIST,
    PK_DICT, PK_GLOBAL, PK_STORAGE, PK_TENSOR, PK_BIGINT, PK_OBJECT, PK_KIND_COUNT_
} pk_kind_t;

/* The globals a torch pickle may name. */
typedef enum {
    PK_G_ORDERED_DICT = 0,
    PK_G_REBUILD_TENSOR_V2,
    PK_G_REBUILD_PARAMETER,
    PK_G_STORAGE_TYPE, /* torch.<Type>Storage; dtype says which */
    /* Inert: numpy arrays and their parts, which original XLM checkpoints
     * hold among their training parameters. Calling one gives an opaque
     * object whose contents are never looked at; nothing is executed. */
    PK_G_INERT,
} pk_global_t;

typedef struct {
    size_t storage; /* index in the unpickler's storage table */
    int64_t offset; /* in elements */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[TENSOR_MAX_DIMS];
} pk_tensor_t;

typedef struct pk_value pk_value_t;
typedef struct {
    pk_value_t *key;
    pk_value_t *value;
} pk_pair_t;

struct pk_value {
    pk_kind_t kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct { /* str: NUL-terminated UTF-8 (NUL inside possible: check
                  * len before using it as a name); bigint: the
                  * little-endian two's complement bytes of LONG1 */
            char *bytes;
            size_t len;
        } str;
        struct { /* tuple and list; borrowed from the arena */
            pk_value_t **items;
            size_t count, cap;
        } seq;
        struct { /* insertion order kept; str or int keys */
            pk_pair_t *pairs;
            size_t count, cap;
        } dict;
        struct {
            pk_global_t which;
            tensor_dtype_t dtype;
            const char *name; /* static, for messages */
        } global;
        size_t storage; /* index in the storage table */
        pk_tensor_t tensor;
    } u;
};

/* One storage named by a persistent id. */
typedef struct {
    char *key;
    tensor_dtype_t dtype;
    const char *type_name; /* "FloatStorage", ... static */
    int64_t numel;
    size_t nbytes; /* numel * dtype size, checked */
} pk_storage_t;

/* The pickle machine; zero it, then pk_unpickler_init. */
typedef struct {
    const char *function; /* borrowed, for messages: the public caller */
    const char *path;     /* borrowed, for messages */
    const char *stream;   /* borrowed, for messages: "data.pkl", "pickle 4" */
    shard_error_t *err;   /* borrowed */
    const uint8_t *buf;   /* the stream, borrowed */
    size_t len;
    size_t pos;
    unsigned char op; /* current opcode and where it started */
    size_t op_pos;
    bool stopped;
    bool trailing; /* bytes after STOP are the next pickle's */
    pk_value_t *result;

    pk_value_t **stack;
    size_t depth, stack_cap;
    size_t *marks; /* stack depths at each open MARK */
    size_t n_marks, marks_cap;
    pk_value_t **memo; /* index -> value or NULL */
    size_t memo_cap, memo_count;
    pk_value_t **arena; /* every value, freed together */
    size_t arena_count, arena_cap;
    pk_storage_t *storages; /* kept across the pickles of one file */
    size_t n_storages, storages_cap;
} pk_unpickler_t;

void pk_unpickler_init(pk_unpickler_t *u, const char *function, const char *path,
                       shard_error_t *err);
/* Frees every value and the storage table; u can be initialised again. */
void pk_unpickler_free(pk_unpickler_t *u);

/* Runs one pickle from buf[0..len) to STOP. With trailing false the pickle
 * must end exactly at len; otherwise *consumed gets its length, so that
 * several pickles can be read one after the other (torch's legacy format).
 * The memo starts empty, as for a new Python Unpickler; the storage table
 * and the arena carry over. stream names it in messages. */
shard_status_t pk_load(pk_unpickler_t *u, const char *stream, const uint8_t *buf, size_t len,
                       bool trailing, const pk_value_t **result, size_t *consumed);

const char *pk_kind_name(const pk_value_t *v);

/* Value of str key in a dict value, or NULL (also when dict is not one). */
const pk_value_t *pk_dict_get(const pk_value_t *dict, const char *key);

/* Strict UTF-8 without NUL (names become C strings). */
bool pk_utf8_ok(const uint8_t *s, size_t n);

#endif /* XLM_SHARD_UNPICKLE_H */
