/* fixture.c: see fixture.h. */
#include "fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

int64_t fx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Binds sock on a free port of 127.0.0.1 and writes the endpoint. */
static bool bind_any(void *sock, char *endpoint, size_t size)
{
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(sock, "tcp://127.0.0.1:*") != 0)
        return false;
    return zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, endpoint, &size) == 0;
}

/* ------------------------------------------------------------ raw peer */

bool peer_open(peer_t *peer)
{
    memset(peer, 0, sizeof *peer);
    peer->ctx = zmq_ctx_new();
    peer->router = peer->ctx ? zmq_socket(peer->ctx, ZMQ_ROUTER) : NULL;
    return peer->router && bind_any(peer->router, peer->endpoint, sizeof peer->endpoint);
}

void peer_close(peer_t *peer)
{
    if (peer->router)
        zmq_close(peer->router);
    if (peer->ctx)
        zmq_ctx_term(peer->ctx);
    memset(peer, 0, sizeof *peer);
}

Xlm__ClientMessage *peer_recv(peer_t *peer, int timeout_ms, uint8_t **raw, size_t *raw_size)
{
    zmq_pollitem_t item = {peer->router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return NULL;
    zmq_msg_t identity, body;
    zmq_msg_init(&identity);
    zmq_msg_init(&body);
    Xlm__ClientMessage *msg = NULL;
    if (zmq_msg_recv(&identity, peer->router, 0) >= 0 && zmq_msg_more(&identity) &&
        zmq_msg_recv(&body, peer->router, 0) >= 0 &&
        zmq_msg_size(&identity) <= sizeof peer->identity) {
        peer->identity_len = zmq_msg_size(&identity);
        memcpy(peer->identity, zmq_msg_data(&identity), peer->identity_len);
        proto_client_decode(zmq_msg_data(&body), zmq_msg_size(&body), PROTO_DEFAULT_LIMIT, &msg,
                            NULL, NULL);
        if (raw) {
            *raw_size = zmq_msg_size(&body);
            *raw = malloc(*raw_size + 1);
            if (*raw)
                memcpy(*raw, zmq_msg_data(&body), *raw_size);
        }
    }
    zmq_msg_close(&identity);
    zmq_msg_close(&body);
    return msg;
}

void peer_send_bytes(peer_t *peer, const void *data, size_t size)
{
    zmq_send(peer->router, peer->identity, peer->identity_len, ZMQ_SNDMORE);
    zmq_send(peer->router, data, size, 0);
}

void peer_send_service(peer_t *peer, Xlm__ServiceMessage *msg)
{
    uint8_t *data = NULL;
    size_t size = 0;
    if (proto_service_pack(msg, &data, &size, NULL) == PROTO_STATUS_OK)
        peer_send_bytes(peer, data, size);
    free(data);
}

void peer_send_response(peer_t *peer, Xlm__Response *response)
{
    Xlm__ServiceMessage msg = XLM__SERVICE_MESSAGE__INIT;
    msg.body_case = XLM__SERVICE_MESSAGE__BODY_RESPONSE;
    msg.response = response;
    peer_send_service(peer, &msg);
}

void peer_send_status(peer_t *peer, const char *id, proto_status_t status, const char *message)
{
    uint8_t *data = NULL;
    size_t size = 0;
    if (proto_response_pack_status(id, status, message, &data, &size, NULL) == PROTO_STATUS_OK)
        peer_send_bytes(peer, data, size);
    free(data);
}

void peer_send_echo(peer_t *peer, const Xlm__Request *rq)
{
    const Xlm__TokenInput *in = rq->tokens;
    size_t rows = in ? in->n_lengths : 0, n = in ? in->n_input_ids : 0;
    int64_t *sums = calloc(rows + 1, sizeof *sums);
    float *echo = calloc(n + 1, sizeof *echo);
    int64_t longest = 0;
    for (size_t r = 0, t = 0; r < rows; r++) {
        longest = in->lengths[r] > longest ? in->lengths[r] : longest;
        for (int64_t k = 0; k < in->lengths[r]; k++, t++) {
            sums[r] += in->input_ids[t];
            echo[t] = (float)in->input_ids[t];
        }
    }
    int64_t sum_shape[1] = {(int64_t)rows}, echo_shape[2] = {(int64_t)rows, longest};
    Xlm__Tensor sum_t = XLM__TENSOR__INIT, echo_t = XLM__TENSOR__INIT;
    Xlm__Tensor *outputs[2] = {&sum_t, &echo_t};
    sum_t.name = "sum_ids";
    sum_t.n_shape = 1;
    sum_t.shape = sum_shape;
    sum_t.n_i64 = rows;
    sum_t.i64 = sums;
    echo_t.name = "echo";
    echo_t.n_shape = 2;
    echo_t.shape = echo_shape;
    echo_t.n_f32 = n;
    echo_t.f32 = echo;
    echo_t.n_row_lengths = rows;
    echo_t.row_lengths = in ? in->lengths : NULL;
    Xlm__Response response = XLM__RESPONSE__INIT;
    response.id = rq->id;
    response.n_outputs = in ? 2 : 0;
    response.outputs = outputs;
    peer_send_response(peer, &response);
    free(sums);
    free(echo);
}

/* ------------------------------------------------------------ lossy proxy */

enum { PROXY_IDS = 4096 };

typedef struct {
    char id[PROTO_ID_MAX + 1];
    int sends, replies;
} proxy_count_t;

struct proxy {
    char upstream[128], endpoint[64];
    void *ctx, *front, *back;
    uint8_t identity[256];
    size_t identity_len;
    pthread_t thread;
    atomic_int stop;
    pthread_mutex_t lock;
    proxy_count_t counts[PROXY_IDS];
    size_t n_counts;
};

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The counter of id (created), under the lock. */
static proxy_count_t *proxy_count(proxy_t *p, const char *id)
{
    for (size_t i = 0; i < p->n_counts; i++)
        if (strcmp(p->counts[i].id, id) == 0)
            return &p->counts[i];
    if (p->n_counts == PROXY_IDS)
        return NULL;
    proxy_count_t *c = &p->counts[p->n_counts++];
    snprintf(c->id, sizeof c->id, "%s", id);
    return c;
}

static void proxy_overloaded(proxy_t *p, const char *id)
{
    uint8_t *data = NULL;
    size_t size = 0;
    if (proto_response_pack_status(id, PROTO_STATUS_OVERLOADED, "proxy: overloaded (test)", &data,
                                   &size, NULL) == PROTO_STATUS_OK) {
        zmq_send(p->front, p->identity, p->identity_len, ZMQ_SNDMORE);
        zmq_send(p->front, data, size, 0);
    }
    free(data);
}

/* Client -> broker: [identity][body]. */
static void proxy_from_client(proxy_t *p)
{
    zmq_msg_t identity, body;
    zmq_msg_init(&identity);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&identity, p->front, ZMQ_DONTWAIT) < 0 || !zmq_msg_more(&identity) ||
        zmq_msg_recv(&body, p->front, 0) < 0 || zmq_msg_size(&identity) > sizeof p->identity)
        goto done;
    p->identity_len = zmq_msg_size(&identity);
    memcpy(p->identity, zmq_msg_data(&identity), p->identity_len);
    Xlm__ClientMessage *msg = NULL;
    proto_client_decode(zmq_msg_data(&body), zmq_msg_size(&body), PROTO_DEFAULT_LIMIT, &msg, NULL,
                        NULL);
    const char *id = msg && msg->body_case == XLM__CLIENT_MESSAGE__BODY_REQUEST ? msg->request->id
                                                                                : NULL;
    int sends = 0;
    if (id) {
        pthread_mutex_lock(&p->lock);
        proxy_count_t *c = proxy_count(p, id);
        sends = c ? ++c->sends : 0;
        pthread_mutex_unlock(&p->lock);
    }
    if (id && has_prefix(id, "lose-") && sends == 1) {
        /* dropped */
    } else if (id && ((has_prefix(id, "ovl-") && sends == 1) || has_prefix(id, "ovlall-"))) {
        proxy_overloaded(p, id);
    } else {
        zmq_msg_send(&body, p->back, 0);
    }
    proto_client_free(&msg);
