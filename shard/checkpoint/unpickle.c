/* unpickle.c: the strict pickle machine of unpickle.h. Every opcode is a
 * small function; the dispatch table is the switch in pk_step. */
#include "unpickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- opcodes */

enum {
    PK_OP_MARK = '(', PK_OP_STOP = '.', PK_OP_BINFLOAT = 'G',
    PK_OP_BININT = 'J', PK_OP_BININT1 = 'K', PK_OP_BININT2 = 'M',
    PK_OP_NONE = 'N', PK_OP_BINPERSID = 'Q', PK_OP_REDUCE = 'R',
    PK_OP_BINUNICODE = 'X', PK_OP_EMPTY_LIST = ']', PK_OP_APPEND = 'a',
    PK_OP_BUILD = 'b', PK_OP_GLOBAL = 'c', PK_OP_APPENDS = 'e',
    PK_OP_BINGET = 'h', PK_OP_LONG_BINGET = 'j', PK_OP_LIST = 'l',
    PK_OP_BINPUT = 'q', PK_OP_LONG_BINPUT = 'r', PK_OP_SETITEM = 's',
    PK_OP_TUPLE = 't', PK_OP_EMPTY_TUPLE = ')', PK_OP_SETITEMS = 'u',
    PK_OP_EMPTY_DICT = '}', PK_OP_PROTO = 0x80, PK_OP_TUPLE1 = 0x85,
    PK_OP_TUPLE2 = 0x86, PK_OP_TUPLE3 = 0x87, PK_OP_NEWTRUE = 0x88,
    PK_OP_NEWFALSE = 0x89, PK_OP_LONG1 = 0x8a, PK_OP_SHORT_BINUNICODE = 0x8c,
    PK_OP_MEMOIZE = 0x94, PK_OP_FRAME = 0x95,
};

/* Names of every pickle opcode (protocols 0 to 5), supported or not, so an
 * error can say which one a file used. */
