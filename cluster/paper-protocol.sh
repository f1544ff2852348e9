#!/usr/bin/env bash
# The paper's full protocol on a running Ray cluster: 5 seeds x {VGG-16, ResNet-18,
# ResNet-50} x {ReLU, tanh} training dynamics, plus CE vs CE+HSIC on VGG-16.
# Every (model, activation, seed) training is one Ray task on one GPU; each spec's
# analysis units follow. Run it from a folder on the shared filesystem, on a node that
# belongs to the cluster (or set RAY_ADDRESS=ray://head:10001 to drive it remotely).
#
#   IMAGENETTE=/shared/data/imagenette2 OUT=/shared/mi-probe bash cluster/paper-protocol.sh
#
# Extra arguments are passed to every `mi-probe run`, e.g. --set executor.train.gpus=2
# to train each model with 2-GPU DDP.
set -euo pipefail
: "${IMAGENETTE:?set IMAGENETTE to the imagenette2 folder (train/ and val/), on the shared filesystem}"
: "${OUT:?set OUT to a folder on the shared filesystem for run directories and the model cache}"
SPECS=${SPECS:-"specs/paper/dynamics_vgg16.yaml specs/paper/dynamics_resnet18.yaml specs/paper/dynamics_resnet50.yaml specs/paper/hsic_vgg16.yaml"}
ADDRESS=${ADDRESS:-auto}

pids=()
for spec in $SPECS; do
  name=$(basename "$spec" .yaml)
  # One driver per spec; Ray schedules the tasks of all of them together. A re-run of
  # this script resumes each run directory and skips every finished unit.
  mi-probe run "$spec" --no-progress \
    --executor ray --set "executor.address=$ADDRESS" \
    --set executor.train.gpus=1 --set executor.train.cpus=8 \
    --set executor.analysis.gpus=1 --set executor.analysis.cpus=4 \
    --set "data.root=$IMAGENETTE" \
    --cache-dir "$OUT/cache" --out "$OUT/runs/$name" "$@" \
    > "$OUT/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (log: $OUT/$name.log)"
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "reports: $OUT/runs/*/index.html"
exit $status
