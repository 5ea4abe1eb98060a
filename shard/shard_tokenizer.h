/* shard_tokenizer.h: the XLM tokenizer, part of shard.h (include shard.h). */
#ifndef XLM_SHARD_TOKENIZER_H
#define XLM_SHARD_TOKENIZER_H
#endif
