#!/usr/bin/env bash
# End to end: long greedy generations through a service of STAGES stages
# give exactly xlm-infer's tokens, and each stage computed one position per
# step from its key/value cache (the prompt once, then 1 a step: the
# stages' debug lines, counted). Then the same with room for one cached
# generation per stage while two run at once: each evicts the other, the
# steps fall back to the whole prefix, and the tokens are still the same.
# Usage: generate_cache.sh BUILD_DIR STAGES
set -euo pipefail
. "$(dirname "$0")/lib.sh"
stages=$2
e2e_init "generate-cache-s$stages" "$1"
steps=48
models=("$top/tests/golden/clm-lm" "$top/models/tiny-clm-enfr")
cases=$run_dir/cases.jsonl
# Prompts of 6 and 4 tokens, no pad id (2) among them or generated.
printf '%s\n' \
  '{"name":"long_a","head":"lm","kind":"greedy","inputs":{"input_ids":[[0,71,437,165,58,170]],"langs":[[0,0,0,0,0,0]],"steps":'$steps',"langs_fill":0}}' \
  '{"name":"long_b","head":"lm","kind":"greedy","inputs":{"input_ids":[[0,12,99,7]],"steps":'$steps'}}' \
  > "$cases"
prompt_positions=10 n_cases=2

for m in "${models[@]}"; do
  "$build/bin/xlm-infer" --model "$m" < "$cases" > "$run_dir/$(basename "$m").ref"
done

# Every case's generated_ids in OUT equal REF's, bit for bit.
same_tokens() { # ref out label
  python3 - "$@" <<'PY' || e2e_fail "$3: the service's tokens differ from xlm-infer's"
import json, sys
def ids(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "outputs" not in r:
            sys.exit(f"{path}: {r.get('name')}: no outputs: {line.strip()[:300]}")
        out[r["name"]] = r["outputs"]["generated_ids"]
    return out
ref, got = ids(sys.argv[1]), ids(sys.argv[2])
if ref != got:
    sys.exit(f"{sys.argv[3]}: expected {ref}, got {got}")
PY
}

# Lines of the workers' log since line FROM matching PATTERN.
count_lines() { # from pattern
  tail -n +"$1" "$run_dir/workers.log" | grep -cE "$2" || true
}

run_cases() { # label
  local lines
  lines=$(( $(wc -l < "$run_dir/workers.log") + 1 ))
  for m in "${models[@]}"; do
    local name
    name=$(basename "$m")
    "$build/bin/xlm-client" infer --endpoint "$endpoint" --model "$name" \
        < "$cases" > "$run_dir/$name.out"
    same_tokens "$run_dir/$name.ref" "$run_dir/$name.out" "$1: $name"
  done
  log_from=$lines
}

model_args=()
for m in "${models[@]}"; do model_args+=(--model "$m"); done
n_gen=$(( n_cases * ${#models[@]} ))

# 1. Room for every generation: one full-prefix step each (its prompt),
# then every step one position, at every stage.
e2e_start "${model_args[@]}" --stages "$stages" --timeout 120 -- --log-level debug
touch "$run_dir/workers.log"
run_cases "cached"
for ((s = 0; s < stages; s++)); do
  full=$(count_lines "$log_from" "stage $s: generation [0-9]+: full-prefix step of")
  one=$(count_lines "$log_from" "stage $s: generation [0-9]+: cached step of 1 positions")
  other=$(count_lines "$log_from" "stage $s: generation [0-9]+: cached step of ([02-9]|[0-9]{2,}) positions")
  prompts=$(tail -n +"$log_from" "$run_dir/workers.log" |
            grep -oE "stage $s: generation [0-9]+: full-prefix step of [0-9]+ positions" |
            awk '{ sum += $(NF - 1) } END { print sum + 0 }')
  [ "$full" = "$n_gen" ] && [ "$one" = $(( n_gen * (steps - 1) )) ] && [ "$other" = 0 ] &&
    [ "$prompts" = $(( prompt_positions * ${#models[@]} )) ] ||
    e2e_fail "stage $s: $full full-prefix steps ($prompts positions), $one cached steps of one position, $other of more; expected $n_gen ($(( prompt_positions * ${#models[@]} ))), $(( n_gen * (steps - 1) )), 0"
  echo "$E2E_NAME: stage $s: $full full-prefix steps of $prompts positions in all, $one steps of one position"
done
e2e_stop

# 2. One cached generation per stage, two at once (xlm-client keeps both in
# flight): they evict each other, the steps redo the whole prefix.
e2e_start "${model_args[@]}" --stages "$stages" --timeout 120 -- --log-level debug \
  --kv-cache-generations 1
run_cases "evicting"
for ((s = 0; s < stages; s++)); do
  full=$(count_lines "$log_from" "stage $s: generation [0-9]+: full-prefix step of")
  [ "$full" -gt "$n_gen" ] ||
    e2e_fail "stage $s: $full full-prefix steps with room for one generation, expected more than $n_gen: nothing was evicted"
  echo "$E2E_NAME: stage $s: $full full-prefix steps after evictions, tokens unchanged"
done
echo "$E2E_NAME: $n_gen generations of $steps tokens equal xlm-infer's, cached and evicting"
