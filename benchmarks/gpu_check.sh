#!/usr/bin/env bash
# The GPU path of shiftnas, checked in one command on an H100/H200 (under 6 minutes).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU, tiny (also DEVICE=cpu)
#
# Nothing needs installing but what travels in the repository. The GPU machine
# is expected to have python3 with torch, triton, numpy, pyyaml, matplotlib and
# pytest(-xdist); optuna and its pure-Python needs come as cp312 wheels in the
# ignored folder wheels/, with Fashion-MNIST's four .gz files in
# wheels/fashion-mnist/. `make gpu-carry` fills it on a machine with a network:
#   wheels/*.whl             optuna alembic sqlalchemy greenlet colorlog mako
#   wheels/fashion-mnist/    train-images-idx3-ubyte.gz ... (Debian's dataset-fashion-mnist)
# The wheels are unpacked into a scratch site folder and shiftnas is put on the
# import path as it is laid out here (its folders are its subpackages), so the
# checkout under test is exactly what runs.
#
# Steps, each under its own time limit, in this order so that a run cut short
# still has the timings: versions and the GPU; the kernel benchmark
# (`python -m benchmarks.kernels --quick`); a 90-second search on Fashion-MNIST
# at 32x32 (bf16, latency timed with CUDA graphs at batch 64); the whole test
# suite (`pytest -n 12`), each failing test's name printed the moment it fails.
#
# Output: at most 8 files in $OUT (the device tool's output folder; else
# out/gpu-check): kernels.log, kernels.csv, autotune.json (the autotuner's
# choices), search.log, report.md, trials.csv, pytest.log, and summary.md (the
# table, printed last, then the versions; env.txt until then).
# benchmarks/RESULTS.md ("The one-command GPU check") documents the format.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run, or nothing)" >&2; exit 2 ;;
  esac
done
[ "${DEVICE:-cuda}" = cpu ] && DRY=1

OUT=${OUT:-$ROOT/out/gpu-check}
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$OUT/steps.tsv"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then  # the same steps on the CPU, sized to finish in well under a minute
  DEV=cpu; T_BENCH=${T_BENCH:-120}; T_SEARCH=${T_SEARCH:-120}; T_TESTS=${T_TESTS:-120}
  SEARCH_S=15; TRIALS=3; WORKERS_TESTS=1
  TEST_ARGS=${TEST_ARGS:-tests/kernels/test_reference.py::test_integer_shift_backward_is_the_transpose}
  BENCH_ARGS="--device cpu --quick --suite gpu --shapes 2x18x5x6 --reps 1"
  export TRITON_INTERPRET=1   # the GPU kernels, run by Triton's interpreter
else
  # Expected on an H200: ~90 s of kernels (most of it first compiles, which the later steps
  # reuse from Triton's cache), ~110 s of search, ~150 s of tests: under 6 minutes.
  DEV=cuda; T_BENCH=${T_BENCH:-110}; T_SEARCH=${T_SEARCH:-120}; T_TESTS=${T_TESTS:-170}
  SEARCH_S=90; TRIALS=400; WORKERS_TESTS=12
  TEST_ARGS=${TEST_ARGS:-tests}
  BENCH_ARGS="--quick"
fi

step() {  # step NAME SECONDS COMMAND...: run it under its time limit, record status and time
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
  [ $rc = 0 ] || echo "== $name: exit $rc$( [ $rc = 124 ] && echo ' (time limit)')"
  return 0
}

# -- setup: optuna from wheels/, shiftnas from this checkout ------------------------------
SITE=$WORK/site
mkdir -p "$SITE/shiftnas"
if ! "$PY" -c "import optuna" 2>/dev/null; then
  if ! ls wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: optuna is not installed and wheels/ holds no wheels; run 'make gpu-carry'" \
         "on a machine with a network and carry wheels/ along." >&2
    exit 2
  fi
  for w in wheels/*.whl; do "$PY" -m zipfile -e "$w" "$SITE" || exit 2; done
fi
for f in shiftnas/*; do [ "${f##*/}" = __pycache__ ] || ln -s "$ROOT/$f" "$SITE/shiftnas/"; done
for sub in searchspace kernels evaluators nas results; do ln -s "$ROOT/$sub" "$SITE/shiftnas/$sub"; done
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export SHIFTNAS_CACHE=$WORK/cache   # a fresh cache: compile and autotune times are real

