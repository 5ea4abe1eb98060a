/* peerlog.c: log lines a peer can cause, rate-limited.
 *
 * A peer decides how often these happen (a flood of malformed messages, a
 * worker that registers again and again, a client with a bad key), so each
 * kind may write only its burst of lines per window; the rest are counted
 * and one line per window says how many were held back. The broker's own
 * events (start, stop, bind failures) go through broker_log unlimited. */
#include "broker_internal.h"

#include <stdarg.h>
#include <stdio.h>

/* One row per kind of peer-caused line: its name in the summary, and how
 * many lines it may write per window. */
static const struct {
    const char *name;
    uint32_t burst;
} peer_lines[BROKER_PEER_COUNT_] = {
    [BROKER_PEER_MALFORMED] = {"malformed worker messages", 1},
    [BROKER_PEER_PROTOCOL] = {"worker protocol errors", 1},
    [BROKER_PEER_REFUSED] = {"refused registrations", 1},
    [BROKER_PEER_FOREIGN] = {"replies for tickets of another pipeline", 1},
    [BROKER_PEER_PIPELINE] = {"pipeline registrations and removals", 64},
    [BROKER_PEER_CLIENT] = {"client send failures", 1},
    [BROKER_PEER_AUTH] = {"CURVE authentication refusals", 1},
    [BROKER_PEER_REVOKED] = {"messages of revoked CURVE keys", 1},
    [BROKER_PEER_TAIL] = {"last-stage beats of unregistered pipelines", 1},
};

static void summarise(broker_t *b, broker_peer_line_t kind, int64_t now)
{
    broker_peer_log_t *s = &b->peer_log[kind];
    if (s->suppressed)
        broker_log(b, BROKER_LOG_WARN, "%llu more lines of %s held back in the last %u ms",
                   (unsigned long long)s->suppressed, peer_lines[kind].name,
                   b->config.log_window_ms);
    s->window_start_us = now;
    s->in_window = 0;
    s->suppressed = 0;
}

void broker_log_peer(broker_t *b, broker_peer_line_t kind, broker_log_level_t level,
                     const char *fmt, ...)
{
    if (level < b->config.log_level)
        return; /* would not be written anyway: nothing held back */
    int64_t now = broker_now_us();
    broker_peer_log_t *s = &b->peer_log[kind];
    if (now - s->window_start_us >= (int64_t)b->config.log_window_ms * 1000)
        summarise(b, kind, now);
    if (s->in_window >= peer_lines[kind].burst) {
        s->suppressed++;
        b->log_suppressed++;
        return;
    }
    s->in_window++;
    char line[PROTO_ERROR_MAX * 3];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    broker_log(b, level, "%s", line);
}

void broker_log_peer_flush(broker_t *b, int64_t now)
{
    for (int k = 0; k < BROKER_PEER_COUNT_; k++)
        if (b->peer_log[k].suppressed &&
            now - b->peer_log[k].window_start_us >= (int64_t)b->config.log_window_ms * 1000)
            summarise(b, (broker_peer_line_t)k, now);
}
