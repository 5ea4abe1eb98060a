/* h5_names.c: tf_model.h5's attribute values interpreted over plain bytes
 * and strings (h5_names.h); no libhdf5 here, so fuzz_h5_attrs reaches all
 * of it at the speed of a parser.
 *
 * Global heap checks: libhdf5 1.10.8 keeps a variable-length string in a
 * global heap collection ("GCOL") and an attribute holds, per string, its
 * length, the collection's address and the object's index. H5HG_read
 * trusts all three: it copies the object's recorded size into a buffer
 * sized by the string's length, and its objects' sizes are never checked
 * against the collection (asserts only), so a corrupt file makes H5Aread
 * copy past both (found by fuzz_h5: memcpy-param-overlap in H5HG_read).
 * h5.c reads the references raw and they are checked here against the
 * collection's bytes in the file: signature, version, size inside the
 * file, every object inside the collection, the object present and exactly
 * the string's length. Only references that pass reach libhdf5's read. */
#include "h5_names.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void h5_names_free(h5_names_t *names)
{
    for (size_t i = 0; i < names->count; i++)
        free(names->items[i]);
    free(names->items);
    names->items = NULL;
    names->count = 0;
}

static shard_status_t names_grow(h5_names_t *names, size_t n, shard_error_t *err)
{
    if (n > SIZE_MAX / sizeof *names->items - names->count)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
    char **grown = realloc(names->items, (names->count + n) * sizeof *grown);
    if (grown == NULL && names->count + n > 0)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
    names->items = grown;
    return SHARD_OK;
}

