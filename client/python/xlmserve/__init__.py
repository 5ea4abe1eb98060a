"""xlmserve: the Python client of xlmserve's broker (ZeroMQ + protobuf).

    from xlmserve import Client
    with Client("tcp://127.0.0.1:5555") as client:
        scores = client.score_pairs([("en", "Hello", "fr", "Bonjour")], mode="clm")
        logits = client.infer("seq_cls", [[0, 55, 755, 1]], model="clm-seq_cls")["logits"]

The semantics are libxlmclient's: ids chosen by the client, a request with
no reply within attempt_timeout_ms sent again with the same id (the broker
answers a retried id once), OVERLOADED and UNAVAILABLE retried after an
exponential backoff, deadlines finished on this side too, a bounded window
of requests in flight, cancel. AsyncClient is the same for asyncio.
"""
from ._core import (Result, ServiceError, WindowFull, CODES, TASKS, PairScore)
from .client import Client
from .aio import AsyncClient

__all__ = ["Client", "AsyncClient", "Result", "ServiceError", "WindowFull", "PairScore",
           "CODES", "TASKS"]
__version__ = "0.1.0"
