/* torch.c: reads pytorch_model.bin, the zip archive torch.save has
 * written since torch 1.6, without Python.
 *
 * Archive layout:
 *   <archive>/data.pkl     the state dict, pickled (protocol 2)
 *   <archive>/data/<key>   one entry per storage: the raw elements
 *   <archive>/version      record format version (a decimal number)
 *   <archive>/byteorder    "little" or "big" (written by torch >= 1.13)
 *
 * data.pkl runs on a small, strict pickle machine that knows only the
 * opcodes and globals torch uses for a state dict: an OrderedDict whose
 * values are torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
 * requires_grad, hooks[, metadata]) calls, each storage being a persistent id
 * ('storage', torch.<Type>Storage, key, location, numel). Anything else is
 * refused with the opcode (or global) and its byte offset in data.pkl.
 *
 * Every storage is read once into a buffer owned by the tensor file; tensors
 * sharing a storage (tied weights) point into the same buffer.
 *
 * Non-contiguous tensors are refused (SHARD_ERR_UNSUPPORTED), not copied:
 * tensor_entry_t is a view into storage bytes, tied weights must stay tied
 * (a copy would silently untie them and double their memory), and
 * module.state_dict() only holds contiguous parameters and buffers, so a
 * strided tensor means a hand-made file worth reporting rather than fixing.
 *
 * Values of the pickle machine live in an arena owned by the unpickler and
 * are freed all at once: the memo and the stack share values freely, and no
 * per-value ownership is needed for a run that lasts one function call. The
 * machine never recurses, so nesting in the input cannot overflow the C
 * stack, and every array it grows is bounded by the pickle's length. */
#include "shard_checkpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

/* data.pkl of a state dict is a few bytes per tensor; 1 GiB is far beyond
 * any real checkpoint and keeps a forged size from allocating the machine. */
#define TT_PICKLE_MAX ((size_t)1 << 30)
/* version and byteorder are a few bytes. */
#define TT_SMALL_ENTRY_MAX ((size_t)64)

/* ---------------------------------------------------------------- opcodes */

enum {
    TT_OP_MARK = '(', TT_OP_STOP = '.', TT_OP_BINFLOAT = 'G',
    TT_OP_BININT = 'J', TT_OP_BININT1 = 'K', TT_OP_BININT2 = 'M',
    TT_OP_NONE = 'N', TT_OP_BINPERSID = 'Q', TT_OP_REDUCE = 'R',
    TT_OP_BINUNICODE = 'X', TT_OP_EMPTY_LIST = ']', TT_OP_APPEND = 'a',
    TT_OP_BUILD = 'b', TT_OP_GLOBAL = 'c', TT_OP_APPENDS = 'e',
    TT_OP_BINGET = 'h', TT_OP_LONG_BINGET = 'j', TT_OP_LIST = 'l',
    TT_OP_BINPUT = 'q', TT_OP_LONG_BINPUT = 'r', TT_OP_SETITEM = 's',
    TT_OP_TUPLE = 't', TT_OP_EMPTY_TUPLE = ')', TT_OP_SETITEMS = 'u',
    TT_OP_EMPTY_DICT = '}', TT_OP_PROTO = 0x80, TT_OP_TUPLE1 = 0x85,
    TT_OP_TUPLE2 = 0x86, TT_OP_TUPLE3 = 0x87, TT_OP_NEWTRUE = 0x88,
    TT_OP_NEWFALSE = 0x89, TT_OP_LONG1 = 0x8a, TT_OP_SHORT_BINUNICODE = 0x8c,
    TT_OP_MEMOIZE = 0x94, TT_OP_FRAME = 0x95,
};

/* Names of every pickle opcode (protocols 0 to 5), supported or not, so an
 * error can say which one a file used. */
