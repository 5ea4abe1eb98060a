/* torch.c: reads pytorch_model.bin (or a .pth) without Python, in both of
 * torch.save's formats; the pickles run on the strict machine of
 * unpickle.h, and this file rebuilds tensors from what it returns.
 *
 * Zip archive (torch >= 1.6):
 *   <archive>/data.pkl     the state dict, pickled (protocol 2)
 *   <archive>/data/<key>   one entry per storage: the raw elements
 *   <archive>/version      record format version (a decimal number)
 *   <archive>/byteorder    "little" or "big" (written by torch >= 1.13)
 *
 * Legacy stream (torch < 1.6): five pickles one after the other (the magic
 * number, the protocol version 1001, the system info, the state dict, the
 * list of storage keys), then for each key of the list a little-endian
 * int64 element count and that many elements.
 *
 * The state dict is an OrderedDict whose values are
 * torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) calls.
 * Entries are listed at open with every bound checked; bytes are loaded
 * when a tensor is fetched: a zip storage is read into a buffer the first
 * time one of its tensors is (tied weights then share it), a legacy storage
 * is a view into the mapped file. So a pipeline stage holds only the
 * storages of its own tensors.
 *
 * Non-contiguous tensors are refused (SHARD_ERR_UNSUPPORTED), not copied:
 * tensor_entry_t is a view into storage bytes, tied weights must stay tied
 * (a copy would silently untie them and double their memory), and
 * module.state_dict() only holds contiguous parameters and buffers, so a
 * strided tensor means a hand-made file worth reporting rather than fixing. */
#include "checkpoint_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

/* data.pkl of a state dict is a few bytes per tensor; 1 GiB is far beyond
 * any real checkpoint and keeps a forged size from allocating the machine. */
#define TT_PICKLE_MAX ((size_t)1 << 30)
/* version and byteorder are a few bytes. */
#define TT_SMALL_ENTRY_MAX ((size_t)64)

static const char TT_FN[] = "tensor_file_open_torch";

/* ---------------------------------------------------------------- archive */
/* ---------------------------------------------------------------- archive */

/* The archive at path, or, when image is not NULL, in its size bytes
 * (borrowed; path then only names it). */
static shard_status_t tt_zip_open(const char *path, const uint8_t *image, size_t image_size,
                                  zip_t **za, shard_error_t *err)
{
    int code = 0;
    zip_error_t ze;
    if (image == NULL) {
        *za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &code);
        if (*za != NULL)
            return SHARD_OK;
        zip_error_init_with_code(&ze, code);
    } else {
        zip_error_init(&ze);
        zip_source_t *source = zip_source_buffer_create(image, image_size, 0, &ze);
        *za = source == NULL ? NULL : zip_open_from_source(source, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
        if (*za != NULL) {
            zip_error_fini(&ze);
            return SHARD_OK;
        }
        zip_source_free(source);
        code = zip_error_code_zip(&ze);
    }
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


/* Checks that storage s has its entry in the archive, of exactly its size;
 * the bytes are read only when a tensor of it is fetched. */
static shard_status_t tt_check_storage(zip_t *za, const char *path, const char *prefix,
                                       const pk_storage_t *s, zip_uint64_t *index,
                                       shard_error_t *err)
{
    char *dir = tt_join(prefix, "data/");
    char *name = dir == NULL ? NULL : tt_join(dir, s->key);
    size_t size = 0;
    bool found = false;
    shard_status_t st = SHARD_OK;
    free(dir);
    if (name == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    st = tt_locate(za, path, name, index, &size, &found, err);
    if (st == SHARD_OK && !found)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: storage '%s' has no entry "
                             "'%s' in the archive", path, s->key, name);
    if (st == SHARD_OK && size != s->nbytes)
        st = shard_error_set(err, SHARD_ERR_FORMAT,
                             "tensor_file_open_torch: %s: entry '%s' holds %zu bytes, "
                             "expected %zu (%lld elements of %s)", path, name, size,
                             s->nbytes, (long long)s->numel, s->type_name);
    free(name);
    return st;
}

/* ---------------------------------------------------------------- backing */

/* Where a storage's bytes are: a zip entry read on demand, or an offset in
 * the mapped legacy file. */
typedef struct {
    pk_storage_t meta;    /* key owned */
    zip_uint64_t index;   /* zip: the entry */
    uint64_t file_offset; /* legacy: first element in the file */
    bool placed;          /* legacy: the key list gave its bytes */
    uint8_t *buffer;      /* zip: read on first fetch, owned */
} tt_store_t;

typedef struct {
    tt_store_t *stores;
    size_t n_stores;
    size_t *entry_store;   /* [count]: the storage of each entry */
    int64_t *entry_offset; /* [count]: its first element in the storage */
    zip_t *za;             /* zip: kept open for the reads */
    char *prefix;
    uint8_t *map;          /* legacy: the whole file, mapped (or borrowed) */
    size_t map_size;
    bool map_owned;        /* legacy: map is our mapping, unmapped at release */
} tt_backing_t;

static void tt_release(tensor_file_t *self)
{
    tt_backing_t *b = self->backing;
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n_stores; i++) {
        free(b->stores[i].meta.key);
        free(b->stores[i].buffer);
    }
    free(b->stores);
    free(b->entry_store);
    free(b->entry_offset);
    if (b->za != NULL)
        zip_discard(b->za);
    free(b->prefix);
    if (b->map != NULL && b->map_owned)
        munmap(b->map, b->map_size);
    free(b);
    self->backing = NULL;
}

