"""xlmserve (the Python client) against the real broker and workers: its
results equal xlm-client infer's on golden cases and xlm-score's on the
bundled pairs; a broker restart during an async run loses nothing; the
window, ids, cancel, deadlines and errors behave as libxlmclient's."""
import asyncio
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import xlmserve


def run_tool(service, *args, stdin=None):
    out = subprocess.run([os.path.join(service["build_dir"], "bin", args[0]), *args[1:]],
                         input=stdin, capture_output=True, text=True, timeout=120)
    return out


def golden_cases(service, name):
    path = os.path.join(service["source_dir"], "tests", "golden", name, "cases.jsonl")
    return path, [json.loads(l) for l in open(path) if l.strip()]


@pytest.mark.parametrize("model", ["clm-seq_cls", "clm-qa"])
def test_infer_equals_xlm_client_infer(service, client, model):
    path, cases = golden_cases(service, model)
    out = run_tool(service, "xlm-client", "infer", "--endpoint", service["endpoint"], "--model", model,
                   stdin=open(path).read())
    assert out.returncode == 0, out.stderr
    reference = {r["name"]: r["outputs"] for r in map(json.loads, out.stdout.splitlines())}
    assert len(reference) == len(cases)
    for case in cases:
        inputs = {k: v for k, v in case["inputs"].items()}
        got = client.infer(case["head"], model=model, **inputs)
        want = reference[case["name"]]
        assert set(got) == set(want), case["name"]
        for name, value in want.items():
            expected = np.asarray(value)
            assert got[name].shape == expected.shape, (case["name"], name)
            if got[name].dtype == np.int64:
                assert np.array_equal(got[name], expected), (case["name"], name)
            else:  # the same service: equal but for the batch a case shared
                np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)


def bundled_pairs(service, name="pairs.tsv"):
    path = os.path.join(service["source_dir"], "models", "tiny-clm-enfr", "examples", name)
    return path, [tuple(l.rstrip("\n").split("\t")) for l in open(path, encoding="utf-8")]


def xlm_score(service, path, *extra, tmp_path):
    out_path = tmp_path / "scores.jsonl"
    out = run_tool(service, "xlm-score", "--endpoint", service["endpoint"], "--model", "tiny-clm-enfr",
                   "--mode", "clm", "--input", path, "--output", str(out_path), *extra)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in open(out_path)]


# Scores through the service vary with the micro-batch a pair lands in
# (padding changes float rounding): the project's tolerance for them.
SCORE_TOLERANCE = 1e-4


def assert_same_scores(got, reference, token_scores=False):
    assert len(got) == len(reference)
    for i, (g, r) in enumerate(zip(got, reference)):
        assert g.ok, (i, g)
        assert g["n_target_tokens"] == r["n_target_tokens"], i
        assert abs(g["score"] - r["score"]) <= SCORE_TOLERANCE, (i, g["score"], r["score"])
        assert abs(g["mean"] - r["mean"]) <= SCORE_TOLERANCE, i
        if token_scores:
            assert g["tokens"] == r["tokens"], i
            np.testing.assert_allclose(g["token_scores"], r["token_scores"], atol=SCORE_TOLERANCE)


def test_score_pairs_equals_xlm_score(service, client, tmp_path):
    path, pairs = bundled_pairs(service)
    reference = xlm_score(service, path, "--token-scores", tmp_path=tmp_path)
    got = client.score_pairs(pairs, mode="clm", model="tiny-clm-enfr", token_scores=True)
    assert_same_scores(got, reference, token_scores=True)


def test_async_score_pairs_equals_xlm_score(service, tmp_path):
    path, pairs = bundled_pairs(service, "shuffled.tsv")
    reference = xlm_score(service, path, tmp_path=tmp_path)

    async def run():
        async with xlmserve.AsyncClient(service["endpoint"], window=32) as a:
            return await a.score_pairs(pairs, model="tiny-clm-enfr")
    assert_same_scores(asyncio.run(run()), reference)


def test_a_bad_pair_fails_alone(client):
    got = client.score_pairs([("en", "a cat", "fr", "un chat"), ("xx", "a", "fr", "b"),
                              {"src_lang": "en", "src": "dog", "tgt_lang": "fr", "tgt": "chien"}],
                             model="tiny-clm-enfr")
    assert got[0].ok and got[2].ok
    assert got[1]["error"]["code"] == "bad_request"
    assert "'xx'" in got[1]["error"]["message"]