static const struct {
    unsigned char op;
    const char *name;
} tt_op_names[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"},
    {'2', "DUP"}, {'F', "FLOAT"}, {'I', "INT"}, {'J', "BININT"},
    {'K', "BININT1"}, {'L', "LONG"}, {'M', "BININT2"}, {'N', "NONE"},
    {'P', "PERSID"}, {'Q', "BINPERSID"}, {'R', "REDUCE"}, {'S', "STRING"},
    {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"}, {'V', "UNICODE"},
    {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"}, {'c', "GLOBAL"},
    {'d', "DICT"}, {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"},
    {'h', "BINGET"}, {'i', "INST"}, {'j', "LONG_BINGET"}, {'l', "LIST"},
    {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"}, {'q', "BINPUT"},
    {'r', "LONG_BINPUT"}, {'s', "SETITEM"}, {'t', "TUPLE"},
    {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {'G', "BINFLOAT"},
    {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"}, {0x83, "EXT2"},
    {0x84, "EXT4"}, {0x85, "TUPLE1"}, {0x86, "TUPLE2"}, {0x87, "TUPLE3"},
    {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"}, {0x8b, "LONG4"},
    {'B', "BINBYTES"}, {'C', "SHORT_BINBYTES"}, {0x8c, "SHORT_BINUNICODE"},
    {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"}, {0x8f, "EMPTY_SET"},
    {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"},
    {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"}, {0x95, "FRAME"},
    {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
};

static const char *tt_op_name(unsigned char op)
{
    for (size_t i = 0; i < sizeof tt_op_names / sizeof tt_op_names[0]; i++) {
        if (tt_op_names[i].op == op)
            return tt_op_names[i].name;
    }
    return "<not a pickle opcode>";
}

/* ---------------------------------------------------------------- values */

typedef enum {
    TT_NONE = 0, TT_BOOL, TT_INT, TT_FLOAT, TT_STR, TT_TUPLE, TT_LIST,
    TT_DICT, TT_GLOBAL, TT_STORAGE, TT_TENSOR, TT_KIND_COUNT_
} tt_kind_t;

static const char *const tt_kind_names[TT_KIND_COUNT_] = {
    "None", "bool", "int", "float", "str", "tuple", "list", "dict",
    "global", "storage", "tensor",
};

/* The globals a state dict pickle may name. */
typedef enum {
    TT_G_ORDERED_DICT = 0,
    TT_G_REBUILD_TENSOR_V2,
    TT_G_REBUILD_PARAMETER,
    TT_G_STORAGE_TYPE, /* torch.<Type>Storage; dtype says which */
} tt_global_t;

typedef struct {
    size_t storage; /* index in the unpickler's storage table */
    int64_t offset; /* in elements */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[TENSOR_MAX_DIMS];
} tt_tensor_t;

typedef struct tt_value tt_value_t;
typedef struct {
    tt_value_t *key;
    tt_value_t *value;
} tt_pair_t;

struct tt_value {
    tt_kind_t kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            char *bytes; /* NUL-terminated, valid UTF-8 without NUL */
            size_t len;
        } str;
        struct { /* tuple and list; borrowed from the arena */
            tt_value_t **items;
            size_t count, cap;
        } seq;
        struct { /* insertion order kept; str keys only */
            tt_pair_t *pairs;
            size_t count, cap;
        } dict;
        struct {
            tt_global_t which;
            tensor_dtype_t dtype;
            const char *name; /* static, for messages */
        } global;
        size_t storage; /* index in the storage table */
        tt_tensor_t tensor;
    } u;
};

static const char *tt_kind_name(const tt_value_t *v)
{
    return tt_kind_names[v->kind];
}

/* One storage named by a persistent id; read from the archive once. */
typedef struct {
    char *key;
    tensor_dtype_t dtype;
    const char *type_name; /* "FloatStorage", ... static */
    int64_t numel;
    size_t nbytes; /* numel * dtype size, checked */
    uint8_t *data; /* owned until moved into the tensor file */
} tt_storage_t;

/* The pickle machine. */
typedef struct {
    const char *path; /* borrowed, for messages */
    shard_error_t *err; /* borrowed */
    const uint8_t *buf; /* data.pkl, borrowed */
    size_t len;
    size_t pos;
    unsigned char op; /* current opcode and where it started */
    size_t op_pos;
    bool stopped;
    tt_value_t *result;

    tt_value_t **stack;
    size_t depth, stack_cap;
    size_t *marks; /* stack depths at each open MARK */
    size_t n_marks, marks_cap;
    tt_value_t **memo; /* index -> value or NULL */
    size_t memo_cap, memo_count;
    tt_value_t **arena; /* every value, freed together */
    size_t arena_count, arena_cap;
    tt_storage_t *storages;
    size_t n_storages, storages_cap;
} tt_unpickler_t;

/* ---------------------------------------------------------------- helpers */

/* Grows array to hold need elements of size elem; returns the (maybe moved)
 * array, or NULL with array untouched when out of memory or on overflow. */
static void *tt_grow(void *array, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return array;
    size_t n = *cap < 16 ? 16 : *cap;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return NULL;
        n *= 2;
    }
    if (n > SIZE_MAX / elem)
        return NULL;
    void *grown = realloc(array, n * elem);
    if (grown != NULL)
        *cap = n;
    return grown;
}

/* Fails the current opcode: the message names the file, the byte offset of
 * the opcode in data.pkl and the opcode, then what was wrong. */
static shard_status_t tt_op_error(tt_unpickler_t *u, shard_status_t code,
                                  const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static shard_status_t tt_op_error(tt_unpickler_t *u, shard_status_t code,
                                  const char *fmt, ...)
{
    char detail[SHARD_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return shard_error_set(u->err, code,
                           "tensor_file_open_torch: %s: data.pkl offset %zu, "
                           "opcode %s (0x%02x): %s",
                           u->path, u->op_pos, tt_op_name(u->op), u->op, detail);
}

static shard_status_t tt_nomem(tt_unpickler_t *u)
{
    return tt_op_error(u, SHARD_ERR_NOMEM, "out of memory");
}

/* Consumes n argument bytes of the current opcode. */
static shard_status_t tt_take(tt_unpickler_t *u, size_t n, const uint8_t **out)
{
    if (u->len - u->pos < n)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: the opcode needs %zu argument "
                           "bytes, %zu left", n, u->len - u->pos);
    *out = u->buf + u->pos;
    u->pos += n;
    return SHARD_OK;
}

static uint64_t tt_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = (v << 8) | p[i - 1];
    return v;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF) and
 * no NUL, since names become C strings. */
static bool tt_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp, min;
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (n - i - 1 < extra)
            return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += extra + 1;
    }
    return true;
}

/* ---------------------------------------------------------------- the machine's memory */

static void tt_value_free(tt_value_t *v)
{
    switch (v->kind) {
    case TT_STR: free(v->u.str.bytes); break;
    case TT_TUPLE:
    case TT_LIST: free(v->u.seq.items); break;
    case TT_DICT: free(v->u.dict.pairs); break;
    default: break;
    }
    free(v);
}

static void tt_unpickler_free(tt_unpickler_t *u)
{
    for (size_t i = 0; i < u->arena_count; i++)
        tt_value_free(u->arena[i]);
    for (size_t i = 0; i < u->n_storages; i++) {
        free(u->storages[i].key);
        free(u->storages[i].data);
    }
    free(u->arena);
    free(u->storages);
    free(u->stack);
    free(u->marks);
    free(u->memo);
    memset(u, 0, sizeof *u);
}

static shard_status_t tt_new(tt_unpickler_t *u, tt_kind_t kind, tt_value_t **out)
{
    tt_value_t **arena = tt_grow(u->arena, &u->arena_cap, u->arena_count + 1,
                                 sizeof *u->arena);
    if (arena == NULL)
        return tt_nomem(u);
    u->arena = arena;
    tt_value_t *v = calloc(1, sizeof *v);
    if (v == NULL)
        return tt_nomem(u);
    v->kind = kind;
    u->arena[u->arena_count++] = v;
    *out = v;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- stack */

/* The bottom of the stack the current opcode may touch: pickle splits the
 * stack at each MARK, so nothing below the innermost mark is reachable. */
static size_t tt_floor(const tt_unpickler_t *u)
{
    return u->n_marks > 0 ? u->marks[u->n_marks - 1] : 0;
}

static shard_status_t tt_push(tt_unpickler_t *u, tt_value_t *v)
{
    tt_value_t **stack = tt_grow(u->stack, &u->stack_cap, u->depth + 1,
                                 sizeof *u->stack);
    if (stack == NULL)
        return tt_nomem(u);
    u->stack = stack;
    u->stack[u->depth++] = v;
    return SHARD_OK;
}

static shard_status_t tt_pop(tt_unpickler_t *u, tt_value_t **out)
{
    if (u->depth <= tt_floor(u))
        return tt_op_error(u, SHARD_ERR_FORMAT, "stack underflow");
    *out = u->stack[--u->depth];
    return SHARD_OK;
}

static shard_status_t tt_top(tt_unpickler_t *u, tt_value_t **out)
{
    if (u->depth <= tt_floor(u))
        return tt_op_error(u, SHARD_ERR_FORMAT, "stack underflow");
    *out = u->stack[u->depth - 1];
    return SHARD_OK;
}

/* Closes the innermost MARK: the values above it are stack[*start..depth). */
static shard_status_t tt_pop_mark(tt_unpickler_t *u, size_t *start)
{
    if (u->n_marks == 0)
        return tt_op_error(u, SHARD_ERR_FORMAT, "no MARK to close");
    *start = u->marks[--u->n_marks];
    return SHARD_OK;
}

static shard_status_t tt_push_new(tt_unpickler_t *u, tt_kind_t kind, tt_value_t **out)
{
    tt_value_t *v = NULL;
    shard_status_t st = tt_new(u, kind, &v);
    if (st == SHARD_OK)
        st = tt_push(u, v);
    if (st == SHARD_OK && out != NULL)
        *out = v;
    return st;
}

/* ---------------------------------------------------------------- containers */

/* Sets seq to a copy of items[0..n). */
static shard_status_t tt_seq_fill(tt_unpickler_t *u, tt_value_t *seq,
                                  tt_value_t *const *items, size_t n)
{
    if (n == 0)
        return SHARD_OK;
    tt_value_t **copy = tt_grow(NULL, &seq->u.seq.cap, n, sizeof *copy);
    if (copy == NULL)
        return tt_nomem(u);
    memcpy(copy, items, n * sizeof *copy);
    seq->u.seq.items = copy;
    seq->u.seq.count = n;
    return SHARD_OK;
}

static shard_status_t tt_list_append(tt_unpickler_t *u, tt_value_t *list,
                                     tt_value_t *item)
{
    if (list->kind != TT_LIST)
        return tt_op_error(u, SHARD_ERR_FORMAT, "appends to a %s, expected a list",
                           tt_kind_name(list));
    tt_value_t **items = tt_grow(list->u.seq.items, &list->u.seq.cap,
                                 list->u.seq.count + 1, sizeof *items);
    if (items == NULL)
        return tt_nomem(u);
    list->u.seq.items = items;
    items[list->u.seq.count++] = item;
    return SHARD_OK;
}

/* Appends without looking for an equal key: torch never writes one, and a
 * duplicate tensor name is caught (in O(n log n)) when the entries are made. */
static shard_status_t tt_dict_set(tt_unpickler_t *u, tt_value_t *dict,
                                  tt_value_t *key, tt_value_t *value)
{
    if (dict->kind != TT_DICT)
        return tt_op_error(u, SHARD_ERR_FORMAT, "sets an item of a %s, expected a dict",
                           tt_kind_name(dict));
    if (key->kind != TT_STR)
        return tt_op_error(u, SHARD_ERR_FORMAT, "dict key is a %s, expected a str",
                           tt_kind_name(key));
    tt_pair_t *pairs = tt_grow(dict->u.dict.pairs, &dict->u.dict.cap,
                               dict->u.dict.count + 1, sizeof *pairs);
    if (pairs == NULL)
        return tt_nomem(u);
    dict->u.dict.pairs = pairs;
    pairs[dict->u.dict.count++] = (tt_pair_t){key, value};
    return SHARD_OK;
}

/* ---------------------------------------------------------------- scalar opcodes */

static shard_status_t tt_op_proto(tt_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, 1, &p);
    if (st != SHARD_OK)
        return st;
    if (p[0] > 5)
        return tt_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "pickle protocol %u, expected at most 5", p[0]);
    return SHARD_OK;
}

/* Protocol 4 framing: only a read-ahead hint, checked and skipped. */
static shard_status_t tt_op_frame(tt_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, 8, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t n = tt_le(p, 8);
    if (n > u->len - u->pos)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: frame of %llu bytes, %zu left",
                           (unsigned long long)n, u->len - u->pos);
    return SHARD_OK;
}

static shard_status_t tt_op_int(tt_unpickler_t *u, size_t width, bool is_signed)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t raw = tt_le(p, width);
    int64_t value = (int64_t)raw;
    if (is_signed && width < 8 && (raw >> (8 * width - 1)) != 0)
        value = (int64_t)(raw | (~UINT64_C(0) << (8 * width)));
    tt_value_t *v = NULL;
    st = tt_push_new(u, TT_INT, &v);
    if (st == SHARD_OK)
        v->u.i = value;
    return st;
}

/* LONG1: a byte count, then that many bytes of two's complement. */
static shard_status_t tt_op_long1(tt_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, 1, &p);
    if (st != SHARD_OK)
        return st;
    size_t width = p[0];
    if (width > 8)
        return tt_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "integer of %zu bytes, expected at most 8", width);
    if (width == 0) /* pickle's encoding of 0 */
        return tt_op_int(u, 0, false);
    return tt_op_int(u, width, true);
}

/* BINFLOAT is the one big-endian field of the format. */
static shard_status_t tt_op_binfloat(tt_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, 8, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t bits = 0;
    for (size_t i = 0; i < 8; i++)
        bits = (bits << 8) | p[i];
    tt_value_t *v = NULL;
    st = tt_push_new(u, TT_FLOAT, &v);
    if (st == SHARD_OK)
        memcpy(&v->u.f, &bits, sizeof v->u.f);
    return st;
}

static shard_status_t tt_op_const(tt_unpickler_t *u, tt_kind_t kind, bool b)
{
    tt_value_t *v = NULL;
    shard_status_t st = tt_push_new(u, kind, &v);
    if (st == SHARD_OK && kind == TT_BOOL)
        v->u.b = b;
    return st;
}

static shard_status_t tt_op_unicode(tt_unpickler_t *u, size_t len_width)
{
    const uint8_t *p = NULL, *bytes = NULL;
    shard_status_t st = tt_take(u, len_width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t n = tt_le(p, len_width);
    if (n > u->len - u->pos)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: string of %llu bytes, %zu left",
                           (unsigned long long)n, u->len - u->pos);
    st = tt_take(u, (size_t)n, &bytes);
    if (st != SHARD_OK)
        return st;
    if (!tt_utf8_ok(bytes, (size_t)n))
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "string of %llu bytes is not UTF-8 without NUL",
                           (unsigned long long)n);
    tt_value_t *v = NULL;
    st = tt_push_new(u, TT_STR, &v);
    if (st != SHARD_OK)
        return st;
    v->u.str.bytes = malloc((size_t)n + 1);
    if (v->u.str.bytes == NULL)
        return tt_nomem(u);
    memcpy(v->u.str.bytes, bytes, (size_t)n);
    v->u.str.bytes[n] = '\0';
    v->u.str.len = (size_t)n;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- containers opcodes */

static shard_status_t tt_op_mark(tt_unpickler_t *u)
{
    size_t *marks = tt_grow(u->marks, &u->marks_cap, u->n_marks + 1, sizeof *marks);
    if (marks == NULL)
        return tt_nomem(u);
    u->marks = marks;
    u->marks[u->n_marks++] = u->depth;
    return SHARD_OK;
}

/* TUPLE and LIST: the values above the innermost MARK. */
static shard_status_t tt_op_seq_from_mark(tt_unpickler_t *u, tt_kind_t kind)
{
    size_t start = 0;
    shard_status_t st = tt_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    tt_value_t *seq = NULL;
    st = tt_new(u, kind, &seq);
    if (st == SHARD_OK)
        st = tt_seq_fill(u, seq, u->stack + start, u->depth - start);
    if (st != SHARD_OK)
        return st;
    u->depth = start;
    return tt_push(u, seq);
}

/* TUPLE1/2/3: the top n values. */
static shard_status_t tt_op_tuple_n(tt_unpickler_t *u, size_t n)
{
    if (u->depth - tt_floor(u) < n)
        return tt_op_error(u, SHARD_ERR_FORMAT, "stack underflow: needs %zu values", n);
    tt_value_t *seq = NULL;
    shard_status_t st = tt_new(u, TT_TUPLE, &seq);
    if (st == SHARD_OK)
        st = tt_seq_fill(u, seq, u->stack + u->depth - n, n);
    if (st != SHARD_OK)
        return st;
    u->depth -= n;
    return tt_push(u, seq);
}

static shard_status_t tt_op_append(tt_unpickler_t *u)
{
    tt_value_t *item = NULL, *list = NULL;
    shard_status_t st = tt_pop(u, &item);
    if (st == SHARD_OK)
        st = tt_top(u, &list);
    if (st == SHARD_OK)
        st = tt_list_append(u, list, item);
    return st;
}

static shard_status_t tt_op_appends(tt_unpickler_t *u)
{
    size_t start = 0;
    shard_status_t st = tt_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    if (start <= tt_floor(u))
        return tt_op_error(u, SHARD_ERR_FORMAT, "no list below the MARK");
    tt_value_t *list = u->stack[start - 1];
    for (size_t i = start; i < u->depth && st == SHARD_OK; i++)
        st = tt_list_append(u, list, u->stack[i]);
    u->depth = start;
    return st;
}

static shard_status_t tt_op_setitem(tt_unpickler_t *u)
{
    tt_value_t *value = NULL, *key = NULL, *dict = NULL;
    shard_status_t st = tt_pop(u, &value);
    if (st == SHARD_OK)
        st = tt_pop(u, &key);
    if (st == SHARD_OK)
        st = tt_top(u, &dict);
    if (st == SHARD_OK)
        st = tt_dict_set(u, dict, key, value);
    return st;
}

static shard_status_t tt_op_setitems(tt_unpickler_t *u)
{
    size_t start = 0;
    shard_status_t st = tt_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    if (start <= tt_floor(u))
        return tt_op_error(u, SHARD_ERR_FORMAT, "no dict below the MARK");
    if ((u->depth - start) % 2 != 0)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "odd number of values (%zu) for key/value pairs",
                           u->depth - start);
    tt_value_t *dict = u->stack[start - 1];
    for (size_t i = start; i < u->depth && st == SHARD_OK; i += 2)
        st = tt_dict_set(u, dict, u->stack[i], u->stack[i + 1]);
    u->depth = start;
    return st;
}

