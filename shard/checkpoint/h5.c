/* h5.c: tf_model.h5, the Keras 2 HDF5 weights HF's TF classes write
 * (TFPreTrainedModel.save_pretrained), read with libhdf5.
 *
 * Layout: the root attribute layer_names lists the top-level layers; each
 * layer is a group whose attribute weight_names lists its weights, each the
 * path of a float32 dataset inside the group, named like
 * "tfxlm_with_lm_head_model/transformer/attentions_._0/q_lin/kernel:0".
 * Either list may be split into <name>0, <name>1, ... when large (Keras
 * splits attributes past 64 KiB). Datasets are listed at open (name, shape,
 * type checked) and read when fetched.
 *
 * The translation hook turns TF's names into the PyTorch names the engine
 * binds (modeling_tf_pytorch_utils.py's rules): drop the model's scope and
 * ":0", "_._" and "/" become ".", kernel becomes weight (stored [in, out],
 * so transposed), gamma/beta/embeddings become weight/bias/weight. */
#include "shard_checkpoint.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names are paths of a few components; Keras never writes longer ones. */
enum { H5_NAME_MAX = 1024, H5_SPLIT_MAX = 1024 };

typedef struct {
    hid_t file;
    char **paths;   /* [n_slots]: "<layer>/<weight name>", the dataset */
    void **buffers; /* [n_slots]: read on fetch, owned */
    size_t n_slots; /* entries listed, before translation; their slots */
} h5_backing_t;

typedef struct {
    char **items;
    size_t count;
} h5_names_t;

static void names_free(h5_names_t *n)
{
    for (size_t i = 0; i < n->count; i++)
        free(n->items[i]);
    free(n->items);
    n->items = NULL;
    n->count = 0;
}

static void h5_release(tensor_file_t *self)
{
    h5_backing_t *b = self->backing;
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n_slots; i++) {
        free(b->paths[i]);
        free(b->buffers[i]);
    }
    free(b->paths);
    free(b->buffers);
    if (b->file >= 0)
        H5Fclose(b->file);
    free(b);
    self->backing = NULL;
}

/* Appends the strings of attribute attr (a 1-d list of variable- or
 * fixed-length strings; an empty list of any type) to names. */
static shard_status_t read_string_attr(const char *path, hid_t obj, const char *where,
                                       hid_t attr, h5_names_t *names, shard_error_t *err)
{
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    shard_status_t st = SHARD_OK;
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    (void)obj;
    if (n == 0)
        goto done;
    if (type < 0 || n < 0 || rank > 1 || H5Tget_class(type) != H5T_STRING) {
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: attribute %s is "
                             "not a list of strings", path, where);
        goto done;
    }
    char **grown = realloc(names->items, (names->count + (size_t)n) * sizeof *grown);
    if (grown == NULL) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        goto done;
    }
    names->items = grown;
    if (H5Tis_variable_str(type) > 0) {
        char **raw = calloc((size_t)n, sizeof *raw);
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        if (raw == NULL || H5Aread(attr, mem, raw) < 0) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: cannot read "
                                 "attribute %s", path, where);
            /* A read that fails part way has converted some strings
             * already (found by fuzz_h5): they are libhdf5's to free. */
            for (hssize_t i = 0; raw != NULL && i < n; i++)
                if (raw[i] != NULL)
                    H5free_memory(raw[i]);
        } else {
            for (hssize_t i = 0; i < n && st == SHARD_OK; i++) {
                names->items[names->count] = strdup(raw[i] != NULL ? raw[i] : "");
                if (names->items[names->count] == NULL)
                    st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
                else
                    names->count++;
            }
            H5Dvlen_reclaim(mem, space, H5P_DEFAULT, raw);
        }
        free(raw);
        H5Tclose(mem);
    } else {
        size_t width = H5Tget_size(type);
        char *raw = width == 0 || width > H5_NAME_MAX ? NULL : calloc((size_t)n, width);
        if (raw == NULL || H5Aread(attr, type, raw) < 0) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: cannot read "
                                 "attribute %s (strings of %zu bytes)", path, where, width);
        } else {
            for (hssize_t i = 0; i < n && st == SHARD_OK; i++) {
                names->items[names->count] = strndup(raw + (size_t)i * width, width);
                if (names->items[names->count] == NULL)
                    st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
                else
                    names->count++;
            }
        }
        free(raw);
    }
