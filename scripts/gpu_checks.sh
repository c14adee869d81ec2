#!/usr/bin/env bash
# The GPU checks in one script, in order of value, each under its own time limit and all within DEADLINE
# seconds (a GPU lent for a few minutes must not end with nothing written):
#   1. `mkviz bench` on CUDA: ViT-S/16 and ViT-B/16 at 224 px, bf16, batch 128, every variant at 8 charts,
#      eager, and a profile of one training step of each (then, after 2, the benchmark with torch.compile per
#      block, `--compile blocks`)
#   2. notebook 03 at GPU scale, run as a script (`python -m mkviz.course.notebook_runs run`)
#   3. the GPU-scale Fashion-MNIST study (configs/repro_gpu.yaml): its primary comparison, seed-major (any
#      prefix of the runs is balanced), three runs at a time, for the time that is left
# Everything goes to OUT. Run from the repository root, with mkviz importable and Fashion-MNIST installed:
#   OUT=outputs/gpu_checks DEADLINE=480 bash scripts/gpu_checks.sh
# DRY=1 runs the same steps on the CPU at tiny sizes (a check of the script, not a measurement).
# STEPS chooses steps by key (default: all, in the order below), e.g. STEPS="notebook03 profile compiled-b":
#   bench-s bench-b profile notebook03 compiled-s compiled-b study  (STUDY_JOBS: runs at a time, default 3)
set -u
OUT=${OUT:-outputs/gpu_checks}
DEADLINE=${DEADLINE:-480}
PY=${PY:-python3}
DRY=${DRY:-0}
ALL_STEPS="bench-s bench-b profile notebook03 compiled-s compiled-b study"
STEPS=${STEPS:-$ALL_STEPS}
for key in $STEPS; do
    case " $ALL_STEPS " in *" $key "*) ;; *) echo "STEPS: unknown step '$key'; allowed: $ALL_STEPS" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
start=$(date +%s)

left() { echo $(( DEADLINE - ($(date +%s) - start) )); }

step() {  # step KEY NAME CAP COMMAND...: run COMMAND under a limit of CAP seconds or the time left, if less
    local key=$1 name=$2 cap=$3 t s rc
    shift 3
    case " $STEPS " in *" $key "*) ;; *) echo "== $name: not in STEPS"; return ;; esac
    t=$(left)
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 30 ]; then
        echo "== $name: skipped, ${t} s left"
        return
    fi
    echo "== $name (at most ${t} s): $*"
    s=$(date +%s)
    timeout -k 10 "$t" "$@"
    rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - s )) s"
}

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    SMALL=(--model vit_tiny_patch16_224 --img-size 32 --batch-size 4 --repeats 2 --latency-img-size 32)
    BASE=(--model vit_tiny_patch16_224 --img-size 32 --batch-size 4 --repeats 2 --latency-img-size 32)
    PROFILE=(--model vit_tiny_patch16_224 --img-size 32 --batch-size 4 --steps 2)
    NOTEBOOK=(env MKVIZ_SMALL=1 MKVIZ_DEVICE=cpu)
    STUDY=(--list)
else
    DEVICE=cuda
    SMALL=(--model vit_small_patch16_224 --batch-size 128 --repeats 10)
    BASE=(--model vit_base_patch16_224 --batch-size 128 --repeats 10)
    PROFILE=(--model vit_small_patch16_224 --batch-size 128 --steps 5)
    NOTEBOOK=(env MKVIZ_DEVICE=cuda MKVIZ_WORKERS=8)
    STUDY=(--jobs "${STUDY_JOBS:-3}")
fi
BENCH=("$PY" -m mkviz.apps.bench run --device "$DEVICE" --dtype bfloat16 --variants vanillak simplek spatialk kua
       --num-charts 8)

"$PY" -c "from mkviz.core.cost import machine_description as m; print(m())" | tee "$OUT/machine.txt"
[ "$DEVICE" = cuda ] && nvidia-smi | tee -a "$OUT/machine.txt"

# 1. the benchmark, eager
step bench-s "bench ViT-S eager" 120 "${BENCH[@]}" "${SMALL[@]}" --json "$OUT/bench_vit_s_eager.json"
step bench-b "bench ViT-B eager" 120 "${BENCH[@]}" "${BASE[@]}" --json "$OUT/bench_vit_b_eager.json"
# 1a. where a training step's time goes (torch.profiler): the baseline and every variant on ViT-S
step profile "profile ViT-S" 90 "$PY" -m mkviz.apps.bench profile --device "$DEVICE" --dtype bfloat16 \
    --variants vanillak simplek spatialk kua --num-charts 8 "${PROFILE[@]}" --json "$OUT/profile_vit_s.json"
# 2. notebook 03 at GPU scale, before the compiled runs (cold compiles take minutes): its runs and
#    results_table.json in nb03/, the Run All record beside them
step notebook03 "notebook 03" 300 "${NOTEBOOK[@]}" MKVIZ_OUT="$OUT/nb03" \
    "$PY" -m mkviz.course.notebook_runs run notebooks/03_fine_tuning.py --record "$OUT/nb03/run.json"

# 1b. the benchmark compiled per block
step compiled-s "bench ViT-S compiled per block" 150 "${BENCH[@]}" "${SMALL[@]}" --compile blocks \
    --json "$OUT/bench_vit_s_blocks.json"
step compiled-b "bench ViT-B compiled per block" 150 "${BENCH[@]}" "${BASE[@]}" --compile blocks \
    --json "$OUT/bench_vit_b_blocks.json"

# 3. the study's primary comparison, seed-major, for the time left (finished runs write their JSON)
step study "study repro_gpu (primary comparison)" 100000 "$PY" -m mkviz.apps.cli sweep configs/repro_gpu.yaml \
    --only 'fmnist__baseline__s*,fmnist__vanillak-8__s*,fmnist__overparam-key__s*' "${STUDY[@]}"
echo "== done after $(( $(date +%s) - start )) s"
