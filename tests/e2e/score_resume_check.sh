#!/usr/bin/env bash
# A resumed run appends only to an output of the same job (issue 11): the
# job file OUTPUT.job records the input's identity and every option that
# changes a line; a rerun with another input, mode, model, --token-scores,
# --no-source, languages or format is refused naming what differs, before
# writing anything; --force-restart starts over; an output without a job
# file is not resumed; the same arguments resume. In process (the checks
# do not depend on the backend).
# Usage: score_resume_check.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-resume-check "$1"
model="$top/models/tiny-clm-enfr"
score="$build/bin/xlm-score"

head -n 40 "$model/examples/pairs.tsv" > "$run_dir/in.tsv"
out="$run_dir/out.jsonl"
# A first run, cut after 10 lines as a kill would leave it.
"$score" --model "$model" --mode clm --quiet --input "$run_dir/in.tsv" --output "$out" || e2e_fail "first run"
[ -s "$out.job" ] || e2e_fail "no job file beside the output"
head -n 10 "$out" > "$run_dir/cut" && mv "$run_dir/cut" "$out"
cp "$out" "$run_dir/cut.jsonl"

# refused WHAT args...: the rerun must fail with status 2, say WHAT, and leave the output alone.
refused() {
  local what=$1; shift
  e2e_expect_status 2 "$score" --model "$model" --quiet --output "$out" "$@" 2> "$run_dir/err.log"
  grep -q -- "$what" "$run_dir/err.log" || e2e_fail "rerun with $* does not name '$what'"
  cmp -s "$out" "$run_dir/cut.jsonl" || e2e_fail "rerun with $* changed the output"
  echo "refused ($what): $(cat "$run_dir/err.log")"
}
refused 'token_scores was false, now true' --mode clm --input "$run_dir/in.tsv" --token-scores
refused 'no_source was false, now true' --mode clm --input "$run_dir/in.tsv" --no-source
refused 'tgt_lang was "", now "fr"' --mode clm --input "$run_dir/in.tsv" --tgt-lang fr
refused 'format was "auto", now "tsv"' --mode clm --input "$run_dir/in.tsv" --format tsv
# The same number of lines, one pair changed: the hash tells.
sed '3s/.$/X/' "$run_dir/in.tsv" > "$run_dir/changed.tsv"
refused 'input_hash was' --mode clm --input "$run_dir/changed.tsv"
head -n 39 "$run_dir/in.tsv" > "$run_dir/shorter.tsv"
refused 'input_bytes was' --mode clm --input "$run_dir/shorter.tsv"
refused 'input_lines was 40, now 39' --mode clm --input "$run_dir/shorter.tsv"
cp -r "$model" "$run_dir/model-copy"
"$score" --model "$run_dir/model-copy" --mode clm --quiet --input "$run_dir/in.tsv" --output "$out" \
  2> "$run_dir/err.log" && e2e_fail "another model folder was accepted"
grep -q 'model was' "$run_dir/err.log" || e2e_fail "the model change is not named"
# An output that no job file describes is not resumed.
mv "$out.job" "$run_dir/saved.job"
refused 'no .*out.jsonl.job' --mode clm --input "$run_dir/in.tsv"
mv "$run_dir/saved.job" "$out.job"

# The same arguments resume: 40 lines, equal to a clean run.
"$score" --model "$model" --mode clm --input "$run_dir/in.tsv" --output "$out" 2> "$run_dir/err.log" ||
  e2e_fail "resume"
grep -q "resuming after line 10" "$run_dir/err.log" || e2e_fail "did not resume"
grep -q "40 lines (40 scored, 0 errors, 10 resumed from earlier runs)" "$run_dir/err.log" ||
  e2e_fail "the closing line does not cover the whole file"
"$score" --model "$model" --mode clm --quiet --input "$run_dir/in.tsv" --output "$run_dir/clean.jsonl"
python3 - "$out" "$run_dir/clean.jsonl" <<'PY' || e2e_fail "the resumed output differs from a clean run"
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
clean = [json.loads(l) for l in open(sys.argv[2])]
assert [g["line"] for g in got] == list(range(1, 41)), len(got)
for g, c in zip(got, clean):  # batches differ: float32 sums within 1e-4
    assert abs(g["score"] - c["score"]) <= 1e-4 and g["n_target_tokens"] == c["n_target_tokens"], (g, c)
PY

# --force-restart: another kind of line, from line 1, and a new job file.
"$score" --model "$model" --mode clm --quiet --token-scores --no-source --force-restart \
  --input "$run_dir/in.tsv" --output "$out" || e2e_fail "--force-restart"
python3 - "$out" <<'PY' || e2e_fail "--force-restart did not start over"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["line"] for r in rows] == list(range(1, 41)), len(rows)
assert all("token_scores" in r for r in rows)
PY
grep -q '"token_scores":	true' "$out.job" || e2e_fail "the job file was not rewritten"
echo "score_resume_check: mismatches refused naming what differs, same job resumed, --force-restart starts over"
