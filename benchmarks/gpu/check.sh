#!/usr/bin/env bash
# Issue 16's device check, one command on a lent GPU machine (no network; ~9 minutes):
#
#   bash benchmarks/gpu/check.sh      # run with carry ["benchmarks/gpu/wheels"] (made by benchmarks/gpu/wheels.sh)
#
# 0. installs the wheels without network, prints versions and the GPU (env.log);
# 1. pytest -m gpu: the CUDA-only equivalence tests (tests/test_gpu.py);
# 2. jowa bench train --preset 150m --precision bf16 --compile at the largest batch of TRAIN_BATCHES that fits;
# 3. jowa bench plan --preset 150m --beam 3 --horizon 2 at 16 and 64 environments, the fast path (static KV cache,
#    CUDA graph) and the node-by-node baseline in the same run;
# 3b. jowa bench evaluate --preset 150m --envs 64: real Pong emulators (ale-py vector env) stepping in one lane
#    while the agent plans for the other, against one batch, same episodes;
# 4. benchmarks/gpu_results.sh at a reduced scale, if at least LEARN_MIN_S seconds of BUDGET_S remain;
# 5. then its planning evaluation again with `jowa evaluate --fast-path` (StaticPlanners, CUDA graphs).
#
# Each step runs under `timeout` within what is left of BUDGET_S and writes as it goes under $OUT: <step>.log,
# bench-*.json, benchmarks.md (the bench tables), steps.jsonl and summary.md (one line per step: status, exit code,
# seconds), so a killed run still returns what finished. Every size is a variable below: tests/test_gpu_check_script.py
# runs this script at a tiny scale on CPU. docs/benchmarks.md ("GPU check") says how to read the numbers.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
PY=$(command -v "${PY:-python3}")
OUT=${OUT:-runs/gpu-check}
WHEELS=${WHEELS:-benchmarks/gpu/wheels}  # "none": install nothing (CI)
INSTALL=${INSTALL:-ale-py gymnasium zarr zstandard google-crc32c}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
BUDGET_S=${BUDGET_S:-540}                # the whole script, install included
MIN_STEP_S=${MIN_STEP_S:-20}             # a step starts only with this much of the budget left
PYTEST_S=${PYTEST_S:-120}
PYTEST_ARGS=${PYTEST_ARGS:-tests}
TRAIN_S=${TRAIN_S:-220}                  # all batch sizes together
TRAIN_PRESET=${TRAIN_PRESET:-150m}
TRAIN_BATCHES=${TRAIN_BATCHES:-1024 512 256}   # largest first; the first that fits is the result
TRAIN_STEPS=${TRAIN_STEPS:-10}
TRAIN_WARMUP=${TRAIN_WARMUP:-3}
TRAIN_COMPILE=${TRAIN_COMPILE:-1}
TRAIN_ARGS=${TRAIN_ARGS:-}               # more `jowa bench train` options or overrides
PLAN_S=${PLAN_S:-75}                     # each environment count
PLAN_PRESET=${PLAN_PRESET:-150m}
PLAN_ENVS=${PLAN_ENVS:-16 64}
PLAN_BEAM=${PLAN_BEAM:-3}
PLAN_HORIZON=${PLAN_HORIZON:-2}
PLAN_DECISIONS=${PLAN_DECISIONS:-5}
PLAN_FAST=${PLAN_FAST:-auto}             # --fast-path: auto (CUDA graph on GPU) | static | graph | off
PLAN_BASELINE_ENVS=${PLAN_BASELINE_ENVS:-16}  # the node-by-node baseline on at most this many (its cost is per env)
PLAN_ARGS=${PLAN_ARGS:-}                 # more `jowa bench plan` options (e.g. --threads 1 on a small CPU)
EVAL_S=${EVAL_S:-60}                     # evaluate with emulators overlapped with planning, vs one batch
EVAL_PRESET=${EVAL_PRESET:-150m}
EVAL_GAMES=${EVAL_GAMES:-Pong}
EVAL_ENVS=${EVAL_ENVS:-64}
EVAL_STEPS=${EVAL_STEPS:-40}
EVAL_ARGS=${EVAL_ARGS:-}                 # more `jowa bench evaluate` options (e.g. --tokenizer-vocab 16 on CPU)
LEARN=${LEARN:-1}
LEARN_MIN_S=${LEARN_MIN_S:-90}
# gpu_results.sh at a reduced scale (its own variables; any can be set from outside)
export GAMES=${GAMES:-Pong} STEPS=${STEPS:-10000} CAPACITY=${CAPACITY:-10000} MAX_EPISODE_STEPS=${MAX_EPISODE_STEPS:-5000}
export COLLECT_WORKERS=${COLLECT_WORKERS:-8} TOK_STEPS=${TOK_STEPS:-300} CONFIG=${CONFIG:-configs/jowa-40m.yaml}
export STAGE1=${STAGE1:-100} STAGE2=${STAGE2:-200} EPISODES=${EPISODES:-2} MAX_FRAMES=${MAX_FRAMES:-2000}
export PRETRAIN_OVERRIDES=${PRETRAIN_OVERRIDES:-train.compile=false}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=$(mktemp -d)
printf '#!/bin/sh\nexec "%s" -m jowa_cli.main "$@"\n' "$PY" >"$BIN/jowa"
chmod +x "$BIN/jowa"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" JOWA="$BIN/jowa"
echo "| step | status | exit code | seconds |" >"$OUT/summary.md"
echo "|---|---|---|---|" >>"$OUT/summary.md"
: >"$OUT/steps.jsonl"

