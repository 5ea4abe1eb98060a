/* sharded.c: a folder of weight shards behind an index
 * (model.safetensors.index.json or pytorch_model.bin.index.json, whose
 * "weight_map" gives the shard file of every tensor name).
 *
 * The index alone is read at open: entries are its names, unresolved. A
 * shard is opened the first time one of its tensors is fetched, so a
 * pipeline stage opens only the shards that hold its tensors. Every shard
 * file the index names must exist at open, so a missing one is reported
 * before any work. */
#include "checkpoint_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* An index is a few hundred bytes per tensor. */
enum { SHARDED_INDEX_MAX = 64 * 1024 * 1024, SHARDED_PATH_MAX = 4096 };

typedef struct {
    char *file;            /* shard file name, as the index writes it */
    tensor_file_t *opened; /* NULL until one of its tensors is fetched */
} shard_file_t;

typedef struct {
    char dir[SHARDED_PATH_MAX];
    shard_file_t *files;
    size_t n_files;
    size_t *entry_file; /* [count]: the shard of each entry */
} sharded_t;

static void sharded_release(tensor_file_t *self)
{
    sharded_t *s = self->backing;
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_files; i++) {
        free(s->files[i].file);
        tensor_file_destroy(&s->files[i].opened);
    }
    free(s->files);
    free(s->entry_file);
    free(s);
    self->backing = NULL;
}

/* The shard reader of a file name: safetensors or torch. */
static tensor_file_t *open_shard(const char *path, shard_error_t *err)
{
    size_t len = strlen(path);
    static const char ext[] = ".safetensors";
    if (len >= sizeof ext - 1 && strcmp(path + len - (sizeof ext - 1), ext) == 0)
        return tensor_file_open_safetensors(path, err);
    return tensor_file_open_torch(path, err);
}

static shard_status_t sharded_resolve(tensor_file_t *self, size_t index, shard_error_t *err)
{
    sharded_t *s = self->backing;
    shard_file_t *f = &s->files[s->entry_file[index]];
    tensor_entry_t *e = &self->entries[index];
    if (f->opened == NULL) {
        char path[SHARDED_PATH_MAX];
        shard_status_t st = shard_path_join(path, sizeof path, s->dir, f->file, err);
        if (st != SHARD_OK)
            return st;
        f->opened = open_shard(path, err);
        if (f->opened == NULL)
            return err != NULL && err->code != SHARD_OK ? err->code : SHARD_ERR_FORMAT;
    }
    const tensor_entry_t *in = tensor_file_find(f->opened, e->name);
    if (in == NULL)
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_sharded: %s: tensor %s: the index puts it "
                               "in %s, which does not hold it", self->path, e->name, f->file);
    e->dtype = in->dtype;
    e->ndim = in->ndim;
    memcpy(e->shape, in->shape, sizeof e->shape);
    e->nbytes = in->nbytes;
    e->resolved = true;
    return SHARD_OK;
}

static shard_status_t sharded_load(tensor_file_t *self, size_t index, shard_error_t *err)
{
    sharded_t *s = self->backing;
    tensor_file_t *shard = s->files[s->entry_file[index]].opened;
    const tensor_entry_t *in = NULL;
    shard_status_t st = tensor_file_fetch(shard, self->entries[index].name, &in, err);
    if (st == SHARD_OK && in != NULL) {
        self->entries[index].data = in->data;
        self->entries[index].held = in->held;
    }
    return st;
}

/* A shard file name stays inside the folder: no '/', not "." or "..". */
static bool plain_name(const char *name)
{
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0
           && strcmp(name, "..") != 0;
}

