/* checkpoint_internal.h: what the readers of shard/checkpoint expose to
 * each other and to their fuzz targets, beyond shard_checkpoint.h. */
#ifndef XLM_SHARD_CHECKPOINT_INTERNAL_H
#define XLM_SHARD_CHECKPOINT_INTERNAL_H

#include "shard_checkpoint.h"

/* Fills tf's entries (tf->backing a sharded reader's, set up by
 * tensor_file_open_sharded) from the text of an index file:
 * {"weight_map": {tensor name: shard file name}}. Every shard file named
 * must exist beside the index. */
shard_status_t tensor_file_sharded_parse(tensor_file_t *tf, const char *text, size_t len,
                                         shard_error_t *err);

#endif /* XLM_SHARD_CHECKPOINT_INTERNAL_H */