/* ---------------------------------------------------------------- memo */

/* Indices are bounded by the pickle's length: a pickler numbers memo
 * entries from 0 and each entry costs at least one opcode byte. */
static shard_status_t tt_memo_index(tt_unpickler_t *u, size_t width, size_t *index)
{
    const uint8_t *p = NULL;
    shard_status_t st = tt_take(u, width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t i = tt_le(p, width);
    if (i >= u->len)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "memo index %llu, expected below the pickle's size %zu",
                           (unsigned long long)i, u->len);
    *index = (size_t)i;
    return SHARD_OK;
}

static shard_status_t tt_memo_put(tt_unpickler_t *u, size_t index)
{
    tt_value_t *v = NULL;
    shard_status_t st = tt_top(u, &v);
    if (st != SHARD_OK)
        return st;
    size_t old_cap = u->memo_cap;
    tt_value_t **memo = tt_grow(u->memo, &u->memo_cap, index + 1, sizeof *memo);
    if (memo == NULL)
        return tt_nomem(u);
    u->memo = memo;
    if (u->memo_cap > old_cap)
        memset(memo + old_cap, 0, (u->memo_cap - old_cap) * sizeof *memo);
    if (memo[index] == NULL)
        u->memo_count++;
    memo[index] = v;
    return SHARD_OK;
}

