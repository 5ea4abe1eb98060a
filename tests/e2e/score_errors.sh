#!/usr/bin/env bash
# Lines that cannot be scored get an error line and the job goes on, the same
# way in process and through the service: unknown language, invalid UTF-8,
# wrong column count, empty line, too long for the model, empty target; and
# the other input forms (two-column TSV with --src-lang/--tgt-lang, JSONL).
# Usage: score_errors.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-errors "$1"
model="$top/models/tiny-clm-enfr"

long=$(python3 -c 'print(" ".join(["mot"] * 80))')
{
  printf 'en\tFluorescent Lamp 2\tfr\tLampe fluorescente 2\n'
  printf 'xx\tHello\tfr\tBonjour\n'
  printf 'en\tbad \xff\xfe utf8\tfr\tmauvais\n'
  printf 'en\tonly three\tfr\n'
  printf '\n'
  printf 'en\tHello\tfr\t%s\n' "$long"
  printf 'en\tHello\tfr\t\n'
  printf 'fr\tVersion de l'"'"'éditeur de capture\ten\tCapture Editor Version\n'
} > "$run_dir/bad.tsv"
expected='ok bad_request bad_request bad_request bad_request too_large bad_request ok'

codes() { python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["line"] for r in rows] == list(range(1, len(rows) + 1))
print(" ".join("ok" if "score" in r else r["error"]["code"] for r in rows))' "$1"; }

e2e_expect_status 1 "$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/bad.tsv" --output "$run_dir/local.jsonl"
got=$(codes "$run_dir/local.jsonl")
[ "$got" = "$expected" ] || { echo "in process: $got, expected $expected"; exit 1; }
echo "in process: $got"

# Two-column TSV and JSONL give the same scores as the four-column lines.
printf 'Fluorescent Lamp 2\tLampe fluorescente 2\n' > "$run_dir/two.tsv"
printf '{"src_lang":"en","src":"Fluorescent Lamp 2","tgt_lang":"fr","tgt":"Lampe fluorescente 2"}\n' > "$run_dir/pairs.jsonl"
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/two.tsv" \
  --src-lang en --tgt-lang fr --output "$run_dir/two.jsonl"
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/pairs.jsonl" --output "$run_dir/json.jsonl"
python3 - "$run_dir/local.jsonl" "$run_dir/two.jsonl" "$run_dir/json.jsonl" <<'PY'
import json, sys
first = json.loads(open(sys.argv[1]).readline())
for path in sys.argv[2:]:
    other = json.loads(open(path).readline())
    assert abs(other["score"] - first["score"]) < 1e-4 and other["n_target_tokens"] == first["n_target_tokens"], path
assert abs(first["score"] - -19.382111988) < 1e-3
print("two-column TSV and JSONL: the same score as the four-column line")
PY
# A wrong mode for the checkpoint and a missing model are refused up front.
if "$build/bin/xlm-score" --model "$model" --mode mlm-pll --quiet --input "$run_dir/two.tsv" \
     --src-lang en --tgt-lang fr --output "$run_dir/x.jsonl" 2> "$run_dir/err.txt"; then
  echo "mlm-pll on a causal model was accepted"; exit 1
fi
grep -q "causal LM: score it with --mode clm" "$run_dir/err.txt"

e2e_start --model "$model" --stages 2
e2e_expect_status 1 "$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --quiet \
  --input "$run_dir/bad.tsv" --output "$run_dir/service.jsonl"
got=$(codes "$run_dir/service.jsonl")
[ "$got" = "$expected" ] || { echo "service: $got, expected $expected"; exit 1; }
echo "service: $got"