/* A legacy storage whose elements are not aligned for their type cannot be
 * used in place (the engine would convert it into a copy of its own and
 * the mapped pages would stay resident too): its bytes are copied once into
 * an aligned buffer, which every view of the storage then uses, and the
 * mapped pages wholly inside it are dropped from memory. Unwritten pages of
 * a private file mapping come back unchanged if anything touches them. */
static shard_status_t tt_legacy_storage(tensor_file_t *self, tt_backing_t *b, tt_store_t *s,
                                        const uint8_t **base, shard_error_t *err)
{
    const uint8_t *at = b->map + s->file_offset;
    size_t elem = tensor_dtype_size(s->meta.dtype);
    *base = at;
    if (s->buffer == NULL && (elem == 0 || (uintptr_t)at % elem == 0))
        return SHARD_OK;
    if (s->buffer == NULL) {
        s->buffer = malloc(s->meta.nbytes > 0 ? s->meta.nbytes : 1);
        if (s->buffer == NULL)
            return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: %s: out of "
                                   "memory for storage '%s' of %zu bytes", self->path,
                                   s->meta.key, s->meta.nbytes);
        memcpy(s->buffer, at, s->meta.nbytes);
        self->backing_size += s->meta.nbytes;
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        uintptr_t first = ((uintptr_t)at + page - 1) / page * page;
        uintptr_t end = ((uintptr_t)at + s->meta.nbytes) / page * page;
        if (b->map_owned && end > first)
            (void)madvise((void *)first, end - first, MADV_DONTNEED);
    }
    *base = s->buffer;
    return SHARD_OK;
}

static shard_status_t tt_load(tensor_file_t *self, size_t index, shard_error_t *err)
{
    tt_backing_t *b = self->backing;
    tt_store_t *s = &b->stores[b->entry_store[index]];
    const uint8_t *base = NULL;
    if (b->map != NULL) {
        shard_status_t st = tt_legacy_storage(self, b, s, &base, err);
        if (st != SHARD_OK)
            return st;
    } else {
        if (s->buffer == NULL) {
            char *dir = tt_join(b->prefix, "data/");
            char *name = dir == NULL ? NULL : tt_join(dir, s->meta.key);
            free(dir);
            /* One byte at least so that an empty storage still has a
             * non-NULL data pointer. */
            s->buffer = name == NULL ? NULL : malloc(s->meta.nbytes > 0 ? s->meta.nbytes : 1);
            shard_status_t st = SHARD_OK;
            if (s->buffer == NULL)
                st = shard_error_set(err, SHARD_ERR_NOMEM,
                                     "tensor_file_open_torch: %s: out of memory for storage "
                                     "'%s' of %zu bytes", self->path, s->meta.key,
                                     s->meta.nbytes);
            else
                st = tt_read_index(b->za, self->path, name, s->index, s->buffer,
                                   s->meta.nbytes, err);
            free(name);
            if (st != SHARD_OK) {
                free(s->buffer);
                s->buffer = NULL;
                return st;
            }
            self->backing_size += s->meta.nbytes;
        }
        base = s->buffer;
    }
    self->entries[index].data = base + (size_t)b->entry_offset[index]
                                       * tensor_dtype_size(s->meta.dtype);
    self->entries[index].held = s->buffer != NULL && base == s->buffer;
    return SHARD_OK;
}