static shard_status_t tt_op_put(tt_unpickler_t *u, size_t width)
{
    size_t index = 0;
    shard_status_t st = tt_memo_index(u, width, &index);
    return st != SHARD_OK ? st : tt_memo_put(u, index);
}

/* MEMOIZE stores at the memo's current size, as Python's len(memo). */
static shard_status_t tt_op_memoize(tt_unpickler_t *u)
{
    if (u->memo_count >= u->len)
        return tt_op_error(u, SHARD_ERR_FORMAT, "memo larger than the pickle");
    return tt_memo_put(u, u->memo_count);
}

static shard_status_t tt_op_get(tt_unpickler_t *u, size_t width)
{
    size_t index = 0;
    shard_status_t st = tt_memo_index(u, width, &index);
    if (st != SHARD_OK)
        return st;
    if (index >= u->memo_cap || u->memo[index] == NULL)
        return tt_op_error(u, SHARD_ERR_FORMAT, "memo index %zu was never set", index);
    return tt_push(u, u->memo[index]);
}

/* ---------------------------------------------------------------- globals */

static const struct {
    const char *name;
    tensor_dtype_t dtype;
} tt_storage_types[] = {
    {"FloatStorage", TENSOR_F32}, {"HalfStorage", TENSOR_F16},
    {"BFloat16Storage", TENSOR_BF16}, {"DoubleStorage", TENSOR_F64},
    {"LongStorage", TENSOR_I64}, {"IntStorage", TENSOR_I32},
    {"CharStorage", TENSOR_I8}, {"ByteStorage", TENSOR_U8},
    {"BoolStorage", TENSOR_BOOL},
};

/* Sets v to the known global module.name; false when unknown. */
static bool tt_global_lookup(const char *module, const char *name, tt_value_t *v)
{
    if (strcmp(module, "collections") == 0 && strcmp(name, "OrderedDict") == 0) {
        v->u.global.which = TT_G_ORDERED_DICT;
        v->u.global.name = "collections.OrderedDict";
        return true;
    }
    if (strcmp(module, "torch._utils") == 0 && strcmp(name, "_rebuild_tensor_v2") == 0) {
        v->u.global.which = TT_G_REBUILD_TENSOR_V2;
        v->u.global.name = "torch._utils._rebuild_tensor_v2";
        return true;
    }
    if (strcmp(module, "torch._utils") == 0 && strcmp(name, "_rebuild_parameter") == 0) {
        v->u.global.which = TT_G_REBUILD_PARAMETER;
        v->u.global.name = "torch._utils._rebuild_parameter";
        return true;
    }
    if (strcmp(module, "torch") != 0)
        return false;
    for (size_t i = 0; i < sizeof tt_storage_types / sizeof tt_storage_types[0]; i++) {
        if (strcmp(name, tt_storage_types[i].name) == 0) {
            v->u.global.which = TT_G_STORAGE_TYPE;
            v->u.global.dtype = tt_storage_types[i].dtype;
            v->u.global.name = tt_storage_types[i].name;
            return true;
        }
    }
    return false;
}

/* Reads one newline-terminated GLOBAL argument into out (NUL-terminated). */
static shard_status_t tt_global_line(tt_unpickler_t *u, char *out, size_t out_size)
{
    const uint8_t *start = u->buf + u->pos;
    const uint8_t *nl = memchr(start, '\n', u->len - u->pos);
    if (nl == NULL)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: global name without newline");
    size_t n = (size_t)(nl - start);
    if (n == 0 || n >= out_size || !tt_utf8_ok(start, n))
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "global name of %zu bytes, expected 1 to %zu bytes of UTF-8",
                           n, out_size - 1);
    memcpy(out, start, n);
    out[n] = '\0';
    u->pos += n + 1;
    return SHARD_OK;
}

static shard_status_t tt_op_global(tt_unpickler_t *u)
{
    char module[128], name[128];
    shard_status_t st = tt_global_line(u, module, sizeof module);
    if (st == SHARD_OK)
        st = tt_global_line(u, name, sizeof name);
    if (st != SHARD_OK)
        return st;
    tt_value_t *v = NULL;
    st = tt_new(u, TT_GLOBAL, &v);
    if (st != SHARD_OK)
        return st;
    if (!tt_global_lookup(module, name, v))
        return tt_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "global %s.%s is not part of a torch state dict "
                           "(known: collections.OrderedDict, "
                           "torch._utils._rebuild_tensor_v2, "
                           "torch._utils._rebuild_parameter, torch.<Type>Storage)",
                           module, name);
    return tt_push(u, v);
}

/* ---------------------------------------------------------------- persistent ids */

/* Returns the table index of key, registering it on first sight. */
static shard_status_t tt_storage_register(tt_unpickler_t *u, const tt_value_t *type,
                                          const tt_value_t *key, int64_t numel,
                                          size_t *index)
{
    /* Linear: one persistent id per tensor, a few hundred in a checkpoint. */
    for (size_t i = 0; i < u->n_storages; i++) {
        tt_storage_t *s = &u->storages[i];
        if (strcmp(s->key, key->u.str.bytes) != 0)
            continue;
        if (s->dtype != type->u.global.dtype || s->numel != numel)
            return tt_op_error(u, SHARD_ERR_FORMAT,
                               "storage '%s' is a %s of %lld elements here and "
                               "a %s of %lld elements before", s->key,
                               type->u.global.name, (long long)numel,
                               s->type_name, (long long)s->numel);
        *index = i;
        return SHARD_OK;
    }
    size_t elem = tensor_dtype_size(type->u.global.dtype);
    if ((uint64_t)numel > SIZE_MAX / elem || (uint64_t)numel > (uint64_t)INT64_MAX / elem)
        return tt_op_error(u, SHARD_ERR_FORMAT, "storage '%s' of %lld elements overflows",
                           key->u.str.bytes, (long long)numel);
    tt_storage_t *table = tt_grow(u->storages, &u->storages_cap, u->n_storages + 1,
                                  sizeof *table);
    if (table == NULL)
        return tt_nomem(u);
    u->storages = table;
    tt_storage_t *s = &table[u->n_storages];
    memset(s, 0, sizeof *s);
    s->key = strdup(key->u.str.bytes);
    if (s->key == NULL)
        return tt_nomem(u);
    s->dtype = type->u.global.dtype;
    s->type_name = type->u.global.name;
    s->numel = numel;
    s->nbytes = (size_t)numel * elem;
    *index = u->n_storages++;
    return SHARD_OK;
}

