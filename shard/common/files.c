/* files.c: file reading and paths, with every size checked. */
#include "shard_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

shard_status_t shard_read_file(const char *path, size_t max_bytes, char **text_out,
                               size_t *size_out, shard_error_t *err)
{
    *text_out = NULL;
    *size_out = 0;
    FILE *file = fopen(path, "rb");
    if (!file)
        return shard_error_set(err, SHARD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t capacity = 4096, size = 0;
    char *text = malloc(capacity + 1);
    while (text) {
        size_t got = fread(text + size, 1, capacity - size, file);
        size += got;
        if (size < capacity)
            break;
        if (capacity >= max_bytes) {
            free(text);
            fclose(file);
            return shard_error_set(err, SHARD_ERR_FORMAT, "%s is larger than %zu bytes", path,
                                   max_bytes);
        }
        capacity *= 2;
        char *grown = realloc(text, capacity + 1);
        if (!grown) {
            free(text);
            text = NULL;
        } else {
            text = grown;
        }
    }
    bool failed = text && ferror(file);
    fclose(file);
    if (!text)
        return shard_error_set(err, SHARD_ERR_NOMEM, "out of memory reading %s", path);
    if (failed) {
        free(text);
        return shard_error_set(err, SHARD_ERR_IO, "error reading %s", path);
    }
    text[size] = '\0';
    *text_out = text;
    *size_out = size;
    return SHARD_OK;
}

shard_status_t shard_path_join(char *out, size_t size, const char *dir, const char *name,
                               shard_error_t *err)
{
    size_t dir_len = strlen(dir);
    const char *sep = (dir_len && dir[dir_len - 1] == '/') ? "" : "/";
    int written = snprintf(out, size, "%s%s%s", dir, sep, name);
    if (written < 0 || (size_t)written >= size)
        return shard_error_set(err, SHARD_ERR_IO, "path %s/%s is too long", dir, name);
    return SHARD_OK;
}
