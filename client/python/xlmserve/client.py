"""Client: the synchronous client, libxlmclient's window in Python.

Nothing runs in the background: replies are read and timers fire inside
submit, collect, cancel and stats, as in the C library. Every submitted
request yields exactly one result: a reply for an id no longer pending (a
late duplicate, a cancelled request) is dropped.
"""
import time
from collections import OrderedDict

import zmq

from . import _core as core


class _Slot:
    __slots__ = ("id", "data", "attempts", "submitted", "due", "deadline", "deadline_ms",
                 "state", "result")

    def __init__(self, id, data, deadline_ms, attempt_s):
        now = time.monotonic()
        self.id, self.data = id, data
        self.attempts = 1
        self.submitted = now
        self.due = now + attempt_s
        self.deadline_ms = deadline_ms
        self.deadline = now + deadline_ms / 1000.0 if deadline_ms else None
        self.state = "sent"  # sent | backoff | done
        self.result = None


class Client:
    def __init__(self, endpoint, window=64, attempt_timeout_ms=5000, max_attempts=5,
                 backoff_ms=50, backoff_max_ms=2000, deadline_ms=0, curve_server=None,
                 curve_secret=None):
        core.configure(self, endpoint, window, attempt_timeout_ms, max_attempts, backoff_ms,
                       backoff_max_ms, deadline_ms, curve_server, curve_secret)
        self._slots = {}
        self._done = OrderedDict()  # finishing order
        self._new_id = core.IdMaker()
        self._stats = None
        self.dropped = 0

    # ---------------------------------------------------------------- lifetime
    def close(self):
        """Drops what is in flight (no cancel is sent) and closes the socket."""
        if self._socket is not None:
            self._socket.close(0)
            self._context.term()
            self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def outstanding(self):
        return len(self._slots)

    def new_id(self):
        return self._new_id()

    # ---------------------------------------------------------------- sending
    def _send(self, data):
        try:
            self._socket.send(data, zmq.DONTWAIT)
        except zmq.Again:
            pass  # the attempt's timer sends again

    def submit(self, task, id=None, deadline_ms=0, **request):
        """Encodes and sends a request without blocking; returns its id.
        request: model, input_ids, attention_mask, langs, token_type_ids,
        position_ids, p_mask, text, n_choices, steps, lang_fill,
        score_from, score_to, return_tokens (see _core.encode_request)."""
        self._pump(0)
        if len(self._slots) >= self.window:
            raise core.WindowFull(f"{len(self._slots)} requests submitted and not collected, "
                                  f"the window's size: collect first")
        id = id or self._new_id()
        if id in self._slots:
            raise ValueError(f"a request with id {id!r} is already in the window")
        deadline_ms = deadline_ms or self.deadline_ms
        data = core.encode_request(id, task, deadline_ms=deadline_ms, **request)
        return self._launch(id, data, deadline_ms)

    def _launch(self, id, data, deadline_ms):
        self._slots[id] = _Slot(id, data, deadline_ms, self.attempt_s)
        self._send(data)
        return id

    # ---------------------------------------------------------------- finishing
    def _finish(self, slot, result):
        result.timings.setdefault("total_us", int((time.monotonic() - slot.submitted) * 1e6))
        result.timings.setdefault("attempts", slot.attempts)
        slot.state, slot.result = "done", result
        slot.data = None
        self._done[slot.id] = slot

    def _finish_local(self, slot, code, message):
        self._finish(slot, core.Result(slot.id, code, message))

    def _timers(self, now):
        for slot in list(self._slots.values()):
            if slot.state == "done":
                continue
            if slot.deadline is not None and now >= slot.deadline:
                self._send(core.encode_cancel(slot.id))
                self._finish_local(slot, "deadline_exceeded",
                                   f"xlmserve: no reply within the deadline of {slot.deadline_ms} ms "
                                   f"({slot.attempts} attempts)")
            elif now >= slot.due:
                if slot.state == "sent" and slot.attempts >= self.max_attempts:
                    self._send(core.encode_cancel(slot.id))
                    self._finish_local(slot, "unavailable",
                                       f"xlmserve: no reply from {self.endpoint} after "
                                       f"{slot.attempts} attempts of {int(self.attempt_s * 1000)} ms")
                else:
                    slot.attempts += 1
                    slot.state = "sent"
                    slot.due = now + self.attempt_s
                    self._send(slot.data)

    def _next_timer(self):
        times = [t for s in self._slots.values() if s.state != "done"
                 for t in (s.due, s.deadline) if t is not None]
        return min(times) if times else None

    def _handle(self, data, now):
        decoded = core.decode_reply(data)
        if decoded is None:
            self.dropped += 1
            return
        kind, body = decoded
        if kind == "stats":
            self._stats = body
            return
        slot = self._slots.get(body.id)
        if slot is None or slot.state == "done":
            self.dropped += 1  # a late duplicate, or cancelled
            return
        code = core.code_name(body.status)
        if code in core.RETRYABLE and slot.attempts < self.max_attempts:
            slot.state = "backoff"
            slot.due = now + core.backoff_s(self.backoff_ms, self.backoff_max_ms, slot.attempts)
            return
        self._finish(slot, core.result_of(body, slot.attempts,
                                          int((now - slot.submitted) * 1e6)))

    def _pump(self, wait_s):
        """Waits up to wait_s (None: until the next timer) for messages,
        reads every one waiting, fires the timers that are due."""
        next_timer = self._next_timer()
        if wait_s is None:
            wait_s = None if next_timer is None else max(0.0, next_timer - time.monotonic())
        elif next_timer is not None:
            wait_s = min(wait_s, max(0.0, next_timer - time.monotonic()))
        timeout = None if wait_s is None else int(wait_s * 1000 + 0.999)
        if self._socket.poll(timeout, zmq.POLLIN):
            while True:
                try:
                    data = self._socket.recv(zmq.DONTWAIT)
                except zmq.Again:
                    break
                self._handle(data, time.monotonic())
        self._timers(time.monotonic())

    # ---------------------------------------------------------------- collect, call, cancel
    def collect(self, id=None, timeout_ms=-1):
        """The first request to finish (id None) or that one; waits up to
        timeout_ms (< 0: no limit). TimeoutError when nothing finished in
        time; KeyError when nothing (or no such id) is awaited."""
        if id is not None and id not in self._slots:
            raise KeyError(f"no request {id!r} in the window (never submitted, or already collected)")
        if id is None and not self._slots:
            raise KeyError("nothing submitted to collect")
        until = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        self._pump(0)
        while True:
            if id is None and self._done:
                slot_id, slot = self._done.popitem(last=False)
                del self._slots[slot_id]
                return slot.result
            if id is not None and self._slots[id].state == "done":
                del self._done[id]
                return self._slots.pop(id).result
            now = time.monotonic()
            if until is not None and now >= until:
                raise TimeoutError(f"nothing finished within {timeout_ms} ms")
            self._pump(None if until is None else until - now)

    def call(self, task, timeout_ms=-1, **request):
        """submit + collect by id. On a timeout the request is cancelled."""
        id = self.submit(task, **request)
        try:
            return self.collect(id, timeout_ms)
        except TimeoutError:
            self.cancel(id)
            self.collect(id, 0)
            raise

    def cancel(self, id):
        """Finishes a pending request at once with code "cancelled" (the
        broker is told, best effort); collect it as any other."""
        slot = self._slots.get(id)
        if slot is None or slot.state == "done":
            raise KeyError(f"no pending request {id!r}")
        self._send(core.encode_cancel(id))
        self._finish_local(slot, "cancelled", "xlmserve: cancelled by the client")

    def stats(self, timeout_ms=5000):
        """The broker's statistics (xlm.proto's Stats as a dict)."""
        data = core.encode_stats()
        until = time.monotonic() + timeout_ms / 1000.0
        self._stats = None
        next_send = 0.0
        while self._stats is None:
            now = time.monotonic()
            if now >= until:
                raise TimeoutError(f"no stats from {self.endpoint} within {timeout_ms} ms")
            if now >= next_send:
                self._send(data)
                next_send = now + self.attempt_s
            self._pump(min(until, next_send) - now)
        stats, self._stats = self._stats, None
        return stats

    # ---------------------------------------------------------------- the common cases
    def infer(self, task, input_ids, model=None, timeout_ms=-1, **inputs):
        """One request of token rows; the outputs (name -> numpy array).
        ServiceError when the request failed."""
        return self.call(task, timeout_ms=timeout_ms, model=model, input_ids=input_ids,
                         **inputs).raise_for_code().outputs

    def score_pairs(self, pairs, mode="clm", model=None, no_source=False, token_scores=False,
                    deadline_ms=0):
        """Scores (src_lang, src, tgt_lang, tgt) tuples or dicts through the
        window; one PairScore per pair, in order (a failed pair holds an
        error, the others go on)."""
        if self._slots:
            raise ValueError(f"{len(self._slots)} requests are outstanding: collect them first")
        pairs = list(pairs)
        results = [None] * len(pairs)
        index_of = {}
        next_pair = 0
        while next_pair < len(pairs) or index_of:
            if next_pair < len(pairs) and len(self._slots) < self.window:
                id = self._new_id()
                try:
                    data = core.pair_request(id, pairs[next_pair], mode, model, no_source,
                                             token_scores, deadline_ms or self.deadline_ms)
                except (TypeError, ValueError) as e:
                    if mode not in core.SCORE_MODES:
                        raise
                    results[next_pair] = core.PairScore(error={"code": "bad_request", "message": str(e)})
                else:
                    self._launch(id, data, deadline_ms or self.deadline_ms)
                    index_of[id] = next_pair
                next_pair += 1
                continue
            result = self.collect()
            results[index_of.pop(result.id)] = core.pair_score(result, token_scores)
        return results