/* Moves the unpickler's storage table into the backing. */
static shard_status_t tt_adopt_storages(tt_backing_t *b, pk_unpickler_t *u)
{
    if (u->n_storages == 0)
        return SHARD_OK;
    b->stores = calloc(u->n_storages, sizeof *b->stores);
    if (b->stores == NULL)
        return shard_error_set(u->err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    for (size_t i = 0; i < u->n_storages; i++) {
        b->stores[i].meta = u->storages[i];
        u->storages[i].key = NULL;
    }
    b->n_stores = u->n_storages;
    return SHARD_OK;
}

/* ---------------------------------------------------------------- entries */

/* Element count, or -1 when the product overflows int64. */
static int64_t tt_numel(const pk_tensor_t *t)
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
static bool tt_contiguous(const pk_tensor_t *t)
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
static shard_status_t tt_make_entry(tensor_file_t *tf, tt_backing_t *b, shard_error_t *err,
                                    size_t i, const char *name, const pk_tensor_t *t)
{
    const pk_storage_t *s = &b->stores[t->storage].meta;
    tensor_entry_t *e = &tf->entries[i];
    int64_t numel = tt_numel(t);
    if (numel < 0)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: tensor '%s': element "
                               "count overflows", tf->path, name);
    if (numel > 0 && !tt_contiguous(t))
        return shard_error_set(err, SHARD_ERR_UNSUPPORTED,
                               "tensor_file_open_torch: %s: tensor '%s' is not "
                               "contiguous row-major; only contiguous tensors are "
                               "supported", tf->path, name);
    if (t->offset > s->numel || numel > s->numel - t->offset)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: %s: tensor '%s': offset %lld "
                               "+ %lld elements runs past storage '%s' of %lld elements",
                               tf->path, name, (long long)t->offset, (long long)numel,
                               s->key, (long long)s->numel);
    e->name = strdup(name);
    if (e->name == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    e->dtype = s->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    /* Fits: bounded by the storage's checked byte count. */
    e->nbytes = (size_t)numel * tensor_dtype_size(s->dtype);
    e->resolved = true;
    b->entry_store[i] = t->storage;
    b->entry_offset[i] = t->offset;
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

static shard_status_t tt_make_entries(tensor_file_t *tf, tt_backing_t *b, shard_error_t *err,
                                      const pk_value_t *dict)
{
    size_t n = dict->u.dict.count;
    if (n == 0)
        return SHARD_OK;
    tf->entries = calloc(n, sizeof *tf->entries);
    b->entry_store = calloc(n, sizeof *b->entry_store);
    b->entry_offset = calloc(n, sizeof *b->entry_offset);
    if (tf->entries == NULL || b->entry_store == NULL || b->entry_offset == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
    for (size_t i = 0; i < n; i++) {
        const pk_value_t *k = dict->u.dict.pairs[i].key;
        const pk_value_t *v = dict->u.dict.pairs[i].value;
        if (k->kind == PK_STR && strlen(k->u.str.bytes) != k->u.str.len)
            return shard_error_set(err, SHARD_ERR_FORMAT,
                                   "tensor_file_open_torch: %s: state dict key '%s' holds a "
                                   "NUL at byte %zu", tf->path, k->u.str.bytes,
                                   strlen(k->u.str.bytes));
        if (k->kind != PK_STR)
            return shard_error_set(err, SHARD_ERR_FORMAT,
                                   "tensor_file_open_torch: %s: state dict key is a %s, "
                                   "expected a str (entry %zu)", tf->path, pk_kind_name(k), i);
        if (v->kind != PK_TENSOR)
            return shard_error_set(err, SHARD_ERR_FORMAT,
                                   "tensor_file_open_torch: %s: state dict entry '%s' "
                                   "is a %s, expected a tensor", tf->path, k->u.str.bytes,
                                   pk_kind_name(v));
        shard_status_t st = tt_make_entry(tf, b, err, i, k->u.str.bytes, &v->u.tensor);
        tf->count = i + 1; /* so destroy frees the name just made */
        if (st != SHARD_OK)
            return st;
    }
    return tt_check_unique(tf, err);
}

/* The state dict of what the pickle holds: the dict itself, or (original
 * XLM checkpoints) its 'model' entry when it also has 'params'. */
static const pk_value_t *tt_state_dict(const pk_value_t *root)
{
    if (root->kind != PK_DICT)
        return NULL;
    const pk_value_t *model = NULL;
    bool params = false;
    for (size_t i = 0; i < root->u.dict.count; i++) {
        const pk_value_t *k = root->u.dict.pairs[i].key;
        if (k->kind != PK_STR)
            continue;
        if (strcmp(k->u.str.bytes, "model") == 0)
            model = root->u.dict.pairs[i].value;
        else if (strcmp(k->u.str.bytes, "params") == 0)
            params = true;
    }
    if (model != NULL && params && model->kind == PK_DICT)
        return model;
    return root;
}

/* A new tensor file with its backing, entries from the state dict. */
static tensor_file_t *tt_build(const char *path, pk_unpickler_t *u, const pk_value_t *root,
                               tt_backing_t **backing)
{
    tensor_file_t *tf = calloc(1, sizeof *tf);
    tt_backing_t *b = calloc(1, sizeof *b);
    *backing = NULL;
    if (tf == NULL || b == NULL || (tf->path = strdup(path)) == NULL) {
        free(b);
        shard_error_set(u->err, SHARD_ERR_NOMEM, "tensor_file_open_torch: out of memory");
        tensor_file_destroy(&tf);
        return NULL;
    }
    tf->backing = b;
    tf->release = tt_release;
    tf->load = tt_load;
    const pk_value_t *dict = tt_state_dict(root);
    if (dict == NULL) {
        shard_error_set(u->err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: %s holds a "
                        "%s, expected a state dict", path, u->stream, pk_kind_name(root));
        goto fail;
    }
    if (tt_adopt_storages(b, u) != SHARD_OK || tt_make_entries(tf, b, u->err, dict) != SHARD_OK)
        goto fail;
    *backing = b;
    return tf;
fail:
    tensor_file_destroy(&tf);
    return NULL;
}

/* ---------------------------------------------------------------- zip */

static tensor_file_t *tt_open_zip(const char *path, const uint8_t *image, size_t image_size,
                                  shard_error_t *err)
{
    zip_t *za = NULL;
    char *prefix = NULL;
    uint8_t *pickle = NULL;
    size_t pickle_len = 0;
    pk_unpickler_t u;
    const pk_value_t *root = NULL;
    tensor_file_t *tf = NULL;
    tt_backing_t *b = NULL;

    pk_unpickler_init(&u, TT_FN, path, err);
    if (tt_zip_open(path, image, image_size, &za, err) != SHARD_OK
        || tt_find_archive(path, za, &prefix, err) != SHARD_OK
        || tt_check_byteorder(za, path, prefix, err) != SHARD_OK
        || tt_check_version(za, path, prefix, err) != SHARD_OK
        || tt_read_pickle(za, path, prefix, &pickle, &pickle_len, err) != SHARD_OK
        || pk_load(&u, "data.pkl", pickle, pickle_len, false, &root, NULL) != SHARD_OK)
        goto done;
    tf = tt_build(path, &u, root, &b);
    if (tf == NULL)
        goto done;
    /* The backing owns the archive from here. */
    b->za = za;
    b->prefix = prefix;
    za = NULL;
    prefix = NULL;
    for (size_t i = 0; i < b->n_stores; i++) {
        if (tt_check_storage(b->za, path, b->prefix, &b->stores[i].meta, &b->stores[i].index,
                             err) != SHARD_OK) {
            tensor_file_destroy(&tf);
            break;
        }
    }
done: /* and success: the temporaries go either way */
    pk_unpickler_free(&u);
    free(pickle);
    free(prefix);
    if (za != NULL)
        zip_discard(za);
    return tf;
}

/* ---------------------------------------------------------------- legacy */

/* torch.serialization's MAGIC_NUMBER 0x1950a86a20f9469cfc6c, little-endian. */
static const uint8_t tt_legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                            0x20, 0x6a, 0xa8, 0x50, 0x19};
enum { TT_LEGACY_PROTOCOL = 1001 };

static shard_status_t tt_legacy_pickle(pk_unpickler_t *u, const uint8_t *map, size_t size,
                                       size_t *pos, const char *stream, const pk_value_t **out)
{
    size_t used = 0;
    shard_status_t st = pk_load(u, stream, map + *pos, size - *pos, true, out, &used);
    *pos += used;
    return st;
}

/* The three pickles before the state dict: magic, protocol, system info. */
static shard_status_t tt_legacy_preamble(pk_unpickler_t *u, const uint8_t *map, size_t size,
                                         size_t *pos)
{
    const pk_value_t *v = NULL;
    const char *path = u->path;
    shard_status_t st = tt_legacy_pickle(u, map, size, pos, "pickle 1 (magic number)", &v);
    if (st != SHARD_OK)
        return st;
    if (v->kind != PK_BIGINT || v->u.str.len != sizeof tt_legacy_magic
        || memcmp(v->u.str.bytes, tt_legacy_magic, sizeof tt_legacy_magic) != 0)
        return shard_error_set(u->err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: first "
                               "pickle is a %s, expected torch's magic number "
                               "0x1950a86a20f9469cfc6c", path, pk_kind_name(v));
    st = tt_legacy_pickle(u, map, size, pos, "pickle 2 (protocol version)", &v);
    if (st != SHARD_OK)
        return st;
    if (v->kind != PK_INT || v->u.i != TT_LEGACY_PROTOCOL)
        return shard_error_set(u->err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: "
                               "protocol version %lld, expected %d", path,
                               v->kind == PK_INT ? (long long)v->u.i : -1LL,
                               TT_LEGACY_PROTOCOL);
    st = tt_legacy_pickle(u, map, size, pos, "pickle 3 (system info)", &v);
    if (st != SHARD_OK)
        return st;
    if (v->kind != PK_DICT)
        return shard_error_set(u->err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: system "
                               "info is a %s, expected a dict", path, pk_kind_name(v));
    for (size_t i = 0; i < v->u.dict.count; i++) {
        const pk_value_t *k = v->u.dict.pairs[i].key, *x = v->u.dict.pairs[i].value;
        if (k->kind == PK_STR && strcmp(k->u.str.bytes, "little_endian") == 0
            && (x->kind != PK_BOOL || !x->u.b))
            return shard_error_set(u->err, SHARD_ERR_UNSUPPORTED, "tensor_file_open_torch: "
                                   "%s: storages are not little-endian; only little-endian "
                                   "is supported", path);
    }
    return SHARD_OK;
}

static tt_store_t *tt_store_of_key(tt_backing_t *b, const char *key)
{
    for (size_t i = 0; i < b->n_stores; i++)
        if (strcmp(b->stores[i].meta.key, key) == 0)
            return &b->stores[i];
    return NULL;
}

/* The key list, then each storage's count and elements: places every
 * storage the state dict named inside the mapped file. */
static shard_status_t tt_legacy_place(tensor_file_t *tf, tt_backing_t *b, const pk_value_t *keys,
                                      size_t pos, shard_error_t *err)
{
    if (keys->kind != PK_LIST)
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: storage "
                               "key list is a %s, expected a list", tf->path,
                               pk_kind_name(keys));
    for (size_t i = 0; i < keys->u.seq.count; i++) {
        const pk_value_t *k = keys->u.seq.items[i];
        if (k->kind != PK_STR)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: storage "
                                   "key %zu is a %s, expected a str", tf->path, i,
                                   pk_kind_name(k));
        tt_store_t *s = strlen(k->u.str.bytes) == k->u.str.len
                            ? tt_store_of_key(b, k->u.str.bytes) : NULL;
        if (s == NULL || s->placed)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: storage "
                                   "key '%s' in the key list %s", tf->path, k->u.str.bytes,
                                   s == NULL ? "is named by no tensor" : "appears twice");
        if (b->map_size - pos < 8)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: "
                                   "truncated: storage '%s' at offset %zu needs an 8-byte "
                                   "count, the file has %zu bytes", tf->path, s->meta.key,
                                   pos, b->map_size);
        uint64_t count = 0;
        for (int j = 7; j >= 0; j--)
            count = count << 8 | b->map[pos + (size_t)j];
        pos += 8;
        if (count != (uint64_t)s->meta.numel)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: storage "
                                   "'%s' holds %llu elements in the file, its persistent id "
                                   "says %lld", tf->path, s->meta.key,
                                   (unsigned long long)count, (long long)s->meta.numel);
        if (b->map_size - pos < s->meta.nbytes)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: "
                                   "truncated: storage '%s' of %zu bytes at offset %zu runs "
                                   "past the end of the file (%zu bytes)", tf->path,
                                   s->meta.key, s->meta.nbytes, pos, b->map_size);
        s->file_offset = pos;
        s->placed = true;
        pos += s->meta.nbytes;
    }
    for (size_t i = 0; i < b->n_stores; i++)
        if (!b->stores[i].placed)
            return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: storage "
                                   "key '%s' is never defined (not in the key list)",
                                   tf->path, b->stores[i].meta.key);
    return SHARD_OK;
}

