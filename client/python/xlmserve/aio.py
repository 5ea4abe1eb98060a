"""AsyncClient: the same semantics for asyncio.

The socket is pyzmq's plain DEALER watched through the event loop
(add_reader on ZMQ_FD): ZMQ_FD is edge-triggered, so every wake-up and
every send drains what is waiting (zmq.asyncio's futures, one per recv,
woke up late under load: a fifth of the sync client's rate). Each reply
goes to the attempt waiting for its id; each request runs as a coroutine that sends, waits for its reply
up to attempt_timeout_ms, sends again with the same id, backs off after
OVERLOADED/UNAVAILABLE and gives up at its deadline or after max_attempts.
The window is a semaphore: at most `window` requests in flight.
"""
import asyncio
import time

import zmq

from . import _core as core


class AsyncClient:
    def __init__(self, endpoint, window=64, attempt_timeout_ms=5000, max_attempts=5,
                 backoff_ms=50, backoff_max_ms=2000, deadline_ms=0, curve_server=None,
                 curve_secret=None):
        core.configure(self, endpoint, window, attempt_timeout_ms, max_attempts, backoff_ms,
                       backoff_max_ms, deadline_ms, curve_server, curve_secret)
        self._fd = self._socket.getsockopt(zmq.FD)
        self._waiting = {}   # id -> future of the current attempt's reply
        self._stats = None   # future of a stats call
        self._slots = asyncio.Semaphore(window)
        self._new_id = core.IdMaker()
        self._loop = None    # the loop watching the socket
        self._tasks = {}     # id -> the request's task, for cancel
        self.dropped = 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        if self._socket is not None:
            self._socket.close(0)
            self._context.term()
            self._socket = None

    def _ensure_reader(self):
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._fd, self._drain)

    def _drain(self):
        while self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                data = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(data)

    def _handle(self, data):
        decoded = core.decode_reply(data)
        if decoded is None:
            self.dropped += 1
            return
        kind, body = decoded
        if kind == "stats":
            if self._stats is not None and not self._stats.done():
                self._stats.set_result(body)
            return
        future = self._waiting.pop(body.id, None)
        if future is None or future.done():
            self.dropped += 1  # a late duplicate, or cancelled
        else:
            future.set_result(body)

    async def _send(self, data):
        self._ensure_reader()
        try:
            self._socket.send(data, zmq.NOBLOCK)
        except zmq.Again:
            pass  # a full send queue: the attempt's timer sends again
        self._drain()  # a send can take ZMQ_FD's edge: read what came meanwhile

    async def _run(self, id, data, deadline_ms):
        """Sends until a final reply, the deadline or max_attempts."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + deadline_ms / 1000.0 if deadline_ms else None
        attempts = 0
        try:
            while True:
                attempts += 1
                future = loop.create_future()
                self._waiting[id] = future
                await self._send(data)
                wait = self.attempt_s
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                try:
                    response = await asyncio.wait_for(future, wait)
                except asyncio.TimeoutError:
                    self._waiting.pop(id, None)
                    if deadline is not None and time.monotonic() >= deadline:
                        await self._send(core.encode_cancel(id))
                        return core.Result(id, "deadline_exceeded",
                                           f"xlmserve: no reply within the deadline of {deadline_ms} ms "
                                           f"({attempts} attempts)",
                                           timings={"attempts": attempts})
                    if attempts >= self.max_attempts:
                        await self._send(core.encode_cancel(id))
                        return core.Result(id, "unavailable",
                                           f"xlmserve: no reply from {self.endpoint} after {attempts} "
                                           f"attempts of {int(self.attempt_s * 1000)} ms",
                                           timings={"attempts": attempts})
                    continue
                code = core.code_name(response.status)
                if code in core.RETRYABLE and attempts < self.max_attempts:
                    pause = core.backoff_s(self.backoff_ms, self.backoff_max_ms, attempts)
                    if deadline is not None:
                        pause = min(pause, max(0.0, deadline - time.monotonic()))
                    await asyncio.sleep(pause)
                    continue
                return core.result_of(response, attempts, int((time.monotonic() - started) * 1e6))
        except asyncio.CancelledError:
            self._waiting.pop(id, None)
            await self._send(core.encode_cancel(id))
            return core.Result(id, "cancelled", "xlmserve: cancelled by the client")
        finally:
            self._waiting.pop(id, None)

    async def _call_bytes(self, id, data, deadline_ms):
        self._ensure_reader()
        async with self._slots:
            task = asyncio.ensure_future(self._run(id, data, deadline_ms))
            self._tasks[id] = task
            try:
                return await task
            finally:
                self._tasks.pop(id, None)

    def new_id(self):
        return self._new_id()

    async def call(self, task, id=None, deadline_ms=0, **request):
        """One request, awaited: its Result (see Client.submit for request)."""
        id = id or self._new_id()
        deadline_ms = deadline_ms or self.deadline_ms
        data = core.encode_request(id, task, deadline_ms=deadline_ms, **request)
        return await self._call_bytes(id, data, deadline_ms)

    def cancel(self, id):
        """Finishes a pending request with code "cancelled"; False if none."""
        task = self._tasks.get(id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def infer(self, task, input_ids, model=None, **inputs):
        result = await self.call(task, model=model, input_ids=input_ids, **inputs)
        return result.raise_for_code().outputs

    async def score_pairs(self, pairs, mode="clm", model=None, no_source=False,
                          token_scores=False, deadline_ms=0):
        """As Client.score_pairs: one PairScore per pair, in order."""
        async def one(pair):
            id = self._new_id()
            try:
                data = core.pair_request(id, pair, mode, model, no_source, token_scores,
                                         deadline_ms or self.deadline_ms)
            except (TypeError, ValueError) as e:
                if mode not in core.SCORE_MODES:
                    raise
                return core.PairScore(error={"code": "bad_request", "message": str(e)})
            result = await self._call_bytes(id, data, deadline_ms or self.deadline_ms)
            return core.pair_score(result, token_scores)
        return list(await asyncio.gather(*(one(p) for p in pairs)))

    async def stats(self, timeout_ms=5000):
        self._ensure_reader()
        loop = asyncio.get_running_loop()
        self._stats = loop.create_future()
        until = time.monotonic() + timeout_ms / 1000.0
        try:
            while True:
                await self._send(core.encode_stats())
                left = until - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no stats from {self.endpoint} within {timeout_ms} ms")
                try:
                    return await asyncio.wait_for(asyncio.shield(self._stats), min(left, self.attempt_s))
                except asyncio.TimeoutError:
                    continue
        finally:
            self._stats = None
