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
 * so transposed), gamma/beta/embeddings become weight/bias/weight.
 *
 * This file makes the libhdf5 calls; what the attributes' values mean (the
 * name lists, the global heap references, the translation) is interpreted
 * over plain bytes in h5_names.c, which fuzz_h5_attrs drives alone. */
#include "checkpoint_internal.h"
#include "h5_names.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    hid_t file;
    char **paths;   /* [n_slots]: "<layer>/<weight name>", the dataset */
    void **buffers; /* [n_slots]: read on fetch, owned */
    size_t n_slots; /* entries listed, before translation; their slots */
    /* The file's raw bytes, for checking global heap references before
     * libhdf5 follows them: the image (borrowed), or the file itself. */
    h5_source_t source;
} h5_backing_t;

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
    if (b->source.fd >= 0)
        close(b->source.fd);
    free(b);
    self->backing = NULL;
}

/* ---------------------------------------------------------------- global heap checks
 *
 * The references of a variable-length string attribute are read raw and
 * checked by h5_check_vlen_refs (h5_names.c says why) before libhdf5
 * follows them. */

static const char RAW_VLEN_TAG[] = "xlmserve raw variable-length reference";

/* A conversion that leaves the bytes as they are: registered from variable-
 * length strings to an opaque type of our tag, it hands over the
 * attribute's stored references (H5A__read copies them in before
 * converting) without following them. */
static herr_t raw_vlen_convert(hid_t src, hid_t dst, H5T_cdata_t *cdata, size_t nelmts,
                               size_t buf_stride, size_t bkg_stride, void *buf, void *bkg,
                               hid_t dxpl)
{
    (void)nelmts, (void)bkg_stride, (void)buf, (void)bkg, (void)dxpl;
    if (cdata->command == H5T_CONV_INIT) {
        if (H5Tis_variable_str(src) <= 0 || H5Tget_class(dst) != H5T_OPAQUE
            || H5Tget_size(src) != H5Tget_size(dst))
            return -1;
        char *tag = H5Tget_tag(dst);
        bool ours = tag != NULL && strcmp(tag, RAW_VLEN_TAG) == 0;
        H5free_memory(tag);
        cdata->need_bkg = H5T_BKG_NO;
        return ours ? 0 : -1;
    }
    if (cdata->command == H5T_CONV_CONV)
        return buf_stride == 0 || buf_stride == H5Tget_size(src) ? 0 : -1;
    return 0;
}

static herr_t raw_vlen_registered = -1;

static void register_raw_vlen(void)
{
    hid_t vstr = H5Tcopy(H5T_C_S1), opaque = H5Tcreate(H5T_OPAQUE, 1);
    if (vstr >= 0 && opaque >= 0 && H5Tset_size(vstr, H5T_VARIABLE) >= 0)
        raw_vlen_registered = H5Tregister(H5T_PERS_SOFT, "xlmserve_raw_vlen", vstr, opaque,
                                          raw_vlen_convert);
    if (vstr >= 0)
        H5Tclose(vstr);
    if (opaque >= 0)
        H5Tclose(opaque);
}

/* Reads the n stored references of attr raw and has them checked. */
static shard_status_t check_vlen_refs(const char *path, const h5_backing_t *b, hid_t attr,
                                      const char *where, size_t n, shard_error_t *err)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_raw_vlen);
    h5_heap_t heap = {0};
    hid_t fcpl = H5Fget_create_plist(b->file);
    hsize_t userblock = 0;
    if (raw_vlen_registered < 0 || fcpl < 0
        || H5Pget_sizes(fcpl, &heap.sizeof_addr, &heap.sizeof_size) < 0
        || H5Pget_userblock(fcpl, &userblock) < 0 || heap.sizeof_addr < 1
        || heap.sizeof_addr > 8 || heap.sizeof_size < 1 || heap.sizeof_size > 8) {
        if (fcpl >= 0)
            H5Pclose(fcpl);
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: attribute %s: "
                               "cannot read the file's address sizes", path, where);
    }
    H5Pclose(fcpl);
    heap.base = userblock;
    const size_t width = h5_vlen_ref_width(heap.sizeof_addr);
    if (n > b->source.size / width) /* each reference is stored in the file */
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: attribute %s: "
                               "%zu strings do not fit in the file", path, where, n);
    hid_t raw_type = H5Tcreate(H5T_OPAQUE, width);
    uint8_t *raw = malloc(n * width);
    shard_status_t st = SHARD_OK;
    if (raw_type < 0 || H5Tset_tag(raw_type, RAW_VLEN_TAG) < 0 || raw == NULL
        || H5Aread(attr, raw_type, raw) < 0)
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: cannot read "
                             "attribute %s", path, where);
    if (st == SHARD_OK)
        st = h5_check_vlen_refs(path, where, &b->source, &heap, raw, n, err);
    free(raw);
    if (raw_type >= 0)
        H5Tclose(raw_type);
    return st;
}

