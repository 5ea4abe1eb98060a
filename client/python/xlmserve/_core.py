"""What the sync and async clients share: encoding requests, decoding
replies into numpy arrays, the retry rules, CURVE keys. The message
classes are generated from proto/xlm.proto at build time (xlm_pb2)."""
import os
import random
import re
import secrets

import numpy as np
import zmq

from . import xlm_pb2 as pb

PROTO_VERSION = 1  # proto/proto.h's PROTO_VERSION: every envelope carries it
ID_MAX = 128

# Wire names, as libxlmclient's xlm_code_str and xlm_task_name spell them.
CODES = ["ok", "bad_request", "unknown_model", "unknown_task", "overloaded",
         "deadline_exceeded", "cancelled", "internal", "unavailable", "too_large",
         "malformed", "bad_version", "not_found", "permission_denied"]
TASKS = ["base", "lm", "seq_cls", "multiple_choice", "token_cls", "qa_simple", "qa",
         "clm_score", "generate", "mlm_pll"]
RETRYABLE = {"overloaded", "unavailable"}
SCORE_MODES = {"clm": "clm_score", "mlm-pll": "mlm_pll"}


class WindowFull(Exception):
    """`window` requests are submitted and not collected: collect first."""


class ServiceError(Exception):
    """A request finished without outputs: .code (a CODES name) and .message."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Result:
    """A finished request. outputs: name -> numpy array (dense), or a list
    of one array per row (ragged outputs such as token_logprobs), or a list
    of lists of str ("tokens"). timings: the service's, plus total_us and
    attempts measured here."""

    def __init__(self, id, code, message="", outputs=None, timings=None):
        self.id = id
        self.code = code
        self.message = message
        self.outputs = outputs or {}
        self.timings = timings or {}

    @property
    def ok(self):
        return self.code == "ok"

    def raise_for_code(self):
        if not self.ok:
            raise ServiceError(self.code, self.message)
        return self

    def __repr__(self):
        return f"Result(id={self.id!r}, code={self.code!r}, outputs={list(self.outputs)})"


class PairScore(dict):
    """What xlm-score writes for a pair: score, n_target_tokens, mean
    (token_scores and tokens when asked), or error {code, message}."""

    @property
    def ok(self):
        return "error" not in self


class IdMaker:
    """Unique ids: a random per-client prefix and a counter, as libxlmclient."""

    def __init__(self):
        self.prefix = secrets.token_hex(8)
        self.counter = 0

    def __call__(self):
        self.counter += 1
        return f"{self.prefix}-{self.counter}"


# ------------------------------------------------------------ CURVE

def _read_key(path, label):
    text = open(path, encoding="ascii", errors="replace").read()
    found = re.search(label + r'\s*=\s*"([^"]*)"', text)
    key = found.group(1) if found else text.strip()
    if len(key) != 40 or len(key.split()) != 1:
        raise ValueError(f"{path}: expected a 40-character Z85 {label} "
                         f"(or a czmq certificate), got {len(key)} characters")
    return key.encode("ascii")


def curve_setup(socket, curve_server, curve_secret):
    """CURVE on a client socket from key files (both or neither)."""
    if not curve_server and not curve_secret:
        return
    if not (curve_server and curve_secret):
        raise ValueError("curve_server and curve_secret go together")
    secret = _read_key(curve_secret, "secret-key")
    socket.curve_serverkey = _read_key(curve_server, "public-key")
    socket.curve_secretkey = secret
    socket.curve_publickey = zmq.curve_public(secret)


def configure(client, endpoint, window, attempt_timeout_ms, max_attempts, backoff_ms,
              backoff_max_ms, deadline_ms, curve_server, curve_secret):
    """The settings and socket Client and AsyncClient share (checked first)."""
    check_config(window, attempt_timeout_ms, max_attempts, backoff_ms, backoff_max_ms)
    client.endpoint = endpoint
    client.window = window
    client.attempt_s = attempt_timeout_ms / 1000.0
    client.max_attempts = max_attempts
    client.backoff_ms, client.backoff_max_ms = backoff_ms, backoff_max_ms
    client.deadline_ms = deadline_ms
    client._context = zmq.Context()
    client._socket = new_socket(client._context, endpoint, curve_server, curve_secret)


def new_socket(context, endpoint, curve_server=None, curve_secret=None):
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    curve_setup(socket, curve_server, curve_secret)
    socket.connect(endpoint)
    return socket


# ------------------------------------------------------------ encoding

def _task_value(task):
    if isinstance(task, int):
        return task
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    return TASKS.index(task)


def _rows(value, name, dtype):
    """Rows of a token input (list of lists, or a 2-D / 3-D array) as flat
    values and per-row lengths."""
    if isinstance(value, np.ndarray) and value.ndim >= 2:
        rows = value.reshape(-1, value.shape[-1])
        return rows.astype(dtype).ravel().tolist(), [rows.shape[1]] * rows.shape[0]
    rows = list(value)
    if rows and not isinstance(rows[0], (list, tuple, np.ndarray)):
        raise ValueError(f"{name}: expected rows (a list of lists or a 2-D array)")
    if rows and isinstance(rows[0], (list, tuple)) and rows[0] and isinstance(rows[0][0], (list, tuple)):
        rows = [r for example in rows for r in example]  # [examples][choices][seq]
    flat, lengths = [], []
    for r in rows:
        r = np.asarray(r, dtype=dtype).ravel().tolist()
        flat.extend(r)
        lengths.append(len(r))
    return flat, lengths


def encode_request(id, task, model="", deadline_ms=0, input_ids=None, attention_mask=None,
                   langs=None, token_type_ids=None, position_ids=None, p_mask=None,
                   text=None, n_choices=0, steps=0, lang_fill=None, score_from=None,
                   score_to=None, return_tokens=False):
    """The bytes of a ClientMessage with this Request. text: rows, each a
    list of (text, lang) segments."""
    if len(id.encode()) > ID_MAX:
        raise ValueError(f"id {id[:20]!r}...: longer than {ID_MAX} bytes")
    rq = pb.Request(id=id, model=model or "", task=_task_value(task), deadline_ms=int(deadline_ms),
                    n_choices=int(n_choices or 0), return_tokens=bool(return_tokens))
    if (input_ids is None) == (text is None):
        raise ValueError("give exactly one of input_ids and text")
    if input_ids is not None:
        if n_choices == 0 and isinstance(input_ids, np.ndarray) and input_ids.ndim == 3:
            rq.n_choices = input_ids.shape[1]
        elif n_choices == 0 and not isinstance(input_ids, np.ndarray) and input_ids and \
                isinstance(input_ids[0], (list, tuple)) and input_ids[0] and \
                isinstance(input_ids[0][0], (list, tuple)):
            rq.n_choices = len(input_ids[0])
        ids, lengths = _rows(input_ids, "input_ids", np.int64)
        rq.tokens.input_ids.extend(ids)
        rq.tokens.lengths.extend(lengths)
        for name, value, dtype in (("attention_mask", attention_mask, np.int64),
                                   ("langs", langs, np.int64),
                                   ("token_type_ids", token_type_ids, np.int64),
                                   ("position_ids", position_ids, np.int64),
                                   ("p_mask", p_mask, np.float32)):
            if value is None:
                continue
            flat, their_lengths = _rows(value, name, dtype)
            if their_lengths != lengths:
                raise ValueError(f"{name}: its rows' lengths differ from input_ids'")
            getattr(rq.tokens, name).extend(flat)
    else:
        for row in text:
            tr = rq.text.rows.add()
            for segment in row:
                seg_text, seg_lang = (segment, "") if isinstance(segment, str) else segment
                tr.segments.add(text=seg_text, lang=seg_lang or "")
    if steps:
        rq.generate.steps = int(steps)
        if isinstance(lang_fill, str):
            rq.generate.lang_fill_code = lang_fill
        elif lang_fill is not None:
            rq.generate.lang_fill_id = int(lang_fill)
    if score_from is not None:
        rq.score_from.extend(int(v) for v in score_from)
    if score_to is not None:
        rq.score_to.extend(int(v) for v in score_to)
    return pb.ClientMessage(version=PROTO_VERSION, request=rq).SerializeToString()


def encode_cancel(id):
    return pb.ClientMessage(version=PROTO_VERSION, cancel=pb.Cancel(id=id)).SerializeToString()


def encode_stats():
    return pb.ClientMessage(version=PROTO_VERSION, stats=pb.StatsRequest()).SerializeToString()


def pair_request(id, pair, mode, model, no_source, token_scores, deadline_ms):
    if mode not in SCORE_MODES:
        raise ValueError(f"mode {mode!r}: expected 'clm' or 'mlm-pll'")
    if isinstance(pair, dict):
        src_lang, src, tgt_lang, tgt = (pair.get(k) for k in ("src_lang", "src", "tgt_lang", "tgt"))
    else:
        src_lang, src, tgt_lang, tgt = pair
    row = [(tgt, tgt_lang)] if no_source else [(src, src_lang), (tgt, tgt_lang)]
    return encode_request(id, SCORE_MODES[mode], model=model, deadline_ms=deadline_ms, text=[row],
                          return_tokens=token_scores)


# ------------------------------------------------------------ decoding

def _tensor(t):
    if t.text:
        values = list(t.text)
    elif t.i64:
        values = np.array(t.i64, dtype=np.int64)
    else:
        values = np.array(t.f32, dtype=np.float32)
    if t.row_lengths:
        rows, at = [], 0
        for n in t.row_lengths:
            rows.append(values[at:at + n])
            at += n
        return rows
    if isinstance(values, list):
        return values
    return values.reshape(tuple(t.shape)) if t.shape else values


def decode_reply(data):
    """('response', Response) or ('stats', dict), or None when the bytes
    are not a message of this protocol."""
    msg = pb.ServiceMessage()
    try:
        msg.ParseFromString(data)
    except Exception:
        return None
    if msg.version != PROTO_VERSION:
        return None
    kind = msg.WhichOneof("body")
    if kind == "stats":
        from google.protobuf.json_format import MessageToDict
        return "stats", MessageToDict(msg.stats, preserving_proto_field_name=True)
    if kind == "response":
        return "response", msg.response
    return None


def code_name(status):
    return CODES[status] if 0 <= status < len(CODES) else "unknown"


def result_of(response, attempts, total_us):
    t = response.timings
    timings = {"queue_us": t.queue_us, "tokenize_us": t.tokenize_us, "worker_us": t.worker_us,
               "stage_us": list(t.stage_us), "batch_requests": t.batch_requests,
               "batch_tokens": t.batch_tokens, "total_us": total_us, "attempts": attempts}
    outputs = {o.name: _tensor(o) for o in response.outputs}
    return Result(response.id, code_name(response.status), response.message, outputs, timings)


def pair_score(result, token_scores):
    """A finished scoring request as xlm-score's line (without "line")."""
    if not result.ok:
        return PairScore(error={"code": result.code, "message": result.message})
    rows = result.outputs.get("token_logprobs")
    if not rows or len(rows) != 1:
        return PairScore(error={"code": "internal", "message": "the reply has no token_logprobs row"})
    scores = rows[0]
    total = 0.0
    for v in scores:  # in double, in order, as xlm-score adds them
        total += float(v)
    n = len(scores)
    out = PairScore(score=total, n_target_tokens=n, mean=total / n if n else float("nan"))
    if token_scores:
        out["token_scores"] = [float(v) for v in scores]
        tokens = result.outputs.get("tokens")
        if tokens and len(tokens) == 1 and len(tokens[0]) == n:
            out["tokens"] = list(tokens[0])
    return out


def backoff_s(backoff_ms, backoff_max_ms, attempts):
    """Exponential, capped, with jitter in [wait/2, wait], as libxlmclient."""
    ms = backoff_ms
    for _ in range(1, attempts):
        if ms >= backoff_max_ms:
            break
        ms *= 2
    ms = min(ms, backoff_max_ms)
    return random.uniform(ms / 2, ms) / 1000.0


def check_config(window, attempt_timeout_ms, max_attempts, backoff_ms, backoff_max_ms):
    if not 1 <= window <= 65536:
        raise ValueError(f"window = {window}, expected 1 to 65536")
    if not 1 <= attempt_timeout_ms <= 86400000:
        raise ValueError(f"attempt_timeout_ms = {attempt_timeout_ms}, expected 1 to 86400000")
    if not 1 <= max_attempts <= 1000:
        raise ValueError(f"max_attempts = {max_attempts}, expected 1 to 1000")
    if not 0 <= backoff_ms <= backoff_max_ms <= 3600000:
        raise ValueError("expected 0 <= backoff_ms <= backoff_max_ms <= 3600000")
