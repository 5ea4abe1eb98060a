/* case_files.h: reading the golden JSON-lines files in the shard tests. */
#ifndef XLM_TESTS_SHARD_CASE_FILES_H
#define XLM_TESTS_SHARD_CASE_FILES_H

#include <string.h>

#include "shard_common.h"

/* A whole file, NUL-terminated (free it), or NULL. */
static inline char *read_text(const char *path)
{
    char *text = NULL;
    size_t size = 0;
    shard_error_t err = {0};
    return shard_read_file(path, (size_t)1 << 30, &text, &size, &err) == SHARD_OK ? text : NULL;
}

/* Next line of text at *cursor (newline replaced by NUL), skipping blank
 * lines; NULL at the end. */
static inline char *next_line(char **cursor)
{
    while (**cursor == '\n' || **cursor == '\r')
        (*cursor)++;
    if (!**cursor)
        return NULL;
    char *line = *cursor, *end = strchr(line, '\n');
    if (end) {
        *end = '\0';
        *cursor = end + 1;
    } else {
        *cursor = line + strlen(line);
    }
    return line;
}

#endif
