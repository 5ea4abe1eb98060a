/* formats.c: the table of weight formats a checkpoint folder may hold, and
 * the one function that picks a row. Adding a format is one reader file
 * plus one row here. Rows are tried in order: the first whose file is in
 * the folder and whose probe accepts it opens the weights. */
#include "shard_checkpoint.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *file; /* name inside the folder */
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
};

enum { N_FORMATS = sizeof checkpoint_formats / sizeof checkpoint_formats[0] };

tensor_file_t *shard_checkpoint_open_weights(const char *dir, char *path, size_t path_size,
                                             shard_error_t *err)
{
    struct stat st;
    for (size_t i = 0; i < N_FORMATS; i++) {
        const checkpoint_format_t *f = &checkpoint_formats[i];
        if (shard_path_join(path, path_size, dir, f->file, err))
            return NULL;
        if (stat(path, &st) != 0 || (f->probe != NULL && !f->probe(path)))
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