done:
    zmq_msg_close(&identity);
    zmq_msg_close(&body);
}

/* Broker -> client: [body]. */
static void proxy_from_broker(proxy_t *p)
{
    zmq_msg_t body;
    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, p->back, ZMQ_DONTWAIT) < 0)
        goto done;
    Xlm__ServiceMessage *msg = NULL;
    proto_error_t err;
    proto_service_decode(zmq_msg_data(&body), zmq_msg_size(&body), PROTO_DEFAULT_LIMIT, &msg, &err);
    bool drop = false;
    if (msg && msg->body_case == XLM__SERVICE_MESSAGE__BODY_RESPONSE &&
        has_prefix(msg->response->id, "lostreply-")) {
        pthread_mutex_lock(&p->lock);
        proxy_count_t *c = proxy_count(p, msg->response->id);
        drop = c && ++c->replies == 1;
        pthread_mutex_unlock(&p->lock);
    }
    proto_service_free(&msg);
    if (!drop && p->identity_len) {
        zmq_send(p->front, p->identity, p->identity_len, ZMQ_SNDMORE);
        zmq_msg_send(&body, p->front, 0);
    }
done:
    zmq_msg_close(&body);
}

static void *proxy_main(void *arg)
{
    proxy_t *p = arg;
    while (!atomic_load(&p->stop)) {
        zmq_pollitem_t items[2] = {{p->front, 0, ZMQ_POLLIN, 0}, {p->back, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 20) <= 0)
            continue;
        if (items[0].revents & ZMQ_POLLIN)
            proxy_from_client(p);
        if (items[1].revents & ZMQ_POLLIN)
            proxy_from_broker(p);
    }
    return NULL;
}