# -- versions and the GPU -----------------------------------------------------------------
cat > "$WORK/versions.py" <<'EOF'
import platform, subprocess, sys
import torch
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
for name in ("triton", "optuna", "onnxruntime", "numpy"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except ImportError:
        print(f"{name} missing")
import shiftnas, shiftnas.nas  # noqa: E401  (the checkout under test)
print(f"shiftnas {shiftnas.__version__} from {shiftnas.__file__}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run on a machine without one")
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                          "--format=csv,noheader"], capture_output=True, text=True)
    print(f"driver, max SM / memory clocks: {smi.stdout.strip() or smi.stderr.strip()}")
else:
    print(f"CPU {platform.processor() or platform.machine()} (dry run: tiny sizes)")
EOF
step versions 30 "$PY" "$WORK/versions.py" "$DEV" > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! tail -n1 "$OUT/steps.tsv" | grep -q $'\t0\t'; then
  echo "gpu_check.sh: the environment is not usable (see env.txt above)" >&2
  "$PY" -m benchmarks.gpu_check_summary "$OUT"
  exit 1
fi

# -- kernels ------------------------------------------------------------------------------
mkdir -p "$WORK/bench"
# shellcheck disable=SC2086
step kernels "$T_BENCH" "$PY" -m benchmarks.kernels $BENCH_ARGS --out "$WORK/bench" \
  > "$OUT/kernels.log" 2>&1
cat "$WORK"/bench/kernels-*.csv > "$OUT/kernels.csv" 2>/dev/null
# The autotuner's choices with every candidate's time: the evidence for pruning config lists.
cp "$SHIFTNAS_CACHE"/triton/autotune-*.json "$OUT/autotune.json" 2>/dev/null
tail -n 25 "$OUT/kernels.log"

# -- a 90-second search on Fashion-MNIST at 32x32 -----------------------------------------
SIZE="resolution: 32, subset: 20000, val_subset: 5000"
[ "$DRY" = 1 ] && SIZE="resolution: 16, subset: 512, val_subset: 256"
if [ -f wheels/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  DATA="{name: fashion_mnist, path: $ROOT/wheels/fashion-mnist, $SIZE}"
elif "$PY" -m shiftnas data where fashion_mnist >/dev/null 2>&1; then
  DATA="{name: fashion_mnist, $SIZE}"
else  # the dry run on a machine without Fashion-MNIST: scikit-learn's bundled digits
  DATA="{name: digits}"
fi
if [ "$DRY" = 1 ]; then
  SPACE=quickstart_shift; LATENCY="{batch_size: 1, warmup: 2, repeats: 5}"
  TRAIN="{epochs: 1, batch_size: 64, max_batches_per_epoch: 4}"
else
  SPACE=cifar_shift; LATENCY="{batch_size: 64, dtype: bfloat16, warmup: 10, repeats: 50}"
  TRAIN="{epochs: 3, batch_size: 256, lr: 0.2, amp: auto, channels_last: auto}"
fi
cat > "$WORK/budget.yaml" <<EOF
name: gpu-check
out_dir: $WORK/runs
seed: 0
device: $DEV
data: $DATA
space: $SPACE
objectives:
  - {metric: accuracy, direction: maximize}
  - {metric: latency_ms, direction: minimize}
constraints:
  - params <= 1500000
sampler: tpe
trials: $TRIALS
time_budget: ${SEARCH_S}s
workers: 1
train: $TRAIN
pruning: {enabled: true, eta: 3, min_epochs: 1, min_trials: 4}
latency: $LATENCY
export: max accuracy
EOF
step search "$T_SEARCH" "$PY" -m shiftnas search "$WORK/budget.yaml" > "$OUT/search.log" 2>&1
tail -n 15 "$OUT/search.log"
for f in report.md trials.csv; do
  cp "$WORK/runs/gpu-check/$f" "$OUT/$f" 2>/dev/null || true
done

# -- the test suite -----------------------------------------------------------------------
# Failing tests' names go to the terminal as they happen (benchmarks/_pytest_live.py).
# shellcheck disable=SC2086
step tests "$T_TESTS" bash -c "$PY -m pytest -q -n $WORKERS_TESTS -p benchmarks._pytest_live \
  -p no:cacheprovider $TEST_ARGS > '$OUT/pytest.log' 2>&1"
tail -n 3 "$OUT/pytest.log"

# -- summary ------------------------------------------------------------------------------
# summary.md takes in steps.tsv and env.txt, which keeps the folder at 8 files.
echo
"$PY" -m benchmarks.gpu_check_summary "$OUT" && rm -f "$OUT/steps.tsv" "$OUT/env.txt"
