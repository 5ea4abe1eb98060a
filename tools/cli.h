/* cli.h: what every command-line program says the same way: its version,
 * and an option it does not know. */
#ifndef XLM_TOOLS_CLI_H
#define XLM_TOOLS_CLI_H

#include <stdio.h>

/* "PROGRAM xlmserve VERSION (wire protocol N)". */
void tools_print_version(FILE *out, const char *program);

/* One line for getopt_long's '?' (unknown option) or ':' (missing value),
 * naming the option and pointing at --help; getopt must run with
 * opterr = 0 and an optstring starting with ':'. */
void tools_bad_option(FILE *out, const char *program, char **argv, int opt);

/* Error lines counted by code, for the closing line and the exit status
 * (0 every line ok, 1 some lines failed, 2 could not run, 3 stopped early:
 * the same for every program). */
enum { TOOLS_EXIT_OK = 0, TOOLS_EXIT_LINE_ERRORS = 1, TOOLS_EXIT_CANNOT_RUN = 2,
       TOOLS_EXIT_STOPPED = 3 };
enum { TOOLS_TALLY_CODES = 16, TOOLS_CODE_MAX = 32 };

typedef struct {
    long long lines, errors;
    struct { char code[TOOLS_CODE_MAX]; long long n; } codes[TOOLS_TALLY_CODES];
    int n_codes;
} tools_tally_t;

/* code NULL: the line succeeded. */
void tools_tally_add(tools_tally_t *t, const char *code);
/* "PROGRAM: N lines, K errors (bad_request 2, too_large 1)" when K > 0. */
void tools_tally_print(FILE *out, const char *program, const tools_tally_t *t);

#endif /* XLM_TOOLS_CLI_H */
