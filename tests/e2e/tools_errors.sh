#!/usr/bin/env bash
# One error vocabulary and valid output (issue 11), through a real service
# (broker + mpirun) serving the causal tiny-clm-enfr and the masked
# mlm_multi-lm:
# - the same bad line gets the same code from xlm-infer and xlm-client infer
#   (cases), and from xlm-score in process and through the service (pairs):
#   bad language, too long, bad UTF-8, unknown head / kind / task, bad ids,
#   empty text, wrong types; the codes are the service's status names;
# - no message a user reads (error lines, stderr) carries an internal
#   function name; every output line is valid UTF-8 and JSON, names, ids
#   and texts with invalid UTF-8 included;
# - xlm-client infer checks the service before its first line as xlm-score
#   does: the same messages, status 2, nothing written;
# - --mode clm on the masked model is refused through the service as in
#   process (by the model's tasks), while xlm-client's clm_score still runs.
# Usage: tools_errors.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init tools-errors "$1"
causal="$top/models/tiny-clm-enfr"
masked="$top/tests/golden/mlm_multi-lm"
bin="$build/bin"
e2e_start --model "$causal" --model "$masked" --stages 1

# ------------------------------------------------------------ cases: xlm-infer, xlm-client infer
long=$(python3 -c 'print(",".join(["7"] * 130))')
ids='"input_ids":[[0,5,6,1]]'
{
  echo "{\"name\":\"ok\",\"head\":\"lm\",\"inputs\":{$ids}}"
  echo "{\"name\":\"bad_language\",\"head\":\"lm\",\"inputs\":{$ids,\"langs\":[[0,9,0,0]]}}"
  echo "{\"name\":\"too_long\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[$long]]}}"
  echo "{\"name\":\"too_long_generated\",\"kind\":\"greedy\",\"inputs\":{$ids,\"steps\":125}}"
  echo "{\"name\":\"unknown_head\",\"head\":\"nohead\",\"inputs\":{$ids}}"
  echo "{\"name\":\"head_not_served\",\"head\":\"qa\",\"inputs\":{$ids}}"
  echo "{\"name\":\"unknown_kind\",\"kind\":\"nokind\",\"inputs\":{$ids}}"
  echo '{"name":"id_past_vocab","head":"lm","inputs":{"input_ids":[[0,999999,1]]}}'
  echo '{"name":"negative_id","head":"lm","inputs":{"input_ids":[[0,-3,1]]}}'
  echo '{"name":"empty_row","head":"lm","inputs":{"input_ids":[[]]}}'
  echo '{"name":"string_id","head":"lm","inputs":{"input_ids":[[0,"a",1]]}}'
  echo '{"name":"ids_not_rows","head":"lm","inputs":{"input_ids":"abc"}}'
  echo '{"name":"fraction","head":"lm","inputs":{"input_ids":[[0,1.5,1]]}}'
  echo '{"name":"ragged","head":"lm","inputs":{"input_ids":[[0,7,1],[0,1]]}}'
  echo '{"name":"no_inputs","head":"lm"}'
  echo '{"name":"unknown_field","head":"lm","inputs":{"input_ids":[[0,5,1]],"bogus":1}}'
  echo 'not json'
  echo '{"name":"mask_value","head":"lm","inputs":{"input_ids":[[0,5,1]],"attention_mask":[[1,2,1]]}}'
  echo '{"name":"zero_steps","kind":"greedy","inputs":{"input_ids":[[0,5,1]],"steps":0}}'
  echo '{"name":"bad_fill","kind":"greedy","inputs":{"input_ids":[[0,5,1]],"langs":[[0,0,0]],"steps":2,"langs_fill":7}}'
  printf '{"name":"name_\xff\xfe","head":"lm","inputs":{%s}}\n' "$ids"
  printf '{"name":"head_utf8","head":"l\xc3m","inputs":{%s}}\n' "$ids"
  echo "{\"name\":\"clm_score\",\"kind\":\"clm_score\",\"inputs\":{$ids}}"
} > "$run_dir/cases.jsonl"
case_codes=(ok bad_request too_large too_large unknown_task unknown_task bad_request bad_request
            bad_request bad_request bad_request bad_request bad_request bad_request bad_request
            bad_request bad_request bad_request bad_request bad_request bad_request bad_request ok)

e2e_expect_status 1 "$bin/xlm-infer" --model "$causal" < "$run_dir/cases.jsonl" \
  > "$run_dir/infer.jsonl" 2> "$run_dir/infer.err"
e2e_expect_status 1 "$bin/xlm-client" infer --endpoint "$endpoint" --model tiny-clm-enfr \
  < "$run_dir/cases.jsonl" > "$run_dir/client.jsonl" 2> "$run_dir/client.err"

