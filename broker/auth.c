/* auth.c: CURVE on the broker's sockets and the ZAP handler that decides
 * who may connect.
 *
 * A side (frontend, backend) with an allow directory is a CURVE server
 * with the broker's key pair, and its ZAP domain names the side. libzmq
 * asks the handler, a REP socket on inproc://zeromq.zap.01 polled in the
 * broker's own loop (no thread), about every handshake: the client's public
 * key must be one of the .pub files (any file with a public-key line) of
 * that side's directory. The answer's user id is the key, so every message
 * carries it and one from a key removed since the handshake is not
 * served: revocation also ends live connections' traffic, not only new
 * ones. Such a message is answered, not dropped in silence (a client hears
 * PERMISSION_DENIED, a worker Disconnect{refused, revoked}; frontend.c and
 * backend.c), at most AUTH_ANSWERS_PER_SECOND a second per side: a revoked
 * peer that keeps sending costs little more than being ignored.
 *
 * The directory is read again when it changes: its own mtime (a file added,
 * removed or renamed) is looked at on every handshake, and every file's
 * mtime and size on each timer tick (a file edited in place). */
#include "broker_internal.h"

#include "curve_keys.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { AUTH_SIDES = 2, AUTH_PATH_MAX = 4096, ZAP_FRAMES = 8, AUTH_ANSWERS_PER_SECOND = 100 };

static const char *const side_names[AUTH_SIDES] = {"frontend", "backend"};

typedef struct {
    bool curve;
    char dir[AUTH_PATH_MAX];
    broker_map_t *allowed;      /* Z85 public key -> (void *)1 */
    size_t n_keys;
    uint64_t signature;         /* of the entries' names, mtimes and sizes */
    struct timespec dir_mtime;
    int64_t answers_since_us;   /* the second the answers to revoked keys are counted in */
    uint32_t answers;
} auth_side_t;

struct broker_auth {
    void *zap;
    void *monitors[AUTH_SIDES]; /* PAIR: handshakes that failed before ZAP (a plain
                                   client, a wrong server key) */
    proto_curve_cert_t server;
    auth_side_t sides[AUTH_SIDES];
    uint64_t refused, revoked_messages;
};

uint64_t broker_auth_refused(const broker_auth_t *auth)
{
    return auth ? auth->refused : 0;
}

uint64_t broker_auth_revoked_messages(const broker_auth_t *auth)
{
    return auth ? auth->revoked_messages : 0;
}

/* ------------------------------------------------------------ allow lists */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static bool entry_listed(const struct dirent *e)
{
    return e->d_name[0] != '.'; /* hidden files and editors' swap files stay out */
}

/* Hash of what the directory holds; 0 when it cannot be read. */
static uint64_t dir_signature(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t h = 0xcbf29ce484222325ull, sum = 0;
    struct dirent *e;
    char path[AUTH_PATH_MAX + 256];
    while ((e = readdir(d))) {
        if (!entry_listed(e))
            continue;
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        /* Summed, so that the order readdir gives does not matter. */
        uint64_t one = fnv1a(0xcbf29ce484222325ull, e->d_name, strlen(e->d_name));
        one = fnv1a(one, &st.st_mtim, sizeof st.st_mtim);
        one = fnv1a(one, &st.st_size, sizeof st.st_size);
        sum += one;
    }
    closedir(d);
    return fnv1a(h, &sum, sizeof sum) | 1;
}

