/* curve_keys.c: see curve_keys.h. */
#include "curve_keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

enum { KEY_FILE_MAX = 64 * 1024 }; /* a key file is a few hundred bytes */

bool proto_curve_available(void)
{
    return zmq_has("curve") != 0;
}

int proto_curve_cert_new(proto_curve_cert_t *cert, char err[PROTO_CURVE_ERROR_MAX])
{
    memset(cert, 0, sizeof *cert);
    if (!proto_curve_available() || zmq_curve_keypair(cert->public_key, cert->secret_key) != 0) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "proto_curve_cert_new: this libzmq has no CURVE "
                 "(zmq_has(\"curve\") is false): %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static bool key_text_valid(const char *text)
{
    uint8_t raw[32];
    return strlen(text) == PROTO_CURVE_KEY_TEXT && zmq_z85_decode(raw, text) != NULL;
}

/* "NAME = "VALUE"" (quotes optional) after leading blanks; true when the
 * line names name, with the value copied to out. */
static bool parse_key_line(const char *line, const char *name, char *out, size_t out_size,
                           bool *too_long)
{
    while (*line == ' ' || *line == '\t')
        line++;
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0)
        return false;
    line += n;
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line++ != '=')
        return false;
    while (*line == ' ' || *line == '\t')
        line++;
    bool quoted = *line == '"';
    line += quoted;
    size_t len = 0;
    while (line[len] && line[len] != '\n' && line[len] != '\r' && !(quoted && line[len] == '"') &&
           !(!quoted && (line[len] == ' ' || line[len] == '\t')))
        len++;
    *too_long = len >= out_size;
    if (*too_long)
        return true;
    memcpy(out, line, len);
    out[len] = '\0';
    return true;
}

int proto_curve_cert_load(const char *path, bool need_secret, proto_curve_cert_t *cert,
                          char err[PROTO_CURVE_ERROR_MAX])
{
    memset(cert, 0, sizeof *cert);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "CURVE key file '%s': %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    size_t read = 0;
    bool too_long = false, bad_public = false, bad_secret = false;
    while (!too_long && fgets(line, sizeof line, f)) {
        read += strlen(line);
        if (read > KEY_FILE_MAX) {
            too_long = true;
            break;
        }
        bool long_value = false;
        if (parse_key_line(line, "public-key", cert->public_key, sizeof cert->public_key, &long_value))
            bad_public |= long_value || !key_text_valid(cert->public_key);
        else if (parse_key_line(line, "secret-key", cert->secret_key, sizeof cert->secret_key,
                                &long_value))
            bad_secret |= long_value || !key_text_valid(cert->secret_key);
    }
    fclose(f);
    const char *bad = NULL;
    if (too_long)
        bad = "is larger than 64 KiB, not a key file";
    else if (bad_public)
        bad = "has a public-key that is not 40 characters of Z85";
    else if (bad_secret)
        bad = "has a secret-key that is not 40 characters of Z85";
    else if (!cert->public_key[0])
        bad = "has no public-key line (expected public-key = \"<40 Z85 characters>\")";
    else if (need_secret && !cert->secret_key[0])
        bad = "has no secret-key: give the NAME.key file of the pair, not NAME.pub";
    if (!bad && cert->secret_key[0]) {
        char derived[PROTO_CURVE_KEY_TEXT + 1];
        if (zmq_curve_public(derived, cert->secret_key) != 0)
            bad = "cannot be checked: this libzmq has no CURVE";
        else if (strcmp(derived, cert->public_key) != 0)
            bad = "has a public-key that does not belong to its secret-key";
    }
    if (bad) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "CURVE key file '%s' %s", path, bad);
        memset(cert, 0, sizeof *cert);
        return -1;
    }
    return 0;
}

static int write_file(const char *path, const char *text, mode_t mode, bool overwrite,
                      char err[PROTO_CURVE_ERROR_MAX])
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (overwrite ? 0 : O_EXCL), mode);
    if (fd < 0) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "cannot write '%s': %s%s", path, strerror(errno),
                 errno == EEXIST ? " (remove it first: a key pair is never overwritten)" : "");
        return -1;
    }
    size_t len = strlen(text);
    bool ok = write(fd, text, len) == (ssize_t)len && fchmod(fd, mode) == 0;
    int saved = errno;
    ok = close(fd) == 0 && ok;
    if (!ok) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "cannot write '%s': %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

int proto_curve_cert_save(const char *base, const proto_curve_cert_t *cert, bool overwrite,
                          char err[PROTO_CURVE_ERROR_MAX])
{
    char key_path[4096], pub_path[4096], text[1024];
    if ((size_t)snprintf(key_path, sizeof key_path, "%s.key", base) >= sizeof key_path ||
        (size_t)snprintf(pub_path, sizeof pub_path, "%s.pub", base) >= sizeof pub_path) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "proto_curve_cert_save: path '%.200s' is too long", base);
        return -1;
    }
    snprintf(text, sizeof text,
             "#   xlmserve CURVE key pair, written by xlm-keygen.\n"
             "#   Secret: keep it on this host (mode 0600); hand out %s.pub only.\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n"
             "    secret-key = \"%s\"\n", base, cert->public_key, cert->secret_key);
    if (write_file(key_path, text, 0600, overwrite, err) != 0)
        return -1;
    snprintf(text, sizeof text,
             "#   xlmserve CURVE public key, written by xlm-keygen.\n"
             "#   Public: copy it to the peers that must know this key (a broker's allow\n"
             "#   directory, or clients and workers as --curve-server).\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n", cert->public_key);
    return write_file(pub_path, text, 0644, overwrite, err);
}

int proto_curve_client_apply(void *socket, const proto_curve_cert_t *mine,
                             const proto_curve_cert_t *server, char err[PROTO_CURVE_ERROR_MAX])
{
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, server->public_key, PROTO_CURVE_KEY_TEXT + 1) ||
        zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, mine->public_key, PROTO_CURVE_KEY_TEXT + 1) ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, mine->secret_key, PROTO_CURVE_KEY_TEXT + 1)) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "cannot set the CURVE keys on a socket: %s",
                 zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

int proto_curve_client_files(void *socket, const char *secret_path, const char *server_path,
                             char err[PROTO_CURVE_ERROR_MAX])
{
    bool have_secret = secret_path && secret_path[0], have_server = server_path && server_path[0];
    if (!have_secret && !have_server)
        return 0;
    if (have_secret != have_server) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "CURVE needs both key files: %s is missing",
                 have_secret ? "the server's public key (--curve-server)"
                             : "this side's own key pair (--curve-secret)");
        return -1;
    }
    if (!proto_curve_available()) {
        snprintf(err, PROTO_CURVE_ERROR_MAX, "CURVE key files given, but this libzmq has no CURVE");
        return -1;
    }
    proto_curve_cert_t mine, server;
    if (proto_curve_cert_load(secret_path, true, &mine, err) != 0 ||
        proto_curve_cert_load(server_path, false, &server, err) != 0)
        return -1;
    return proto_curve_client_apply(socket, &mine, &server, err);
}
