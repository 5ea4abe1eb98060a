/* fuzz_reader.c: libFuzzer target for one checkpoint reader, chosen at
 * build time by FUZZ_READER:
 *   1 safetensors header and offsets (tensor_file_open_safetensors)
 *   2 config.json (shard_config_check_bytes, then the config checks)
 *   3 sharded index JSON (tensor_file_open_sharded)
 *   4 tf_model.h5 attributes and datasets (tensor_file_open_h5)
 *   5 torch files, zip or legacy (tensor_file_open_torch)
 * The input becomes a file in a private temporary folder (the readers take
 * paths); every entry that opens is fetched, so loads run too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

__attribute__((unused)) static const char *write_input(const char *name, const uint8_t *data, size_t size)
{
    static char path[128];
    if (dir[0] == '\0') {
        snprintf(dir, sizeof dir, "/tmp/fuzz_reader.XXXXXX");
        if (mkdtemp(dir) == NULL)
            abort();
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    return path;
}

__attribute__((unused)) static void fetch_all(tensor_file_t *tf)
{
    shard_error_t err = {0};
    for (size_t i = 0; tf != NULL && i < tf->count; i++) {
        const tensor_entry_t *e = NULL;
        if (tensor_file_fetch(tf, tf->entries[i].name, &e, &err) == SHARD_OK && e != NULL
            && e->nbytes > 0 && ((const volatile uint8_t *)e->data)[e->nbytes - 1] == 0x5a)
            err.code = SHARD_OK; /* touches the last byte: ASan checks the bound */
    }
    tensor_file_destroy(&tf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    shard_error_t err = {0};
#if FUZZ_READER == 1
    fetch_all(tensor_file_open_safetensors(write_input("model.safetensors", data, size), &err));
#elif FUZZ_READER == 2
    shard_config_t config;
    if (shard_config_check_bytes((const char *)data, size, "config.json", &err) == SHARD_OK) {
        cJSON *root = cJSON_ParseWithLength((const char *)data, size);
        if (cJSON_IsObject(root))
            (void)shard_config_from_json(root, "config.json", &config, &err);
        cJSON_Delete(root);
    }
#elif FUZZ_READER == 3
    /* Two shards beside the index: one good safetensors, one not. */
    static const uint8_t empty_st[] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_input("a.safetensors", empty_st, sizeof empty_st);
    write_input("b.bin", (const uint8_t *)"x", 1);
    fetch_all(tensor_file_open_sharded(write_input("model.safetensors.index.json", data, size),
                                       &err));
#elif FUZZ_READER == 4
    fetch_all(tensor_file_open_h5(write_input("tf_model.h5", data, size), &err));
#elif FUZZ_READER == 5
    fetch_all(tensor_file_open_torch(write_input("pytorch_model.bin", data, size), &err));
#else
#error "FUZZ_READER must be 1 to 5"
#endif
    return 0;
}