static const struct {
    unsigned char op;
    const char *name;
} pk_op_names[] = {
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

static const char *pk_op_name(unsigned char op)
{
    for (size_t i = 0; i < sizeof pk_op_names / sizeof pk_op_names[0]; i++) {
        if (pk_op_names[i].op == op)
            return pk_op_names[i].name;
    }
    return "<not a pickle opcode>";
}

/* ---------------------------------------------------------------- values */

static const char *const pk_kind_names[PK_KIND_COUNT_] = {
    "None", "bool", "int", "float", "str", "tuple", "list", "dict",
    "global", "storage", "tensor", "int", "object",
};

const char *pk_kind_name(const pk_value_t *v)
{
    return pk_kind_names[v->kind];
}

/* ---------------------------------------------------------------- helpers */

/* Grows array to hold need elements of size elem; returns the (maybe moved)
 * array, or NULL with array untouched when out of memory or on overflow. */
static void *pk_grow(void *array, size_t *cap, size_t need, size_t elem)
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
 * the opcode in its stream and the opcode, then what was wrong. */
static shard_status_t pk_op_error(pk_unpickler_t *u, shard_status_t code,
                                  const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static shard_status_t pk_op_error(pk_unpickler_t *u, shard_status_t code,
                                  const char *fmt, ...)
{
    char detail[SHARD_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return shard_error_set(u->err, code,
                           "%s: %s: %s offset %zu, opcode %s (0x%02x): %s",
                           u->function, u->path, u->stream, u->op_pos,
                           pk_op_name(u->op), u->op, detail);
}

static shard_status_t pk_nomem(pk_unpickler_t *u)
{
    return pk_op_error(u, SHARD_ERR_NOMEM, "out of memory");
}

/* Consumes n argument bytes of the current opcode. */
static shard_status_t pk_take(pk_unpickler_t *u, size_t n, const uint8_t **out)
{
    if (u->len - u->pos < n)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: the opcode needs %zu argument "
                           "bytes, %zu left", n, u->len - u->pos);
    *out = u->buf + u->pos;
    u->pos += n;
    return SHARD_OK;
}

static uint64_t pk_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = (v << 8) | p[i - 1];
    return v;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF) and
 * no NUL, since names become C strings. */
static bool pk_utf8_check(const uint8_t *s, size_t n, bool nul_ok);

bool pk_utf8_ok(const uint8_t *s, size_t n)
{
    return pk_utf8_check(s, n, false);
}

/* nul_ok: a str value may hold U+0000 (a numpy array's bytes, latin-1
 * encoded); the names made from strs are checked not to. */
static bool pk_utf8_check(const uint8_t *s, size_t n, bool nul_ok)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp, min;
        if (c == 0 && !nul_ok)
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

static void pk_value_free(pk_value_t *v)
{
    switch (v->kind) {
    case PK_STR:
    case PK_BIGINT: free(v->u.str.bytes); break;
    case PK_TUPLE:
    case PK_LIST: free(v->u.seq.items); break;
    case PK_DICT: free(v->u.dict.pairs); break;
    default: break;
    }
    free(v);
}

void pk_unpickler_init(pk_unpickler_t *u, const char *function, const char *path,
                       shard_error_t *err)
{
    memset(u, 0, sizeof *u);
    u->function = function;
    u->path = path;
    u->stream = "pickle";
    u->err = err;
}

void pk_unpickler_free(pk_unpickler_t *u)
{
    for (size_t i = 0; i < u->arena_count; i++)
        pk_value_free(u->arena[i]);
    for (size_t i = 0; i < u->n_storages; i++) {
        free(u->storages[i].key);
    }
    free(u->arena);
    free(u->storages);
    free(u->stack);
    free(u->marks);
    free(u->memo);
    memset(u, 0, sizeof *u);
}

static shard_status_t pk_new(pk_unpickler_t *u, pk_kind_t kind, pk_value_t **out)
{
    pk_value_t **arena = pk_grow(u->arena, &u->arena_cap, u->arena_count + 1,
                                 sizeof *u->arena);
    if (arena == NULL)
        return pk_nomem(u);
    u->arena = arena;
    pk_value_t *v = calloc(1, sizeof *v);
    if (v == NULL)
        return pk_nomem(u);
    v->kind = kind;
    u->arena[u->arena_count++] = v;
    *out = v;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- stack */

/* The bottom of the stack the current opcode may touch: pickle splits the
 * stack at each MARK, so nothing below the innermost mark is reachable. */
static size_t pk_floor(const pk_unpickler_t *u)
{
    return u->n_marks > 0 ? u->marks[u->n_marks - 1] : 0;
}

static shard_status_t pk_push(pk_unpickler_t *u, pk_value_t *v)
{
    pk_value_t **stack = pk_grow(u->stack, &u->stack_cap, u->depth + 1,
                                 sizeof *u->stack);
    if (stack == NULL)
        return pk_nomem(u);
    u->stack = stack;
    u->stack[u->depth++] = v;
    return SHARD_OK;
}

static shard_status_t pk_pop(pk_unpickler_t *u, pk_value_t **out)
{
    if (u->depth <= pk_floor(u))
        return pk_op_error(u, SHARD_ERR_FORMAT, "stack underflow");
    *out = u->stack[--u->depth];
    return SHARD_OK;
}

static shard_status_t pk_top(pk_unpickler_t *u, pk_value_t **out)
{
    if (u->depth <= pk_floor(u))
        return pk_op_error(u, SHARD_ERR_FORMAT, "stack underflow");
    *out = u->stack[u->depth - 1];
    return SHARD_OK;
}

/* Closes the innermost MARK: the values above it are stack[*start..depth). */
static shard_status_t pk_pop_mark(pk_unpickler_t *u, size_t *start)
{
    if (u->n_marks == 0)
        return pk_op_error(u, SHARD_ERR_FORMAT, "no MARK to close");
    *start = u->marks[--u->n_marks];
    return SHARD_OK;
}

static shard_status_t pk_push_new(pk_unpickler_t *u, pk_kind_t kind, pk_value_t **out)
{
    pk_value_t *v = NULL;
    shard_status_t st = pk_new(u, kind, &v);
    if (st == SHARD_OK)
        st = pk_push(u, v);
    if (st == SHARD_OK && out != NULL)
        *out = v;
    return st;
}

/* ---------------------------------------------------------------- containers */

/* Sets seq to a copy of items[0..n). */
static shard_status_t pk_seq_fill(pk_unpickler_t *u, pk_value_t *seq,
                                  pk_value_t *const *items, size_t n)
{
    if (n == 0)
        return SHARD_OK;
    pk_value_t **copy = pk_grow(NULL, &seq->u.seq.cap, n, sizeof *copy);
    if (copy == NULL)
        return pk_nomem(u);
    memcpy(copy, items, n * sizeof *copy);
    seq->u.seq.items = copy;
    seq->u.seq.count = n;
    return SHARD_OK;
}

static shard_status_t pk_list_append(pk_unpickler_t *u, pk_value_t *list,
                                     pk_value_t *item)
{
    if (list->kind != PK_LIST)
        return pk_op_error(u, SHARD_ERR_FORMAT, "appends to a %s, expected a list",
                           pk_kind_name(list));
    pk_value_t **items = pk_grow(list->u.seq.items, &list->u.seq.cap,
                                 list->u.seq.count + 1, sizeof *items);
    if (items == NULL)
        return pk_nomem(u);
    list->u.seq.items = items;
    items[list->u.seq.count++] = item;
    return SHARD_OK;
}

/* Appends without looking for an equal key: torch never writes one, and a
 * duplicate tensor name is caught (in O(n log n)) when the entries are made. */
static shard_status_t pk_dict_set(pk_unpickler_t *u, pk_value_t *dict,
                                  pk_value_t *key, pk_value_t *value)
{
    if (dict->kind != PK_DICT)
        return pk_op_error(u, SHARD_ERR_FORMAT, "sets an item of a %s, expected a dict",
                           pk_kind_name(dict));
    if (key->kind != PK_STR && key->kind != PK_INT)
        return pk_op_error(u, SHARD_ERR_FORMAT, "dict key is a %s, expected a str or an int",
                           pk_kind_name(key));
    pk_pair_t *pairs = pk_grow(dict->u.dict.pairs, &dict->u.dict.cap,
                               dict->u.dict.count + 1, sizeof *pairs);
    if (pairs == NULL)
        return pk_nomem(u);
    dict->u.dict.pairs = pairs;
    pairs[dict->u.dict.count++] = (pk_pair_t){key, value};
    return SHARD_OK;
}

/* ---------------------------------------------------------------- scalar opcodes */

static shard_status_t pk_op_proto(pk_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, 1, &p);
    if (st != SHARD_OK)
        return st;
    if (p[0] > 5)
        return pk_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "pickle protocol %u, expected at most 5", p[0]);
    return SHARD_OK;
}

