#!/usr/bin/env bash
# One prepared GPU check (issue 12), under 8 minutes on one GPU:
#   1. the `cuda`-marked tests (CUDA kernels equal the CPU ones),
#   2. the histogram kernel benchmark with mi-probe on the GPU (--device cuda),
#   3. a 224-px VGG-16 layer_mi on synthetic data (benchmarks/specs/gpu_layer_mi_vgg16.yaml),
# writing everything to benchmarks/results/ (gpu_check.log, gpu_check.json,
# histogram_cuda.json). Run from the repository root:  bash benchmarks/gpu_check.sh
# VENV=<path> picks the environment (default .venv; created by `make install`).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
[ -x "$PY" ] || { echo "no $PY: run 'make install' first (or VENV=<path>)" | tee -a "$LOG"; exit 2; }
"$PY" - <<'PY' || { echo "no CUDA device visible to torch" | tee -a "$LOG"; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
step() {  # name, timeout (s), command...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name" | tee -a "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - t0))" \
        >> "$RESULTS/gpu_check.steps.jsonl"
    return $rc
}
rm -f "$RESULTS/gpu_check.steps.jsonl"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$LOG"
MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1 step cuda-tests 180 "$PY" -m pytest -q -m cuda tests/test_kernels.py tests/test_histogram.py -p no:cacheprovider
step kernel-benchmark 180 "$PY" benchmarks/bench_histogram.py --device cuda --skip-memory --repeats 5 --pair-repeats 3
RUN_DIR=$(mktemp -d)
step vgg16-layer-mi-224px 240 "$VENV/bin/mi-probe" run benchmarks/specs/gpu_layer_mi_vgg16.yaml --out "$RUN_DIR/run" --cache-dir "$RUN_DIR/cache" --no-progress
"$PY" - "$RUN_DIR/run" "$RESULTS" <<'PY'
import json, sys, pathlib, subprocess
run, results = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
steps = [json.loads(l) for l in open(results / "gpu_check.steps.jsonl")]
out = {"steps": steps,
       "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()}
meta = run / "run.json"
if meta.exists():
    info = json.loads(meta.read_text())
    out["layer_mi_run"] = {k: info.get(k) for k in ("status", "timings", "device",
                                                     "versions", "started", "finished")}
table = run / "tables" / "layer_mi.parquet"
if table.exists():
    import polars as pl
    out["layer_mi_rows"] = pl.read_parquet(table).head(40).to_dicts()
(results / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out["steps"]))
PY
rm -f "$RESULTS/gpu_check.steps.jsonl"
grep -q '"rc": [1-9]' "$RESULTS/gpu_check.json" && exit 1 || exit 0
