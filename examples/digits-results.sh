#!/usr/bin/env bash
# Reproduces the results table of docs/results.md on the embedded digits: every guesser and backprop, on MLPs
# 3×128 (hidden 128,128) and 6×128 (five hidden layers of 128), same update rule for all
# (AdamW, lr 1e-3, weight decay 0.01), batch 32, 30 epochs, seed 1. Prints a markdown table.
# Usage: bash examples/digits-results.sh [epochs] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-30}
seed=${2:-1}
dotnet build -c Release examples/ForwardAD.Cli -v quiet -nologo >/dev/null
cli="dotnet examples/ForwardAD.Cli/bin/Release/net10.0/ForwardAD.Cli.dll"
common="--optimizer adamw --lr 1e-3 --batch-size 32 --epochs $epochs --seed $seed --quiet"
echo "| guesser | mode | 3×128 train | 3×128 test | 3×128 cos | 6×128 train | 6×128 test | 6×128 cos |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for spec in "backprop joint" "directional joint" "ap joint" "ap per-layer" "wt joint" "wt per-layer" "downstream joint" "mixing joint" "self-sharpening joint"; do
  set -- $spec
  row="| $1 | $2 |"
  for model in "--hidden 128,128" "--layers 6 --width 128"; do
    metrics=$(mktemp)
    if $cli train --guesser "$1" --mode "$2" $model $common --metrics "$metrics" >/dev/null 2>&1; then
      last=$(tail -n 1 "$metrics")
      IFS=, read -r _ _ trainacc _ testacc cos _ <<< "$last"
      row="$row $(awk -v a="$trainacc" -v b="$testacc" -v c="$cos" 'BEGIN { printf "%.2f%% | %.2f%% | %.3f |", 100 * a, 100 * b, c }')"
    else
      row="$row diverged | – | – |"
    fi
    rm -f "$metrics"
  done
  echo "$row"
done
