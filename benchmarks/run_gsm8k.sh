#!/usr/bin/env bash
# Accuracy and cost of slm / llm / fusion / gboost on the first N GSM8K test questions,
# demo pair (0.5B SLM, 1.5B LLM + judge PRM), CPU. Usage: benchmarks/run_gsm8k.sh N [methods...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}; shift || true
METHODS=${*:-slm llm fusion gboost}
DATA=${GSM8K:-../shared/data/gsm8k_test.jsonl}
mkdir -p benchmarks/runs
for m in $METHODS; do
  cfg=benchmarks/configs/gsm8k_chain.toml
  [ "$m" = gboost ] && cfg=benchmarks/configs/gsm8k_gboost.toml
  /usr/bin/time -f "%e s wall" gboost eval --data "$DATA" --method "$m" --limit "$N" --config "$cfg" \
    --concurrency 8 --seed 0 --out "benchmarks/runs/gsm8k_${m}_${N}.jsonl" --json \
    > "benchmarks/runs/gsm8k_${m}_${N}.summary.out" 2> "benchmarks/runs/gsm8k_${m}_${N}.err"
  tail -1 "benchmarks/runs/gsm8k_${m}_${N}.err"
done