/* Protocol 4 framing: only a read-ahead hint, checked and skipped. */
static shard_status_t pk_op_frame(pk_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, 8, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t n = pk_le(p, 8);
    if (n > u->len - u->pos)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: frame of %llu bytes, %zu left",
                           (unsigned long long)n, u->len - u->pos);
    return SHARD_OK;
}

static shard_status_t pk_op_int(pk_unpickler_t *u, size_t width, bool is_signed)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t raw = pk_le(p, width);
    int64_t value = (int64_t)raw;
    if (is_signed && width < 8 && (raw >> (8 * width - 1)) != 0)
        value = (int64_t)(raw | (~UINT64_C(0) << (8 * width)));
    pk_value_t *v = NULL;
    st = pk_push_new(u, PK_INT, &v);
    if (st == SHARD_OK)
        v->u.i = value;
    return st;
}

/* An integer past int64 (torch's legacy magic number is 10 bytes): its
 * bytes are kept for the caller to compare. */
static shard_status_t pk_op_bigint(pk_unpickler_t *u, size_t width)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, width, &p);
    if (st != SHARD_OK)
        return st;
    pk_value_t *v = NULL;
    st = pk_push_new(u, PK_BIGINT, &v);
    if (st != SHARD_OK)
        return st;
    v->u.str.bytes = malloc(width);
    if (v->u.str.bytes == NULL)
        return pk_nomem(u);
    memcpy(v->u.str.bytes, p, width);
    v->u.str.len = width;
    return SHARD_OK;
}

/* LONG1: a byte count, then that many bytes of two's complement. */
static shard_status_t pk_op_long1(pk_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, 1, &p);
    if (st != SHARD_OK)
        return st;
    size_t width = p[0];
    /* Wider integers only as torch's legacy magic number (10 bytes), which
     * the caller compares; nothing in a state dict needs more than int64. */
    if (width == 10)
        return pk_op_bigint(u, width);
    if (width > 8)
        return pk_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "integer of %zu bytes, expected at most 8 (or the 10 of "
                           "torch's magic number)", width);
    if (width == 0) /* pickle's encoding of 0 */
        return pk_op_int(u, 0, false);
    return pk_op_int(u, width, true);
}

/* BINFLOAT is the one big-endian field of the format. */
static shard_status_t pk_op_binfloat(pk_unpickler_t *u)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, 8, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t bits = 0;
    for (size_t i = 0; i < 8; i++)
        bits = (bits << 8) | p[i];
    pk_value_t *v = NULL;
    st = pk_push_new(u, PK_FLOAT, &v);
    if (st == SHARD_OK)
        memcpy(&v->u.f, &bits, sizeof v->u.f);
    return st;
}

static shard_status_t pk_op_const(pk_unpickler_t *u, pk_kind_t kind, bool b)
{
    pk_value_t *v = NULL;
    shard_status_t st = pk_push_new(u, kind, &v);
    if (st == SHARD_OK && kind == PK_BOOL)
        v->u.b = b;
    return st;
}

static shard_status_t pk_op_unicode(pk_unpickler_t *u, size_t len_width)
{
    const uint8_t *p = NULL, *bytes = NULL;
    shard_status_t st = pk_take(u, len_width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t n = pk_le(p, len_width);
    if (n > u->len - u->pos)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: string of %llu bytes, %zu left",
                           (unsigned long long)n, u->len - u->pos);
    st = pk_take(u, (size_t)n, &bytes);
    if (st != SHARD_OK)
        return st;
    if (!pk_utf8_check(bytes, (size_t)n, true))
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "string of %llu bytes is not UTF-8",
                           (unsigned long long)n);
    pk_value_t *v = NULL;
    st = pk_push_new(u, PK_STR, &v);
    if (st != SHARD_OK)
        return st;
    v->u.str.bytes = malloc((size_t)n + 1);
    if (v->u.str.bytes == NULL)
        return pk_nomem(u);
    memcpy(v->u.str.bytes, bytes, (size_t)n);
    v->u.str.bytes[n] = '\0';
    v->u.str.len = (size_t)n;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- containers opcodes */

static shard_status_t pk_op_mark(pk_unpickler_t *u)
{
    size_t *marks = pk_grow(u->marks, &u->marks_cap, u->n_marks + 1, sizeof *marks);
    if (marks == NULL)
        return pk_nomem(u);
    u->marks = marks;
    u->marks[u->n_marks++] = u->depth;
    return SHARD_OK;
}