/* Reads the side's directory into a new map; the old one stays on failure. */
static int side_load(broker_t *b, auth_side_t *s, const char *name)
{
    DIR *d = opendir(s->dir);
    if (!d) {
        broker_log(b, BROKER_LOG_ERROR, "CURVE allow directory '%s' of the %s: %s", s->dir, name,
                   strerror(errno));
        return -1;
    }
    broker_map_t *allowed = broker_map_new();
    size_t n = 0;
    struct dirent *e;
    char path[AUTH_PATH_MAX + 256];
    while (allowed && (e = readdir(d))) {
        if (!entry_listed(e))
            continue;
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        proto_curve_cert_t cert;
        char err[PROTO_CURVE_ERROR_MAX];
        if (proto_curve_cert_load(path, false, &cert, err) != 0) {
            broker_log(b, BROKER_LOG_WARN, "%s: skipped, the %s does not allow it", err, name);
            continue;
        }
        if (broker_map_put(allowed, cert.public_key, PROTO_CURVE_KEY_TEXT, (void *)1) != BROKER_OK) {
            broker_map_destroy(&allowed);
            break;
        }
        n++;
    }
    closedir(d);
    if (!allowed) {
        broker_log(b, BROKER_LOG_ERROR, "CURVE allow directory '%s': out of memory", s->dir);
        return -1;
    }
    broker_map_destroy(&s->allowed);
    s->allowed = allowed;
    broker_log(b, BROKER_LOG_INFO, "CURVE: the %s allows %zu client keys from %s", name, n, s->dir);
    s->n_keys = n;
    s->signature = dir_signature(s->dir);
    struct stat st;
    if (stat(s->dir, &st) == 0)
        s->dir_mtime = st.st_mtim;
    return 0;
}

static void side_reload_if_changed(broker_t *b, int side, bool full)
{
    auth_side_t *s = &b->auth->sides[side];
    if (!s->curve)
        return;
    struct stat st;
    bool changed = stat(s->dir, &st) != 0 || st.st_mtim.tv_sec != s->dir_mtime.tv_sec ||
                   st.st_mtim.tv_nsec != s->dir_mtime.tv_nsec;
    if (!changed && full)
        changed = dir_signature(s->dir) != s->signature;
    if (changed)
        side_load(b, s, side_names[side]);
}

void broker_auth_reload(broker_t *b)
{
    for (int side = 0; b->auth && side < AUTH_SIDES; side++)
        side_reload_if_changed(b, side, true);
}

/* ------------------------------------------------------------ set-up */

static bool endpoint_is_local(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0)
        return true;
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    /* An interface binding ("tcp://lo;127.0.0.1:5555") or a source
     * address is not read here: only plain loopback addresses count. */
    return strncmp(host, "127.", 4) == 0 || strncmp(host, "localhost:", 10) == 0 ||
           strncmp(host, "[::1]:", 6) == 0;
}

/* What the configuration asks for is possible and safe; logs why not. */
static bool config_consistent(const broker_t *b)
{
    const broker_config_t *c = &b->config;
    const char *allow[AUTH_SIDES] = {c->frontend_curve_allow, c->backend_curve_allow};
    const char *endpoint[AUTH_SIDES] = {c->frontend, c->backend};
    const char *option[AUTH_SIDES] = {"--frontend-curve-allow", "--backend-curve-allow"};
    bool any = allow[0] || allow[1];
    if (any && !c->curve_key) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: an allow directory of client keys needs the "
                   "broker's own key pair: give --curve-key FILE (xlm-keygen writes one)");
        return false;
    }
    if (c->curve_key && !any) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: --curve-key without an allow directory: give "
                   "--curve-allow DIR (both sides) or --frontend-curve-allow / --backend-curve-allow");
        return false;
    }
    if (any && !proto_curve_available()) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: CURVE asked for, but this libzmq has no CURVE "
                   "(zmq_has(\"curve\") is false)");
        return false;
    }
    for (int side = 0; side < AUTH_SIDES; side++)
        if (!allow[side] && !c->insecure && !endpoint_is_local(endpoint[side])) {
            broker_log(b, BROKER_LOG_ERROR, "broker_new: the %s '%s' is not a loopback address and "
                       "has no CURVE: give --curve-key FILE and --curve-allow DIR (or %s DIR), or "
                       "--insecure to serve it unauthenticated on a trusted network",
                       side_names[side], endpoint[side], option[side]);
            return false;
        }
    return true;
}

void broker_auth_destroy(broker_auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    broker_auth_t *auth = *self_p;
    if (auth->zap)
        zmq_close(auth->zap);
    for (int side = 0; side < AUTH_SIDES; side++)
        if (auth->monitors[side])
            zmq_close(auth->monitors[side]);
    for (int side = 0; side < AUTH_SIDES; side++)
        broker_map_destroy(&auth->sides[side].allowed);
    memset(&auth->server, 0, sizeof auth->server);
    free(auth);
    *self_p = NULL;
}

