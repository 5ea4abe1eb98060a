/* testkit.c: a synchronous test client on a DEALER socket, and helpers to
 * run xlm-broker as a real process on 127.0.0.1. */
#include "broker_testing.h"
#include "curve_keys.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

int64_t testing_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------ client */

struct test_client {
    char endpoint[256];
    char secret[512], server[512]; /* CURVE key files, "" for none */
    void *ctx, *sock;
};

static int client_open(test_client_t *c)
{
    int linger = 0, hwm = 2000000, send_timeout_ms = 2000;
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock)
        return -1;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    /* A socket whose handshake is refused has no peer and would block a
     * send for ever: tests of refusals see a failed send instead. */
    zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &send_timeout_ms, sizeof send_timeout_ms);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    char err[PROTO_CURVE_ERROR_MAX];
    if (proto_curve_client_files(c->sock, c->secret, c->server, err) != 0) {
        fprintf(stderr, "test_client: %s\n", err);
        return -1;
    }
    return zmq_connect(c->sock, c->endpoint);
}

test_client_t *test_client_new(const char *endpoint)
{
    return test_client_new_curve(endpoint, NULL, NULL);
}

test_client_t *test_client_new_curve(const char *endpoint, const char *secret_path,
                                     const char *server_path)
{
    test_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    snprintf(c->secret, sizeof c->secret, "%s", secret_path ? secret_path : "");
    snprintf(c->server, sizeof c->server, "%s", server_path ? server_path : "");
    c->ctx = zmq_ctx_new();
    if (!c->ctx || client_open(c) != 0) {
        test_client_destroy(&c);
        return NULL;
    }
    return c;
}

void test_client_destroy(test_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    test_client_t *c = *self_p;
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c);
    *self_p = NULL;
}

int test_client_reconnect(test_client_t *c)
{
    zmq_close(c->sock);
    c->sock = NULL;
    return client_open(c);
}

int test_client_send_bytes(test_client_t *c, const void *data, size_t size)
{
    return zmq_send(c->sock, data, size, 0) < 0 ? -1 : 0;
}