/* The shard table index of file, adding it (and checking it exists). */
static shard_status_t shard_of(tensor_file_t *tf, sharded_t *s, const char *tensor,
                               const char *file, size_t *out, shard_error_t *err)
{
    for (size_t i = 0; i < s->n_files; i++)
        if (strcmp(s->files[i].file, file) == 0) {
            *out = i;
            return SHARD_OK;
        }
    char path[SHARDED_PATH_MAX];
    struct stat st;
    if (!plain_name(file))
        return shard_error_set(err, SHARD_ERR_FORMAT,
                               "tensor_file_open_sharded: %s: tensor %s: shard file \"%s\" "
                               "is not a file name inside the folder", tf->path, tensor, file);
    shard_status_t joined = shard_path_join(path, sizeof path, s->dir, file, err);
    if (joined != SHARD_OK)
        return joined;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return shard_error_set(err, SHARD_ERR_IO,
                               "tensor_file_open_sharded: %s: tensor %s: shard file %s named "
                               "in the index is missing", tf->path, tensor, file);
    shard_file_t *files = realloc(s->files, (s->n_files + 1) * sizeof *files);
    if (files == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_sharded: out of memory");
    s->files = files;
    files[s->n_files] = (shard_file_t){strdup(file), NULL};
    if (files[s->n_files].file == NULL)
        return shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_sharded: out of memory");
    *out = s->n_files++;
    return SHARD_OK;
}

/* Fills tf's entries from the index text: {"weight_map": {name: file}}. */
shard_status_t tensor_file_sharded_parse(tensor_file_t *tf, const char *text, size_t len,
                                         shard_error_t *err)
{
    sharded_t *s = tf->backing;
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    shard_status_t st = SHARD_OK;
    if (!cJSON_IsObject(map)) {
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_sharded: %s: %s, "
                             "expected an object with a \"weight_map\" object", tf->path,
                             cJSON_IsObject(root) ? "no weight_map object" : "not JSON");
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(map);
    tf->entries = calloc(n + 1, sizeof *tf->entries);
    s->entry_file = calloc(n + 1, sizeof *s->entry_file);
    if (tf->entries == NULL || s->entry_file == NULL) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_sharded: out of memory");
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        if (!cJSON_IsString(item)) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_sharded: %s: tensor "
                                 "%s: shard is not a file name string", tf->path, item->string);
            goto done;
        }
        if (tensor_file_find(tf, item->string) != NULL) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_sharded: %s: tensor "
                                 "%s appears twice in weight_map", tf->path, item->string);
            goto done;
        }
        st = shard_of(tf, s, item->string, item->valuestring, &s->entry_file[tf->count], err);
        if (st != SHARD_OK)
            goto done;
        tf->entries[tf->count].name = strdup(item->string);
        if (tf->entries[tf->count].name == NULL) {
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_sharded: out of memory");
            goto done;
        }
        tf->count++;
    }
done:
    cJSON_Delete(root);
    return st;
}

/* text: the index's bytes, or NULL to read them from index_path. */
static tensor_file_t *open_index(const char *index_path, const char *text, size_t len,
                                 shard_error_t *err)
{
    tensor_file_t *tf = calloc(1, sizeof *tf);
    sharded_t *s = calloc(1, sizeof *s);
    char *owned_text = NULL;
    if (tf == NULL || s == NULL || (tf->path = strdup(index_path)) == NULL) {
        free(s);
        free(tf);
        shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_sharded: out of memory");
        return NULL;
    }
    tf->backing = s;
    tf->release = sharded_release;
    tf->resolve = sharded_resolve;
    tf->load = sharded_load;
    /* The shards live beside the index. */
    const char *slash = strrchr(index_path, '/');
    size_t dir_len = slash == NULL ? 1 : (size_t)(slash - index_path);
    snprintf(s->dir, sizeof s->dir, "%.*s", (int)dir_len, slash == NULL ? "." : index_path);
    if (text == NULL
        && shard_read_file(index_path, SHARDED_INDEX_MAX, &owned_text, &len, err) != SHARD_OK)
        tensor_file_destroy(&tf);
    else if (tensor_file_sharded_parse(tf, text != NULL ? text : owned_text, len, err) != SHARD_OK)
        tensor_file_destroy(&tf);
    free(owned_text);
    return tf;
}

tensor_file_t *tensor_file_open_sharded(const char *index_path, shard_error_t *err)
{
    return open_index(index_path, NULL, 0, err);
}

tensor_file_t *tensor_file_open_sharded_text(const char *index_path, const char *text,
                                             size_t len, shard_error_t *err)
{
    return open_index(index_path, text, len, err);
}