int broker_auth_start(broker_t *b)
{
    if (!config_consistent(b))
        return -1;
    const broker_config_t *c = &b->config;
    const char *allow[AUTH_SIDES] = {c->frontend_curve_allow, c->backend_curve_allow};
    if (!allow[0] && !allow[1])
        return 0;
    broker_auth_t *auth = calloc(1, sizeof *auth);
    if (!auth)
        return -1;
    b->auth = auth;
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_cert_load(c->curve_key, true, &auth->server, err) != 0) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: %s", err);
        return -1;
    }
    for (int side = 0; side < AUTH_SIDES; side++) {
        auth_side_t *s = &auth->sides[side];
        if (!allow[side])
            continue;
        s->curve = true;
        snprintf(s->dir, sizeof s->dir, "%s", allow[side]);
        if (side_load(b, s, side_names[side]) != 0)
            return -1;
    }
    /* Bound before any CURVE socket: libzmq lets every handshake through
     * while no handler listens. */
    auth->zap = zmq_socket(b->ctx, ZMQ_REP);
    int linger = 0;
    if (!auth->zap || zmq_setsockopt(auth->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(auth->zap, "inproc://zeromq.zap.01") != 0) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: cannot start the ZAP handler: %s",
                   zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

int broker_auth_secure(broker_t *b, void *socket, int side)
{
    if (!b->auth || !b->auth->sides[side].curve)
        return 0;
    int on = 1;
    const char *domain = side_names[side];
    char name[64];
    snprintf(name, sizeof name, "inproc://xlm-broker-handshakes-%s", domain);
    void **monitor = &b->auth->monitors[side];
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVER, &on, sizeof on) != 0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, b->auth->server.secret_key,
                       PROTO_CURVE_KEY_TEXT + 1) != 0 ||
        zmq_setsockopt(socket, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) != 0 ||
        zmq_socket_monitor(socket, name, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                             ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0 ||
        !(*monitor = zmq_socket(b->ctx, ZMQ_PAIR)) || zmq_connect(*monitor, name) != 0) {
        broker_log(b, BROKER_LOG_ERROR, "broker_new: cannot make the %s a CURVE server: %s",
                   domain, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static void handle_zap(broker_t *b);

size_t broker_auth_poll_items(const broker_t *b, zmq_pollitem_t *items)
{
    size_t n = 0;
    if (!b->auth)
        return 0;
    items[n++] = (zmq_pollitem_t){b->auth->zap, 0, ZMQ_POLLIN, 0};
    for (int side = 0; side < AUTH_SIDES; side++)
        if (b->auth->monitors[side])
            items[n++] = (zmq_pollitem_t){b->auth->monitors[side], 0, ZMQ_POLLIN, 0};
    return n;
}

/* A handshake that failed before ZAP was asked: said once per window. */
static void read_monitor(broker_t *b, int side)
{
    void *monitor = b->auth->monitors[side];
    for (;;) {
        zmq_msg_t event, address;
        zmq_msg_init(&event);
        if (zmq_msg_recv(&event, monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&event);
            return;
        }
        zmq_msg_init(&address);
        if (zmq_msg_more(&event))
            zmq_msg_recv(&address, monitor, 0);
        uint16_t id = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&event) >= 6) {
            memcpy(&id, zmq_msg_data(&event), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&event) + 2, 4);
        }
        const char *why = id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                              ? "the connection ended during the handshake"
                          : value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                              ? "it does not use CURVE"
                              : "not this broker's public key, or not CURVE";
        b->auth->refused++;
        broker_log_peer(b, BROKER_PEER_AUTH, BROKER_LOG_WARN,
                        "CURVE: %s refused a client: its handshake failed (%s; ZeroMQ event %u, "
                        "value 0x%x)", side_names[side], why, id, value);
        zmq_msg_close(&address);
        zmq_msg_close(&event);
    }
}

void broker_auth_handle(broker_t *b, const zmq_pollitem_t *items, size_t n)
{
    if (n > 0 && (items[0].revents & ZMQ_POLLIN))
        handle_zap(b);
    for (size_t i = 1, side = 0; i < n && side < AUTH_SIDES; side++) {
        if (!b->auth->monitors[side])
            continue;
        if (items[i].revents & ZMQ_POLLIN)
            read_monitor(b, (int)side);
        i++;
    }
}

/* ------------------------------------------------------------ ZAP */