/* Checks pid = ('storage', torch.<Type>Storage, key, location, numel). */
static shard_status_t tt_check_pid(tt_unpickler_t *u, const tt_value_t *pid)
{
    if (pid->kind != TT_TUPLE || pid->u.seq.count != 5)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id is a %s of %zu items, expected a "
                           "5-tuple ('storage', type, key, location, numel)",
                           tt_kind_name(pid),
                           pid->kind == TT_TUPLE ? pid->u.seq.count : (size_t)0);
    tt_value_t *const *it = pid->u.seq.items;
    if (it[0]->kind != TT_STR || strcmp(it[0]->u.str.bytes, "storage") != 0)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id starts with a %s, expected 'storage'",
                           tt_kind_name(it[0]));
    if (it[1]->kind != TT_GLOBAL || it[1]->u.global.which != TT_G_STORAGE_TYPE)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id item 2 is a %s, expected a torch.<Type>Storage",
                           tt_kind_name(it[1]));
    if (it[2]->kind != TT_STR)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id key is a %s, expected a str",
                           tt_kind_name(it[2]));
    if (it[2]->u.str.len == 0 || strchr(it[2]->u.str.bytes, '/') != NULL)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id key '%s', expected a non-empty name "
                           "without '/'", it[2]->u.str.bytes);
    if (it[3]->kind != TT_STR)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id location is a %s, expected a str",
                           tt_kind_name(it[3]));
    if (it[4]->kind != TT_INT || it[4]->u.i < 0)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id numel is a %s, expected an int >= 0",
                           tt_kind_name(it[4]));
    return SHARD_OK;
}

static shard_status_t tt_op_binpersid(tt_unpickler_t *u)
{
    tt_value_t *pid = NULL, *v = NULL;
    size_t index = 0;
    shard_status_t st = tt_pop(u, &pid);
    if (st == SHARD_OK)
        st = tt_check_pid(u, pid);
    if (st == SHARD_OK)
        st = tt_storage_register(u, pid->u.seq.items[1], pid->u.seq.items[2],
                                 pid->u.seq.items[4]->u.i, &index);
    if (st == SHARD_OK)
        st = tt_push_new(u, TT_STORAGE, &v);
    if (st == SHARD_OK)
        v->u.storage = index;
    return st;
}

/* ---------------------------------------------------------------- REDUCE, BUILD */

/* Fills out[0..n) from a tuple of ints (a tensor's size or stride). */
static shard_status_t tt_int_tuple(tt_unpickler_t *u, const tt_value_t *t,
                                   const char *what, int64_t *out, int *n)
{
    if (t->kind != TT_TUPLE)
        return tt_op_error(u, SHARD_ERR_FORMAT, "tensor %s is a %s, expected a tuple",
                           what, tt_kind_name(t));
    if (t->u.seq.count > TENSOR_MAX_DIMS)
        return tt_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "tensor %s has %zu dimensions, expected at most %d",
                           what, t->u.seq.count, TENSOR_MAX_DIMS);
    for (size_t d = 0; d < t->u.seq.count; d++) {
        const tt_value_t *x = t->u.seq.items[d];
        if (x->kind != TT_INT || x->u.i < 0)
            return tt_op_error(u, SHARD_ERR_FORMAT,
                               "tensor %s[%zu] is a %s%s, expected an int >= 0",
                               what, d, tt_kind_name(x),
                               x->kind == TT_INT ? " < 0" : "");
        out[d] = x->u.i;
    }
    *n = (int)t->u.seq.count;
    return SHARD_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]). Bounds against the storage are checked when
 * the entries are made, where the tensor's name is known. */
static shard_status_t tt_rebuild_tensor(tt_unpickler_t *u, const tt_value_t *args,
                                        tt_value_t **out)
{
    size_t n = args->u.seq.count;
    if (n != 6 && n != 7)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
    tt_value_t *const *a = args->u.seq.items;
    if (a[0]->kind != TT_STORAGE)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 storage is a %s, expected a storage",
                           tt_kind_name(a[0]));
    if (a[1]->kind != TT_INT || a[1]->u.i < 0)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 storage_offset is a %s, expected an int >= 0",
                           tt_kind_name(a[1]));
    if (a[4]->kind != TT_BOOL)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 requires_grad is a %s, expected a bool",
                           tt_kind_name(a[4]));
    for (size_t i = 5; i < n; i++) {
        if (a[i]->kind != TT_DICT && a[i]->kind != TT_NONE)
            return tt_op_error(u, SHARD_ERR_FORMAT,
                               "_rebuild_tensor_v2 argument %zu is a %s, expected "
                               "a dict or None", i + 1, tt_kind_name(a[i]));
    }
    tt_tensor_t t = {.storage = a[0]->u.storage, .offset = a[1]->u.i};
    int stride_ndim = 0;
    shard_status_t st = tt_int_tuple(u, a[2], "size", t.shape, &t.ndim);
    if (st == SHARD_OK)
        st = tt_int_tuple(u, a[3], "stride", t.stride, &stride_ndim);
    if (st == SHARD_OK && stride_ndim != t.ndim)
        st = tt_op_error(u, SHARD_ERR_FORMAT, "tensor size has %d dimensions, stride %d",
                         t.ndim, stride_ndim);
    if (st == SHARD_OK)
        st = tt_new(u, TT_TENSOR, out);
    if (st == SHARD_OK)
        (*out)->u.tensor = t;
    return st;
}

/* _rebuild_parameter(data, requires_grad, backward_hooks): the tensor. */
static shard_status_t tt_rebuild_parameter(tt_unpickler_t *u, const tt_value_t *args,
                                           tt_value_t **out)
{
    tt_value_t *const *a = args->u.seq.items;
    if (args->u.seq.count != 3 || a[0]->kind != TT_TENSOR || a[1]->kind != TT_BOOL
        || (a[2]->kind != TT_DICT && a[2]->kind != TT_NONE))
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_parameter takes (tensor, bool, dict or None), "
                           "got %zu arguments", args->u.seq.count);
    *out = args->u.seq.items[0];
    return SHARD_OK;
}

static shard_status_t tt_op_reduce(tt_unpickler_t *u)
{
    tt_value_t *args = NULL, *callable = NULL, *result = NULL;
    shard_status_t st = tt_pop(u, &args);
    if (st == SHARD_OK)
        st = tt_pop(u, &callable);
    if (st != SHARD_OK)
        return st;
    if (callable->kind != TT_GLOBAL || callable->u.global.which == TT_G_STORAGE_TYPE)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "calls a %s, expected OrderedDict or a torch rebuild function",
                           callable->kind == TT_GLOBAL ? "storage type"
                                                       : tt_kind_name(callable));
    if (args->kind != TT_TUPLE)
        return tt_op_error(u, SHARD_ERR_FORMAT, "arguments are a %s, expected a tuple",
                           tt_kind_name(args));
    switch (callable->u.global.which) {
    case TT_G_ORDERED_DICT:
        if (args->u.seq.count != 0)
            return tt_op_error(u, SHARD_ERR_UNSUPPORTED,
                               "OrderedDict called with %zu arguments, expected none",
                               args->u.seq.count);
        st = tt_new(u, TT_DICT, &result);
        break;
    case TT_G_REBUILD_TENSOR_V2: st = tt_rebuild_tensor(u, args, &result); break;
    case TT_G_REBUILD_PARAMETER: st = tt_rebuild_parameter(u, args, &result); break;
    case TT_G_STORAGE_TYPE: break; /* refused above */
    }
    return st != SHARD_OK ? st : tt_push(u, result);
}