/* TUPLE and LIST: the values above the innermost MARK. */
static shard_status_t pk_op_seq_from_mark(pk_unpickler_t *u, pk_kind_t kind)
{
    size_t start = 0;
    shard_status_t st = pk_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    pk_value_t *seq = NULL;
    st = pk_new(u, kind, &seq);
    /* An empty run may sit on a stack never allocated: no pointer into it. */
    if (st == SHARD_OK && u->depth > start)
        st = pk_seq_fill(u, seq, u->stack + start, u->depth - start);
    if (st != SHARD_OK)
        return st;
    u->depth = start;
    return pk_push(u, seq);
}

/* TUPLE1/2/3: the top n values. */
static shard_status_t pk_op_tuple_n(pk_unpickler_t *u, size_t n)
{
    if (u->depth - pk_floor(u) < n)
        return pk_op_error(u, SHARD_ERR_FORMAT, "stack underflow: needs %zu values", n);
    pk_value_t *seq = NULL;
    shard_status_t st = pk_new(u, PK_TUPLE, &seq);
    if (st == SHARD_OK)
        st = pk_seq_fill(u, seq, u->stack + u->depth - n, n);
    if (st != SHARD_OK)
        return st;
    u->depth -= n;
    return pk_push(u, seq);
}

static shard_status_t pk_op_append(pk_unpickler_t *u)
{
    pk_value_t *item = NULL, *list = NULL;
    shard_status_t st = pk_pop(u, &item);
    if (st == SHARD_OK)
        st = pk_top(u, &list);
    if (st == SHARD_OK)
        st = pk_list_append(u, list, item);
    return st;
}

static shard_status_t pk_op_appends(pk_unpickler_t *u)
{
    size_t start = 0;
    shard_status_t st = pk_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    if (start <= pk_floor(u))
        return pk_op_error(u, SHARD_ERR_FORMAT, "no list below the MARK");
    pk_value_t *list = u->stack[start - 1];
    for (size_t i = start; i < u->depth && st == SHARD_OK; i++)
        st = pk_list_append(u, list, u->stack[i]);
    u->depth = start;
    return st;
}

static shard_status_t pk_op_setitem(pk_unpickler_t *u)
{
    pk_value_t *value = NULL, *key = NULL, *dict = NULL;
    shard_status_t st = pk_pop(u, &value);
    if (st == SHARD_OK)
        st = pk_pop(u, &key);
    if (st == SHARD_OK)
        st = pk_top(u, &dict);
    if (st == SHARD_OK)
        st = pk_dict_set(u, dict, key, value);
    return st;
}

static shard_status_t pk_op_setitems(pk_unpickler_t *u)
{
    size_t start = 0;
    shard_status_t st = pk_pop_mark(u, &start);
    if (st != SHARD_OK)
        return st;
    if (start <= pk_floor(u))
        return pk_op_error(u, SHARD_ERR_FORMAT, "no dict below the MARK");
    if ((u->depth - start) % 2 != 0)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "odd number of values (%zu) for key/value pairs",
                           u->depth - start);
    pk_value_t *dict = u->stack[start - 1];
    for (size_t i = start; i < u->depth && st == SHARD_OK; i += 2)
        st = pk_dict_set(u, dict, u->stack[i], u->stack[i + 1]);
    u->depth = start;
    return st;
}

/* ---------------------------------------------------------------- memo */

/* Indices are bounded by the pickle's length: a pickler numbers memo
 * entries from 0 and each entry costs at least one opcode byte. */
static shard_status_t pk_memo_index(pk_unpickler_t *u, size_t width, size_t *index)
{
    const uint8_t *p = NULL;
    shard_status_t st = pk_take(u, width, &p);
    if (st != SHARD_OK)
        return st;
    uint64_t i = pk_le(p, width);
    if (i >= u->len)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "memo index %llu, expected below the pickle's size %zu",
                           (unsigned long long)i, u->len);
    *index = (size_t)i;
    return SHARD_OK;
}

static shard_status_t pk_memo_put(pk_unpickler_t *u, size_t index)
{
    pk_value_t *v = NULL;
    shard_status_t st = pk_top(u, &v);
    if (st != SHARD_OK)
        return st;
    size_t old_cap = u->memo_cap;
    pk_value_t **memo = pk_grow(u->memo, &u->memo_cap, index + 1, sizeof *memo);
    if (memo == NULL)
        return pk_nomem(u);
    u->memo = memo;
    if (u->memo_cap > old_cap)
        memset(memo + old_cap, 0, (u->memo_cap - old_cap) * sizeof *memo);
    if (memo[index] == NULL)
        u->memo_count++;
    memo[index] = v;
    return SHARD_OK;
}

static shard_status_t pk_op_put(pk_unpickler_t *u, size_t width)
{
    size_t index = 0;
    shard_status_t st = pk_memo_index(u, width, &index);
    return st != SHARD_OK ? st : pk_memo_put(u, index);
}

/* MEMOIZE stores at the memo's current size, as Python's len(memo). */
static shard_status_t pk_op_memoize(pk_unpickler_t *u)
{
    if (u->memo_count >= u->len)
        return pk_op_error(u, SHARD_ERR_FORMAT, "memo larger than the pickle");
    return pk_memo_put(u, u->memo_count);
}

