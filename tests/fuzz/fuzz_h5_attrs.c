/* fuzz_h5_attrs.c: libFuzzer target for what tf_model.h5's attributes hold,
 * as shard/checkpoint/h5_names.c interprets it without libhdf5: raw
 * variable-length references checked against global heap collections, the
 * layer and weight name lists, the choice of entries and the translation
 * of TF's names. Built from h5_names.c alone (no libhdf5 in the binary), so
 * every run is a parse and every crash is ours.
 *
 * Input:
 *   [0] sizeof_addr - 1 (mod 8)     [1] sizeof_size - 1 (mod 8)
 *   [2] base (the user block)        [3] fixed string width - 1
 *   [4..5] R, [6..7] N (little-endian byte counts, cut to what is there)
 *   R bytes of references (4-byte length, sizeof_addr address, 4-byte
 *   index each), N bytes of names, then the file's bytes (collections).
 * Names are lines: "@name" a layer, any other line a weight name.
 * tests/fuzz/make_h5_attrs_seeds.py writes seeds of this form from the
 * golden tf_model.h5 files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5_names.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The engine's name buffer (tensor_file_translate's). */
enum { ENGINE_NAME_SIZE = 512, SPLIT_NAME_SIZE = 64 };

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz_h5_attrs: invariant failed: %s (line %d)\n", #cond,        \
                    __LINE__);                                                                \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

static uint64_t le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | p[i - 1];
    return v;
}

/* Every reference the check accepted names bytes of the file: its
 * collection lies inside the file, its object inside the collection, of
 * the string's length; the string is copied out as libhdf5 would. */
static void check_accepted(const h5_source_t *src, h5_heap_t geometry, const uint8_t *refs,
                           size_t n)
{
    const size_t width = h5_vlen_ref_width(geometry.sizeof_addr);
    h5_heap_t heap = geometry;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *ref = refs + i * width;
        uint64_t length = le(ref, 4), addr = le(ref + 4, geometry.sizeof_addr);
        uint64_t index = le(ref + 4 + geometry.sizeof_addr, 4), offset = 0, stored = 0;
        if (addr == 0)
            continue;
        CHECK(length <= H5_NAME_MAX);
        CHECK(h5_heap_load(src, &heap, addr) == NULL);
        CHECK(heap.base + addr <= src->size && heap.size <= src->size - heap.base - addr);
        CHECK(h5_heap_object(&heap, index, &offset, &stored));
        CHECK(stored == length && offset <= heap.size && length <= heap.size - offset);
        char *text = malloc(length + 1);
        CHECK(text != NULL);
        memcpy(text, src->image + heap.base + addr + offset, length);
        text[length] = '\0';
        free(text);
    }
    h5_heap_free(&heap);
}

static void fuzz_refs(const uint8_t *head, const uint8_t *refs, size_t refs_size,
                      const uint8_t *file, size_t file_size)
{
    h5_source_t src = {.image = file, .fd = -1, .size = file_size};
    h5_heap_t heap = {.sizeof_addr = (size_t)(head[0] % 8) + 1,
                      .sizeof_size = (size_t)(head[1] % 8) + 1, .base = head[2]};
    const h5_heap_t geometry = heap;
    size_t n = refs_size / h5_vlen_ref_width(heap.sizeof_addr);
    shard_error_t err = {0};
    shard_status_t st = h5_check_vlen_refs("fuzz.h5", "layer_names of /", &src, &heap, refs, n,
                                           &err);
    CHECK(heap.bytes == NULL);
    if (st == SHARD_OK)
        check_accepted(&src, geometry, refs, n);
    else
        CHECK(err.code == st && strstr(err.message, "tensor_file_open_h5: fuzz.h5") != NULL);

    /* Whatever loads: every object the lookup finds lies inside it. */
    if (n > 0 && h5_heap_load(&src, &heap, le(refs + 4, heap.sizeof_addr)) == NULL)
        for (uint64_t index = 1; index < 64; index++) {
            uint64_t offset = 0, length = 0;
            if (h5_heap_object(&heap, index, &offset, &length))
                CHECK(offset <= heap.size && length <= heap.size - offset);
        }
    h5_heap_free(&heap);
}