proxy_t *proxy_start(const char *upstream)
{
    proxy_t *p = calloc(1, sizeof *p);
    int linger = 0;
    if (!p)
        return NULL;
    snprintf(p->upstream, sizeof p->upstream, "%s", upstream);
    pthread_mutex_init(&p->lock, NULL);
    p->ctx = zmq_ctx_new();
    p->front = zmq_socket(p->ctx, ZMQ_ROUTER);
    p->back = zmq_socket(p->ctx, ZMQ_DEALER);
    if (!p->front || !p->back || !bind_any(p->front, p->endpoint, sizeof p->endpoint) ||
        zmq_setsockopt(p->back, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(p->back, p->upstream) || pthread_create(&p->thread, NULL, proxy_main, p)) {
        if (p->front)
            zmq_close(p->front);
        if (p->back)
            zmq_close(p->back);
        zmq_ctx_term(p->ctx);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
    }
    return p;
}

const char *proxy_endpoint(const proxy_t *p) { return p->endpoint; }

int proxy_sends(proxy_t *p, const char *id)
{
    pthread_mutex_lock(&p->lock);
    int sends = 0;
    for (size_t i = 0; i < p->n_counts; i++)
        if (strcmp(p->counts[i].id, id) == 0)
            sends = p->counts[i].sends;
    pthread_mutex_unlock(&p->lock);
    return sends;
}

void proxy_stop(proxy_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    proxy_t *p = *self_p;
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    zmq_close(p->front);
    zmq_close(p->back);
    zmq_ctx_term(p->ctx);
    pthread_mutex_destroy(&p->lock);
    free(p);
    *self_p = NULL;
}

/* ------------------------------------------------------------ processes */

static bool redirect(const char *path, int fd, int flags)
{
    int f = open(path, flags, 0644);
    if (f < 0)
        return false;
    bool ok = dup2(f, fd) >= 0;
    close(f);
    return ok;
}

pid_t fx_spawn(char *const argv[], const char *in_path, const char *out_path,
               const char *err_path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (!redirect(in_path ? in_path : "/dev/null", 0, O_RDONLY) ||
        !redirect(out_path, 1, O_WRONLY | O_CREAT | O_TRUNC) ||
        !redirect(err_path, 2, O_WRONLY | O_CREAT | O_TRUNC))
        _exit(126);
    execv(argv[0], argv);
    fprintf(stderr, "fx_spawn: execv %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

bool fx_exited(pid_t pid, int *code)
{
    int status;
    if (waitpid(pid, &status, WNOHANG) != pid)
        return false;
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return true;
}

int fx_wait(pid_t pid, int timeout_ms)
{
    int code;
    int64_t until = fx_now_ms() + timeout_ms;
    while (fx_now_ms() < until) {
        if (fx_exited(pid, &code))
            return code;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

const char *fx_tmp_path(char *buf, size_t size, const char *name)
{
    mkdir(XLM_TEST_TMP, 0755);
    snprintf(buf, size, "%s/client_%d_%s", XLM_TEST_TMP, (int)getpid(), name);
    return buf;
}

bool fx_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

char *fx_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}