static shard_status_t tt_map(const char *path, uint8_t **map, size_t *size, shard_error_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        shard_status_t code = shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_torch: "
                                              "cannot open %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return code;
    }
    *size = (size_t)st.st_size;
    void *m = *size > 0 ? mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED)
        return shard_error_set(err, *size > 0 ? SHARD_ERR_IO : SHARD_ERR_FORMAT,
                               "tensor_file_open_torch: cannot map %s (%zu bytes): %s", path,
                               *size, *size > 0 ? strerror(errno) : "empty file");
    *map = m;
    return SHARD_OK;
}

/* map: the file's bytes; owned: ours to unmap (a mapping), else borrowed. */
static tensor_file_t *tt_open_legacy(const char *path, uint8_t *map, size_t size, bool owned,
                                     shard_error_t *err)
{
    pk_unpickler_t u;
    const pk_value_t *root = NULL, *keys = NULL;
    tensor_file_t *tf = NULL;
    tt_backing_t *b = NULL;
    size_t pos = 0;
    pk_unpickler_init(&u, TT_FN, path, err);
    if (tt_legacy_preamble(&u, map, size, &pos) != SHARD_OK
        || tt_legacy_pickle(&u, map, size, &pos, "pickle 4 (state dict)", &root) != SHARD_OK
        || tt_legacy_pickle(&u, map, size, &pos, "pickle 5 (storage keys)", &keys) != SHARD_OK) {
        if (owned)
            munmap(map, size);
        goto done;
    }
    tf = tt_build(path, &u, root, &b);
    if (tf == NULL) {
        if (owned)
            munmap(map, size);
        goto done;
    }
    b->map = map;
    b->map_size = size;
    b->map_owned = owned;
    if (tt_legacy_place(tf, b, keys, pos, err) != SHARD_OK)
        tensor_file_destroy(&tf);
    /* Reading the pickles and every storage's count faulted pages in, and
     * the kernel maps the cached neighbours of each fault too (64 KiB
     * around it): nothing of the mapping is needed now, so all of it
     * leaves memory and a stage brings back only its own storages. */
    else if (owned)
        (void)madvise(map, size, MADV_DONTNEED);
done:
    pk_unpickler_free(&u);
    return tf;
}

