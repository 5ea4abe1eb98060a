#!/usr/bin/env python3
"""compare_golden.py on small hand-made files: what must pass passes, and each
way a result can be wrong (a later ragged row shorter or longer, a value out
of tolerance, an id off by one, NaN, an error, a missing field) or unreadable
(not JSON, no name, a name twice, no result, a result for no case) fails,
with the reason in its message.
Usage: test_compare_golden.py"""
import json
import os
import subprocess
import sys
import tempfile

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare_golden.py")

GOLDEN = [
    {"name": "a", "outputs": {"token_logprobs": [[-1.0, -2.0, -3.0], [-4.0], [-5.0, -6.0]],
                              "sum_logprob": [-6.0, -4.0, -11.0]}},
    {"name": "b", "outputs": {"logits": [[[0.5, 1.5], [2.5, 3.5]]], "new_ids": [[7, 8, 9]]}},
]


def outputs(**change):
    """Results equal to GOLDEN, with case a's outputs changed by change."""
    rows = json.loads(json.dumps(GOLDEN))
    rows[0]["outputs"].update(change)
    return [json.dumps(r) for r in rows]


# (what, result lines, expected exit status, text the message must hold)
CASES = [
    ("equal", outputs(), 0, "2/2 cases pass"),
    ("within tolerance", outputs(token_logprobs=[[-1.00005, -2.0, -3.0], [-4.0], [-5.0, -6.0]]), 0,
     "2/2 cases pass"),
    ("results in another order", outputs()[::-1], 0, "2/2 cases pass"),
    ("a later row shorter", outputs(token_logprobs=[[-1.0, -2.0, -3.0], [-4.0], [-5.0]]), 1,
     "token_logprobs[2]: 1 values, expected 2"),
    ("a later row longer", outputs(token_logprobs=[[-1.0, -2.0, -3.0], [-4.0, -9.0], [-5.0, -6.0]]), 1,
     "token_logprobs[1]: 2 values, expected 1"),
    ("a row missing", outputs(token_logprobs=[[-1.0, -2.0, -3.0], [-4.0]]), 1,
     "token_logprobs: 2 values, expected 3"),
    ("a number where a row is", outputs(token_logprobs=[[-1.0, -2.0, -3.0], -4.0, [-5.0, -6.0]]), 1,
     "token_logprobs[1]: float where a list of 1 is expected"),
    ("out of tolerance", outputs(sum_logprob=[-6.0, -4.0, -11.01]), 1, "sum_logprob[2]: |"),
    ("NaN", outputs(sum_logprob=[-6.0, float("nan"), -11.0]), 1, "sum_logprob[1]: bad value nan"),
    ("an error", [json.dumps({"name": "a", "error": {"code": "internal"}}), outputs()[1]], 1,
     "a: error"),
    ("a field missing", [json.dumps({"name": "a", "outputs": {"sum_logprob": [-6.0, -4.0, -11.0]}}),
                         outputs()[1]], 1, "a: missing token_logprobs"),
    ("not JSON", outputs() + ["{\"name\": \"c\", \"outputs\""], 1, "refused: "),
    ("no name", outputs() + [json.dumps({"outputs": {}})], 1, "not an object with a string \"name\""),
    ("a blank result line", [outputs()[0], "", outputs()[1]], 1, ":2: blank line"),
    ("a name twice", outputs() + [outputs()[0]], 1, "name 'a' given twice (first on line 1)"),
    ("no result", outputs()[:1], 1, "1/2 cases pass, worst abs err 0.00e+00, 1 without a result; "
                                    "first failure b: no result"),
    ("a result for no case", outputs() + [json.dumps({"name": "zz", "outputs": {}})], 1,
     "result(s) for no golden case, the first 'zz'"),
]


def run(tmp, golden_lines, result_lines):
    gp, rp = os.path.join(tmp, "golden.jsonl"), os.path.join(tmp, "got.jsonl")
    with open(gp, "w") as f:
        f.write("\n".join(golden_lines) + "\n")
    with open(rp, "w") as f:
        f.write("\n".join(result_lines) + "\n")
    p = subprocess.run([sys.executable, TOOL, gp, rp, "t"], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    failed = 0
    golden = [json.dumps(g) for g in GOLDEN]
    with tempfile.TemporaryDirectory() as tmp:
        for what, lines, status, text in CASES:
            rc, out = run(tmp, golden, lines)
            ok = rc == status and text in out
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {what}: exit {rc} (expected {status}): {out.strip()}")
        # A golden file with a name twice is refused too; blank golden lines are fine.
        rc, out = run(tmp, golden + ["", golden[0]], outputs())
        ok = rc == 1 and "name 'a' given twice" in out
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} a golden name twice: exit {rc}: {out.strip()}")
    print(f"test_compare_golden: {len(CASES) + 1 - failed}/{len(CASES) + 1} behave")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
