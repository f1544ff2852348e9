#!/bin/bash
# A study over the activation store (issue 25): the same study specs three times into
# fresh run directories, with the store off, with an empty store and with that store
# again. The trained models must be in the model cache already (run `make study` once);
# only analysis is timed. Pause other work on the machine first.
#
#   bash benchmarks/bench_study_store.sh [spec names...]
#
# Default specs: the four that share trained models with few other costs. Prints the
# three wall times; the per-spec seconds are in each OUT/ledger.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SPECS=("${@:-r18_layer_mi r18_concentration vgg_layer_mi vgg_concentration}")
ONLY=()
for s in ${SPECS[@]}; do ONLY+=(--only "$s"); done
WORK=$(mktemp -d)
run() {  # label, store
    local t0 t1
    t0=$(date +%s.%N)
    # --doc elsewhere: the README's findings are left alone
    if ! MI_PROBE_STORE=$2 .venv/bin/mi-probe study specs/study --out "$WORK/$1" "${ONLY[@]}" \
        --doc "$WORK/docs/$1.md" > "$WORK/$1.log" 2>&1; then
        tail -20 "$WORK/$1.log"; echo "failed; everything is under $WORK" >&2; exit 1
    fi
    t1=$(date +%s.%N)
    python3 -c "import json; l = json.load(open('$WORK/$1/ledger.json')); print(f'$1: {$t1 - $t0:.1f} s', {k: round(v[-1]['seconds'], 1) for k, v in l.items()})"
}
run store_off off
run empty_store "$WORK/store"
run warm_store "$WORK/store"
rm -rf "$WORK"