def test_mode_and_model_errors(client):
    with pytest.raises(ValueError, match="mode 'pll'"):
        client.score_pairs([("en", "a", "fr", "b")], mode="pll", model="tiny-clm-enfr")
    got = client.score_pairs([("en", "a", "fr", "b")], mode="mlm-pll", model="tiny-clm-enfr")
    assert got[0]["error"]["code"] == "unknown_task"
    with pytest.raises(xlmserve.ServiceError) as e:
        client.infer("seq_cls", [[0, 5, 1]], model="nope")
    assert e.value.code == "unknown_model"


def test_window_ids_and_cancel(service):
    with xlmserve.Client(service["endpoint"], window=2) as c:
        first = c.submit("seq_cls", id="mine-1", model="clm-seq_cls", input_ids=[[0, 5, 1]])
        assert first == "mine-1"  # client-chosen ids are kept
        with pytest.raises(ValueError, match="already in the window"):
            c.submit("seq_cls", id="mine-1", model="clm-seq_cls", input_ids=[[0, 5, 1]])
        second = c.submit("seq_cls", model="clm-seq_cls", input_ids=[[0, 6, 1]])
        with pytest.raises(xlmserve.WindowFull):
            c.submit("seq_cls", model="clm-seq_cls", input_ids=[[0, 7, 1]])
        got = {c.collect().id, c.collect().id}
        assert got == {first, second}
        with pytest.raises(KeyError):
            c.collect()
        pending = c.submit("clm_score", model="tiny-clm-enfr", text=[[("a " * 20, "en"), ("b " * 20, "fr")]])
        c.cancel(pending)
        result = c.collect(pending, 0)
        assert result.code == "cancelled"


def test_deadline_on_the_client_side(service):
    # Nothing listens there: the deadline, not the attempts, ends the request.
    with xlmserve.Client("tcp://127.0.0.1:1", attempt_timeout_ms=1000, max_attempts=5) as c:
        started = time.monotonic()
        result = c.call("seq_cls", input_ids=[[0, 5, 1]], deadline_ms=200)
        assert result.code == "deadline_exceeded"
        assert 0.15 <= time.monotonic() - started < 1.0


def test_curve_key_files(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(ValueError, match="40-character Z85"):
        xlmserve.Client("tcp://127.0.0.1:1", curve_server=str(bad), curve_secret=str(bad))
    with pytest.raises(ValueError, match="go together"):
        xlmserve.Client("tcp://127.0.0.1:1", curve_server=str(bad))
    import zmq
    public, secret = zmq.curve_keypair()
    server = tmp_path / "broker.key"
    server.write_bytes(public + b"\n")
    mine = tmp_path / "client.key_secret"
    mine.write_text(f'curve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n')
    xlmserve.Client("tcp://127.0.0.1:1", curve_server=str(server), curve_secret=str(mine)).close()


def test_broker_restart_during_an_async_run_loses_nothing(service, tmp_path):
    path, pairs = bundled_pairs(service)
    reference = xlm_score(service, path, tmp_path=tmp_path)
    many = pairs * 15
    run_dir = service["run_dir"]
    broker_pid_file = os.path.join(run_dir, "broker.pid")

    def answered(stats):
        for m in stats.get("models", []):
            if m["name"] == "tiny-clm-enfr":
                return int(m.get("requests_done", 0))
        return 0

    async def run():
        async with xlmserve.AsyncClient(service["endpoint"], window=16, attempt_timeout_ms=1500,
                                        max_attempts=40) as a:
            job = asyncio.ensure_future(a.score_pairs(many, model="tiny-clm-enfr"))
            # Wait until the run is under way, then kill -9 the broker.
            done = 0
            while done < 200 and not job.done():
                await asyncio.sleep(0.05)
                done = answered(await a.stats())
            victim = int(open(broker_pid_file).read())
            os.kill(victim, signal.SIGKILL)
            while os.path.exists(f"/proc/{victim}") and \
                    open(f"/proc/{victim}/stat").read().split(")")[-1].split()[0] != "Z":
                await asyncio.sleep(0.02)
            broker = subprocess.Popen(
                [os.path.join(service["build_dir"], "bin", "xlm-broker"), "--frontend", service["endpoint"],
                 "--backend", service["backend"]],
                stdout=open(os.path.join(run_dir, "broker.log"), "a"), stderr=subprocess.STDOUT,
                start_new_session=True)
            with open(broker_pid_file, "w") as f:  # deploy/local/stop stops this one
                f.write(f"{broker.pid}\n")
            results = await job
            after = await a.stats()
            return done, results, after
    done_before, results, after = asyncio.run(run())
    assert done_before < len(many), "the kill landed after the run"
    answered_after = answered(after)
    assert answered_after >= 1, "the restarted broker answered nothing: the fault was not felt"
    print(f"broker killed after {done_before} of {len(many)} answers; the new broker answered {answered_after}")
    assert len(results) == len(many)
    assert_same_scores(results, reference * 15)
