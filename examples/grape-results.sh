#!/usr/bin/env bash
# Reproduces the DFA/GrAPE table of docs/results.md on the embedded digits: backprop, DFA and every GrAPE rule on
# MLPs 3×128 and 6×128, AdamW (lr 1e-3, weight decay 0.01) for the weights, batch 32, 30 epochs, seed 1.
# GrAPE: η_B = 0.01 constant, noise 1e-3 for the original rule, cumulative moving average, tangents on h_l,
# one joint channel. Columns: final train/test accuracy, and the final mean (over hidden layers) of the
# row-cosine between B_l and the exact J_lᵀ (alignment) and of the update's cosine to the backprop gradient.
# Usage: bash examples/grape-results.sh [epochs] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-30}
seed=${2:-1}
dotnet build -c Release examples/ForwardAD.Cli -v quiet -nologo >/dev/null
cli="dotnet examples/ForwardAD.Cli/bin/Release/net10.0/ForwardAD.Cli.dll"
common="--optimizer adamw --lr 1e-3 --batch-size 32 --epochs $epochs --seed $seed --quiet"
echo "| method | 3×128 train | 3×128 test | 3×128 alignment | 3×128 cos(update, ∇L) | 6×128 train | 6×128 test | 6×128 alignment | 6×128 cos(update, ∇L) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for spec in "backprop" "dfa" "grape --grape-rule original" "grape --grape-rule original-no-noise" "grape --grape-rule alt1" "grape --grape-rule alt2"; do
  row="| ${spec/--grape-rule /} |"
  for model in "--hidden 128,128" "--layers 6 --width 128"; do
    metrics=$(mktemp)
    if $cli train --guesser $spec $model $common --metrics "$metrics" >/dev/null 2>&1; then
      row="$row $(python3 - "$metrics" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
last = rows[-1]
align = [float(v) for k, v in last.items() if k.startswith("alignment_layer")]
hidden = [float(v) for k, v in last.items() if k.startswith("cosine_layer")][:-1]
a = f"{sum(align) / len(align):.3f}" if align else "–"
c = f"{sum(hidden) / len(hidden):.3f}" if hidden else "–"
print(f"{100 * float(last['train_accuracy']):.2f}% | {100 * float(last['test_accuracy']):.2f}% | {a} | {c} |", end="")
PY
)"
    else
      row="$row diverged | – | – | – |"
    fi
    rm -f "$metrics"
  done
  echo "$row"
done
