#!/usr/bin/env bash
# xlm-score streams: its memory does not grow with the input. 1,000,000 short
# pairs against a small random model (in process), peak RSS compared with a
# run of 20,000 pairs; every line answered once, in order.
# Usage: score_memory.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-memory "$1"
python3 "$top/tests/tools/make_checkpoint.py" "$run_dir/model" "$top/models/tiny-clm-enfr" --causal
python3 - "$run_dir" <<'PY'
import random, sys
r = random.Random(5)
en = "the a file lamp version editor open close save new window text".split()
fr = "le la fichier lampe version éditeur ouvrir fermer nouveau fenêtre texte".split()
with open(sys.argv[1] + "/big.tsv", "w") as big, open(sys.argv[1] + "/small.tsv", "w") as small:
    for i in range(1000000):
        line = "en\t%s\tfr\t%s\n" % (" ".join(r.choice(en) for _ in range(r.randint(1, 4))),
                                     " ".join(r.choice(fr) for _ in range(r.randint(1, 4))))
        big.write(line)
        if i < 20000:
            small.write(line)
PY
python3 - "$build/bin/xlm-score" "$run_dir" <<'PY'
import resource, subprocess, sys, json
score, run = sys.argv[1:3]
def peak(name):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([score, "--model", run + "/model", "--mode", "clm", "--quiet",
                    "--input", "%s/%s.tsv" % (run, name), "--output", "%s/%s.jsonl" % (run, name)],
                   check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before
small, _ = peak("small")
big, _ = peak("big")   # ru_maxrss of children is the largest child so far
n = 0
with open(run + "/big.jsonl") as f:
    for n, line in enumerate(f, 1):
        if n % 100000 == 0 or n == 1:
            assert json.loads(line)["line"] == n
assert n == 1000000, n
print("score_memory: 1,000,000 lines, peak RSS %.1f MiB (20,000 lines: %.1f MiB)" % (big / 1024, small / 1024))
assert big <= small + 4 * 1024, "memory grew with the input"
assert big < 256 * 1024
PY
