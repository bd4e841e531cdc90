#!/usr/bin/env bash
# Reproduces the CNN table of docs/results.md on Fashion-MNIST (Debian: sudo apt-get install dataset-fashion-mnist):
# the ready-made cnn-small (c16k3-bn-relu-p2,c32k3-bn-relu-p2,flat,fc64-relu, then the classifier) trained by
# backprop, activation perturbation, Wᵀ, DFA and GrAPE with the same update rule (AdamW, lr 1e-3, weight decay
# 0.01), batch 64, seed 1; test accuracy on the official 10,000 test images, the mean cosine to backprop's
# gradient (measured every 50 steps and on each epoch's last step) and the wall time. Prints a markdown table.
# Usage: bash examples/fashion-cnn-results.sh [epochs] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-3}
seed=${2:-1}
dotnet build -c Release examples/ForwardAD.Cli -v quiet -nologo >/dev/null
cli="dotnet examples/ForwardAD.Cli/bin/Release/net10.0/ForwardAD.Cli.dll"
common="--data fashion-mnist --model cnn-small --optimizer adamw --lr 1e-3 --batch-size 64 --epochs $epochs --seed $seed --cosine-every 50 --quiet"
echo "| method | test accuracy after $epochs epochs | best epoch's test accuracy | mean cosine to backprop | wall time |"
echo "|---|---:|---:|---:|---:|"
for guesser in backprop ap wt dfa grape; do
  metrics=$(mktemp)
  if $cli train --guesser "$guesser" $common --metrics "$metrics" >/dev/null 2>&1; then
    # columns: epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,...,examples_per_second,wall_seconds,run
    awk -F, -v name="$guesser" 'NR > 1 { last = $5; if ($5 > best) best = $5; cosines += $6; n++; wall += $(NF - 1) }
      END { printf "| %s | %.2f%% | %.2f%% | %.3f | %.0f s |\n", name, 100 * last, 100 * best, cosines / n, wall }' "$metrics"
  else
    echo "| $guesser | diverged | – | – | – |"
  fi
  rm -f "$metrics"
done
