/* test_stage_memory.c: a pipeline stage's resident memory is its share of
 * the weights, in every weight format. A checkpoint of 8 layers is written
 * as model.safetensors and rewritten (tests/tools/rewrite_checkpoint.py) as
 * a zip and a legacy pytorch_model.bin and as sharded folders of both; each
 * is opened whole and as the stage [3, 4) alone, and after the same layer
 * work the stage has brought in about an eighth of the weight pages the
 * whole model did, and each within 1.3 times what model.safetensors (used
 * in place) holds for the same range: no format keeps a second copy.
 * (tf_model.h5 is measured the same way in test_h5.c, which writes it.)
 * A sharded stage opens only the shards of its tensors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard_engine.h"

static char model_dir[4096];

/* The formats, as rewrite_checkpoint.py names them ("" = the safetensors
 * folder itself), each in model_dir/<name>. */
static const char *const formats[] = {"", "torch", "torch-legacy", "sharded", "sharded-torch"};
enum { N_FORMATS = sizeof formats / sizeof formats[0] };

static void format_dir(char *out, size_t size, const char *format)
{
    snprintf(out, size, "%s/%s", model_dir, format[0] ? format : "safetensors");
}

static size_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%lu %lu", &size, &resident), 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static int setup(void **state)
{
    (void)state;
    snprintf(model_dir, sizeof model_dir, "%s/stage-memory-%d", XLM_TEST_TMP, (int)getpid());
    char cmd[12000], dir[4200], base[4200];
    format_dir(base, sizeof base, "");
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && python3 '%s/tests/tools/make_checkpoint.py' '%s' '%s/tiny-clm-enfr' "
             "--emb 256 --layers 8 --heads 4 --causal",
             XLM_TEST_TMP, XLM_SOURCE_DIR, base, XLM_MODELS_DIR);
    if (system(cmd) != 0)
        return -1;
    for (size_t f = 1; f < N_FORMATS; f++) {
        format_dir(dir, sizeof dir, formats[f]);
        snprintf(cmd, sizeof cmd, "python3 '%s/tests/tools/rewrite_checkpoint.py' '%s' '%s' "
                 "--to %s --shards 8", XLM_SOURCE_DIR, base, dir, formats[f]);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", model_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Resident growth of opening a range and running its layers over 64 tokens. */
static size_t growth_of(const char *dir, const shard_range_t *range)
{
    shard_error_t err = {0};
#ifdef __GLIBC__
    /* What the previous model freed goes back first: shard_model_open trims
     * the heap, and that would count against this model's growth. */
    malloc_trim(0);
#endif
    size_t before = resident_bytes();
    shard_model_t *model = shard_model_open(dir, &(shard_model_options_t){.range = range}, &err);
    shard_state_t *run_state = shard_state_new();
    if (!model)
        fail_msg("%s", err.message);
    const int64_t d = shard_model_config(model)->emb_dim;
    shard_acts_t *acts = shard_acts_new();
    assert_int_equal(shard_acts_reserve(acts, 1, 64, d, 64, &err), SHARD_OK);
    acts->row_start[0] = 0;
    acts->row_start[1] = 64;
    for (int64_t t = 0; t < 64; t++) {
        acts->position[t] = (int32_t)t;
        acts->is_real[t] = 1;
        for (int64_t i = 0; i < d; i++)
            acts->hidden[t * d + i] = (float)((t * 7 + i * 3) % 11) / 11.0f - 0.5f;
    }
    assert_int_equal(shard_run_layers(model, run_state, acts, &err), SHARD_OK);
    /* RSS can shrink meanwhile (pages the previous open freed, given
     * back): that is no growth, not a wrapped size_t. */
    const size_t after = resident_bytes();
    size_t growth = after > before ? after - before : 0;
    shard_acts_destroy(&acts);
    shard_state_destroy(&run_state);
    shard_model_destroy(&model);
    return growth;
}

static void stage_holds_its_share(const char *format)
{
    char dir[4200], mapped[4200];
    format_dir(dir, sizeof dir, format);
    format_dir(mapped, sizeof mapped, "");
    /* A first run pays for BLAS's buffers, which both measurements share. */
    shard_range_t warm = {7, 8, false, false};
    growth_of(dir, &warm);
    shard_range_t stage = {3, 4, false, false};
    shard_range_t whole = {0, 8, false, false};
    size_t one = growth_of(dir, &stage);
    size_t all = growth_of(dir, &whole);
    /* The same ranges from model.safetensors, mapped in place: the least a
     * format can hold. */
    size_t one_mapped = growth_of(mapped, &stage);
    size_t all_mapped = growth_of(mapped, &whole);
    /* One layer of emb 256: 786,432 float32 values, 3 MiB. */
    print_message("%s: resident growth: stage [3, 4) %zu KiB, layers [0, 8) %zu KiB "
                  "(safetensors %zu KiB, %zu KiB)\n", format[0] ? format : "safetensors",
                  one / 1024, all / 1024, one_mapped / 1024, all_mapped / 1024);
    assert_true(all >= 7 * (size_t)3 * 1024 * 1024);
    assert_true(one <= all / 4);
    /* No second copy of any weight: within 1.3 times the mapped folder's.
     * Not under AddressSanitizer, whose redzones and quarantine make heap
     * memory (where the readers' small tensors live) no measure of copies. */
#ifndef __SANITIZE_ADDRESS__
    /* and the mapped folder itself holds its 8 layers once (weights
     * reordered for oneDNN replace the mapped pages, not add to them) */
    const size_t layers_bytes = 8 * (size_t)3 * 1024 * 1024;
    if (all_mapped * 10 > layers_bytes * 13)
        fail_msg("safetensors holds %zu KiB for 8 layers of %zu KiB: over 1.3 times",
                 all_mapped / 1024, layers_bytes / 1024);
    if (one * 10 > one_mapped * 13 || all * 10 > all_mapped * 13)
        fail_msg("%s holds %zu KiB for the stage, %zu KiB whole; safetensors %zu KiB, %zu KiB: "
                 "over 1.3 times", format, one / 1024, all / 1024, one_mapped / 1024,
                 all_mapped / 1024);
#endif
}

static void safetensors_stage(void **state) { (void)state; stage_holds_its_share(""); }
static void torch_stage(void **state) { (void)state; stage_holds_its_share("torch"); }
static void legacy_stage(void **state) { (void)state; stage_holds_its_share("torch-legacy"); }
static void sharded_stage(void **state) { (void)state; stage_holds_its_share("sharded"); }
static void sharded_torch_stage(void **state)
{
    (void)state;
    stage_holds_its_share("sharded-torch");
}

/* The shard holding layer 0's first tensors is overwritten with garbage: the
 * stage [3, 4) never opens it and loads; the whole model names the file. */
static void sharded_stage_opens_its_shards(void **state)
{
    (void)state;
    for (size_t f = 3; f < N_FORMATS; f++) {
        char dir[4200], cmd[13000];
        format_dir(dir, sizeof dir, formats[f]);
        const char *shard = f == 3 ? "model-00002-of-00008.safetensors"
                                   : "pytorch_model-00002-of-00008.bin";
        snprintf(cmd, sizeof cmd, "cp -r '%s' '%s-bad' && printf garbage > '%s-bad/%s'", dir, dir,
                 dir, shard);
        assert_int_equal(system(cmd), 0);
        strcat(dir, "-bad");
        shard_error_t err = {0};
        shard_range_t stage = {6, 7, false, false};
        shard_model_t *model = shard_model_open(dir, &(shard_model_options_t){.range = &stage}, &err);
        if (!model)
            fail_msg("%s: %s", dir, err.message);
        shard_model_destroy(&model);
        model = shard_model_open(dir, NULL, &err);
        assert_null(model);
        print_message("%s: whole model: %s\n", formats[f], err.message);
        assert_non_null(strstr(err.message, shard));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(safetensors_stage),
        cmocka_unit_test(torch_stage),
        cmocka_unit_test(legacy_stage),
        cmocka_unit_test(sharded_stage),
        cmocka_unit_test(sharded_torch_stage),
        cmocka_unit_test(sharded_stage_opens_its_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
