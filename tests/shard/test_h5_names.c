/* test_h5_names.c: tf_model.h5's attribute values interpreted without
 * libhdf5 (shard/checkpoint/h5_names.c): variable-length references
 * checked against hand-made global heap collections, the name lists and
 * the TF name translation, against hand-written expected values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "h5_names.h"

/* A file of PAD bytes, then one collection (8-byte sizes) at address PAD. */
enum { PAD = 8, SIZES = 8, FILE_MAX = 512 };

typedef struct {
    uint8_t bytes[FILE_MAX];
    size_t size;      /* of the file */
    size_t heap_size; /* of the collection, as its header says */
} heap_file_t;

static void put_le(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static void heap_begin(heap_file_t *f)
{
    memset(f, 0, sizeof *f);
    memcpy(f->bytes + PAD, "GCOL", 4);
    f->bytes[PAD + 4] = 1;
    f->size = PAD + 8 + SIZES;
}

/* One object record: index, reference count, reserved, size, data padded
 * to 8 bytes. */
static void heap_add(heap_file_t *f, uint16_t index, const char *text)
{
    size_t len = strlen(text), at = f->size;
    put_le(f->bytes + at, index, 2);
    put_le(f->bytes + at + 8, len, SIZES);
    memcpy(f->bytes + at + 16, text, len);
    f->size = at + 16 + ((len + 7) & ~(size_t)7);
}

static void heap_end(heap_file_t *f)
{
    f->heap_size = f->size - PAD;
    put_le(f->bytes + PAD + 8, f->heap_size, SIZES);
}

/* A reference with 8-byte addresses: length, address, index. */
static void ref_put(uint8_t *ref, uint32_t length, uint64_t addr, uint32_t index)
{
    put_le(ref, length, 4);
    put_le(ref + 4, addr, 8);
    put_le(ref + 12, index, 4);
}

static shard_status_t check(const heap_file_t *f, const uint8_t *refs, size_t n,
                            shard_error_t *err)
{
    h5_source_t src = {.image = f->bytes, .fd = -1, .size = f->size};
    h5_heap_t heap = {.sizeof_addr = 8, .sizeof_size = SIZES};
    memset(err, 0, sizeof *err);
    shard_status_t st = h5_check_vlen_refs("t.h5", "weight_names of transformer", &src, &heap,
                                           refs, n, err);
    assert_null(heap.bytes); /* the cache is freed */
    return st;
}

static void expect_refused(const heap_file_t *f, const uint8_t *refs, size_t n,
                           const char *want)
{
    shard_error_t err;
    assert_int_equal(check(f, refs, n, &err), SHARD_ERR_FORMAT);
    print_message("%s\n", err.message);
    if (strstr(err.message, want) == NULL
        || strstr(err.message, "t.h5: attribute weight_names of transformer") == NULL)
        fail_msg("message \"%s\" does not name \"%s\"", err.message, want);
}

static void two_names(heap_file_t *f)
{
    heap_begin(f);
    heap_add(f, 1, "transformer");
    heap_add(f, 2, "m/transformer/position_embeddings/embeddings:0");
    heap_end(f);
}

static void test_heap_references_accepted(void **state)
{
    (void)state;
    heap_file_t f;
    two_names(&f);
    uint8_t refs[3 * 16];
    ref_put(refs, 11, PAD, 1);
    ref_put(refs + 16, 46, PAD, 2);
    ref_put(refs + 32, 999, 0, 7); /* a null string: nothing to read */
    shard_error_t err;
    assert_int_equal(check(&f, refs, 3, &err), SHARD_OK);

    h5_source_t src = {.image = f.bytes, .fd = -1, .size = f.size};
    h5_heap_t heap = {.sizeof_addr = 8, .sizeof_size = SIZES};
    uint64_t offset = 0, length = 0;
    assert_null(h5_heap_load(&src, &heap, PAD));
    assert_int_equal(heap.size, f.heap_size);
    assert_true(h5_heap_object(&heap, 2, &offset, &length));
    assert_int_equal(offset, (8 + SIZES) + 32 + 16); /* header, record 1, record 2's head */
    assert_int_equal(length, 46);
    assert_memory_equal(heap.bytes + offset, "m/transformer/position_embeddings", 33);
    assert_false(h5_heap_object(&heap, 3, &offset, &length));
    assert_false(h5_heap_object(&heap, 0, &offset, &length));
    h5_heap_free(&heap);
}

static void test_heap_references_refused(void **state)
{
    (void)state;
    heap_file_t f;
    uint8_t ref[16];
    two_names(&f);
    ref_put(ref, 10, PAD, 1);
    expect_refused(&f, ref, 1, "string 0 (10 bytes, heap object 1 at 8): its global heap "
                   "object's size is not the string's length");
    ref_put(ref, 11, PAD, 5);
    expect_refused(&f, ref, 1, "its global heap collection has no such object");
    ref_put(ref, 2000, PAD, 1);
    expect_refused(&f, ref, 1, "longer than any layer or weight name");
    ref_put(ref, 11, f.size - 4, 1);
    expect_refused(&f, ref, 1, "its global heap collection lies past the end of the file");
    ref_put(ref, 11, 1, 1);
    expect_refused(&f, ref, 1, "no global heap collection (GCOL, version 1) at its address");

    ref_put(ref, 11, PAD, 1);
    put_le(f.bytes + PAD + 8, f.size, SIZES); /* the collection runs past the file */
    expect_refused(&f, ref, 1, "its global heap collection's size runs past the end of the file");
    two_names(&f);
    put_le(f.bytes + PAD + 16 + 8, 1000, SIZES); /* object 1 runs past the collection */
    expect_refused(&f, ref, 1, "an object of its global heap collection runs past the collection");
}

static void test_translate(void **state)
{
    (void)state;
    static const struct { const char *tf, *engine; bool transpose; } names[] = {
        {"tfxlm_with_lm_head_model/transformer/attentions_._0/q_lin/kernel:0",
         "transformer.attentions.0.q_lin.weight", true},
        {"tfxlm_model/transformer/layer_norm_emb/gamma:0", "transformer.layer_norm_emb.weight",
         false},
        {"tfxlm_model/transformer/layer_norm2_._1/beta:0", "transformer.layer_norm2.1.bias",
         false},
        {"m/transformer/embeddings/embeddings:0", "transformer.embeddings.weight", false},
        {"m/pred_layer_._proj/bias:0", "pred_layer.proj.bias", false},
        {"m/x:0", "x", false},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char out[512];
        bool transpose = !names[i].transpose;
        assert_true(h5_translate(names[i].tf, out, sizeof out, &transpose));
        assert_string_equal(out, names[i].engine);
        assert_int_equal(transpose, names[i].transpose);
    }
    char out[16];
    bool transpose = false;
    assert_false(h5_translate("no_scope:0", out, sizeof out, &transpose));
    assert_false(h5_translate("m/transformer/kernel", out, sizeof out, &transpose));
    assert_false(h5_translate("m/:0", out, sizeof out, &transpose));
    assert_false(h5_translate("m/a_very_long_name_here:0", out, sizeof out, &transpose));
    assert_true(h5_translate("m/fifteen_bytes:0", out, sizeof out, &transpose));
    assert_string_equal(out, "fifteen_bytes");
}

static void test_name_lists(void **state)
{
    (void)state;
    h5_names_t names = {0};
    shard_error_t err = {0};
    /* Fixed-length strings of 6 bytes, NUL-padded or full. */
    assert_int_equal(h5_names_add_fixed(&names, "ab\0\0\0\0abcdefx\0yz\0\0", 3, 6, &err),
                     SHARD_OK);
    char *more[] = {"abcdef", NULL};
    assert_int_equal(h5_names_add_strings(&names, more, 2, &err), SHARD_OK);
    assert_int_equal(names.count, 5);
    assert_string_equal(names.items[0], "ab");
    assert_string_equal(names.items[1], "abcdef");
    assert_string_equal(names.items[2], "x");
    assert_string_equal(names.items[3], "abcdef");
    assert_string_equal(names.items[4], "");
    assert_true(h5_first_listing(&names, 0));
    assert_true(h5_first_listing(&names, 1));
    assert_false(h5_first_listing(&names, 3)); /* a tied copy of item 1 */
    assert_true(h5_first_listing(&names, 4));
    h5_names_free(&names);
    assert_null(names.items);
    assert_int_equal(names.count, 0);

    assert_true(h5_layer_name_ok("transformer"));
    assert_false(h5_layer_name_ok(""));
    assert_false(h5_layer_name_ok("a/b"));
    char split[16];
    assert_true(h5_split_name(split, sizeof split, "weight_names", 12));
    assert_string_equal(split, "weight_names12");
    assert_false(h5_split_name(split, sizeof split, "weight_names", 1234));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_references_accepted),
        cmocka_unit_test(test_heap_references_refused),
        cmocka_unit_test(test_translate),
        cmocka_unit_test(test_name_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