static shard_status_t pk_op_get(pk_unpickler_t *u, size_t width)
{
    size_t index = 0;
    shard_status_t st = pk_memo_index(u, width, &index);
    if (st != SHARD_OK)
        return st;
    if (index >= u->memo_cap || u->memo[index] == NULL)
        return pk_op_error(u, SHARD_ERR_FORMAT, "memo index %zu was never set", index);
    return pk_push(u, u->memo[index]);
}

/* ---------------------------------------------------------------- globals */

static const struct {
    const char *name;
    tensor_dtype_t dtype;
} pk_storage_types[] = {
    {"FloatStorage", TENSOR_F32}, {"HalfStorage", TENSOR_F16},
    {"BFloat16Storage", TENSOR_BF16}, {"DoubleStorage", TENSOR_F64},
    {"LongStorage", TENSOR_I64}, {"IntStorage", TENSOR_I32},
    {"CharStorage", TENSOR_I8}, {"ByteStorage", TENSOR_U8},
    {"BoolStorage", TENSOR_BOOL},
};

/* Sets v to the known global module.name; false when unknown. */
static bool pk_global_lookup(const char *module, const char *name, pk_value_t *v)
{
    if (strcmp(module, "collections") == 0 && strcmp(name, "OrderedDict") == 0) {
        v->u.global.which = PK_G_ORDERED_DICT;
        v->u.global.name = "collections.OrderedDict";
        return true;
    }
    if (strcmp(module, "torch._utils") == 0 && strcmp(name, "_rebuild_tensor_v2") == 0) {
        v->u.global.which = PK_G_REBUILD_TENSOR_V2;
        v->u.global.name = "torch._utils._rebuild_tensor_v2";
        return true;
    }
    if (strcmp(module, "torch._utils") == 0 && strcmp(name, "_rebuild_parameter") == 0) {
        v->u.global.which = PK_G_REBUILD_PARAMETER;
        v->u.global.name = "torch._utils._rebuild_parameter";
        return true;
    }
    /* numpy arrays pickle as _reconstruct(ndarray, shape, dtype) plus a
     * BUILD with their bytes, encoded by _codecs.encode. */
    static const char *const inert[][2] = {
        {"numpy.core.multiarray", "_reconstruct"}, {"numpy", "ndarray"},
        {"numpy", "dtype"}, {"_codecs", "encode"}};
    for (size_t i = 0; i < sizeof inert / sizeof inert[0]; i++)
        if (strcmp(module, inert[i][0]) == 0 && strcmp(name, inert[i][1]) == 0) {
            v->u.global.which = PK_G_INERT;
            v->u.global.name = inert[i][1];
            return true;
        }
    if (strcmp(module, "torch") != 0)
        return false;
    for (size_t i = 0; i < sizeof pk_storage_types / sizeof pk_storage_types[0]; i++) {
        if (strcmp(name, pk_storage_types[i].name) == 0) {
            v->u.global.which = PK_G_STORAGE_TYPE;
            v->u.global.dtype = pk_storage_types[i].dtype;
            v->u.global.name = pk_storage_types[i].name;
            return true;
        }
    }
    return false;
}

/* Reads one newline-terminated GLOBAL argument into out (NUL-terminated). */
static shard_status_t pk_global_line(pk_unpickler_t *u, char *out, size_t out_size)
{
    const uint8_t *start = u->buf + u->pos;
    const uint8_t *nl = memchr(start, '\n', u->len - u->pos);
    if (nl == NULL)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "truncated pickle: global name without newline");
    size_t n = (size_t)(nl - start);
    if (n == 0 || n >= out_size || !pk_utf8_ok(start, n))
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "global name of %zu bytes, expected 1 to %zu bytes of UTF-8",
                           n, out_size - 1);
    memcpy(out, start, n);
    out[n] = '\0';
    u->pos += n + 1;
    return SHARD_OK;
}

static shard_status_t pk_op_global(pk_unpickler_t *u)
{
    char module[128], name[128];
    shard_status_t st = pk_global_line(u, module, sizeof module);
    if (st == SHARD_OK)
        st = pk_global_line(u, name, sizeof name);
    if (st != SHARD_OK)
        return st;
    pk_value_t *v = NULL;
    st = pk_new(u, PK_GLOBAL, &v);
    if (st != SHARD_OK)
        return st;
    if (!pk_global_lookup(module, name, v))
        return pk_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "global %s.%s is not part of a torch state dict "
                           "(known: collections.OrderedDict, "
                           "torch._utils._rebuild_tensor_v2, "
                           "torch._utils._rebuild_parameter, torch.<Type>Storage)",
                           module, name);
    return pk_push(u, v);
}

/* ---------------------------------------------------------------- persistent ids */