/* Appends the strings of attribute attr (a 1-d list of variable- or
 * fixed-length strings; an empty list of any type) to names. */
static shard_status_t read_string_attr(const char *path, const h5_backing_t *b,
                                       const char *where, hid_t attr, h5_names_t *names,
                                       shard_error_t *err)
{
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    shard_status_t st = SHARD_OK;
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (n == 0)
        goto done;
    if (type < 0 || n < 0 || rank > 1 || H5Tget_class(type) != H5T_STRING) {
        st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: attribute %s is "
                             "not a list of strings", path, where);
        goto done;
    }
    if (H5Tis_variable_str(type) > 0) {
        st = check_vlen_refs(path, b, attr, where, (size_t)n, err);
        if (st != SHARD_OK)
            goto done;
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
            st = h5_names_add_strings(names, raw, (size_t)n, err);
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
            st = h5_names_add_fixed(names, raw, (size_t)n, width, err);
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
static shard_status_t read_names(const char *path, const h5_backing_t *b, hid_t obj,
                                 const char *obj_name, const char *base, h5_names_t *names,
                                 shard_error_t *err)
{
    char where[H5_NAME_MAX + 64];
    if (H5Aexists(obj, base) > 0) {
        hid_t attr = H5Aopen(obj, base, H5P_DEFAULT);
        snprintf(where, sizeof where, "%s of %s", base, obj_name);
        shard_status_t st = read_string_attr(path, b, where, attr, names, err);
        H5Aclose(attr);
        return st;
    }
    int part = 0;
    for (; part < H5_SPLIT_MAX; part++) {
        char split[64];
        if (!h5_split_name(split, sizeof split, base, part) || H5Aexists(obj, split) <= 0)
            break;
        hid_t attr = H5Aopen(obj, split, H5P_DEFAULT);
        snprintf(where, sizeof where, "%s of %s", split, obj_name);
        shard_status_t st = read_string_attr(path, b, where, attr, names, err);
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

/* An uncompressed dataset must have its bytes in the file: its shape is
 * not allowed to ask for more memory than the file could fill (Keras
 * writes every weight, uncompressed). */
static shard_status_t check_stored(const tensor_file_t *tf, const h5_backing_t *b, hid_t d,
                                   const char *weight, size_t nbytes, shard_error_t *err)
{
    hid_t dcpl = H5Dget_create_plist(d);
    int filters = dcpl < 0 ? -1 : H5Pget_nfilters(dcpl);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    hsize_t stored = H5Dget_storage_size(d);
    if (filters == 0 && (stored < nbytes || nbytes > b->source.size))
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: tensor %s: "
                               "its shape needs %zu bytes, the file stores %llu for it",
                               tf->path, weight, nbytes, (unsigned long long)stored);
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
    if (st == SHARD_OK)
        st = check_stored(tf, b, d, weight, e->nbytes, err);
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

/* A kernel stored [in, out] read straight into the engine's [out, in]:
 * blocks of stored rows through a small buffer, so no [in, out] copy of
 * the whole tensor is ever held beside the result. */
static herr_t read_transposed(hid_t d, const tensor_entry_t *e, float *out)
{
    const hsize_t rows = (hsize_t)e->shape[1], cols = (hsize_t)e->shape[0]; /* as stored */
    hsize_t block = cols > 0 && cols < 65536 ? 65536 / cols : 1;
    if (rows == 0 || cols == 0)
        return 0;
    block = block > rows ? rows : block;
    float *tile = malloc((size_t)(block * cols) * sizeof *tile);
    hid_t file_space = H5Dget_space(d);
    herr_t rc = tile == NULL || file_space < 0 ? -1 : 0;
    for (hsize_t r0 = 0; r0 < rows && rc >= 0; r0 += block) {
        hsize_t start[2] = {r0, 0}, count[2] = {r0 + block > rows ? rows - r0 : block, cols};
        hid_t mem_space = H5Screate_simple(2, count, NULL);
        rc = mem_space < 0 ? -1
                           : H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, count,
                                                 NULL);
        if (rc >= 0)
            rc = H5Dread(d, H5T_NATIVE_FLOAT, mem_space, file_space, H5P_DEFAULT, tile);
        for (hsize_t r = 0; r < count[0] && rc >= 0; r++)
            for (hsize_t c = 0; c < cols; c++)
                out[c * rows + r0 + r] = tile[r * cols + c];
        if (mem_space >= 0)
            H5Sclose(mem_space);
    }
    if (file_space >= 0)
        H5Sclose(file_space);
    free(tile);
    return rc;
}

static shard_status_t h5_load(tensor_file_t *self, size_t index, shard_error_t *err)
{
    h5_backing_t *b = self->backing;
    tensor_entry_t *e = &self->entries[index];
    const char *dpath = b->paths[e->slot];
    void *buf = malloc(e->nbytes > 0 ? e->nbytes : 1);
    hid_t d = buf == NULL ? -1 : H5Dopen2(b->file, dpath, H5P_DEFAULT);
    herr_t rc = d < 0 ? -1
                : e->transpose ? read_transposed(d, e, buf)
                : H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
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
    e->held = true;
    e->transpose = false; /* read in the engine's layout already */
    return SHARD_OK;
}

static void h5_discard(tensor_file_t *self, size_t index)
{
    h5_backing_t *b = self->backing;
    tensor_entry_t *e = &self->entries[index];
    free(b->buffers[e->slot]);
    b->buffers[e->slot] = NULL;
    e->data = NULL;
}

/* Every layer's weights; a weight listed twice (the LM head's tied copy of
 * the embeddings) is kept once, from its first layer. */
static shard_status_t list_weights(tensor_file_t *tf, h5_backing_t *b, shard_error_t *err)
{
    h5_names_t layers = {0}, all = {0};
    size_t *layer_of = NULL;
    shard_status_t st = read_names(tf->path, b, b->file, "/", "layer_names", &layers, err);
    for (size_t l = 0; l < layers.count && st == SHARD_OK; l++) {
        const char *layer = layers.items[l];
        if (!h5_layer_name_ok(layer) || H5Lexists(b->file, layer, H5P_DEFAULT) <= 0) {
            st = shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: layer \"%s\" "
                                 "of layer_names has no group", tf->path, layer);
            break;
        }
        hid_t g = H5Gopen2(b->file, layer, H5P_DEFAULT);
        size_t before = all.count;
        st = g < 0 ? shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: %s is "
                                     "not a group", tf->path, layer)
                   : read_names(tf->path, b, g, layer, "weight_names", &all, err);
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
        if (h5_first_listing(&all, i))
            st = add_entry(tf, b, layers.items[layer_of[i]], all.items[i], err);
    free(layer_of);
    h5_names_free(&layers);
    h5_names_free(&all);
    return st;
}

/* path names the file; image, when not NULL, holds its size bytes. */
static tensor_file_t *open_h5_here(const char *path, const uint8_t *image, size_t size,
                                   shard_error_t *err)
{
    tensor_file_t *tf = calloc(1, sizeof *tf);
    h5_backing_t *b = calloc(1, sizeof *b);
    hid_t fapl = -1;
    if (tf == NULL || b == NULL || (tf->path = strdup(path)) == NULL) {
        free(tf);
        free(b);
        shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: out of memory");
        return NULL;
    }
    b->file = -1;
    b->source.fd = -1;
    tf->backing = b;
    tf->release = h5_release;
    tf->load = h5_load;
    tf->discard = h5_discard;
    /* Errors are reported here, with the file and tensor; libhdf5's own
     * stack printing would only repeat them on stderr. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (image != NULL) {
        b->source.image = image;
        b->source.size = size;
        /* The core driver over a copy of the image: nothing touches disk. */
        fapl = H5Pcreate(H5P_FILE_ACCESS);
        if (fapl < 0 || H5Pset_fapl_core(fapl, 1 << 16, 0) < 0
            || H5Pset_file_image(fapl, (void *)image, size) < 0) {
            shard_error_set(err, SHARD_ERR_NOMEM, "tensor_file_open_h5: %s: cannot set up "
                            "the file image", path);
            goto fail;
        }
    } else {
        struct stat info;
        b->source.fd = open(path, O_RDONLY | O_CLOEXEC);
        if (b->source.fd < 0 || fstat(b->source.fd, &info) != 0) {
            shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: cannot open %s: %s", path,
                            strerror(errno));
            goto fail;
        }
        b->source.size = (uint64_t)info.st_size;
        if (H5Fis_hdf5(path) <= 0) {
            shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: not an HDF5 file",
                            path);
            goto fail;
        }
    }
    /* The core driver refuses an image whose name is also a file on disk:
     * an image is opened under a name no file can have. */
    b->file = H5Fopen(image != NULL ? "/dev/null/xlmserve-image.h5" : path, H5F_ACC_RDONLY,
                      fapl >= 0 ? fapl : H5P_DEFAULT);
    if (b->file < 0) {
        shard_error_set(err, image != NULL ? SHARD_ERR_FORMAT : SHARD_ERR_IO,
                        image != NULL ? "tensor_file_open_h5: %s: not a readable HDF5 file"
                                      : "tensor_file_open_h5: cannot open %s", path);
        goto fail;
    }
    if (fapl >= 0)
        H5Pclose(fapl);
    if (list_weights(tf, b, err) != SHARD_OK
        || tensor_file_translate(tf, h5_translate, err) != SHARD_OK)
        goto fail_open;
    if (image == NULL) {
        /* Listing walked every group and attribute, and libhdf5 keeps what
         * it read cached with the open file: more than a pipeline stage's
         * share of a small model. Reopened, the file caches only what the
         * stage's own datasets need. */
        H5Fclose(b->file);
        b->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (b->file < 0) {
            shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: cannot reopen %s", path);
            goto fail_open;
        }
    }
    return tf;
