/* xlmorig.c: original facebookresearch/XLM checkpoints: a folder with one
 * .pth (torch.save of {model, params, dico_id2word, dico_word2id,
 * dico_counts}) and fastBPE's codes and vocab, served as they are.
 *
 * The weights are the 'model' state dict (torch.c picks it); this file
 * turns 'params' into the config: the keys that define the model are
 * copied into a config.json-shaped object under HF's names and read by the
 * same checks as config.json (shard_config_from_json), so a bad value in
 * params gets the same message naming its key. XLM has no config of its
 * own for what HF's conversion script fixes: 512 positions (the rows of
 * position_embeddings.weight), LayerNorm eps 1e-12 unless given, and the
 * class, which is the LM head when the state dict has pred_layer. */
#include "checkpoint_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* params keys copied as they are: HF's XLMConfig has the same names
 * (n_words is read as vocab_size). */
static const char *const copied_keys[] = {
    "emb_dim", "n_layers", "n_heads", "n_langs", "use_lang_emb", "gelu_activation",
    "sinusoidal_embeddings", "n_words", "bos_index", "eos_index", "pad_index",
    "unk_index", "mask_index", "layer_norm_eps", "causal", "asm",
};

/* A scalar pickle value as JSON; other kinds as a string naming the kind,
 * which the config checks then refuse with the key's name. */
static cJSON *scalar_json(const pk_value_t *v)
{
    switch (v->kind) {
    case PK_NONE: return cJSON_CreateNull();
    case PK_BOOL: return cJSON_CreateBool(v->u.b);
    case PK_INT: return cJSON_CreateNumber((double)v->u.i);
    case PK_FLOAT: return cJSON_CreateNumber(v->u.f);
    case PK_STR: return cJSON_CreateString(v->u.str.bytes);
    default: return cJSON_CreateString(pk_kind_name(v));
    }
}

/* id2lang {int: code} and lang2id {code: int} with JSON's string keys. */
static bool add_langs(cJSON *json, const pk_value_t *params)
{
    const pk_value_t *id2lang = pk_dict_get(params, "id2lang");
    const pk_value_t *lang2id = pk_dict_get(params, "lang2id");
    if (id2lang != NULL && id2lang->kind == PK_DICT) {
        cJSON *obj = cJSON_AddObjectToObject(json, "id2lang");
        for (size_t i = 0; obj != NULL && i < id2lang->u.dict.count; i++) {
            const pk_value_t *k = id2lang->u.dict.pairs[i].key;
            char key[32];
            if (k->kind == PK_INT)
                snprintf(key, sizeof key, "%lld", (long long)k->u.i);
            else
                snprintf(key, sizeof key, "%s", "not an int");
            if (!cJSON_AddItemToObject(obj, key, scalar_json(id2lang->u.dict.pairs[i].value)))
                return false;
        }
    }
    if (lang2id != NULL && lang2id->kind == PK_DICT) {
        cJSON *obj = cJSON_AddObjectToObject(json, "lang2id");
        for (size_t i = 0; obj != NULL && i < lang2id->u.dict.count; i++) {
            const pk_value_t *k = lang2id->u.dict.pairs[i].key;
            if (k->kind != PK_STR
                || !cJSON_AddItemToObject(obj, k->u.str.bytes,
                                          scalar_json(lang2id->u.dict.pairs[i].value)))
                return false;
        }
    }
    return true;
}

static cJSON *params_json(const pk_value_t *params, const pk_value_t *model)
{
    cJSON *json = cJSON_CreateObject();
    if (json == NULL)
        return NULL;
    bool ok = true;
    for (size_t i = 0; ok && i < sizeof copied_keys / sizeof copied_keys[0]; i++) {
        const pk_value_t *v = pk_dict_get(params, copied_keys[i]);
        if (v != NULL)
            ok = cJSON_AddItemToObject(json, copied_keys[i], scalar_json(v));
    }
    const pk_value_t *pos = pk_dict_get(model, "position_embeddings.weight");
    double n_pos = pos != NULL && pos->kind == PK_TENSOR && pos->u.tensor.ndim == 2
                       ? (double)pos->u.tensor.shape[0] : 512.0;
    ok = ok && cJSON_AddNumberToObject(json, "max_position_embeddings", n_pos) != NULL;
    bool lm = pk_dict_get(model, "pred_layer.proj.bias") != NULL;
    const char *arch = lm ? "XLMWithLMHeadModel" : "XLMModel";
    cJSON *archs = cJSON_AddArrayToObject(json, "architectures");
    ok = ok && archs != NULL && cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
    ok = ok && add_langs(json, params);
    if (!ok) {
        cJSON_Delete(json);
        return NULL;
    }
    return json;
}

shard_status_t xlmorig_load_config(const char *pth, shard_config_t *config, shard_error_t *err)
{
    pk_unpickler_t u;
    uint8_t *map = NULL;
    size_t size = 0;
    const pk_value_t *root = NULL;
    char where[4200];
    snprintf(where, sizeof where, "%s (params)", pth);
    pk_unpickler_init(&u, "shard_checkpoint_load_config", pth, err);
    shard_status_t st = torch_legacy_root(pth, &u, &map, &size, &root, err);
    const pk_value_t *params = st == SHARD_OK ? pk_dict_get(root, "params") : NULL;
    const pk_value_t *model = st == SHARD_OK ? pk_dict_get(root, "model") : NULL;
    if (st == SHARD_OK && (params == NULL || params->kind != PK_DICT || model == NULL
                           || model->kind != PK_DICT))
        st = shard_error_set(err, SHARD_ERR_CONFIG, "shard_checkpoint_load_config: %s: no "
                             "config.json, and the checkpoint is not an original XLM one "
                             "(a dict with 'model' and 'params' dicts)", pth);
    if (st == SHARD_OK) {
        cJSON *json = params_json(params, model);
        st = json == NULL ? shard_error_set(err, SHARD_ERR_NOMEM, "shard_checkpoint_load_config: "
                                            "out of memory")
                          : shard_config_from_json(json, where, config, err);
        cJSON_Delete(json);
    }
    pk_unpickler_free(&u);
    if (map != NULL)
        munmap(map, size);
    return st;
}
