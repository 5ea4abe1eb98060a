/* formats.c: the table of weight formats a checkpoint folder may hold, and
 * the one function that picks a row. Adding a format is one reader file
 * plus one row here. Rows are tried in order: the first whose file is in
 * the folder and whose probe accepts it opens the weights. */
#include "checkpoint_internal.h"

#include <dirent.h>
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *file; /* name inside the folder, or a pattern one file matches */
    /* Whether path is this format (its first bytes); NULL: the name says. */
    bool (*probe)(const char *path);
    tensor_file_t *(*open)(const char *path, shard_error_t *err);
} checkpoint_format_t;

static const checkpoint_format_t checkpoint_formats[] = {
    {"model.safetensors", NULL, tensor_file_open_safetensors},
    {"pytorch_model.bin", NULL, tensor_file_open_torch},
    {"model.safetensors.index.json", NULL, tensor_file_open_sharded},
    {"pytorch_model.bin.index.json", NULL, tensor_file_open_sharded},
    {"tf_model.h5", NULL, tensor_file_open_h5},
    {"*.pth", NULL, tensor_file_open_torch}, /* original XLM checkpoints */
};

enum { N_FORMATS = sizeof checkpoint_formats / sizeof checkpoint_formats[0] };

/* The file of row f in dir, into path: false when there is none. A
 * pattern must match exactly one file (two .pth files are ambiguous). */
static bool find_file(const char *dir, const char *file, char *path, size_t size,
                      shard_error_t *err, shard_status_t *st)
{
    struct stat info;
    *st = SHARD_OK;
    if (strchr(file, '*') == NULL) {
        *st = shard_path_join(path, size, dir, file, err);
        return *st == SHARD_OK && stat(path, &info) == 0;
    }
    DIR *listing = opendir(dir);
    if (listing == NULL)
        return false;
    int matches = 0;
    char first[1024] = "";
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL) {
        if (entry->d_name[0] == '.' || fnmatch(file, entry->d_name, 0) != 0)
            continue;
        if (matches++ == 0)
            snprintf(first, sizeof first, "%s", entry->d_name);
        else
            *st = shard_error_set(err, SHARD_ERR_FORMAT, "shard_checkpoint_open_weights: %s: "
                                  "%s and %s both match %s; expected one", dir, first,
                                  entry->d_name, file);
    }
    closedir(listing);
    if (*st == SHARD_OK && matches == 1)
        *st = shard_path_join(path, size, dir, first, err);
    return *st == SHARD_OK && matches == 1;
}

tensor_file_t *shard_checkpoint_open_weights(const char *dir, char *path, size_t path_size,
                                             shard_error_t *err)
{
    shard_status_t st = SHARD_OK;
    for (size_t i = 0; i < N_FORMATS; i++) {
        const checkpoint_format_t *f = &checkpoint_formats[i];
        bool found = find_file(dir, f->file, path, path_size, err, &st);
        if (st != SHARD_OK)
            return NULL;
        if (!found || (f->probe != NULL && !f->probe(path)))
            continue;
        return f->open(path, err);
    }
    char names[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < N_FORMATS && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? " or " : "",
                                 checkpoint_formats[i].file);
    shard_error_set(err, SHARD_ERR_IO,
                    "shard_checkpoint_open_weights: %s: no %s in the checkpoint folder",
                    dir, names);
    return NULL;
}

shard_status_t shard_checkpoint_load_config(const char *dir, shard_config_t *config,
                                            shard_error_t *err)
{
    char path[4096];
    shard_status_t st = SHARD_OK;
    if (find_file(dir, "config.json", path, sizeof path, err, &st) || st != SHARD_OK)
        return st != SHARD_OK ? st : shard_config_load(path, config, err);
    if (find_file(dir, "*.pth", path, sizeof path, err, &st) || st != SHARD_OK)
        return st != SHARD_OK ? st : xlmorig_load_config(path, config, err);
    /* The message config.json's reader gives for a missing file. */
    if (shard_path_join(path, sizeof path, dir, "config.json", err))
        return err->code;
    return shard_config_load(path, config, err);
}
