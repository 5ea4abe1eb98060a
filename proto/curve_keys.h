/* curve_keys.h: CURVE key files, shared by the broker, the workers, the
 * client library and xlm-keygen.
 *
 * A key pair is two small text files (czmq's zcert layout, so its tools
 * read them too): NAME.key holds the public and the secret key (mode 0600,
 * stays on its host), NAME.pub the public key alone (handed to the other
 * side). Keys are Z85 text, 40 characters:
 *
 *   #   xlmserve CURVE key pair, written by xlm-keygen
 *   metadata
 *   curve
 *       public-key = "<40 Z85 characters>"
 *       secret-key = "<40 Z85 characters>"
 *
 * Lines starting with # are comments; other lines than the two keys are
 * ignored. A file with a secret-key must also hold the public key that
 * belongs to it (checked).
 */
#ifndef XLM_PROTO_CURVE_KEYS_H
#define XLM_PROTO_CURVE_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PROTO_CURVE_KEY_TEXT = 40, PROTO_CURVE_ERROR_MAX = 512 };

typedef struct {
    char public_key[PROTO_CURVE_KEY_TEXT + 1]; /* Z85 */
    char secret_key[PROTO_CURVE_KEY_TEXT + 1]; /* Z85; "" when the file had none */
} proto_curve_cert_t;

/* Whether this libzmq has CURVE (zmq_has("curve")). */
bool proto_curve_available(void);

/* A new random key pair. -1 (err says why) when libzmq has no CURVE. */
int proto_curve_cert_new(proto_curve_cert_t *cert, char err[PROTO_CURVE_ERROR_MAX]);

/* Reads a key file. need_secret: a NAME.key is required (not a .pub).
 * -1 with err naming the file and what is wrong. */
int proto_curve_cert_load(const char *path, bool need_secret, proto_curve_cert_t *cert,
                          char err[PROTO_CURVE_ERROR_MAX]);

/* Writes BASE.key (public and secret, mode 0600) and BASE.pub; refuses to
 * overwrite either unless overwrite. -1 with err. */
int proto_curve_cert_save(const char *base, const proto_curve_cert_t *cert, bool overwrite,
                          char err[PROTO_CURVE_ERROR_MAX]);

/* Makes a socket a CURVE client of the server with public key server_key,
 * as mine (secret and public). Call before connect. -1 with err. */
int proto_curve_client_apply(void *socket, const proto_curve_cert_t *mine,
                             const proto_curve_cert_t *server, char err[PROTO_CURVE_ERROR_MAX]);

/* Reads the two files of a CURVE client (own secret key file, the server's
 * public key file) and applies them to socket. Both NULL: nothing to do,
 * 0. One of them only: -1. */
int proto_curve_client_files(void *socket, const char *secret_path, const char *server_path,
                             char err[PROTO_CURVE_ERROR_MAX]);

#ifdef __cplusplus
}
#endif

#endif /* XLM_PROTO_CURVE_KEYS_H */