shard_status_t torch_legacy_root(const char *path, pk_unpickler_t *u, uint8_t **map,
                                 size_t *size, const pk_value_t **root, shard_error_t *err)
{
    size_t pos = 0;
    *map = NULL;
    shard_status_t st = tt_map(path, map, size, err);
    if (st == SHARD_OK && (*size < 2 || (*map)[0] != 0x80 || (*map)[1] != 0x02))
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_torch: %s: not a legacy "
                             "torch file (no pickle protocol 2 header)", path);
    if (st == SHARD_OK)
        st = tt_legacy_preamble(u, *map, *size, &pos);
    if (st == SHARD_OK)
        st = tt_legacy_pickle(u, *map, *size, &pos, "pickle 4 (saved object)", root);
    return st;
}

/* ---------------------------------------------------------------- open */

tensor_file_t *tensor_file_open_torch(const char *path, shard_error_t *err)
{
    if (path == NULL) {
        shard_error_set(err, SHARD_ERR_INPUT, "tensor_file_open_torch: path is NULL");
        return NULL;
    }
    /* A zip archive starts with a local file header ("PK"); a legacy file
     * with pickle's PROTO opcode (0x80). Anything else gets the zip
     * reader's message. */
    uint8_t *map = NULL;
    size_t size = 0;
    if (tt_map(path, &map, &size, err) != SHARD_OK)
        return tt_open_zip(path, NULL, 0, err);
    if (size >= 1 && map[0] == 0x80)
        return tt_open_legacy(path, map, size, true, err);
    munmap(map, size);
    return tt_open_zip(path, NULL, 0, err);
}

tensor_file_t *tensor_file_open_torch_image(const char *path, const uint8_t *data, size_t size,
                                            shard_error_t *err)
{
    if (path == NULL || data == NULL) {
        shard_error_set(err, SHARD_ERR_INPUT, "tensor_file_open_torch: path or bytes are NULL");
        return NULL;
    }
    if (size >= 1 && data[0] == 0x80)
        return tt_open_legacy(path, (uint8_t *)data, size, false, err);
    return tt_open_zip(path, data, size, err);
}
