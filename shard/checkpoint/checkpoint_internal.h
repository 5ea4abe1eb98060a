/* checkpoint_internal.h: what the readers of shard/checkpoint expose to
 * each other and to their fuzz targets, beyond shard_checkpoint.h. */
#ifndef XLM_SHARD_CHECKPOINT_INTERNAL_H
#define XLM_SHARD_CHECKPOINT_INTERNAL_H

#include "shard_checkpoint.h"
#include "unpickle.h"

#include <cjson/cJSON.h>

/* The readers over a file's bytes already in memory (data borrowed: it
 * must outlive the tensor file; path only names the file in messages).
 * The path-taking opens map or read the file; the fuzz targets feed these
 * directly, so no input goes through a temporary file. */
tensor_file_t *tensor_file_open_safetensors_image(const char *path, const uint8_t *data,
                                                  size_t size, shard_error_t *err);
tensor_file_t *tensor_file_open_torch_image(const char *path, const uint8_t *data, size_t size,
                                            shard_error_t *err);
/* Unlike tensor_file_open_h5, the image is read in this process, without
 * the child that contains libhdf5's own crashes: the fuzz target wants to
 * see every crash (and sorts libhdf5's from ours). */
tensor_file_t *tensor_file_open_h5_image(const char *path, const uint8_t *data, size_t size,
                                         shard_error_t *err);
/* An index whose text is given; its shard files are still files beside
 * index_path. */
tensor_file_t *tensor_file_open_sharded_text(const char *index_path, const char *text,
                                             size_t len, shard_error_t *err);

/* Fills tf's entries (tf->backing a sharded reader's, set up by
 * tensor_file_open_sharded) from the text of an index file:
 * {"weight_map": {tensor name: shard file name}}. Every shard file named
 * must exist beside the index. */
shard_status_t tensor_file_sharded_parse(tensor_file_t *tf, const char *text, size_t len,
                                         shard_error_t *err);

/* The config of a config.json-shaped object (HF's keys; path names it in
 * messages), with config.json's checks and XLMConfig's defaults. */
shard_status_t shard_config_from_json(const cJSON *root, const char *path,
                                      shard_config_t *config, shard_error_t *err);

/* Refuses control bytes JSON does not allow (outside strings: anything
 * below 0x20 but tab, newline, CR; inside: any), naming the key. */
shard_status_t shard_config_check_bytes(const char *text, size_t size, const char *path,
                                        shard_error_t *err);

/* Maps a legacy torch file and runs its pickles up to the saved object
 * (*root, in u's arena). *map and *size get the mapping, which the caller
 * unmaps after pk_unpickler_free. */
shard_status_t torch_legacy_root(const char *path, pk_unpickler_t *u, uint8_t **map,
                                 size_t *size, const pk_value_t **root, shard_error_t *err);

/* The config of an original XLM checkpoint (a .pth with model, params and
 * dico_*): params mapped to HF's config keys. */
shard_status_t xlmorig_load_config(const char *pth, shard_config_t *config, shard_error_t *err);

#endif /* XLM_SHARD_CHECKPOINT_INTERNAL_H */