/* Returns the table index of key, registering it on first sight. */
static shard_status_t pk_storage_register(pk_unpickler_t *u, const pk_value_t *type,
                                          const pk_value_t *key, int64_t numel,
                                          size_t *index)
{
    /* Linear: one persistent id per tensor, a few hundred in a checkpoint. */
    for (size_t i = 0; i < u->n_storages; i++) {
        pk_storage_t *s = &u->storages[i];
        if (strcmp(s->key, key->u.str.bytes) != 0)
            continue;
        if (s->dtype != type->u.global.dtype || s->numel != numel)
            return pk_op_error(u, SHARD_ERR_FORMAT,
                               "storage '%s' is a %s of %lld elements here and "
                               "a %s of %lld elements before", s->key,
                               type->u.global.name, (long long)numel,
                               s->type_name, (long long)s->numel);
        *index = i;
        return SHARD_OK;
    }
    size_t elem = tensor_dtype_size(type->u.global.dtype);
    if ((uint64_t)numel > SIZE_MAX / elem || (uint64_t)numel > (uint64_t)INT64_MAX / elem)
        return pk_op_error(u, SHARD_ERR_FORMAT, "storage '%s' of %lld elements overflows",
                           key->u.str.bytes, (long long)numel);
    pk_storage_t *table = pk_grow(u->storages, &u->storages_cap, u->n_storages + 1,
                                  sizeof *table);
    if (table == NULL)
        return pk_nomem(u);
    u->storages = table;
    pk_storage_t *s = &table[u->n_storages];
    memset(s, 0, sizeof *s);
    s->key = strdup(key->u.str.bytes);
    if (s->key == NULL)
        return pk_nomem(u);
    s->dtype = type->u.global.dtype;
    s->type_name = type->u.global.name;
    s->numel = numel;
    s->nbytes = (size_t)numel * elem;
    *index = u->n_storages++;
    return SHARD_OK;
}

/* Checks pid = ('storage', torch.<Type>Storage, key, location, numel). */
static shard_status_t pk_check_pid(pk_unpickler_t *u, const pk_value_t *pid)
{
    /* The legacy format adds a sixth item, the view metadata: None unless
     * the storage was saved as a view of another (torch < 0.4). */
    size_t n = pid->kind == PK_TUPLE ? pid->u.seq.count : 0;
    if (pid->kind != PK_TUPLE || (n != 5 && n != 6)
        || (n == 6 && pid->u.seq.items[5]->kind != PK_NONE))
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id is a %s of %zu items, expected "
                           "('storage', type, key, location, numel[, None])",
                           pk_kind_name(pid),
                           pid->kind == PK_TUPLE ? pid->u.seq.count : (size_t)0);
    pk_value_t *const *it = pid->u.seq.items;
    if (it[0]->kind != PK_STR || strcmp(it[0]->u.str.bytes, "storage") != 0)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id starts with a %s, expected 'storage'",
                           pk_kind_name(it[0]));
    if (it[1]->kind != PK_GLOBAL || it[1]->u.global.which != PK_G_STORAGE_TYPE)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id item 2 is a %s, expected a torch.<Type>Storage",
                           pk_kind_name(it[1]));
    if (it[2]->kind != PK_STR)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id key is a %s, expected a str",
                           pk_kind_name(it[2]));
    if (it[2]->u.str.len == 0 || strchr(it[2]->u.str.bytes, '/') != NULL
        || strlen(it[2]->u.str.bytes) != it[2]->u.str.len)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id key '%s', expected a non-empty name "
                           "without '/' or NUL", it[2]->u.str.bytes);
    if (it[3]->kind != PK_STR)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id location is a %s, expected a str",
                           pk_kind_name(it[3]));
    if (it[4]->kind != PK_INT || it[4]->u.i < 0)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "persistent id numel is a %s, expected an int >= 0",
                           pk_kind_name(it[4]));
    return SHARD_OK;
}

static shard_status_t pk_op_binpersid(pk_unpickler_t *u)
{
    pk_value_t *pid = NULL, *v = NULL;
    size_t index = 0;
    shard_status_t st = pk_pop(u, &pid);
    if (st == SHARD_OK)
        st = pk_check_pid(u, pid);
    if (st == SHARD_OK)
        st = pk_storage_register(u, pid->u.seq.items[1], pid->u.seq.items[2],
                                 pid->u.seq.items[4]->u.i, &index);
    if (st == SHARD_OK)
        st = pk_push_new(u, PK_STORAGE, &v);
    if (st == SHARD_OK)
        v->u.storage = index;
    return st;
}

/* ---------------------------------------------------------------- REDUCE, BUILD */

/* Fills out[0..n) from a tuple of ints (a tensor's size or stride). */
static shard_status_t pk_int_tuple(pk_unpickler_t *u, const pk_value_t *t,
                                   const char *what, int64_t *out, int *n)
{
    if (t->kind != PK_TUPLE)
        return pk_op_error(u, SHARD_ERR_FORMAT, "tensor %s is a %s, expected a tuple",
                           what, pk_kind_name(t));
    if (t->u.seq.count > TENSOR_MAX_DIMS)
        return pk_op_error(u, SHARD_ERR_UNSUPPORTED,
                           "tensor %s has %zu dimensions, expected at most %d",
                           what, t->u.seq.count, TENSOR_MAX_DIMS);
    for (size_t d = 0; d < t->u.seq.count; d++) {
        const pk_value_t *x = t->u.seq.items[d];
        if (x->kind != PK_INT || x->u.i < 0)
            return pk_op_error(u, SHARD_ERR_FORMAT,
                               "tensor %s[%zu] is a %s%s, expected an int >= 0",
                               what, d, pk_kind_name(x),
                               x->kind == PK_INT ? " < 0" : "");
        out[d] = x->u.i;
    }
    *n = (int)t->u.seq.count;
    return SHARD_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]). Bounds against the storage are checked when
 * the entries are made, where the tensor's name is known. */
