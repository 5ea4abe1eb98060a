/* fuzz_reader.c: libFuzzer target for one checkpoint reader, chosen at
 * build time by FUZZ_READER:
 *   1 safetensors header and offsets (tensor_file_open_safetensors_image)
 *   2 config.json (shard_config_check_bytes, then the config checks)
 *   3 sharded index JSON (tensor_file_open_sharded_text)
 *   4 tf_model.h5 attributes and datasets (tensor_file_open_h5_image)
 *   5 torch files, zip or legacy (tensor_file_open_torch_image)
 * The readers take the input's bytes in memory, as they take a mapped
 * file (no temporary file per run); every entry that opens is fetched, so
 * loads run too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#if FUZZ_READER == 4
#include <hdf5.h>
#endif

/* libhdf5 allocates its metadata cache (over 512 KiB) at every open and
 * frees it to the system past its free-list limits; without limits the
 * block is reused, so a run costs no fresh pages. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
#if FUZZ_READER == 4
    H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
#endif
    return 0;
}

static char dir[64];

/* A file in a private temporary folder (the index's shards). */
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
    fetch_all(tensor_file_open_safetensors_image("model.safetensors", data, size, &err));
#elif FUZZ_READER == 2
    shard_config_t config;
    if (shard_config_check_bytes((const char *)data, size, "config.json", &err) == SHARD_OK) {
        cJSON *root = cJSON_ParseWithLength((const char *)data, size);
        if (cJSON_IsObject(root))
            (void)shard_config_from_json(root, "config.json", &config, &err);
        cJSON_Delete(root);
    }
#elif FUZZ_READER == 3
    /* Two shards beside the index, written once: one good safetensors
     * (one F32 tensor "w"), one not a weight file. */
    static const char *index_path;
    if (index_path == NULL) {
        static const uint8_t one_st[] = {
            54, 0, 0, 0, 0, 0, 0, 0,
            '{', '"', 'w', '"', ':', '{', '"', 'd', 't', 'y', 'p', 'e', '"', ':', '"', 'F', '3',
            '2', '"', ',', '"', 's', 'h', 'a', 'p', 'e', '"', ':', '[', '1', ']', ',', '"', 'd',
            'a', 't', 'a', '_', 'o', 'f', 'f', 's', 'e', 't', 's', '"', ':', '[', '0', ',', '4',
            ']', '}', '}', 0, 0, 128, 63};
        write_input("a.safetensors", one_st, sizeof one_st);
        write_input("b.bin", (const uint8_t *)"x", 1);
        index_path = strdup(write_input("model.safetensors.index.json", (const uint8_t *)"", 0));
    }
    fetch_all(tensor_file_open_sharded_text(index_path, (const char *)data, size, &err));
#elif FUZZ_READER == 4
    fetch_all(tensor_file_open_h5_image("tf_model.h5", data, size, &err));
#elif FUZZ_READER == 5
    fetch_all(tensor_file_open_torch_image("pytorch_model.bin", data, size, &err));
#else
#error "FUZZ_READER must be 1 to 5"
#endif
    return 0;
}