done:
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    return st;
}

/* The list attribute base of obj, whole or split into base0, base1, ... */
static shard_status_t read_names(const char *path, hid_t obj, const char *obj_name,
                                 const char *base, h5_names_t *names, shard_error_t *err)
{
    char where[H5_NAME_MAX + 64];
    if (H5Aexists(obj, base) > 0) {
        hid_t attr = H5Aopen(obj, base, H5P_DEFAULT);
        snprintf(where, sizeof where, "%s of %s", base, obj_name);
        shard_status_t st = read_string_attr(path, obj, where, attr, names, err);
        H5Aclose(attr);
        return st;
    }
    int part = 0;
    for (; part < H5_SPLIT_MAX; part++) {
        char split[64];
        snprintf(split, sizeof split, "%s%d", base, part);
        if (H5Aexists(obj, split) <= 0)
            break;
        hid_t attr = H5Aopen(obj, split, H5P_DEFAULT);
        snprintf(where, sizeof where, "%s of %s", split, obj_name);
        shard_status_t st = read_string_attr(path, obj, where, attr, names, err);
        H5Aclose(attr);
        if (st != SHARD_OK)
            return st;
    }
    if (part == 0)
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: %s has no "
                               "attribute %s (is this a Keras weights file?)", path, obj_name,
                               base);
    return SHARD_OK;
}

/* Lists one dataset as an entry: float32, at most TENSOR_MAX_DIMS dims. */
static shard_status_t add_entry(tensor_file_t *tf, h5_backing_t *b, const char *layer,
                                const char *weight, shard_error_t *err)
{
    char dpath[2 * H5_NAME_MAX + 2];
    snprintf(dpath, sizeof dpath, "%s/%s", layer, weight);
    if (H5Lexists(b->file, layer, H5P_DEFAULT) <= 0
        || H5Oexists_by_name(b->file, dpath, H5P_DEFAULT) <= 0)
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: "
                               "weight_names of %s lists it, but there is no dataset %s",
                               tf->path, weight, layer, dpath);
    hid_t d = H5Dopen2(b->file, dpath, H5P_DEFAULT);
    hid_t type = d < 0 ? -1 : H5Dget_type(d), space = d < 0 ? -1 : H5Dget_space(d);
    int ndim = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    hsize_t dims[TENSOR_MAX_DIMS];
    shard_status_t st = SHARD_OK;
    tensor_entry_t *e = &tf->entries[tf->count];
    if (d < 0 || type < 0 || space < 0)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: "
                             "%s is not a readable dataset", tf->path, weight, dpath);
    else if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: "
                             "dataset of class %d and %zu-byte elements, expected float32",
                             tf->path, weight, (int)H5Tget_class(type), H5Tget_size(type));
    else if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: "
                             "%d dimensions, expected 0 to %d", tf->path, weight, ndim,
                             TENSOR_MAX_DIMS);
    size_t numel = 1;
    if (st == SHARD_OK) {
        H5Sget_simple_extent_dims(space, dims, NULL);
        for (int i = 0; i < ndim && st == SHARD_OK; i++) {
            e->shape[i] = (int64_t)dims[i];
            if (dims[i] > INT64_MAX || shard_mul_overflows(numel, (size_t)dims[i], &numel))
                st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor "
                                     "%s: shape overflows", tf->path, weight);
        }
    }
    if (st == SHARD_OK && shard_mul_overflows(numel, 4, &e->nbytes))
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: size "
                             "overflows", tf->path, weight);
    if (st == SHARD_OK) {
        e->name = strdup(weight);
        b->paths[tf->count] = strdup(dpath);
        if (e->name == NULL || b->paths[tf->count] == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        e->dtype = TENSOR_F32;
        e->ndim = ndim;
        e->resolved = true;
        e->slot = tf->count;
        tf->count++; /* destroy frees what was made */
        b->n_slots = tf->count;
    }
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    if (d >= 0)
        H5Dclose(d);
    return st;
}

