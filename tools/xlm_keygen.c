/* xlm_keygen.c: xlm-keygen, a CURVE key pair as two files.
 *
 *   xlm-keygen [--force] NAME    writes NAME.key (secret, 0600) and NAME.pub
 *
 * The format is proto/curve_keys.h's (czmq's certificate layout). The
 * broker takes its own NAME.key with --curve-key and a directory of the
 * clients' and workers' .pub files with --curve-allow; clients and workers
 * take their NAME.key with --curve-secret and the broker's .pub with
 * --curve-server. */
#include "cli.h"
#include "curve_keys.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fputs("usage: xlm-keygen [--force] NAME\n"
          "\n"
          "Writes a new CURVE key pair: NAME.key (public and secret key, mode 0600: keep it\n"
          "on its host) and NAME.pub (the public key: copy it to the peers). Prints the\n"
          "public key. Existing files are kept unless --force.\n"
          "\n"
          "  --force     overwrite NAME.key and NAME.pub\n"
          "  --version   the project's and the wire protocol's versions\n"
          "  --help      this text\n",
          out);
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"force", no_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    bool force = false;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'f': force = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': tools_print_version(stdout, "xlm-keygen"); return 0;
        default: tools_bad_option(stderr, "xlm-keygen", argv, opt); return 2;
        }
    }
    if (optind + 1 != argc || !argv[optind][0]) {
        fprintf(stderr, "xlm-keygen: %s; see --help\n",
                optind == argc ? "NAME is required" : "one NAME only");
        return 2;
    }
    const char *base = argv[optind];
    proto_curve_cert_t cert;
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_cert_new(&cert, err) != 0 || proto_curve_cert_save(base, &cert, force, err) != 0) {
        fprintf(stderr, "xlm-keygen: %s\n", err);
        memset(&cert, 0, sizeof cert);
        return 1;
    }
    printf("%s\n", cert.public_key);
    memset(&cert, 0, sizeof cert);
    return 0;
}