/* BUILD on a dict sets Python attributes (torch stores the state dict's
 * _metadata this way); tensor bytes do not depend on them, so the state is
 * checked to be a dict and dropped. */
static shard_status_t tt_op_build(tt_unpickler_t *u)
{
    tt_value_t *state = NULL, *obj = NULL;
    shard_status_t st = tt_pop(u, &state);
    if (st == SHARD_OK)
        st = tt_top(u, &obj);
    if (st != SHARD_OK)
        return st;
    if (obj->kind != TT_DICT || (state->kind != TT_DICT && state->kind != TT_NONE))
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "builds a %s from a %s, expected a dict from a dict",
                           tt_kind_name(obj), tt_kind_name(state));
    return SHARD_OK;
}

static shard_status_t tt_op_stop(tt_unpickler_t *u)
{
    if (u->n_marks != 0 || u->depth != 1)
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "%zu values and %zu open MARKs left, expected 1 value",
                           u->depth, u->n_marks);
    if (u->pos != u->len)
        return tt_op_error(u, SHARD_ERR_FORMAT, "%zu bytes after STOP",
                           u->len - u->pos);
    u->result = u->stack[0];
    u->stopped = true;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- dispatch */

static shard_status_t tt_step(tt_unpickler_t *u)
{
    u->op_pos = u->pos;
    u->op = u->buf[u->pos++];
    switch (u->op) {
    case TT_OP_PROTO: return tt_op_proto(u);
    case TT_OP_FRAME: return tt_op_frame(u);
    case TT_OP_STOP: return tt_op_stop(u);
    case TT_OP_NONE: return tt_op_const(u, TT_NONE, false);
    case TT_OP_NEWTRUE: return tt_op_const(u, TT_BOOL, true);
    case TT_OP_NEWFALSE: return tt_op_const(u, TT_BOOL, false);
    case TT_OP_BININT: return tt_op_int(u, 4, true);
    case TT_OP_BININT1: return tt_op_int(u, 1, false);
    case TT_OP_BININT2: return tt_op_int(u, 2, false);
    case TT_OP_LONG1: return tt_op_long1(u);
    case TT_OP_BINFLOAT: return tt_op_binfloat(u);
    case TT_OP_BINUNICODE: return tt_op_unicode(u, 4);
    case TT_OP_SHORT_BINUNICODE: return tt_op_unicode(u, 1);
    case TT_OP_EMPTY_DICT: return tt_op_const(u, TT_DICT, false);
    case TT_OP_EMPTY_LIST: return tt_op_const(u, TT_LIST, false);
    case TT_OP_EMPTY_TUPLE: return tt_op_const(u, TT_TUPLE, false);
    case TT_OP_MARK: return tt_op_mark(u);
    case TT_OP_TUPLE: return tt_op_seq_from_mark(u, TT_TUPLE);
    case TT_OP_LIST: return tt_op_seq_from_mark(u, TT_LIST);
    case TT_OP_TUPLE1: return tt_op_tuple_n(u, 1);
    case TT_OP_TUPLE2: return tt_op_tuple_n(u, 2);
    case TT_OP_TUPLE3: return tt_op_tuple_n(u, 3);
    case TT_OP_APPEND: return tt_op_append(u);
    case TT_OP_APPENDS: return tt_op_appends(u);
    case TT_OP_SETITEM: return tt_op_setitem(u);
    case TT_OP_SETITEMS: return tt_op_setitems(u);
    case TT_OP_BINPUT: return tt_op_put(u, 1);
    case TT_OP_LONG_BINPUT: return tt_op_put(u, 4);
    case TT_OP_MEMOIZE: return tt_op_memoize(u);
    case TT_OP_BINGET: return tt_op_get(u, 1);
    case TT_OP_LONG_BINGET: return tt_op_get(u, 4);
    case TT_OP_GLOBAL: return tt_op_global(u);
    case TT_OP_BINPERSID: return tt_op_binpersid(u);
    case TT_OP_REDUCE: return tt_op_reduce(u);
    case TT_OP_BUILD: return tt_op_build(u);
    default:
        return tt_op_error(u, SHARD_ERR_FORMAT,
                           "opcode not supported by this reader (a torch state "
                           "dict needs only protocol 2 containers, ints, str, "
                           "globals and persistent ids)");
    }
}

/* Runs data.pkl to STOP; the result is a dict of the arena. */
static shard_status_t tt_run(tt_unpickler_t *u, const tt_value_t **dict)
{
    while (!u->stopped) {
        if (u->pos >= u->len)
            return shard_error_set(u->err, SHARD_ERR_FORMAT,
                                   "tensor_file_open_torch: %s: truncated pickle: "
                                   "data.pkl ends at offset %zu without STOP",
                                   u->path, u->len);
        shard_status_t st = tt_step(u);
        if (st != SHARD_OK)
            return st;
    }
    if (u->result->kind != TT_DICT)
        return shard_error_set(u->err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: data.pkl holds a %s, "
                               "expected a state dict", u->path,
                               tt_kind_name(u->result));
    *dict = u->result;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- archive */

static shard_status_t tt_zip_open(const char *path, zip_t **za, shard_error_t *err)
{
    int code = 0;
    *za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &code);
    if (*za != NULL)
        return SHARD_OK;
    zip_error_t ze;
    zip_error_init_with_code(&ze, code);
    shard_status_t status = SHARD_ERR_FORMAT;
    if (code == ZIP_ER_OPEN || code == ZIP_ER_NOENT || code == ZIP_ER_READ)
        status = SHARD_ERR_IO;
    else if (code == ZIP_ER_MEMORY)
        status = SHARD_ERR_NOMEM;
    shard_error_set(err, status, "tensor_file_open_torch: %s: not a readable zip "
                    "archive: %s", path, zip_error_strerror(&ze));
    zip_error_fini(&ze);
    return status;
}

/* Finds the one entry "<archive>/data.pkl"; *prefix gets "<archive>/". */
static shard_status_t tt_find_archive(const char *path, zip_t *za, char **prefix,
                                      shard_error_t *err)
{
    static const char suffix[] = "/data.pkl";
    const size_t suffix_len = sizeof suffix - 1;
    zip_int64_t n = zip_get_num_entries(za, 0);
    size_t found = 0;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        size_t len = name == NULL ? 0 : strlen(name);
        if (len <= suffix_len || strcmp(name + len - suffix_len, suffix) != 0
            || memchr(name, '/', len - suffix_len) != NULL)
            continue;
        if (found++ == 0) {
            *prefix = strndup(name, len - suffix_len + 1);
            if (*prefix == NULL)
                return shard_error_set(err, SHARD_ERR_NOMEM,
                                       "tensor_file_open_torch: out of memory");
        }
    }
    if (found == 1)
        return SHARD_OK;
    free(*prefix);
    *prefix = NULL;
    return shard_error_set(err, SHARD_ERR_FORMAT,
                           "tensor_file_open_torch: %s: %zu entries named "
                           "<archive>/data.pkl among %lld, expected exactly 1 "
                           "(is this a torch.save archive?)",
                           path, found, (long long)n);
}

/* Reads entry index, whose size must be exactly size, into buf. The extra
 * read past the end makes libzip compare the entry's CRC. */
static shard_status_t tt_read_index(zip_t *za, const char *path, const char *name,
                                    zip_uint64_t index, uint8_t *buf, size_t size,
                                    shard_error_t *err)
{
    zip_file_t *zf = zip_fopen_index(za, index, 0);
    if (zf == NULL)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: cannot open entry '%s': %s",
                               path, name, zip_strerror(za));
    size_t got = 0;
    zip_int64_t n = 1;
    while (got < size && n > 0) {
        n = zip_fread(zf, buf + got, size - got);
        if (n > 0)
            got += (size_t)n;
    }
    uint8_t extra;
    if (n >= 0 && got == size)
        n = zip_fread(zf, &extra, 1);
    shard_status_t st = SHARD_OK;
    if (n < 0)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: reading entry '%s': %s",
                             path, name, zip_file_strerror(zf));
    else if (got != size || n != 0)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: entry '%s' holds %s "
                             "bytes than the %zu its header says",
                             path, name, got != size ? "fewer" : "more", size);
    zip_fclose(zf);
    return st;
}

