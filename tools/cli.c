/* cli.c: version and option errors, one wording for every program. */
#include "cli.h"

#include <getopt.h>
#include <string.h>

void tools_print_version(FILE *out, const char *program)
{
    fprintf(out, "%s (xlmserve) %s, wire protocol version %d\n", program, XLM_PROJECT_VERSION,
            XLM_WIRE_VERSION);
}

void tools_bad_option(FILE *out, const char *program, char **argv, int opt)
{
    /* getopt leaves the offending word just before optind. */
    const char *word = optind > 0 ? argv[optind - 1] : "?";
    if (opt == ':')
        fprintf(out, "%s: option '%s' needs a value; see --help\n", program, word);
    else if (optopt)
        fprintf(out, "%s: unknown option '-%c'; see --help\n", program, optopt);
    else
        fprintf(out, "%s: unknown option '%s'; see --help\n", program, word);
}

void tools_tally_add(tools_tally_t *t, const char *code)
{
    t->lines++;
    if (!code)
        return;
    t->errors++;
    int i = 0;
    while (i < t->n_codes && strcmp(t->codes[i].code, code) != 0)
        i++;
    if (i == t->n_codes && t->n_codes < TOOLS_TALLY_CODES)
        snprintf(t->codes[t->n_codes++].code, TOOLS_CODE_MAX, "%s", code);
    if (i < t->n_codes)
        t->codes[i].n++;
}

void tools_tally_print(FILE *out, const char *program, const tools_tally_t *t)
{
    if (!t->errors)
        return;
    fprintf(out, "%s: %lld lines, %lld with an error (", program, t->lines, t->errors);
    for (int i = 0; i < t->n_codes; i++)
        fprintf(out, "%s%s %lld", i ? ", " : "", t->codes[i].code, t->codes[i].n);
    fprintf(out, ")\n");
}