fail:
    if (fapl >= 0)
        H5Pclose(fapl);
fail_open:
    tensor_file_destroy(&tf);
    return NULL;
}

/* ---------------------------------------------------------------- isolation
 *
 * libhdf5 1.10.8 does not survive every corrupt file: fuzz_h5 found reads
 * past the object header in its attribute message decoding (reached from
 * H5Aexists, H5Aget_type), a metadata cache entry allocated at whatever
 * size the file declares (17 GB from H5Gopen2, then filled), and its
 * H5HG_read overflow (checked above). These are inside the library, where
 * no check of ours can reach. So the file's structure is first read in a
 * child process, with a bound on its memory: everything open does, and
 * every chunked dataset read whole (contiguous ones are plain byte ranges
 * already checked against the file). A crash or a kill of the child
 * becomes an error naming the file; the child's own clean error is passed
 * up as it is; only a file the child read through is opened here. */

/* Lets the child map at most extra bytes beyond what it has mapped now. */
static void limit_memory(size_t extra)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f == NULL)
        return;
    if (fscanf(f, "%lu", &pages) == 1) {
        struct rlimit limit;
        if (getrlimit(RLIMIT_AS, &limit) == 0) {
            rlim_t want = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)extra;
            if (limit.rlim_max == RLIM_INFINITY || want < limit.rlim_max) {
                limit.rlim_cur = want;
                (void)setrlimit(RLIMIT_AS, &limit);
            }
        }
    }
    fclose(f);
}