# ------------------------------------------------------------ pairs: xlm-score, both ways
words=$(python3 -c 'print(" ".join(["mot"] * 80))')
{
  printf 'en\tFluorescent Lamp 2\tfr\tLampe fluorescente 2\n'
  printf 'xx\tHello\tfr\tBonjour\n'
  printf 'en\tHello\tfr\t%s\n' "$words"
  printf 'en\tbad \xff\xfe utf8\tfr\tmauvais\n'
  printf 'e\xffn\tHello\tfr\tBonjour\n'
  printf 'en\t\tfr\tBonjour\n'
  printf 'en\tHello\tfr\t\n'
  printf 'en\tonly three\tfr\n'
  printf '\n'
  printf 'en\tHello\tfr\tBonjour\n'
} > "$run_dir/pairs.tsv"
{
  printf '{"src_lang":"en","src":"Hello","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":"xx","src":"Hello","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":"en","src":"Hello","tgt_lang":"fr","tgt":"%s"}\n' "$words"
  printf '{"src_lang":"en","src":"bad \xff utf8","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":"e\xc3n","src":"Hello","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":"en","src":"","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":"en","src":5,"tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf '{"src_lang":1,"src":"Hello","tgt_lang":"fr","tgt":"Bonjour"}\n'
  printf 'not json\n'
  printf '{"src_lang":"en","src":"Hello","tgt_lang":"fr","tgt":"Bonjour"}\n'
} > "$run_dir/pairs.jsonl"
tsv_codes=(ok bad_request too_large bad_request bad_request bad_request bad_request bad_request
           bad_request ok)
jsonl_codes=(ok bad_request too_large bad_request bad_request bad_request bad_request bad_request
             bad_request ok)
for form in tsv jsonl; do
  e2e_expect_status 1 "$bin/xlm-score" --model "$causal" --mode clm --input "$run_dir/pairs.$form" \
    --output "$run_dir/local-$form.jsonl" 2> "$run_dir/local-$form.err"
  e2e_expect_status 1 "$bin/xlm-score" --endpoint "$endpoint" --model tiny-clm-enfr --mode clm \
    --input "$run_dir/pairs.$form" --output "$run_dir/service-$form.jsonl" 2> "$run_dir/service-$form.err"
done

python3 - "$run_dir" "${case_codes[*]}" "${tsv_codes[*]}" "${jsonl_codes[*]}" <<'PY' || e2e_fail "codes differ"
import json, sys
run, expected = sys.argv[1], {"cases": sys.argv[2].split(), "tsv": sys.argv[3].split(),
                              "jsonl": sys.argv[4].split()}
def codes(path, key):
    rows = [json.loads(line.decode("utf-8", errors="strict")) for line in open(path, "rb")]
    return [(r[key], r["error"]["code"] if "error" in r else "ok") for r in rows]
pairs = {"cases": ("infer.jsonl", "client.jsonl", "name")}
for form in ("tsv", "jsonl"):
    pairs[form] = ("local-%s.jsonl" % form, "service-%s.jsonl" % form, "line")
for what, (a, b, key) in pairs.items():
    got_a, got_b = codes(run + "/" + a, key), codes(run + "/" + b, key)
    assert [c for _, c in got_a] == [c for _, c in got_b], (what, list(zip(got_a, got_b)))
    assert [c for _, c in got_a] == expected[what], (what, got_a, expected[what])
    print("%s: %s and %s give the same %d codes: %s" % (what, a, b, len(got_a),
          " ".join(c for _, c in got_a)))
PY

# ------------------------------------------------------------ xlm-client checks the service first
e2e_expect_status 2 "$bin/xlm-client" infer --endpoint "$endpoint" --model tiny-clm-enfr --head qa \
  < "$run_dir/cases.jsonl" > "$run_dir/head-qa.jsonl" 2> "$run_dir/head-qa.err"
grep -q "^xlm-client: task qa is not served by model 'tiny-clm-enfr' (it serves base, lm, clm_score, generate)$" \
  "$run_dir/head-qa.err" || e2e_fail "--head qa: $(cat "$run_dir/head-qa.err")"
