/* h5_names.h: what tf_model.h5's attributes hold, interpreted without
 * libhdf5: the name lists (layer_names, weight_names, their split parts),
 * the raw variable-length references checked against the global heap
 * collection's bytes, which of the listed weights become entries, and the
 * translation of TF's names to the engine's. h5.c makes the libhdf5 calls
 * and hands these plain bytes and strings; fuzz_h5_attrs calls them alone.
 * Internal to shard/checkpoint. */
#ifndef XLM_SHARD_CHECKPOINT_H5_NAMES_H
#define XLM_SHARD_CHECKPOINT_H5_NAMES_H

#include "shard_common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Names are paths of a few components; Keras never writes longer ones. */
enum { H5_NAME_MAX = 1024, H5_SPLIT_MAX = 1024 };

typedef struct {
    char **items; /* owned, each owned */
    size_t count;
} h5_names_t;

void h5_names_free(h5_names_t *names);

/* Appends n strings stored width bytes apart (fixed-length strings, each
 * cut at its first NUL); width at most H5_NAME_MAX. */
shard_status_t h5_names_add_fixed(h5_names_t *names, const char *raw, size_t n, size_t width,
                                  shard_error_t *err);
/* Appends n NUL-terminated strings (a NULL one as ""). */
shard_status_t h5_names_add_strings(h5_names_t *names, char *const *raw, size_t n,
                                    shard_error_t *err);

/* The name of part `part` of a split list attribute: "<base><part>".
 * False when it does not fit in size bytes. */
bool h5_split_name(char *out, size_t size, const char *base, int part);

/* True for a layer name that can name a group of the root: not empty and
 * one path component. */
bool h5_layer_name_ok(const char *layer);

/* True when weights->items[i] is not listed earlier: the LM head's tied
 * copy of the embeddings is kept once, from its first layer. */
bool h5_first_listing(const h5_names_t *weights, size_t i);

/* The bytes of the file, for reading global heap collections raw: an image
 * in memory (borrowed) or a file descriptor (image NULL). */
typedef struct {
    const uint8_t *image;
    int fd;
    uint64_t size;
} h5_source_t;

/* n bytes at offset into out: false when past the end or unreadable. */
bool h5_source_read(const h5_source_t *src, uint64_t offset, void *out, size_t n);

/* One global heap collection ("GCOL", version 1) read raw. */
typedef struct {
    size_t sizeof_addr, sizeof_size; /* the superblock's, 1 to 8 */
    uint64_t base; /* where addresses start: the superblock's offset */
    uint64_t addr; /* the loaded collection's address, or 0 */
    uint8_t *bytes; /* [size], owned */
    uint64_t size;
} h5_heap_t;

void h5_heap_free(h5_heap_t *heap);

/* Loads the collection at addr (kept for the next reference to it) and
 * checks it whole: NULL, or what is wrong with it. */
const char *h5_heap_load(const h5_source_t *src, h5_heap_t *heap, uint64_t addr);

/* Object index of the loaded collection (its last record, as libhdf5 keeps
 * the last): its data's offset in the collection and its length; false
 * when there is none. */
bool h5_heap_object(const h5_heap_t *heap, uint64_t index, uint64_t *offset,
                    uint64_t *length);

/* The bytes of one stored variable-length reference: length (4), the
 * collection's address (sizeof_addr), the object's index (4). */
size_t h5_vlen_ref_width(size_t sizeof_addr);

/* Checks n stored references (refs: n * h5_vlen_ref_width bytes) against
 * their collections in src: each is null (address 0) or names an object
 * present in a sound collection, of exactly its length, at most
 * H5_NAME_MAX bytes. path and where name the file and the attribute in the
 * message. heap gives the sizes and base; its bytes are used as a cache
 * and freed. */
shard_status_t h5_check_vlen_refs(const char *path, const char *where, const h5_source_t *src,
                                  h5_heap_t *heap, const uint8_t *refs, size_t n,
                                  shard_error_t *err);

/* The translation hook: "<model>/<path>:0" becomes the engine's name
 * (modeling_tf_pytorch_utils.py's rules), *transpose set for a kernel
 * stored [in, out]. False for a name of another shape or one that does not
 * fit in size bytes: it is dropped. */
bool h5_translate(const char *stored, char *name, size_t size, bool *transpose);

#endif /* XLM_SHARD_CHECKPOINT_H5_NAMES_H */
