#!/usr/bin/env bash
# Regenerate the shipped checkpoints in data/checkpoints/ (CPU, a few minutes each; JOBS runs in parallel).
#   bash scripts/make_checkpoints.sh            # all 9
#   bash scripts/make_checkpoints.sh kua-8      # only some
# Each run: 6000 training shapes (32 px, easy), 10 epochs, batch 32, seed 0, one CPU thread; the full
# training run (with optimiser state) stays in outputs/checkpoints/<name>/, the weights + config.json are
# exported to data/checkpoints/<name>/. Prints the table for data/README.md at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
COMMON="--preset tiny --dataset shapes --num-train 6000 --num-val 1000 --num-test 1000 --epochs 10 --batch-size 32 --lr 1e-3 --seed 0 --quiet"
declare -A ARGS=(
  [baseline]="--variant baseline"
  [vanillak-1]="--variant vanillak --num-charts 1"
  [vanillak-2]="--variant vanillak --num-charts 2"
  [vanillak-4]="--variant vanillak --num-charts 4"
  [vanillak-8]="--variant vanillak --num-charts 8"
  [vanillak-16]="--variant vanillak --num-charts 16"
  [simplek-8]="--variant simplek --num-charts 8"
  [spatialk-8]="--variant spatialk --num-charts 8"
  [kua-8]="--variant kua --num-charts 8 --ua-weight 0.01"
)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(baseline vanillak-8 simplek-8 spatialk-8 kua-8 vanillak-1 vanillak-2 vanillak-4 vanillak-16)

run_one() {
  local name=$1
  local start=$SECONDS
  $PY -m mkviz.cli train $COMMON ${ARGS[$name]} --out "outputs/checkpoints/$name" --overwrite \
      --export "data/checkpoints/$name" > "outputs/checkpoints/$name.log" 2>&1
  echo "$((SECONDS - start))" > "outputs/checkpoints/$name.seconds"
  echo "$name done in $((SECONDS - start)) s"
}
mkdir -p outputs/checkpoints data/checkpoints
running=0
for name in "${NAMES[@]}"; do
  [ -n "${ARGS[$name]:-}" ] || { echo "unknown checkpoint $name (known: ${!ARGS[*]})" >&2; exit 2; }
  run_one "$name" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

# the table for data/README.md
$PY - "$COMMON" "${NAMES[@]}" <<'PY'
import json, os, sys
common, names = sys.argv[1], sys.argv[2:]
print("| checkpoint | variant | charts | params | size (KB) | val acc | test acc | CPU wall time (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for name in names:
    d = f"data/checkpoints/{name}"
    cfg = json.load(open(f"{d}/config.json"))
    spec, m = cfg["model_spec"], cfg["metrics"]
    from safetensors import safe_open
    with safe_open(f"{d}/model.safetensors", "pt") as f:
        n = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel") else
                __import__("math").prod(f.get_slice(k).get_shape()) for k in f.keys())
    secs = open(f"outputs/checkpoints/{name}.seconds").read().strip()
    charts = spec["num_charts"] if spec["variant"] != "baseline" else "-"
    print(f"| `{name}` | {spec['variant']} | {charts} | {n/1e3:.0f}k | {os.path.getsize(d + '/model.safetensors')//1024} "
          f"| {m['val']['acc']:.3f} | {m['test']['acc']:.3f} | {secs} |")
PY