/* Index and size of the entry called name; *found false (not an error) when
 * absent. */
static shard_status_t tt_locate(zip_t *za, const char *path, const char *name,
                                zip_uint64_t *index, size_t *size, bool *found,
                                shard_error_t *err)
{
    zip_int64_t i = zip_name_locate(za, name, ZIP_FL_ENC_RAW);
    *found = i >= 0;
    if (!*found)
        return SHARD_OK;
    zip_stat_t zs;
    zip_stat_init(&zs);
    if (zip_stat_index(za, (zip_uint64_t)i, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_SIZE))
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: no size for entry '%s'",
                               path, name);
    if (zs.size > SIZE_MAX)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: entry '%s' of %llu bytes "
                               "does not fit in memory", path, name,
                               (unsigned long long)zs.size);
    *index = (zip_uint64_t)i;
    *size = (size_t)zs.size;
    return SHARD_OK;
}

static char *tt_join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (s != NULL) {
        memcpy(s, a, na);
        memcpy(s + na, b, nb + 1);
    }
    return s;
}

/* Reads optional entry <prefix><suffix> of at most max bytes into a new
 * NUL-terminated buffer (*out NULL when absent). */
static shard_status_t tt_read_small(zip_t *za, const char *path, const char *prefix,
                                    const char *suffix, size_t max, char **out,
                                    size_t *out_len, shard_error_t *err)
{
    char *name = tt_join(prefix, suffix);
    zip_uint64_t index = 0;
    size_t size = 0;
    bool found = false;
    shard_status_t st = SHARD_ERR_NOMEM;
    *out = NULL;
    if (name == NULL) {
        shard_error_set(err, st, "tensor_file_open_torch: out of memory");
        goto fail;
    }
    st = tt_locate(za, path, name, &index, &size, &found, err);
    if (st != SHARD_OK || !found)
        goto fail;
    if (size > max) {
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: entry '%s' of %zu bytes, "
                             "expected at most %zu", path, name, size, max);
        goto fail;
    }
    *out = malloc(size + 1);
    if (*out == NULL) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
        goto fail;
    }
    st = tt_read_index(za, path, name, index, (uint8_t *)*out, size, err);
    if (st != SHARD_OK)
        goto fail;
    (*out)[size] = '\0';
    *out_len = size;
    free(name);
    return SHARD_OK;
fail:
    free(*out);
    *out = NULL;
    free(name);
    return st;
}

/* Storage bytes are used as they are, so they must be little-endian like the
 * host. Without a byteorder entry (written since torch 1.13) the storages are
 * taken as little-endian, as torch's own loader does on such a host: files
 * from older torch on big-endian machines cannot be told apart. */
static shard_status_t tt_check_byteorder(zip_t *za, const char *path,
                                         const char *prefix, shard_error_t *err)
{
    const uint16_t probe = 1;
    uint8_t first;
    memcpy(&first, &probe, 1);
    if (first != 1)
        return shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                               "tensor_file_open_torch: %s: this host is big-endian; "
                               "the reader maps little-endian storages only", path);
    char *order = NULL;
    size_t len = 0;
    shard_status_t st = tt_read_small(za, path, prefix, "byteorder",
                                      TT_SMALL_ENTRY_MAX, &order, &len, err);
    if (st != SHARD_OK || order == NULL)
        return st;
    if (len > 0 && order[len - 1] == '\n')
        order[--len] = '\0';
    if (strcmp(order, "big") == 0)
        st = shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                             "tensor_file_open_torch: %s: storages are big-endian "
                             "(byteorder 'big'); only little-endian is supported", path);
    else if (strcmp(order, "little") != 0)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: byteorder entry of %zu "
                             "bytes, expected 'little' or 'big'", path, len);
    free(order);
    return st;
}

/* The record version describes the archive's layout, unchanged for
 * torch.save since 1.6 (it writes 3); it is checked to be a number and not
 * gated on, since data.pkl is checked opcode by opcode anyway. */
static shard_status_t tt_check_version(zip_t *za, const char *path,
                                       const char *prefix, shard_error_t *err)
{
    char *text = NULL;
    size_t len = 0;
    shard_status_t st = tt_read_small(za, path, prefix, "version",
                                      TT_SMALL_ENTRY_MAX, &text, &len, err);
    if (st != SHARD_OK || text == NULL)
        return st;
    if (len > 0 && text[len - 1] == '\n')
        text[--len] = '\0';
    bool ok = len > 0 && len == strspn(text, "0123456789");
    free(text);
    if (!ok)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: version entry is not a "
                               "decimal number", path);
    return SHARD_OK;
}

static shard_status_t tt_read_pickle(zip_t *za, const char *path, const char *prefix,
                                     uint8_t **buf, size_t *len, shard_error_t *err)
{
    char *name = tt_join(prefix, "data.pkl");
    zip_uint64_t index = 0;
    bool found = false;
    shard_status_t st;
    *buf = NULL;
    if (name == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    st = tt_locate(za, path, name, &index, len, &found, err);
    if (st == SHARD_OK && (*len == 0 || *len > TT_PICKLE_MAX))
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: '%s' of %zu bytes, expected "
                             "1 to %zu", path, name, *len, TT_PICKLE_MAX);
    if (st == SHARD_OK && (*buf = malloc(*len)) == NULL)
        st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    if (st == SHARD_OK)
        st = tt_read_index(za, path, name, index, *buf, *len, err);
    if (st != SHARD_OK) {
        free(*buf);
        *buf = NULL;
    }
    free(name);
    return st;
}

/* Reads one storage, checking its entry holds exactly numel elements. */
static shard_status_t tt_read_storage(zip_t *za, const char *path, const char *prefix,
                                      tt_storage_t *s, shard_error_t *err)
{
    char *dir = tt_join(prefix, "data/");
    char *name = dir == NULL ? NULL : tt_join(dir, s->key);
    zip_uint64_t index = 0;
    size_t size = 0;
    bool found = false;
    shard_status_t st = SHARD_OK;
    free(dir);
    if (name == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    st = tt_locate(za, path, name, &index, &size, &found, err);
    if (st == SHARD_OK && !found)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: storage '%s' has no entry "
                             "'%s' in the archive", path, s->key, name);
    if (st == SHARD_OK && size != s->nbytes)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: entry '%s' holds %zu bytes, "
                             "expected %zu (%lld elements of %s)", path, name, size,
                             s->nbytes, (long long)s->numel, s->type_name);
    /* One byte at least so that an empty storage still has a non-NULL data
     * pointer (tensor_entry_t promises one). */
    if (st == SHARD_OK && (s->data = malloc(size > 0 ? size : 1)) == NULL)
        st = shard_error_set(err, SHARD_ERR_NOMEM,
                             "tensor_file_open_torch: %s: out of memory for %zu bytes",
                             path, size);
    if (st == SHARD_OK)
        st = tt_read_index(za, path, name, index, s->data, size, err);
    free(name);
    return st;
}

/* ---------------------------------------------------------------- entries */

typedef struct {
    size_t count;
    uint8_t **buffers;
} tt_backing_t;

static void tt_release(tensor_file_t *self)
{
    tt_backing_t *b = self->backing;
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->count; i++)
        free(b->buffers[i]);
    free(b->buffers);
    free(b);
    self->backing = NULL;
}

