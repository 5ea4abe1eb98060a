/* curve.c: CURVE keys for the client's socket, read from small files.
 *
 * A key file holds either the key's Z85 text alone (40 characters, any
 * surrounding whitespace) or a czmq certificate, where the key follows
 * `public-key = "` or `secret-key = "`. The client's public key is derived
 * from its secret one, so one secret file is enough on this side.
 */
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

enum { Z85_KEY_CHARS = 40, KEY_FILE_MAX = 8192 };

static bool read_small_file(const char *path, char *text, size_t size, char *error,
                            size_t error_size)
{
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(error, error_size, "cannot open the key file %s: %s", path, strerror(errno));
        return false;
    }
    size_t n = fread(text, 1, size - 1, file);
    bool too_big = n == size - 1 && fgetc(file) != EOF;
    fclose(file);
    if (too_big) {
        snprintf(error, error_size, "the key file %s is over %zu bytes: not a key", path, size - 1);
        return false;
    }
    text[n] = '\0';
    return true;
}

/* The 40 Z85 characters of the key named `label` (certificate) or of the
 * whole file, into key (41 bytes). */
static bool find_key(const char *path, const char *label, char *key, char *error,
                     size_t error_size)
{
    char text[KEY_FILE_MAX];
    if (!read_small_file(path, text, sizeof text, error, error_size))
        return false;
    char pattern[32];
    snprintf(pattern, sizeof pattern, "%s = \"", label);
    const char *start = strstr(text, pattern);
    size_t length;
    if (start) {
        start += strlen(pattern);
        const char *end = strchr(start, '"');
        length = end ? (size_t)(end - start) : strlen(start);
    } else {
        start = text + strspn(text, " \t\r\n");
        length = strcspn(start, " \t\r\n");
        if (start[length + strspn(start + length, " \t\r\n")]) {
            snprintf(error, error_size, "the key file %s holds more than one word and no "
                     "'%s = \"...\"' line: expected a Z85 key or a czmq certificate", path, label);
            return false;
        }
    }
    uint8_t binary[32];
    if (length != Z85_KEY_CHARS) {
        snprintf(error, error_size, "the %s in %s has %zu characters, expected %d (Z85)", label,
                 path, length, Z85_KEY_CHARS);
        return false;
    }
    memcpy(key, start, Z85_KEY_CHARS);
    key[Z85_KEY_CHARS] = '\0';
    if (!zmq_z85_decode(binary, key)) {
        snprintf(error, error_size, "the %s in %s is not Z85 text", label, path);
        return false;
    }
    return true;
}

bool client_curve_setup(void *socket, const char *server_file, const char *secret_file,
                        char *error, size_t error_size)
{
    char server[Z85_KEY_CHARS + 1], secret[Z85_KEY_CHARS + 1], public[Z85_KEY_CHARS + 1];
    if (!find_key(server_file, "public-key", server, error, error_size) ||
        !find_key(secret_file, "secret-key", secret, error, error_size))
        return false;
    if (zmq_curve_public(public, secret)) {
        snprintf(error, error_size, "cannot derive the public key from %s: %s (libzmq without "
                 "CURVE?)", secret_file, zmq_strerror(errno));
        return false;
    }
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, server, Z85_KEY_CHARS + 1) ||
        zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, public, Z85_KEY_CHARS + 1) ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, secret, Z85_KEY_CHARS + 1)) {
        snprintf(error, error_size, "cannot set the CURVE keys: %s", zmq_strerror(errno));
        return false;
    }
    return true;
}