enum { H5_CHILD_MEMORY = 1 << 30 }; /* beyond the datasets it reads */

/* In the child: the open, then every chunked dataset, each read and freed. */
static void check_in_child(const char *path, int out)
{
    shard_error_t e = {0};
    limit_memory(H5_CHILD_MEMORY);
    tensor_file_t *tf = open_h5_here(path, NULL, 0, &e);
    for (size_t i = 0; tf != NULL && i < tf->count && e.code == SHARD_OK; i++) {
        h5_backing_t *b = tf->backing;
        hid_t d = H5Dopen2(b->file, b->paths[tf->entries[i].slot], H5P_DEFAULT);
        hid_t dcpl = d < 0 ? -1 : H5Dget_create_plist(d);
        bool chunked = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED;
        if (dcpl >= 0)
            H5Pclose(dcpl);
        if (d >= 0)
            H5Dclose(d);
        if (!chunked)
            continue;
        limit_memory(tf->entries[i].nbytes + H5_CHILD_MEMORY);
        if (h5_load(tf, i, &e) == SHARD_OK) {
            free(b->buffers[tf->entries[i].slot]);
            b->buffers[tf->entries[i].slot] = NULL;
            tf->entries[i].data = NULL;
        }
    }
    tensor_file_destroy(&tf);
    size_t done = 0;
    while (done < sizeof e) {
        ssize_t n = write(out, (const char *)&e + done, sizeof e - done);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            break;
        done += n > 0 ? (size_t)n : 0;
    }
    _exit(done == sizeof e ? 0 : 3); /* no atexit handlers: they are the parent's */
}