/* Moves the storage buffers from the unpickler into the tensor file. */
static shard_status_t tt_adopt_storages(tensor_file_t *tf, tt_unpickler_t *u)
{
    tt_backing_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return shard_error_set(u->err, SHARD_ERR_NOMEM,
                               "tensor_file_open_torch: out of memory");
    tf->backing = b;
    tf->release = tt_release;
    if (u->n_storages == 0)
        return SHARD_OK;
    b->buffers = calloc(u->n_storages, sizeof *b->buffers);
    if (b->buffers == NULL)
        return shard_error_set(u->err, SHARD_ERR_NOMEM,
                               "tensor_file_open_torch: out of memory");
    for (size_t i = 0; i < u->n_storages; i++) {
        b->buffers[i] = u->storages[i].data;
        u->storages[i].data = NULL;
        tf->backing_size += u->storages[i].nbytes;
    }
    b->count = u->n_storages;
    return SHARD_OK;
}

/* Element count, or -1 when the product overflows int64. */
static int64_t tt_numel(const tt_tensor_t *t)
{
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0)
            return 0;
    }
    for (int d = 0; d < t->ndim; d++) {
        if (numel > INT64_MAX / t->shape[d])
            return -1;
        numel *= t->shape[d];
    }
    return numel;
}

/* Row-major contiguity as torch defines it: strides of size-1 dimensions
 * are free, and an empty tensor addresses nothing. numel > 0 and did not
 * overflow, so every suffix product below fits. */
static bool tt_contiguous(const tt_tensor_t *t)
{
    int64_t expected = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expected)
            return false;
        expected *= t->shape[d];
    }
    return true;
}

/* Fills one entry from a tensor of the state dict, checking it against its
 * storage. */
static shard_status_t tt_make_entry(const tt_unpickler_t *u, const char *name,
                                    const tt_tensor_t *t, tensor_entry_t *e)
{
    const tt_storage_t *s = &u->storages[t->storage];
    int64_t numel = tt_numel(t);
    if (numel < 0)
        return shard_error_set(u->err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: tensor '%s': element "
                               "count overflows", u->path, name);
    if (numel > 0 && !tt_contiguous(t))
        return shard_error_set(u->err, SHARD_ERR_UNSUPPORTED,
                               "tensor_file_open_torch: %s: tensor '%s' is not "
                               "contiguous row-major; only contiguous tensors are "
                               "supported", u->path, name);
    if (t->offset > s->numel || numel > s->numel - t->offset)
        return shard_error_set(u->err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: tensor '%s': offset %lld "
                               "+ %lld elements runs past storage '%s' of %lld elements",
                               u->path, name, (long long)t->offset, (long long)numel,
                               s->key, (long long)s->numel);
    size_t elem = tensor_dtype_size(s->dtype);
    e->name = strdup(name);
    if (e->name == NULL)
        return shard_error_set(u->err, SHARD_ERR_NOMEM,
                               "tensor_file_open_torch: out of memory");
    e->dtype = s->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    /* Both fit: they are bounded by the storage's checked byte count. */
    e->nbytes = (size_t)numel * elem;
    e->data = s->data + (size_t)t->offset * elem;
    return SHARD_OK;
}

static int tt_name_cmp(const void *a, const void *b)
{
    const tensor_entry_t *const *x = a;
    const tensor_entry_t *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Python keeps the last of equal keys; torch never writes two, so two are
 * refused rather than silently dropping one. */
static shard_status_t tt_check_unique(tensor_file_t *tf, shard_error_t *err)
{
    if (tf->count < 2)
        return SHARD_OK;
    const tensor_entry_t **sorted = malloc(tf->count * sizeof *sorted);
    if (sorted == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    for (size_t i = 0; i < tf->count; i++)
        sorted[i] = &tf->entries[i];
    qsort(sorted, tf->count, sizeof *sorted, tt_name_cmp);
    shard_status_t st = SHARD_OK;
    for (size_t i = 1; i < tf->count && st == SHARD_OK; i++) {
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            st = shard_error_set(err, SHARD_ERR_FORMAT,
                                 "tensor_file_open_torch: %s: tensor '%s' appears twice",
                                 tf->path, sorted[i]->name);
    }
    free(sorted);
    return st;
}

static shard_status_t tt_make_entries(tensor_file_t *tf, const tt_unpickler_t *u,
                                      const tt_value_t *dict)
{
    size_t n = dict->u.dict.count;
    if (n == 0)
        return SHARD_OK;
    tf->entries = calloc(n, sizeof *tf->entries);
    if (tf->entries == NULL)
        return shard_error_set(u->err, SHARD_ERR_NOMEM,
                               "tensor_file_open_torch: out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *name = dict->u.dict.pairs[i].key->u.str.bytes;
        const tt_value_t *v = dict->u.dict.pairs[i].value;
        if (v->kind != TT_TENSOR)
            return shard_error_set(u->err, SHARD_ERR_FORMAT,
                                   "tensor_file_open_torch: %s: state dict entry '%s' "
                                   "is a %s, expected a tensor", u->path, name,
                                   tt_kind_name(v));
        shard_status_t st = tt_make_entry(u, name, &v->u.tensor, &tf->entries[i]);
        tf->count = i + 1; /* so destroy frees the name just made */
        if (st != SHARD_OK)
            return st;
    }
    return tt_check_unique(tf, u->err);
}

/* ---------------------------------------------------------------- open */

/* Reads everything the pickle named and builds the tensor file. */
static tensor_file_t *tt_build(zip_t *za, const char *prefix, tt_unpickler_t *u,
                               const tt_value_t *dict)
{
    tensor_file_t *tf = calloc(1, sizeof *tf);
    if (tf == NULL || (tf->path = strdup(u->path)) == NULL) {
        shard_error_set(u->err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < u->n_storages; i++) {
        if (tt_read_storage(za, u->path, prefix, &u->storages[i], u->err) != SHARD_OK)
            goto fail;
    }
    /* Entries point into storages[].data, which adopt only moves. */
    if (tt_make_entries(tf, u, dict) != SHARD_OK)
        goto fail;
    if (tt_adopt_storages(tf, u) != SHARD_OK)
        goto fail;
    return tf;
fail:
    tensor_file_destroy(&tf);
    return NULL;
}

tensor_file_t *tensor_file_open_torch(const char *path, shard_error_t *err)
{
    zip_t *za = NULL;
    char *prefix = NULL;
    uint8_t *pickle = NULL;
    size_t pickle_len = 0;
    tt_unpickler_t u = {0};
    const tt_value_t *dict = NULL;
    tensor_file_t *tf = NULL;

    if (path == NULL) {
        shard_error_set(err, SHARD_ERR_INPUT, "tensor_file_open_torch: path is NULL");
        return NULL;
    }
    if (tt_zip_open(path, &za, err) != SHARD_OK
        || tt_find_archive(path, za, &prefix, err) != SHARD_OK
        || tt_check_byteorder(za, path, prefix, err) != SHARD_OK
        || tt_check_version(za, path, prefix, err) != SHARD_OK
        || tt_read_pickle(za, path, prefix, &pickle, &pickle_len, err) != SHARD_OK)
        goto fail;
    u.path = path;
    u.err = err;
    u.buf = pickle;
    u.len = pickle_len;
    if (tt_run(&u, &dict) != SHARD_OK)
        goto fail;
    tf = tt_build(za, prefix, &u, dict);
fail: /* and success: the temporaries go either way */
    tt_unpickler_free(&u);
    free(pickle);
    free(prefix);
    if (za != NULL)
        zip_discard(za);
    return tf;
}