int test_client_send_frames(test_client_t *c, const void *const *data, const size_t *sizes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (zmq_send(c->sock, data[i], sizes[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    return 0;
}

static int send_client_message(test_client_t *c, Xlm__ClientMessage *msg)
{
    uint8_t *data;
    size_t size;
    if (proto_client_pack(msg, &data, &size, NULL))
        return -1;
    int rc = test_client_send_bytes(c, data, size);
    free(data);
    return rc;
}

int test_client_send_request(test_client_t *c, Xlm__Request *request)
{
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_REQUEST;
    msg.request = request;
    return send_client_message(c, &msg);
}

static int64_t token_id(int64_t seed, int64_t row, int64_t t)
{
    return (seed + 31 * row + t) % 997;
}

int64_t test_tokens_row_sum(int64_t row_len, int64_t seed, int64_t row)
{
    int64_t sum = 0;
    for (int64_t t = 0; t < row_len; t++)
        sum += token_id(seed, row, t);
    return sum;
}

int test_client_send_tokens(test_client_t *c, const char *id, const char *model, proto_task_t task,
                            int64_t rows, int64_t row_len, int64_t seed, uint32_t deadline_ms)
{
    int64_t *ids = malloc((size_t)(rows * row_len) * sizeof *ids);
    int64_t *lengths = malloc((size_t)rows * sizeof *lengths);
    int rc = -1;
    if (ids && lengths) {
        for (int64_t r = 0; r < rows; r++) {
            lengths[r] = row_len;
            for (int64_t t = 0; t < row_len; t++)
                ids[r * row_len + t] = token_id(seed, r, t);
        }
        Xlm__TokenInput tokens = XLM__TOKEN_INPUT__INIT;
        tokens.n_input_ids = (size_t)(rows * row_len);
        tokens.input_ids = ids;
        tokens.n_lengths = (size_t)rows;
        tokens.lengths = lengths;
        Xlm__Request rq = XLM__REQUEST__INIT;
        rq.id = (char *)id;
        rq.model = (char *)(model ? model : "");
        rq.task = (Xlm__Task)task;
        rq.deadline_ms = deadline_ms;
        rq.input_case = XLM__REQUEST__INPUT_TOKENS;
        rq.tokens = &tokens;
        rc = test_client_send_request(c, &rq);
    }
    free(ids);
    free(lengths);
    return rc;
}

int test_client_send_cancel(test_client_t *c, const char *id)
{
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    Xlm__Cancel cancel = XLM__CANCEL__INIT;
    cancel.id = (char *)id;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_CANCEL;
    msg.cancel = &cancel;
    return send_client_message(c, &msg);
}

int test_client_send_stats(test_client_t *c)
{
    Xlm__ClientMessage msg = XLM__CLIENT_MESSAGE__INIT;
    Xlm__StatsRequest stats = XLM__STATS_REQUEST__INIT;
    msg.body_case = XLM__CLIENT_MESSAGE__BODY_STATS;
    msg.stats = &stats;
    return send_client_message(c, &msg);
}

Xlm__ServiceMessage *test_client_recv(test_client_t *c, int timeout_ms)
{
    zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return NULL;
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    if (zmq_msg_recv(&frame, c->sock, 0) < 0) {
        zmq_msg_close(&frame);
        return NULL;
    }
    Xlm__ServiceMessage *msg = NULL;
    proto_error_t err;
    if (proto_service_decode(zmq_msg_data(&frame), zmq_msg_size(&frame), (size_t)1 << 30, &msg, &err))
        fprintf(stderr, "test_client_recv: %s\n", err.message);
    zmq_msg_close(&frame);
    return msg;
}

const Xlm__Tensor *test_response_output(const Xlm__Response *r, const char *name)
{
    for (size_t i = 0; r && i < r->n_outputs; i++)
        if (strcmp(r->outputs[i]->name, name) == 0)
            return r->outputs[i];
    return NULL;
}

/* ------------------------------------------------------------ processes */

int testing_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

/* Waits until the broker answers a stats request, or the process ends. */
static int wait_broker(pid_t pid, int front_port, int timeout_ms, const testing_spawn_t *how)
{
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", front_port);
    test_client_t *c = test_client_new_curve(endpoint, how ? how->curve_secret : NULL,
                                             how ? how->curve_server : NULL);
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    int rc = -1;
    while (c && rc != 0 && testing_now_us() < until) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break;
        test_client_send_stats(c);
        Xlm__ServiceMessage *msg = test_client_recv(c, 100);
        if (msg && msg->body_case == XLM__SERVICE_MESSAGE__BODY_STATS)
            rc = 0;
        proto_service_free(&msg);
    }
    test_client_destroy(&c);
    return rc;
}

pid_t testing_broker_spawn(const char *bin, int front_port, int back_port, const char *const *extra)
{
    return testing_broker_spawn_with(bin, front_port, back_port, extra, NULL);
}

pid_t testing_broker_spawn_with(const char *bin, int front_port, int back_port,
                                const char *const *extra, const testing_spawn_t *how)
{
    const char *log_path = how ? how->log_path : NULL;
    char front[64], back[64];
    snprintf(front, sizeof front, "tcp://127.0.0.1:%d", front_port);
    snprintf(back, sizeof back, "tcp://127.0.0.1:%d", back_port);
    const char *argv[64] = {bin, "--frontend", front, "--backend", back};
    int argc = 5;
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644) : -1;
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "testing_broker_spawn: execv %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    if (wait_broker(pid, front_port, 10000, how) != 0) {
        testing_process_stop(pid, SIGKILL, 1000);
        return -1;
    }
    return pid;
}

int testing_process_stop(pid_t pid, int sig, int timeout_ms)
{
    int status;
    if (kill(pid, sig) != 0)
        return -1;
    int64_t until = testing_now_us() + (int64_t)timeout_ms * 1000;
    while (testing_now_us() < until) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    return waitpid(pid, &status, 0) == pid ? status : -1;
}

long testing_process_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

int testing_count_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}
