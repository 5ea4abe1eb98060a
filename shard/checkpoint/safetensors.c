/* safetensors.c: model.safetensors, memory-mapped; tensors are views into
 * the mapping, so F32 weights are used in place and pages of tensors a stage
 * does not own are never read. */
#include "checkpoint_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is not a weight file we can trust. */
enum { SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024 };

static void release_mapping(tensor_file_t *self)
{
    if (self->backing)
        munmap(self->backing, self->backing_size);
    self->backing = NULL;
}

static bool dtype_from_name(const char *name, tensor_dtype_t *out)
{
    static const struct { const char *name; tensor_dtype_t dtype; } table[] = {
        {"F32", TENSOR_F32}, {"F16", TENSOR_F16}, {"BF16", TENSOR_BF16},
        {"F64", TENSOR_F64}, {"I64", TENSOR_I64}, {"I32", TENSOR_I32},
        {"I8", TENSOR_I8},   {"U8", TENSOR_U8},   {"BOOL", TENSOR_BOOL}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0) {
            *out = table[i].dtype;
            return true;
        }
    return false;
}

static shard_status_t parse_shape(const char *path, const char *name, const cJSON *shape,
                                  tensor_entry_t *entry, size_t *numel, shard_error_t *err)
{
    int ndim = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "%s: tensor %s: shape must be a list of at most %d sizes",
                               path, name, TENSOR_MAX_DIMS);
    entry->ndim = ndim;
    *numel = 1;
    for (int d = 0; d < ndim; d++) {
        const cJSON *dim = cJSON_GetArrayItem(shape, d);
        double value = cJSON_IsNumber(dim) ? dim->valuedouble : -1.0;
        if (value < 0 || value > 9.0e15 || value != (double)(int64_t)value)
            return shard_error_set(err, SHARD_ERR_FORMAT,
                                   "%s: tensor %s: shape[%d] is not a non-negative integer",
                                   path, name, d);
        entry->shape[d] = (int64_t)value;
        if (shard_mul_overflows(*numel, (size_t)value, numel))
            return shard_error_set(err, SHARD_ERR_FORMAT, "%s: tensor %s: shape overflows",
                                   path, name);
    }
    return SHARD_OK;
}

static shard_status_t parse_entry(const char *path, const cJSON *item, const char *data,
                                  size_t data_size, tensor_entry_t *entry, shard_error_t *err)
{
    const char *name = item->string;
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsObject(item) || !cJSON_IsString(dtype) || !cJSON_IsArray(offsets) ||
        cJSON_GetArraySize(offsets) != 2)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "%s: tensor %s: expected {dtype, shape, data_offsets: [begin, end]}",
                               path, name);
    if (!dtype_from_name(dtype->valuestring, &entry->dtype))
        return shard_error_set(err, SHARD_ERR_FORMAT, "%s: tensor %s: unknown dtype \"%s\"",
                               path, name, dtype->valuestring);
    size_t numel = 0, nbytes = 0;
    shard_status_t status = parse_shape(path, name, cJSON_GetObjectItemCaseSensitive(item, "shape"),
                                        entry, &numel, err);
    if (status)
        return status;
    if (shard_mul_overflows(numel, tensor_dtype_size(entry->dtype), &nbytes))
        return shard_error_set(err, SHARD_ERR_FORMAT, "%s: tensor %s: size overflows", path, name);
    const cJSON *begin = cJSON_GetArrayItem(offsets, 0), *end = cJSON_GetArrayItem(offsets, 1);
    double b = cJSON_IsNumber(begin) ? begin->valuedouble : -1.0;
    double e = cJSON_IsNumber(end) ? end->valuedouble : -1.0;
    if (b < 0 || e < b || e > (double)data_size)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "%s: tensor %s: data_offsets [%.0f, %.0f] outside the data block "
                               "of %zu bytes", path, name, b, e, data_size);
    if ((size_t)(e - b) != nbytes)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "%s: tensor %s: data_offsets span %.0f bytes, shape and dtype "
                               "need %zu", path, name, e - b, nbytes);
    entry->name = strdup(name);
    if (!entry->name)
        return shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
    entry->data = data + (size_t)b;
    entry->resolved = true;
    entry->nbytes = nbytes;
    return SHARD_OK;
}

static shard_status_t parse_header(tensor_file_t *file, const char *header, size_t header_len,
                                   const char *data, size_t data_size, shard_error_t *err)
{
    cJSON *root = cJSON_ParseWithLength(header, header_len);
    shard_status_t status = SHARD_OK;
    if (!cJSON_IsObject(root)) {
        status = shard_error_set(err, SHARD_ERR_FORMAT, "%s: header is not a JSON object",
                                 file->path);
        goto done;
    }
    file->entries = calloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *file->entries);
    if (!file->entries) {
        status = shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0)
            continue;
        status = parse_entry(file->path, item, data, data_size, &file->entries[file->count], err);
        if (status)
            goto done;
        file->count++;
    }
done:
    cJSON_Delete(root);
    return status;
}

/* Header and offsets of the size bytes of a safetensors file (the mapping,
 * or a borrowed image); the entries point into them. */
static shard_status_t parse_bytes(tensor_file_t *file, const unsigned char *bytes, size_t size,
                                  shard_error_t *err)
{
    if (size < 8)
        return shard_error_set(err, SHARD_ERR_FORMAT, "%s: %zu bytes, too short for a "
                               "safetensors header", file->path, size);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | bytes[i];
    if (header_len > SAFETENSORS_MAX_HEADER || header_len > size - 8)
        return shard_error_set(err, SHARD_ERR_FORMAT, "%s: header length %llu does not fit in "
                               "the file of %zu bytes", file->path,
                               (unsigned long long)header_len, size);
    const char *data = (const char *)bytes + 8 + header_len;
    return parse_header(file, (const char *)bytes + 8, (size_t)header_len, data,
                        size - 8 - (size_t)header_len, err);
}

tensor_file_t *tensor_file_open_safetensors(const char *path, shard_error_t *err)
{
    tensor_file_t *file = calloc(1, sizeof *file);
    int fd = -1;
    if (!file || !(file->path = strdup(path))) {
        shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    file->release = release_mapping;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        shard_error_set(err, SHARD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    if (st.st_size < 8) {
        shard_error_set(err, SHARD_ERR_FORMAT, "%s: %lld bytes, too short for a safetensors "
                        "header", path, (long long)st.st_size);
        goto fail;
    }
    file->backing_size = (size_t)st.st_size;
    file->backing = mmap(NULL, file->backing_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file->backing == MAP_FAILED) {
        file->backing = NULL;
        shard_error_set(err, SHARD_ERR_IO, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    if (parse_bytes(file, file->backing, file->backing_size, err))
        goto fail;
    close(fd);
    return file;
fail:
    if (fd >= 0)
        close(fd);
    tensor_file_destroy(&file);
    return NULL;
}

tensor_file_t *tensor_file_open_safetensors_image(const char *path, const uint8_t *data,
                                                  size_t size, shard_error_t *err)
{
    tensor_file_t *file = calloc(1, sizeof *file);
    if (!file || !(file->path = strdup(path))) {
        shard_error_set(err, SHARD_ERR_NOMEM, "out of memory");
        tensor_file_destroy(&file);
        return NULL;
    }
    if (parse_bytes(file, data, size, err))
        tensor_file_destroy(&file);
    return file;
}
