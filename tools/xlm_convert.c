/* xlm_convert.c: any checkpoint folder the engine serves (safetensors,
 * torch zip or legacy, sharded, tf_model.h5, original XLM) rewritten as a
 * safetensors folder that loads zero-copy.
 *
 *   xlm-convert --model DIR --output DIR2
 *
 * DIR2 gets model.safetensors (every tensor under the engine's name and
 * layout, in its stored dtype; float32 first so that every tensor is
 * aligned to its element size and maps in place), config.json (copied, or
 * written from an original checkpoint's params), and the tokenizer files
 * (copied, or vocab.json and merges.txt written from fastBPE's files).
 * Outputs of the converted folder are identical to the original's. */
#include "shard_checkpoint.h"
#include "shard_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
    fputs("usage: xlm-convert --model DIR --output DIR2\n"
          "\n"
          "Writes the checkpoint in DIR (model.safetensors, pytorch_model.bin in torch's\n"
          "zip or legacy format, a sharded folder, tf_model.h5, or an original XLM .pth\n"
          "with its fastBPE codes and vocab) to DIR2 as model.safetensors, config.json\n"
          "and the tokenizer files. DIR2 is created if needed; its files are replaced.\n",
          f);
}

static int fail(const shard_error_t *err)
{
    fprintf(stderr, "xlm-convert: %s\n", err->message);
    return 1;
}

/* Larger elements first: offsets stay multiples of every element size. */
static int by_elem_size(const void *a, const void *b)
{
    const tensor_entry_t *x = *(const tensor_entry_t *const *)a;
    const tensor_entry_t *y = *(const tensor_entry_t *const *)b;
    size_t sx = tensor_dtype_size(x->dtype), sy = tensor_dtype_size(y->dtype);
    return sx < sy ? 1 : sx > sy ? -1 : strcmp(x->name, y->name);
}

static shard_status_t write_safetensors(tensor_file_t *tf, const char *path, shard_error_t *err)
{
    const tensor_entry_t **order = calloc(tf->count + 1, sizeof *order);
    cJSON *header = cJSON_CreateObject();
    char *text = NULL;
    FILE *f = NULL;
    shard_status_t st = SHARD_OK;
    if (order == NULL || header == NULL) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "xlm-convert: out of memory");
        goto done;
    }
    for (size_t i = 0; i < tf->count && st == SHARD_OK; i++)
        st = tensor_file_fetch(tf, tf->entries[i].name, &order[i], err);
    if (st != SHARD_OK)
        goto done;
    qsort(order, tf->count, sizeof *order, by_elem_size);
    size_t offset = 0;
    for (size_t i = 0; i < tf->count; i++) {
        const tensor_entry_t *e = order[i];
        cJSON *item = cJSON_AddObjectToObject(header, e->name);
        cJSON *shape = item ? cJSON_AddArrayToObject(item, "shape") : NULL;
        cJSON *offsets = shape ? cJSON_AddArrayToObject(item, "data_offsets") : NULL;
        if (offsets == NULL || !cJSON_AddStringToObject(item, "dtype", tensor_dtype_name(e->dtype))) {
            st = shard_error_set(err, SHARD_ERR_NOMEM, "xlm-convert: out of memory");
            goto done;
        }
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)(offset + e->nbytes)));
        offset += e->nbytes;
    }
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    if (meta == NULL || !cJSON_AddStringToObject(meta, "format", "pt")
        || (text = cJSON_PrintUnformatted(header)) == NULL) {
        st = shard_error_set(err, SHARD_ERR_NOMEM, "xlm-convert: out of memory");
        goto done;
    }
    /* The header is padded with spaces to 8 bytes, so the data block (and
     * with it every float32) starts aligned in the mapping. */
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    uint8_t size_le[8];
    for (int i = 0; i < 8; i++)
        size_le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    f = fopen(path, "wb");
    bool ok = f != NULL && fwrite(size_le, 1, 8, f) == 8 && fwrite(text, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < tf->count; i++)
        ok = fwrite(order[i]->data, 1, order[i]->nbytes, f) == order[i]->nbytes;
    if (f != NULL && fclose(f) != 0)
        ok = false;
    f = NULL;
    if (!ok)
        st = shard_error_set(err, SHARD_ERR_IO, "xlm-convert: cannot write %s: %s", path,
                             strerror(errno));
done:
    free(text);
    cJSON_Delete(header);
    free(order);
    return st;
}

static bool exists(const char *dir, const char *name)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static shard_status_t copy_file(const char *from_dir, const char *to_dir, const char *name,
                                shard_error_t *err)
{
    char from[4200], to[4200], buf[65536];
    snprintf(from, sizeof from, "%s/%s", from_dir, name);
    snprintf(to, sizeof to, "%s/%s", to_dir, name);
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    bool ok = in != NULL && out != NULL;
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in != NULL)
        fclose(in);
    if (out != NULL && fclose(out) != 0)
        ok = false;
    return ok ? SHARD_OK
              : shard_error_set(err, SHARD_ERR_IO, "xlm-convert: cannot copy %s to %s", from, to);
}

/* config.json and the tokenizer files of dir, into out. */
static shard_status_t write_side_files(const char *dir, const char *out, shard_error_t *err)
{
    char path[4200];
    shard_status_t st = SHARD_OK;
    if (exists(dir, "config.json")) {
        st = copy_file(dir, out, "config.json", err);
    } else {
        shard_config_t config;
        snprintf(path, sizeof path, "%s/config.json", out);
        st = shard_checkpoint_load_config(dir, &config, err);
        if (st == SHARD_OK)
            st = shard_config_save(&config, path, err);
    }
    static const char *const copied[] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < 2 && st == SHARD_OK; i++)
        if (exists(dir, copied[i]))
            st = copy_file(dir, out, copied[i], err);
    if (st != SHARD_OK)
        return st;
    if (exists(dir, "vocab.json") && exists(dir, "merges.txt")) {
        st = copy_file(dir, out, "vocab.json", err);
        return st != SHARD_OK ? st : copy_file(dir, out, "merges.txt", err);
    }
    if (!exists(dir, "vocab") && !exists(dir, "vocab.json"))
        return SHARD_OK; /* no tokenizer: ids only */
    shard_tokenizer_t *tok = shard_tokenizer_open(dir, err);
    if (tok == NULL)
        return err->code;
    st = shard_tokenizer_save_vocabulary(tok, out, NULL, err);
    shard_tokenizer_destroy(&tok);
    return st;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *output = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(argv[i], "--output") == 0 && i + 1 < argc) {
            output = argv[++i];
        } else {
            fprintf(stderr, "xlm-convert: unknown or incomplete argument %s\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    if (model == NULL || output == NULL) {
        usage(stderr);
        return 1;
    }
    shard_error_t err = {0};
    if (mkdir(output, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "xlm-convert: cannot create %s: %s\n", output, strerror(errno));
        return 1;
    }
    char path[4200];
    tensor_file_t *tf = shard_checkpoint_open_weights(model, path, sizeof path, &err);
    if (tf == NULL)
        return fail(&err);
    snprintf(path, sizeof path, "%s/model.safetensors", output);
    shard_status_t st = write_safetensors(tf, path, &err);
    tensor_file_destroy(&tf);
    if (st == SHARD_OK)
        st = write_side_files(model, output, &err);
    return st == SHARD_OK ? 0 : fail(&err);
}
