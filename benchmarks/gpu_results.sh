#!/usr/bin/env bash
# Issue 6's GPU run, end to end: collect random-policy emulator data for a few Atari games, prepare it, train and
# apply a tokenizer, pretrain, evaluate with and without planning, and report against the data's own returns
# (random play; HNS 0 is the paper's random policy). Every command it runs is written, with its wall time, to
# $OUT/commands.log; docs/results.md §2 says how to read the results.
#
#   bash benchmarks/gpu_results.sh                    # the recipe: 3 games x 1M steps, 40m preset, ~20 min pretrain
#   OUT=runs/x GAMES=Pong STEPS=50000 bash benchmarks/gpu_results.sh   # any setting below can be overridden
#
# Re-running continues: finished collections, stores and tokens are reused, pretraining resumes.
# tests/test_gpu_results_script.py runs it at a tiny scale on CPU.
set -euo pipefail

JOWA=${JOWA:-jowa}
OUT=${OUT:-runs/gpu-results}
GAMES=${GAMES:-Breakout,Pong,SpaceInvaders}
STEPS=${STEPS:-1000000}                  # transitions collected per game
CAPACITY=${CAPACITY:-1000000}            # replay-log capacity (DQN-Replay's: 1M)
MAX_EPISODE_STEPS=${MAX_EPISODE_STEPS:-27000}
COLLECT_WORKERS=${COLLECT_WORKERS:-3}
TOK_STEPS=${TOK_STEPS:-20000}
TOK_OVERRIDES=${TOK_OVERRIDES:-batch_size=256 restart_dead_codes=100}
CONFIG=${CONFIG:-configs/jowa-40m.yaml}
STAGE1=${STAGE1:-5000}
STAGE2=${STAGE2:-15000}
PRETRAIN_OVERRIDES=${PRETRAIN_OVERRIDES:-train.compile=true}
EPISODES=${EPISODES:-16}
MAX_FRAMES=${MAX_FRAMES:-108000}         # emulator frames per evaluation episode (paper: 108K)
DEVICE=${DEVICE:-auto}

mkdir -p "$OUT/scores"
LOG="$OUT/commands.log"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n)" >>"$LOG"

run() {  # run a command, logging it and its wall time
    local t0=$SECONDS
    echo "+ $*" | tee -a "$LOG"
    "$@"
    echo "  -> $((SECONDS - t0)) s" | tee -a "$LOG"
}

run "$JOWA" collect --games "$GAMES" --runs 1 --steps "$STEPS" --capacity "$CAPACITY" \
    --max-episode-steps "$MAX_EPISODE_STEPS" --workers "$COLLECT_WORKERS" --out "$OUT/raw" \
    --scores-csv "$OUT/scores/data.csv" --quiet
run "$JOWA" prepare-data --source "$OUT/raw" --games "$GAMES" --out "$OUT/data" --quiet
resume=()
[ -d "$OUT/tokenizer" ] && resume=(--resume)
# shellcheck disable=SC2086 # the overrides are words on purpose
run "$JOWA" train-tokenizer --data "$OUT/data" --out "$OUT/tokenizer" "${resume[@]}" --quiet \
    steps="$TOK_STEPS" device="$DEVICE" $TOK_OVERRIDES
run "$JOWA" tokenize --data "$OUT/data" --tokenizer "$OUT/tokenizer" --device "$DEVICE" --quiet
resume=()
[ -d "$OUT/pretrain" ] && resume=(--resume)
# shellcheck disable=SC2086
run "$JOWA" pretrain --config "$CONFIG" --data "$OUT/data" --out "$OUT/pretrain" "${resume[@]}" --quiet \
    train.stage1_steps="$STAGE1" train.stage2_steps="$STAGE2" train.device="$DEVICE" $PRETRAIN_OVERRIDES
for mode in plan no-plan; do
    flag=()
    [ "$mode" = no-plan ] && flag=(--no-plan)
    run "$JOWA" evaluate --ckpt "$OUT/pretrain" --tokenizer "$OUT/tokenizer" --games "$GAMES" \
        --episodes "$EPISODES" --max-frames "$MAX_FRAMES" --device "$DEVICE" "${flag[@]}" \
        --out "$OUT/scores/JOWA-$mode.json" --quiet
done
run "$JOWA" report "$OUT/scores/JOWA-plan.json" "$OUT/scores/JOWA-no-plan.json" "$OUT/scores/data.csv" \
    --out "$OUT/report" --published none
echo "report: $OUT/report/report.md"