/* The names section's lines as layers ("@...") and weights. */
static void split_lines(const char *text, size_t size, h5_names_t *layers, h5_names_t *weights)
{
    shard_error_t err = {0};
    for (size_t at = 0; at < size;) {
        const char *end = memchr(text + at, '\n', size - at);
        size_t len = end == NULL ? size - at : (size_t)(end - (text + at));
        char *line = strndup(text + at, len);
        CHECK(line != NULL);
        char *one[] = {line[0] == '@' ? line + 1 : line};
        CHECK(h5_names_add_strings(line[0] == '@' ? layers : weights, one, 1, &err) == SHARD_OK);
        free(line);
        at += len + 1;
    }
}

static void fuzz_translate(const char *stored, size_t small)
{
    char name[ENGINE_NAME_SIZE], again[ENGINE_NAME_SIZE];
    bool transpose = false, transpose_again = false;
    memset(name, 0x5a, sizeof name);
    if (!h5_translate(stored, name, sizeof name, &transpose))
        return;
    size_t len = strlen(name);
    CHECK(len < sizeof name && len + 2 <= strlen(stored));
    CHECK(strchr(name, '/') == NULL);
    const char *last = strrchr(name, '.');
    last = last == NULL ? name : last + 1;
    if (transpose)
        CHECK(strcmp(last, "weight") == 0 && strstr(stored, "kernel:0") != NULL);
    /* A smaller buffer gives the same name or refuses it. */
    memset(again, 0x5a, sizeof again);
    if (h5_translate(stored, again, small, &transpose_again))
        CHECK(strcmp(again, name) == 0 && transpose_again == transpose && strlen(again) < small);
}

static void fuzz_names(const uint8_t *head, const char *text, size_t size)
{
    h5_names_t layers = {0}, weights = {0}, fixed = {0};
    shard_error_t err = {0};
    split_lines(text, size, &layers, &weights);

    size_t width = (size_t)head[3] + 1;
    CHECK(h5_names_add_fixed(&fixed, text, size / width, width, &err) == SHARD_OK);
    CHECK(fixed.count == size / width);
    for (size_t i = 0; i < fixed.count; i++) {
        size_t len = strlen(fixed.items[i]);
        CHECK(len <= width && memcmp(fixed.items[i], text + i * width, len) == 0);
        CHECK(len == width || text[i * width + len] == '\0');
    }

    /* Each weight kept once, the first of its listings; the dataset path
     * of a listed layer and weight fits add_entry's buffer. */
    for (size_t i = 0; i < weights.count; i++) {
        bool first = h5_first_listing(&weights, i);
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(weights.items[j], weights.items[i]) == 0;
        CHECK(first == !seen);
        fuzz_translate(weights.items[i], (size_t)head[3] + 1);
    }
    for (size_t l = 0; l < layers.count; l++) {
        const char *layer = layers.items[l];
        bool ok = h5_layer_name_ok(layer);
        CHECK(ok == (layer[0] != '\0' && strchr(layer, '/') == NULL));
        char split[SPLIT_NAME_SIZE];
        if (h5_split_name(split, sizeof split, layer, (int)l))
            CHECK(strncmp(split, layer, strlen(layer)) == 0 && strlen(split) < sizeof split);
        for (size_t i = 0; ok && i < weights.count; i++) {
            char dpath[2 * H5_NAME_MAX + 2];
            int n = snprintf(dpath, sizeof dpath, "%s/%s", layer, weights.items[i]);
            if (strlen(layer) <= H5_NAME_MAX && strlen(weights.items[i]) <= H5_NAME_MAX)
                CHECK(n >= 0 && (size_t)n < sizeof dpath);
        }
    }
    h5_names_free(&layers);
    h5_names_free(&weights);
    h5_names_free(&fixed);
    CHECK(layers.items == NULL && layers.count == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    const uint8_t *head = data;
    size_t rest = size - 8;
    size_t refs_size = (size_t)le(data + 4, 2), names_size = (size_t)le(data + 6, 2);
    refs_size = refs_size > rest ? rest : refs_size;
    rest -= refs_size;
    names_size = names_size > rest ? rest : names_size;
    rest -= names_size;
    const uint8_t *refs = data + 8, *names = refs + refs_size, *file = names + names_size;
    fuzz_refs(head, refs, refs_size, file, rest);
    fuzz_names(head, (const char *)names, names_size);
    return 0;
}