record() {  # name status rc seconds
    printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s}\n' "$1" "$2" "$3" "$4" >>"$OUT/steps.jsonl"
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$OUT/summary.md"
    echo "== $1: $2 (exit $3, $4 s)"
}

RC=0
step() {  # name limit_s command...: run it under timeout within what is left of the budget; sets RC
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS)) t0=$SECONDS status
    shift 2
    if [ "$left" -lt "$MIN_STEP_S" ]; then
        record "$name" skipped null 0
        RC=-1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "+ $*" >"$OUT/$name.log"
    timeout -k 10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    RC=$?
    case $RC in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    tail -n 4 "$OUT/$name.log"
    record "$name" "$status" "$RC" $((SECONDS - t0))
}

# 0. install (offline) and describe the machine
if [ "$WHEELS" != none ]; then
    # shellcheck disable=SC2086 # INSTALL is a list of words
    step install 120 "$PY" -m pip install --no-index --find-links "$WHEELS" $INSTALL
fi
step env 30 "$PY" - <<'PYEOF'
import importlib, platform, shutil, subprocess
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                          "--format=csv"], capture_output=True, text=True).stdout.strip())
missing = {"required": [], "optional": []}
for mod in ("numpy", "typer", "rich", "ale_py", "gymnasium", "zarr", "zstandard", "google_crc32c", "yaml", "cv2",
            "psutil", "fsspec", "safetensors", "tensorboard", "matplotlib", "pytest", "flash_attn", "triton"):
    try:
        m = importlib.import_module(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(mod, "MISSING", type(e).__name__)
        missing["optional" if mod in ("flash_attn", "triton") else "required"].append(mod)
for kind, mods in missing.items():
    print(f"missing {kind}:", " ".join(mods) or "none")
raise SystemExit(1 if missing["required"] else 0)
PYEOF

# 1. CUDA-only tests (skipped without CUDA)
# shellcheck disable=SC2086
step pytest-gpu "$PYTEST_S" "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$OUT/pytest-gpu.xml" $PYTEST_ARGS

# 2. training throughput at the largest batch that fits (exit code 2: out of memory, try the next)
# shellcheck disable=SC2086 # TRAIN_ARGS, PLAN_ARGS and EVAL_ARGS are lists of words
compile=()
[ "$TRAIN_COMPILE" = 1 ] && compile=(--compile)
train_end=$((SECONDS + TRAIN_S))
for bs in $TRAIN_BATCHES; do
    left=$((train_end - SECONDS))
    [ "$left" -lt 1 ] && left=1
    step "train-bs$bs" "$left" "$JOWA" bench train --preset "$TRAIN_PRESET" --batch-size "$bs" \
        --steps "$TRAIN_STEPS" --warmup "$TRAIN_WARMUP" --device "$DEVICE" --precision "$PRECISION" "${compile[@]}" \
        --quiet --json "$OUT/bench-train-bs$bs.json" --out "$OUT/benchmarks.md" $TRAIN_ARGS
    [ "$RC" = 2 ] || break
done

# 3. planning throughput: ours, the fast path and the node-by-node baseline in one run per environment count
for envs in $PLAN_ENVS; do
    base_envs=$((envs < PLAN_BASELINE_ENVS ? envs : PLAN_BASELINE_ENVS))
    step "plan-envs$envs" "$PLAN_S" "$JOWA" bench plan --preset "$PLAN_PRESET" --envs "$envs" --beam "$PLAN_BEAM" \
        --horizon "$PLAN_HORIZON" --decisions "$PLAN_DECISIONS" --baseline-envs "$base_envs" \
        --device "$DEVICE" --precision "$PRECISION" \
        --fast-path "$PLAN_FAST" --quiet --json "$OUT/bench-plan-envs$envs.json" --out "$OUT/benchmarks.md" $PLAN_ARGS
done

# 3b. evaluate on real emulators: two lanes (one stepping while the other plans) against one batch
step "evaluate-envs$EVAL_ENVS" "$EVAL_S" "$JOWA" bench evaluate --preset "$EVAL_PRESET" --games "$EVAL_GAMES" \
    --envs "$EVAL_ENVS" --steps "$EVAL_STEPS" --beam "$PLAN_BEAM" --horizon "$PLAN_HORIZON" --device "$DEVICE" \
    --precision "$PRECISION" --fast-path "$PLAN_FAST" --quiet --json "$OUT/bench-evaluate.json" \
    --out "$OUT/benchmarks.md" $EVAL_ARGS

# 4. a small end-to-end learning run with what is left
if [ "$LEARN" = 1 ] && [ $((BUDGET_S - SECONDS)) -ge "$LEARN_MIN_S" ]; then
    step learning $((BUDGET_S - SECONDS)) env OUT="$OUT/learning" DEVICE="$DEVICE" bash benchmarks/gpu_results.sh
else
    record learning skipped null 0
    RC=-1
fi
# 5. its planning evaluation again through the fast path (compare throughput.env_steps_per_s with JOWA-plan.json)
if [ "$RC" = 0 ]; then
    step evaluate-fast $((BUDGET_S - SECONDS)) "$JOWA" evaluate --ckpt "$OUT/learning/pretrain" \
        --tokenizer "$OUT/learning/tokenizer" --games "$GAMES" --episodes "$EPISODES" --max-frames "$MAX_FRAMES" \
        --device "$DEVICE" --fast-path "$PLAN_FAST" --out "$OUT/learning/scores/JOWA-plan-fast.json" --quiet
else
    record evaluate-fast skipped null 0
fi

rm -rf "$BIN"
echo "total $SECONDS s of $BUDGET_S"
cat "$OUT/summary.md"