[ ! -s "$run_dir/head-qa.jsonl" ] || e2e_fail "--head qa wrote lines"
head -n 3 "$causal/examples/pairs.tsv" > "$run_dir/three.tsv"
nobody="tcp://127.0.0.1:$("$top/tests/tools/free_ports" 1)"
# same LABEL SAYS ARGS...: xlm-client infer and xlm-score refuse the job with
# one and the same line, which says SAYS.
same() {
  local label=$1 says=$2; shift 2
  e2e_expect_status 2 "$bin/xlm-client" infer "$@" < "$run_dir/cases.jsonl" \
    > "$run_dir/refused.jsonl" 2> "$run_dir/refused-client.err"
  e2e_expect_status 2 "$bin/xlm-score" --mode clm --input "$run_dir/three.tsv" \
    --output "$run_dir/refused-score.jsonl" "$@" 2> "$run_dir/refused-score.err"
  [ ! -s "$run_dir/refused.jsonl" ] && [ ! -e "$run_dir/refused-score.jsonl" ] ||
    e2e_fail "$label: a refused job wrote output"
  local client score
  client=$(sed 's/^xlm-client: //' "$run_dir/refused-client.err")
  score=$(sed 's/^xlm-score: //' "$run_dir/refused-score.err")
  [ "$client" = "$score" ] || e2e_fail "$label: xlm-client says '$client', xlm-score '$score'"
  [[ $client == *"$says"* ]] || e2e_fail "$label: '$client' does not say '$says'"
  echo "$label: both refuse the job (status 2): $client"
}
same "nothing listening" "cannot reach the broker at $nobody (no reply to a stats request within 1 s)" \
  --endpoint "$nobody" --connect-timeout-ms 1000
# The models are listed in the order they registered.
same "unknown model" "unknown model 'nosuch': the service at $endpoint serves " \
  --endpoint "$endpoint" --model nosuch
same "two models, none named" "the service at $endpoint serves 2 models (" --endpoint "$endpoint"

# ------------------------------------------------------------ --mode clm on a masked LM
e2e_expect_status 2 "$bin/xlm-score" --endpoint "$endpoint" --model mlm_multi-lm --mode clm \
  --input "$run_dir/three.tsv" --output "$run_dir/masked.jsonl" 2> "$run_dir/masked-service.err"
grep -q "^xlm-score: model 'mlm_multi-lm' is a masked LM (it serves mlm_pll): score it with --mode mlm-pll$" \
  "$run_dir/masked-service.err" || e2e_fail "masked through the service: $(cat "$run_dir/masked-service.err")"
[ ! -e "$run_dir/masked.jsonl" ] || e2e_fail "the refused masked job left an output"
e2e_expect_status 2 "$bin/xlm-score" --model "$masked" --mode clm --input "$run_dir/three.tsv" \
  --output "$run_dir/masked-local.jsonl" 2> "$run_dir/masked-local.err"
grep -q "is a masked LM (causal: false): score it with --mode mlm-pll" "$run_dir/masked-local.err" ||
  e2e_fail "masked in process: $(cat "$run_dir/masked-local.err")"
e2e_expect_status 0 "$bin/xlm-score" --endpoint "$endpoint" --model mlm_multi-lm --mode mlm-pll \
  --quiet --input "$run_dir/three.tsv" --output "$run_dir/masked-pll.jsonl"
echo "{\"name\":\"score\",\"kind\":\"clm_score\",\"inputs\":{$ids}}" > "$run_dir/clm.jsonl"
e2e_expect_status 0 "$bin/xlm-client" infer --endpoint "$endpoint" --model mlm_multi-lm \
  < "$run_dir/clm.jsonl" > "$run_dir/masked-clm.jsonl"
echo "masked LM: --mode clm refused through the service and in process; mlm-pll and clm_score served"

# ------------------------------------------------------------ what a user reads
"$bin/xlm-client" stats --endpoint "$endpoint" > "$run_dir/stats.json"
python3 - "$run_dir" <<'PY' || e2e_fail "output that is not valid UTF-8 JSON, or internal names"
import glob, json, os, re, sys
internal = re.compile(rb"\b(shard|proto|worker|broker|xlm_client)_[a-z0-9_]*")
outputs = [p for p in glob.glob(sys.argv[1] + "/*.json*")
           if os.path.basename(p) not in ("cases.jsonl", "pairs.jsonl", "clm.jsonl")]
lines = messages = 0
for path in [p for p in outputs if p.endswith(".job")]:  # one JSON object each
    json.loads(open(path, "rb").read().decode("utf-8", errors="strict"))
for path in [p for p in outputs if not p.endswith(".job")]:
    for n, raw in enumerate(open(path, "rb"), 1):
        row = json.loads(raw.decode("utf-8", errors="strict"))  # strict: invalid bytes fail
        lines += 1
        if isinstance(row, dict) and "error" in row:
            messages += 1
            found = internal.search(row["error"]["message"].encode())
            assert not found, "%s:%d: %r" % (path, n, row["error"]["message"])
for path in glob.glob(sys.argv[1] + "/*.err"):
    for n, raw in enumerate(open(path, "rb"), 1):
        raw.decode("utf-8", errors="strict")
        found = internal.search(raw)
        assert not found, "%s:%d: %r" % (path, n, raw)
print("%d output lines in %d files valid UTF-8 JSON; %d error messages and every stderr line "
      "without internal names" % (lines, len(outputs), messages))
PY
grep -qF "$(printf '"name":"name_\xef\xbf\xbd\xef\xbf\xbd"')" "$run_dir/infer.jsonl" ||
  e2e_fail "the invalid name is not written with U+FFFD"
echo "tools-errors: PASS"