static shard_status_t pk_rebuild_tensor(pk_unpickler_t *u, const pk_value_t *args,
                                        pk_value_t **out)
{
    size_t n = args->u.seq.count;
    if (n != 6 && n != 7)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
    pk_value_t *const *a = args->u.seq.items;
    if (a[0]->kind != PK_STORAGE)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 storage is a %s, expected a storage",
                           pk_kind_name(a[0]));
    if (a[1]->kind != PK_INT || a[1]->u.i < 0)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 storage_offset is a %s, expected an int >= 0",
                           pk_kind_name(a[1]));
    if (a[4]->kind != PK_BOOL)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_tensor_v2 requires_grad is a %s, expected a bool",
                           pk_kind_name(a[4]));
    for (size_t i = 5; i < n; i++) {
        if (a[i]->kind != PK_DICT && a[i]->kind != PK_NONE)
            return pk_op_error(u, SHARD_ERR_FORMAT,
                               "_rebuild_tensor_v2 argument %zu is a %s, expected "
                               "a dict or None", i + 1, pk_kind_name(a[i]));
    }
    pk_tensor_t t = {.storage = a[0]->u.storage, .offset = a[1]->u.i};
    int stride_ndim = 0;
    shard_status_t st = pk_int_tuple(u, a[2], "size", t.shape, &t.ndim);
    if (st == SHARD_OK)
        st = pk_int_tuple(u, a[3], "stride", t.stride, &stride_ndim);
    if (st == SHARD_OK && stride_ndim != t.ndim)
        st = pk_op_error(u, SHARD_ERR_FORMAT, "tensor size has %d dimensions, stride %d",
                         t.ndim, stride_ndim);
    if (st == SHARD_OK)
        st = pk_new(u, PK_TENSOR, out);
    if (st == SHARD_OK)
        (*out)->u.tensor = t;
    return st;
}

/* _rebuild_parameter(data, requires_grad, backward_hooks): the tensor. */
static shard_status_t pk_rebuild_parameter(pk_unpickler_t *u, const pk_value_t *args,
                                           pk_value_t **out)
{
    pk_value_t *const *a = args->u.seq.items;
    if (args->u.seq.count != 3 || a[0]->kind != PK_TENSOR || a[1]->kind != PK_BOOL
        || (a[2]->kind != PK_DICT && a[2]->kind != PK_NONE))
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "_rebuild_parameter takes (tensor, bool, dict or None), "
                           "got %zu arguments", args->u.seq.count);
    *out = args->u.seq.items[0];
    return SHARD_OK;
}

static shard_status_t pk_op_reduce(pk_unpickler_t *u)
{
    pk_value_t *args = NULL, *callable = NULL, *result = NULL;
    shard_status_t st = pk_pop(u, &args);
    if (st == SHARD_OK)
        st = pk_pop(u, &callable);
    if (st != SHARD_OK)
        return st;
    if (callable->kind != PK_GLOBAL || callable->u.global.which == PK_G_STORAGE_TYPE)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "calls a %s, expected OrderedDict or a torch rebuild function",
                           callable->kind == PK_GLOBAL ? "storage type"
                                                       : pk_kind_name(callable));
    if (args->kind != PK_TUPLE)
        return pk_op_error(u, SHARD_ERR_FORMAT, "arguments are a %s, expected a tuple",
                           pk_kind_name(args));
    switch (callable->u.global.which) {
    case PK_G_ORDERED_DICT:
        if (args->u.seq.count != 0)
            return pk_op_error(u, SHARD_ERR_UNSUPPORTED,
                               "OrderedDict called with %zu arguments, expected none",
                               args->u.seq.count);
        st = pk_new(u, PK_DICT, &result);
        break;
    case PK_G_REBUILD_TENSOR_V2: st = pk_rebuild_tensor(u, args, &result); break;
    case PK_G_REBUILD_PARAMETER: st = pk_rebuild_parameter(u, args, &result); break;
    case PK_G_STORAGE_TYPE: break; /* refused above */
    case PK_G_INERT: st = pk_new(u, PK_OBJECT, &result); break;
    }
    return st != SHARD_OK ? st : pk_push(u, result);
}

/* BUILD on a dict sets Python attributes (torch stores the state dict's
 * _metadata this way); tensor bytes do not depend on them, so the state is
 * checked to be a dict and dropped. */
static shard_status_t pk_op_build(pk_unpickler_t *u)
{
    pk_value_t *state = NULL, *obj = NULL;
    shard_status_t st = pk_pop(u, &state);
    if (st == SHARD_OK)
        st = pk_top(u, &obj);
    if (st != SHARD_OK)
        return st;
    /* An opaque object's state (a numpy array's bytes) is not looked at. */
    if (obj->kind == PK_OBJECT)
        return SHARD_OK;
    if (obj->kind != PK_DICT || (state->kind != PK_DICT && state->kind != PK_NONE))
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "builds a %s from a %s, expected a dict from a dict",
                           pk_kind_name(obj), pk_kind_name(state));
    return SHARD_OK;
}

