/* shard_checkpoint.h: XLM checkpoints on disk: config.json and the weight
 * files, as a list of named tensors.
 *
 * Owns the file formats (safetensors, torch's pytorch_model.bin) and the
 * config's fields. Knows nothing of how the weights are used: no heads, no
 * kernels, no BLAS. May include shard_common.h only.
 */
#ifndef XLM_SHARD_CHECKPOINT_H
#define XLM_SHARD_CHECKPOINT_H

#include "shard_common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- config */

typedef enum {
    SHARD_SUMMARY_FIRST = 0,
    SHARD_SUMMARY_LAST,
    SHARD_SUMMARY_MEAN,
    SHARD_SUMMARY_CLS_INDEX,
    SHARD_SUMMARY_COUNT_
} shard_summary_type_t;

typedef enum {
    SHARD_ACT_NONE = 0, /* identity ("linear" or null) */
    SHARD_ACT_TANH,
    SHARD_ACT_RELU,
    SHARD_ACT_GELU,
    SHARD_ACT_SIGMOID,
    SHARD_ACT_COUNT_
} shard_activation_t;

enum {
    SHARD_MAX_LABELS = 4096,
    SHARD_ARCHITECTURE_NAME_MAX = 64
};

typedef struct {
    int64_t vocab_size;
    int64_t emb_dim;
    int64_t hidden_dim; /* FFN inner size: 4 * emb_dim */
    int64_t n_layers;
    int64_t n_heads;
    int64_t n_langs;
    int64_t max_position_embeddings;
    bool use_lang_emb;
    bool causal;
    bool gelu_activation; /* false: ReLU */
    bool sinusoidal_embeddings;
    double layer_norm_eps;
    int64_t pad_index, eos_index, bos_index, unk_index, mask_index;

    shard_summary_type_t summary_type;
    bool summary_use_proj;
    shard_activation_t summary_activation; /* applied after the projection */
    bool summary_proj_to_labels;
    int64_t start_n_top, end_n_top;
    int64_t num_labels;

    /* The first class of "architectures" (HF's name, e.g. "XLMWithLMHeadModel");
     * "" when the config names none. The engine maps it to a head. */
    char architecture[SHARD_ARCHITECTURE_NAME_MAX];
    char lang_names[SHARD_MAX_LANGS][SHARD_LANG_NAME_MAX]; /* id -> code; "" if unnamed */
} shard_config_t;

/* Parses a config.json file. */
shard_status_t shard_config_load(const char *path, shard_config_t *config,
                                 shard_error_t *err);
/* Writes config as a config.json that shard_config_load reads back to the
 * same values (HF's XLMConfig keys). */
shard_status_t shard_config_save(const shard_config_t *config, const char *path,
                                 shard_error_t *err);
/* Language id of a code, or -1. */
int64_t shard_config_lang_id(const shard_config_t *config, const char *code);

/* ---------------------------------------------------------------- tensor files */

typedef enum {
    TENSOR_F32 = 0,
    TENSOR_F16,
    TENSOR_BF16,
    TENSOR_F64,
    TENSOR_I64,
    TENSOR_I32,
    TENSOR_I8,
    TENSOR_U8,
    TENSOR_BOOL,
    TENSOR_DTYPE_COUNT_
} tensor_dtype_t;

const char *tensor_dtype_name(tensor_dtype_t dtype);
size_t tensor_dtype_size(tensor_dtype_t dtype);

enum { TENSOR_MAX_DIMS = 8 };

/* One tensor as the engine names and lays it out (after the reader's
 * translation hook). Readers list entries at open and load bytes on demand:
 * data is NULL until tensor_file_fetch has loaded the entry, so a pipeline
 * stage reads or maps only the tensors it fetches. Loaded data is a
 * borrowed view of contiguous row-major bytes owned by the tensor file. */
typedef struct {
    char *name;
    tensor_dtype_t dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const void *data; /* NULL until loaded; then never NULL */
    size_t nbytes;    /* = numel * dtype size, checked */
    /* The file stores the 2-d transpose of shape (TF's [in, out] kernels);
     * fetch hands out the transposed copy. */
    bool transpose;
    /* dtype, shape and nbytes are known: false only for entries of a
     * sharded folder whose shard has not been opened yet. */
    bool resolved;
    /* The reader's own index of the entry, kept when translation renames,
     * drops or moves entries. */
    size_t slot;
    /* data lies in memory the reader allocated (a storage read or copied
     * for alignment, a dataset, a transposed copy), not in a file mapping:
     * the engine cannot hand its pages back (only a discard hook frees it). */
    bool held;
} tensor_entry_t;