/* CPU time (clock ticks) process pid has used, or -1. */
static long long cpu_ticks_of(pid_t pid)
{
    char path[64], stat[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *after = strrchr(stat, ')'); /* the name may hold spaces */
    long long utime = 0, stime = 0;
    /* fields 3 .. 15 after the name: state, then 10 numbers, then utime, stime */
    if (after == NULL ||
        sscanf(after + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &utime,
               &stime) != 2)
        return -1;
    return utime + stime;
}

/* The child is forked from a process with other threads (MPI's, ZeroMQ's,
 * the heartbeat's). One of them may hold a lock at the fork that the
 * child then needs: AddressSanitizer's allocator did (a sanitized worker
 * waited for its check for good, the allocator lock never released; the
 * golden service test of 3 stages hung that way). glibc's malloc is
 * fork-safe, a library's lock need not be. A child that used no CPU for
 * H5_CHILD_STALL_S is taken for such a one: killed, and the check forked
 * again, H5_CHILD_TRIES times in all. A working child reads and decodes,
 * so it uses CPU; one starved of CPU that long costs a retry. */
enum { H5_CHILD_STALL_S = 10, H5_CHILD_TRIES = 3 };

typedef enum { CHILD_ANSWERED, CHILD_STALLED, CHILD_FAILED } child_outcome_t;

static child_outcome_t run_check_child(const char *path, shard_error_t *child, int *status,
                                       shard_error_t *err)
{
    int fds[2];
    if (pipe(fds) != 0) {
        shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: %s: cannot make a pipe to "
                        "check the file: %s", path, strerror(errno));
        return CHILD_FAILED;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        check_in_child(path, fds[1]);
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: %s: cannot fork to check the "
                        "file: %s", path, strerror(errno));
        return CHILD_FAILED;
    }
    size_t got = 0;
    long long ticks = cpu_ticks_of(pid);
    int idle_s = 0;
    bool stalled = false;
    while (got < sizeof *child) {
        struct pollfd pfd = {fds[0], POLLIN, 0};
        int ready = poll(&pfd, 1, 1000);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready == 0) {
            const long long now = cpu_ticks_of(pid);
            idle_s = now == ticks ? idle_s + 1 : 0;
            ticks = now;
            if (idle_s >= H5_CHILD_STALL_S) {
                stalled = true;
                kill(pid, SIGKILL);
                break;
            }
            continue;
        }
        ssize_t n = ready < 0 ? -1 : read(fds[0], (char *)child + got, sizeof *child - got);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            break;
        got += n > 0 ? (size_t)n : 0;
    }
    close(fds[0]);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
    if (stalled)
        return CHILD_STALLED;
    if (got != sizeof *child && WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        *status = 3 << 8; /* exited without its answer */
    return CHILD_ANSWERED;
}

static shard_status_t checked_in_child(const char *path, shard_error_t *err)
{
    shard_error_t child = {0};
    int status = 0;
    child_outcome_t outcome = CHILD_STALLED;
    for (int tries = 0; tries < H5_CHILD_TRIES && outcome == CHILD_STALLED; tries++) {
        memset(&child, 0, sizeof child);
        outcome = run_check_child(path, &child, &status, err);
    }
    if (outcome == CHILD_FAILED)
        return err->code;
    if (outcome == CHILD_STALLED)
        return shard_error_set(err, SHARD_ERR_IO, "tensor_file_open_h5: %s: the child process "
                               "that checks the file used no CPU for %d s, %d times (a lock "
                               "held at fork by another thread): not opened",
                               path, H5_CHILD_STALL_S, H5_CHILD_TRIES);
    if (WIFSIGNALED(status))
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: libhdf5 "
                               "crashed reading the file's structure (signal %d, %s): the file "
                               "is corrupt", path, WTERMSIG(status), strsignal(WTERMSIG(status)));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return shard_error_set(err, SHARD_ERR_FORMAT, "tensor_file_open_h5: %s: libhdf5 "
                               "failed reading the file's structure (exit status %d): the file "
                               "is corrupt", path, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    if (child.code != SHARD_OK) {
        child.message[sizeof child.message - 1] = '\0';
        return shard_error_set(err, child.code, "%s", child.message);
    }
    return SHARD_OK;
}

tensor_file_t *tensor_file_open_h5(const char *path, shard_error_t *err)
{
    if (checked_in_child(path, err) != SHARD_OK)
        return NULL;
    return open_h5_here(path, NULL, 0, err);
}

tensor_file_t *tensor_file_open_h5_image(const char *path, const uint8_t *data, size_t size,
                                         shard_error_t *err)
{
    if (data == NULL) {
        shard_error_set(err, SHARD_ERR_INPUT, "tensor_file_open_h5: %s: no bytes", path);
        return NULL;
    }
    return open_h5_here(path, data, size, err);
}