static shard_status_t pk_op_stop(pk_unpickler_t *u)
{
    if (u->n_marks != 0 || u->depth != 1)
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "%zu values and %zu open MARKs left, expected 1 value",
                           u->depth, u->n_marks);
    if (!u->trailing && u->pos != u->len)
        return pk_op_error(u, SHARD_ERR_FORMAT, "%zu bytes after STOP",
                           u->len - u->pos);
    u->result = u->stack[0];
    u->stopped = true;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- dispatch */

static shard_status_t pk_step(pk_unpickler_t *u)
{
    u->op_pos = u->pos;
    u->op = u->buf[u->pos++];
    switch (u->op) {
    case PK_OP_PROTO: return pk_op_proto(u);
    case PK_OP_FRAME: return pk_op_frame(u);
    case PK_OP_STOP: return pk_op_stop(u);
    case PK_OP_NONE: return pk_op_const(u, PK_NONE, false);
    case PK_OP_NEWTRUE: return pk_op_const(u, PK_BOOL, true);
    case PK_OP_NEWFALSE: return pk_op_const(u, PK_BOOL, false);
    case PK_OP_BININT: return pk_op_int(u, 4, true);
    case PK_OP_BININT1: return pk_op_int(u, 1, false);
    case PK_OP_BININT2: return pk_op_int(u, 2, false);
    case PK_OP_LONG1: return pk_op_long1(u);
    case PK_OP_BINFLOAT: return pk_op_binfloat(u);
    case PK_OP_BINUNICODE: return pk_op_unicode(u, 4);
    case PK_OP_SHORT_BINUNICODE: return pk_op_unicode(u, 1);
    case PK_OP_EMPTY_DICT: return pk_op_const(u, PK_DICT, false);
    case PK_OP_EMPTY_LIST: return pk_op_const(u, PK_LIST, false);
    case PK_OP_EMPTY_TUPLE: return pk_op_const(u, PK_TUPLE, false);
    case PK_OP_MARK: return pk_op_mark(u);
    case PK_OP_TUPLE: return pk_op_seq_from_mark(u, PK_TUPLE);
    case PK_OP_LIST: return pk_op_seq_from_mark(u, PK_LIST);
    case PK_OP_TUPLE1: return pk_op_tuple_n(u, 1);
    case PK_OP_TUPLE2: return pk_op_tuple_n(u, 2);
    case PK_OP_TUPLE3: return pk_op_tuple_n(u, 3);
    case PK_OP_APPEND: return pk_op_append(u);
    case PK_OP_APPENDS: return pk_op_appends(u);
    case PK_OP_SETITEM: return pk_op_setitem(u);
    case PK_OP_SETITEMS: return pk_op_setitems(u);
    case PK_OP_BINPUT: return pk_op_put(u, 1);
    case PK_OP_LONG_BINPUT: return pk_op_put(u, 4);
    case PK_OP_MEMOIZE: return pk_op_memoize(u);
    case PK_OP_BINGET: return pk_op_get(u, 1);
    case PK_OP_LONG_BINGET: return pk_op_get(u, 4);
    case PK_OP_GLOBAL: return pk_op_global(u);
    case PK_OP_BINPERSID: return pk_op_binpersid(u);
    case PK_OP_REDUCE: return pk_op_reduce(u);
    case PK_OP_BUILD: return pk_op_build(u);
    default:
        return pk_op_error(u, SHARD_ERR_FORMAT,
                           "opcode not supported by this reader (a torch state "
                           "dict needs only protocol 2 containers, ints, str, "
                           "globals and persistent ids)");
    }
}

/* Resets what one pickle owns alone (stack, marks, memo); values stay in
 * the arena until pk_unpickler_free. */
static void pk_reset(pk_unpickler_t *u)
{
    u->depth = 0;
    u->n_marks = 0;
    if (u->memo != NULL)
        memset(u->memo, 0, u->memo_cap * sizeof *u->memo);
    u->memo_count = 0;
    u->stopped = false;
    u->result = NULL;
    u->pos = 0;
}

shard_status_t pk_load(pk_unpickler_t *u, const char *stream, const uint8_t *buf, size_t len,
                       bool trailing, const pk_value_t **result, size_t *consumed)
{
    pk_reset(u);
    u->stream = stream;
    u->buf = buf;
    u->len = len;
    u->trailing = trailing;
    while (!u->stopped) {
        if (u->pos >= u->len)
            return shard_error_set(u->err, SHARD_ERR_FORMAT,
                                   "%s: %s: truncated pickle: %s ends at offset %zu "
                                   "without STOP", u->function, u->path, stream, u->len);
        shard_status_t st = pk_step(u);
        if (st != SHARD_OK)
            return st;
    }
    *result = u->result;
    if (consumed != NULL)
        *consumed = u->pos;
    return SHARD_OK;
}


const pk_value_t *pk_dict_get(const pk_value_t *dict, const char *key)
{
    if (dict == NULL || dict->kind != PK_DICT)
        return NULL;
    for (size_t i = 0; i < dict->u.dict.count; i++) {
        const pk_value_t *k = dict->u.dict.pairs[i].key;
        if (k->kind == PK_STR && k->u.str.len == strlen(key) && strcmp(k->u.str.bytes, key) == 0)
            return dict->u.dict.pairs[i].value;
    }
    return NULL;
}