typedef struct tensor_file tensor_file_t;

struct tensor_file {
    char *path;
    size_t count;
    tensor_entry_t *entries;
    /* Reader hooks, each optional. resolve fills dtype and shape of entry
     * index (opening what holds it); load sets its data. */
    shard_status_t (*resolve)(tensor_file_t *self, size_t index, shard_error_t *err);
    shard_status_t (*load)(tensor_file_t *self, size_t index, shard_error_t *err);
    /* Frees what a reader loaded for entry index (data back to NULL, so a
     * later fetch loads it again); NULL: the reader holds nothing it can
     * give back (mapped files, shared storages). */
    void (*discard)(tensor_file_t *self, size_t index);
    /* Reader-specific teardown of what backs the entries' data. */
    void (*release)(tensor_file_t *self);
    void *backing;
    size_t backing_size;
    void **copies; /* transposed copies made by fetch, owned */
    size_t n_copies;
};

/* Opens model.safetensors: mmap, header checked (JSON, dtypes, shapes,
 * offsets inside the data block, no overlaps needed). Data is set at open
 * (a view into the mapping; untouched pages are never read). */
tensor_file_t *tensor_file_open_safetensors(const char *path, shard_error_t *err);

/* Opens pytorch_model.bin or a .pth: torch's zip archive (torch >= 1.6) or
 * its legacy stream of pickles (chosen by the file's first bytes). Storages
 * are read (zip) or mapped (legacy) when a tensor of theirs is fetched;
 * tensors that share a storage point into the same bytes. */
tensor_file_t *tensor_file_open_torch(const char *path, shard_error_t *err);

/* Opens a sharded folder by its index (model.safetensors.index.json or
 * pytorch_model.bin.index.json): names at open, each shard opened when one
 * of its tensors is fetched. */
tensor_file_t *tensor_file_open_sharded(const char *index_path, shard_error_t *err);

/* Opens tf_model.h5 (Keras 2 HDF5 weights of HF's TF classes) with
 * libhdf5; names and layouts translated to PyTorch's. */
tensor_file_t *tensor_file_open_h5(const char *path, shard_error_t *err);

/* Finds entry name, resolves and loads it (applying the transpose); *out
 * is NULL, with SHARD_OK, when the file has no such entry. */
shard_status_t tensor_file_fetch(tensor_file_t *file, const char *name,
                                 const tensor_entry_t **out, shard_error_t *err);

/* The name/layout translation hook: gives the engine's name of a stored
 * tensor and whether the stored layout is the 2-d transpose of the
 * engine's; false drops the entry (a duplicate or a non-weight). */
typedef bool (*tensor_translate_fn)(const char *stored, char *name, size_t name_size,
                                    bool *transpose);

/* Renames every entry with fn and flips the shape of the transposed ones. */
shard_status_t tensor_file_translate(tensor_file_t *file, tensor_translate_fn fn,
                                     shard_error_t *err);

/* Tells the reader the engine holds its own copy of entry name now (Q, K
 * and V fused into one matrix), so the bytes it loaded may go: a stage then
 * holds its share once. A no-op for readers without a discard hook and for
 * names the file does not have. */
void tensor_file_discard(tensor_file_t *file, const char *name);

/* Frees entries and calls release; accepts NULL. */
void tensor_file_destroy(tensor_file_t **self_p);

/* Finds an entry by exact name, or NULL; its data may not be loaded yet. */
const tensor_entry_t *tensor_file_find(const tensor_file_t *file, const char *name);

/* ---------------------------------------------------------------- checkpoint folders */

/* Opens the weights of a checkpoint folder: the first row of the format
 * table (formats.c) whose file name is present and whose probe accepts it.
 * path gets the file opened, for messages. */
tensor_file_t *shard_checkpoint_open_weights(const char *dir, char *path, size_t path_size,
                                             shard_error_t *err);

/* The config of a checkpoint folder: config.json, or, without one, the
 * params of an original XLM checkpoint's .pth. */
shard_status_t shard_checkpoint_load_config(const char *dir, shard_config_t *config,
                                            shard_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* XLM_SHARD_CHECKPOINT_H */