static int side_of_domain(const zmq_msg_t *domain)
{
    size_t n = zmq_msg_size((zmq_msg_t *)domain);
    for (int side = 0; side < AUTH_SIDES; side++)
        if (n == strlen(side_names[side]) &&
            memcmp(zmq_msg_data((zmq_msg_t *)domain), side_names[side], n) == 0)
            return side;
    return -1;
}

static void zap_reply(void *zap, const zmq_msg_t *request_id, const char *code, const char *text,
                      const char *user_id)
{
    zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(zap, zmq_msg_data((zmq_msg_t *)request_id), zmq_msg_size((zmq_msg_t *)request_id),
             ZMQ_SNDMORE);
    zmq_send(zap, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(zap, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0); /* no metadata */
}

/* One ZAP request: version, request id, domain, address, routing id,
 * mechanism, then the credentials (CURVE: the client's 32-byte key). */
static void zap_handle_one(broker_t *b)
{
    broker_auth_t *auth = b->auth;
    zmq_msg_t frames[ZAP_FRAMES];
    size_t n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, auth->zap, 0) < 0) {
            zmq_msg_close(&frame);
            break;
        }
        more = zmq_msg_more(&frame);
        if (n < ZAP_FRAMES)
            frames[n++] = frame; /* moved */
        else
            zmq_msg_close(&frame);
    }
    if (n < 6) { /* libzmq's own requests always have them: nothing to answer */
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        return;
    }
    int side = side_of_domain(&frames[2]);
    char address[64] = "?";
    snprintf(address, sizeof address, "%.*s", (int)zmq_msg_size(&frames[3]),
             (const char *)zmq_msg_data(&frames[3]));
    bool curve = zmq_msg_size(&frames[5]) == 5 && memcmp(zmq_msg_data(&frames[5]), "CURVE", 5) == 0;
    char key[PROTO_CURVE_KEY_TEXT + 1] = "";
    if (curve && n >= 7 && zmq_msg_size(&frames[6]) == 32)
        zmq_z85_encode(key, zmq_msg_data(&frames[6]), 32);
    if (side >= 0 && key[0])
        side_reload_if_changed(b, side, false);
    bool allowed = side >= 0 && key[0] && auth->sides[side].allowed &&
                   broker_map_get(auth->sides[side].allowed, key, PROTO_CURVE_KEY_TEXT);
    if (allowed) {
        zap_reply(auth->zap, &frames[1], "200", "OK", key);
    } else {
        auth->refused++;
        broker_log_peer(b, BROKER_PEER_AUTH, BROKER_LOG_WARN,
                        "CURVE: %s refused a client from %s: %s", side >= 0 ? side_names[side] : "?",
                        address, key[0] ? "its public key is not in the allow directory" : "no CURVE key");
        zap_reply(auth->zap, &frames[1], "400", "public key not allowed", "");
        if (key[0])
            broker_log(b, BROKER_LOG_DEBUG, "CURVE: refused key %s", key);
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
}

static void handle_zap(broker_t *b)
{
    for (int i = 0; i < 64; i++) {
        zmq_pollitem_t item = {b->auth->zap, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 0) <= 0)
            return;
        zap_handle_one(b);
    }
}

bool broker_auth_allows(broker_t *b, int side, zmq_msg_t *frame)
{
    if (!b->auth || !b->auth->sides[side].curve)
        return true;
    const char *key = zmq_msg_gets(frame, "User-Id");
    if (key && strlen(key) == PROTO_CURVE_KEY_TEXT &&
        broker_map_get(b->auth->sides[side].allowed, key, PROTO_CURVE_KEY_TEXT))
        return true;
    b->auth->revoked_messages++;
    broker_log_peer(b, BROKER_PEER_REVOKED, BROKER_LOG_WARN,
                    "CURVE: %s refused a message of a key no longer allowed (%s)", side_names[side],
                    key ? key : "no key");
    return false;
}

bool broker_auth_may_answer(broker_t *b, int side)
{
    if (!b->auth)
        return false;
    auth_side_t *s = &b->auth->sides[side];
    const int64_t now = broker_now_us();
    if (now - s->answers_since_us >= 1000000) {
        s->answers_since_us = now;
        s->answers = 0;
    }
    if (s->answers >= AUTH_ANSWERS_PER_SECOND)
        return false;
    s->answers++;
    return true;
}