static shard_status_t h5_load(tensor_file_t *self, size_t index, shard_error_t *err)
{
    h5_backing_t *b = self->backing;
    tensor_entry_t *e = &self->entries[index];
    const char *dpath = b->paths[e->slot];
    void *buf = malloc(e->nbytes > 0 ? e->nbytes : 1);
    hid_t d = buf == NULL ? -1 : H5Dopen2(b->file, dpath, H5P_DEFAULT);
    herr_t rc = d < 0 ? -1 : H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    if (d >= 0)
        H5Dclose(d);
    if (rc < 0) {
        free(buf);
        return shard_error_set(err, buf == NULL ? SHARD_ERR_NOMEM : SHARD_ERR_FORMAT,
                               "tensor_file_open_h5: %s: tensor %s: cannot read dataset %s",
                               self->path, e->name, dpath);
    }
    b->buffers[e->slot] = buf;
    e->data = buf;
    return SHARD_OK;
}

/* The translation hook of the module comment. Weight names that are not
 * "<model>/<path>:0" are dropped. */
static bool h5_translate(const char *stored, char *name, size_t size, bool *transpose)
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

static bool already_listed(const tensor_file_t *tf, const char *weight)
{
    return tensor_file_find(tf, weight) != NULL;
}

/* Every layer's weights; a weight listed twice (the LM head's tied copy of
 * the embeddings) is kept once, from its first layer. */
static shard_status_t list_weights(tensor_file_t *tf, h5_backing_t *b, shard_error_t *err)
{
    h5_names_t layers = {0}, all = {0};
    size_t *layer_of = NULL;
    shard_status_t st = read_names(tf->path, b->file, "/", "layer_names", &layers, err);
    for (size_t l = 0; l < layers.count && st == SHARD_OK; l++) {
        const char *layer = layers.items[l];
        if (layer[0] == '\0' || strchr(layer, '/') != NULL || H5Lexists(b->file, layer, H5P_DEFAULT) <= 0) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: layer \"%s\" "
                                 "of layer_names has no group", tf->path, layer);
            break;
        }
        hid_t g = H5Gopen2(b->file, layer, H5P_DEFAULT);
        size_t before = all.count;
        st = g < 0 ? shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: %s is "
                                     "not a group", tf->path, layer)
                   : read_names(tf->path, g, layer, "weight_names", &all, err);
        if (g >= 0)
            H5Gclose(g);
        size_t *grown = st == SHARD_OK ? realloc(layer_of, (all.count + 1) * sizeof *grown) : NULL;
        if (st == SHARD_OK && grown == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        if (grown != NULL) {
            layer_of = grown;
            for (size_t i = before; i < all.count; i++)
                layer_of[i] = l;
        }
    }
    if (st == SHARD_OK) {
        tf->entries = calloc(all.count + 1, sizeof *tf->entries);
        b->paths = calloc(all.count + 1, sizeof *b->paths);
        b->buffers = calloc(all.count + 1, sizeof *b->buffers);
        if (tf->entries == NULL || b->paths == NULL || b->buffers == NULL)
            st = shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
    }
    for (size_t i = 0; i < all.count && st == SHARD_OK; i++)
        if (!already_listed(tf, all.items[i]))
            st = add_entry(tf, b, layers.items[layer_of[i]], all.items[i], err);
    free(layer_of);
    names_free(&layers);
    names_free(&all);
    return st;
}

tensor_file_t *tensor_file_open_h5(const char *path, shard_error_t *err)
{
    tensor_file_t *tf = calloc(1, sizeof *tf);
    h5_backing_t *b = calloc(1, sizeof *b);
    if (tf == NULL || b == NULL || (tf->path = strdup(path)) == NULL) {
        free(tf);
        free(b);
        shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        return NULL;
    }
    b->file = -1;
    tf->backing = b;
    tf->release = h5_release;
    tf->load = h5_load;
    /* Errors are reported here, with the file and tensor; libhdf5's own
     * stack printing would only repeat them on stderr. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (H5Fis_hdf5(path) <= 0) {
        shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: not an HDF5 file", path);
        goto fail;
    }
    b->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (b->file < 0) {
        shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: cannot open %s", path);
        goto fail;
    }
    if (list_weights(tf, b, err) != SHARD_OK
        || tensor_file_translate(tf, h5_translate, err) != SHARD_OK)
        goto fail;
    return tf;
fail:
    tensor_file_destroy(&tf);
    return NULL;
}