shard_status_t h5_names_add_fixed(h5_names_t *names, const char *raw, size_t n, size_t width,
                                  shard_error_t *err)
{
    shard_status_t st = names_grow(names, n, err);
    for (size_t i = 0; i < n && st == SHARD_OK; i++) {
        names->items[names->count] = strndup(raw + i * width, width);
        if (names->items[names->count] == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        else
            names->count++;
    }
    return st;
}

shard_status_t h5_names_add_strings(h5_names_t *names, char *const *raw, size_t n,
                                    shard_error_t *err)
{
    shard_status_t st = names_grow(names, n, err);
    for (size_t i = 0; i < n && st == SHARD_OK; i++) {
        names->items[names->count] = strdup(raw[i] != NULL ? raw[i] : "");
        if (names->items[names->count] == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        else
            names->count++;
    }
    return st;
}

bool h5_split_name(char *out, size_t size, const char *base, int part)
{
    int n = snprintf(out, size, "%s%d", base, part);
    return n >= 0 && (size_t)n < size;
}

bool h5_layer_name_ok(const char *layer)
{
    return layer[0] != '\0' && strchr(layer, '/') == NULL;
}

bool h5_first_listing(const h5_names_t *weights, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (strcmp(weights->items[j], weights->items[i]) == 0)
            return false;
    return true;
}

bool h5_source_read(const h5_source_t *src, uint64_t offset, void *out, size_t n)
{
    if (offset > src->size || n > src->size - offset)
        return false;
    if (src->image != NULL) {
        memcpy(out, src->image + offset, n);
        return true;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(src->fd, (uint8_t *)out + done, n - done, (off_t)(offset + done));
        if (got <= 0 && !(got < 0 && errno == EINTR))
            return false;
        done += got > 0 ? (size_t)got : 0;
    }
    return true;
}

static uint64_t le_bytes(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | p[i - 1];
    return v;
}

void h5_heap_free(h5_heap_t *heap)
{
    free(heap->bytes);
    heap->bytes = NULL;
    heap->addr = 0;
    heap->size = 0;
}

/* A record's bytes: a free-space record (index 0) is its length whole. */
static uint64_t record_span(uint64_t index, uint64_t length, size_t object_head)
{
    return index > 0 ? object_head + ((length + 7) & ~(uint64_t)7) : length;
}

const char *h5_heap_load(const h5_source_t *src, h5_heap_t *heap, uint64_t addr)
{
    if (heap->bytes != NULL && heap->addr == addr)
        return NULL;
    h5_heap_free(heap);
    const size_t head = 8 + heap->sizeof_size, object_head = 8 + heap->sizeof_size;
    uint8_t header[16];
    if (addr > UINT64_MAX - heap->base || !h5_source_read(src, heap->base + addr, header, head))
        return "its global heap collection lies past the end of the file";
    if (memcmp(header, "GCOL", 4) != 0 || header[4] != 1)
        return "no global heap collection (GCOL, version 1) at its address";
    uint64_t size = le_bytes(header + 8, heap->sizeof_size);
    if (size < head || size > src->size || (heap->bytes = malloc(size)) == NULL
        || !h5_source_read(src, heap->base + addr, heap->bytes, size)) {
        h5_heap_free(heap);
        return "its global heap collection's size runs past the end of the file";
    }
    /* The walk H5HG__cache_heap_deserialize does, with the bounds it lacks. */
    for (uint64_t at = head; at < size && size - at >= object_head;) {
        uint64_t index = le_bytes(heap->bytes + at, 2);
        uint64_t length = le_bytes(heap->bytes + at + 8, heap->sizeof_size);
        uint64_t need = record_span(index, length, object_head);
        if (length > size - at - (index > 0 ? object_head : 0) || need < object_head) {
            h5_heap_free(heap);
            return "an object of its global heap collection runs past the collection";
        }
        at += need;
    }
    heap->addr = addr;
    heap->size = size;
    return NULL;
}

bool h5_heap_object(const h5_heap_t *heap, uint64_t index, uint64_t *offset, uint64_t *length)
{
    const size_t head = 8 + heap->sizeof_size, object_head = 8 + heap->sizeof_size;
    bool found = false;
    for (uint64_t at = head; at < heap->size && heap->size - at >= object_head;) {
        uint64_t i = le_bytes(heap->bytes + at, 2);
        uint64_t n = le_bytes(heap->bytes + at + 8, heap->sizeof_size);
        if (i == index && index > 0) {
            found = true;
            *offset = at + object_head;
            *length = n;
        }
        at += record_span(i, n, object_head);
    }
    return found;
}

size_t h5_vlen_ref_width(size_t sizeof_addr)
{
    return 4 + sizeof_addr + 4;
}

shard_status_t h5_check_vlen_refs(const char *path, const char *where, const h5_source_t *src,
                                  h5_heap_t *heap, const uint8_t *refs, size_t n,
                                  shard_error_t *err)
{
    const size_t width = h5_vlen_ref_width(heap->sizeof_addr);
    shard_status_t st = SHARD_OK;
    for (size_t i = 0; i < n && st == SHARD_OK; i++) {
        const uint8_t *ref = refs + i * width;
        uint64_t length = le_bytes(ref, 4), addr = le_bytes(ref + 4, heap->sizeof_addr);
        uint64_t index = le_bytes(ref + 4 + heap->sizeof_addr, 4), offset = 0, stored = 0;
        if (addr == 0)
            continue; /* a null string: libhdf5 reads nothing */
        /* Many references to one large object would make H5Aread allocate
         * their product; a weight or layer name is a short path. */
        const char *bad = length > H5_NAME_MAX ? "longer than any layer or weight name"
                                               : h5_heap_load(src, heap, addr);
        if (bad == NULL && !h5_heap_object(heap, index, &offset, &stored))
            bad = "its global heap collection has no such object";
        else if (bad == NULL && stored != length)
            bad = "its global heap object's size is not the string's length";
        if (bad != NULL)
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: attribute "
                                 "%s: string %zu (%llu bytes, heap object %llu at %llu): %s",
                                 path, where, i, (unsigned long long)length,
                                 (unsigned long long)index, (unsigned long long)addr, bad);
    }
    h5_heap_free(heap);
    return st;
}

bool h5_translate(const char *stored, char *name, size_t size, bool *transpose)
{
    const char *path = strchr(stored, '/');
    size_t len = path == NULL ? 0 : strlen(path + 1);
    if (path == NULL || len < 3 || strcmp(path + 1 + len - 2, ":0") != 0 || len >= size)
        return false;
    path++;
    len -= 2;
    size_t out = 0;
    for (size_t i = 0; i < len;) {
        if (strncmp(path + i, "_._", 3) == 0) {
            name[out++] = '.';
            i += 3;
        } else {
            name[out++] = path[i] == '/' ? '.' : path[i];
            i++;
        }
    }
    name[out] = '\0';
    char *last = strrchr(name, '.');
    last = last == NULL ? name : last + 1;
    static const struct { const char *tf, *torch; bool transpose; } parts[] = {
        {"kernel", "weight", true}, {"gamma", "weight", false}, {"beta", "bias", false},
        {"embeddings", "weight", false}};
    *transpose = false;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (strcmp(last, parts[i].tf) == 0) {
            strcpy(last, parts[i].torch); /* never longer than the TF part */
            *transpose = parts[i].transpose;
            break;
        }
    return true;
}
