#!/usr/bin/env bash
# Reproduces the language-model table of docs/results.md on Debian's fortunes (sudo apt-get install fortunes): the
# transformer l4-h4-d128-t64 (4 pre-LN blocks, 4 heads, width 128, context 64 bytes) trained by backprop,
# activation perturbation, Wᵀ, DFA and GrAPE with the same update rule (AdamW, lr 1e-3, weight decay 0.01), batch 32,
# seed 1, for the same number of steps; validation bits per character on the first 256 windows of the validation split
# (the last 10 % of the text) after the same steps, and after the same training time (the time backprop took),
# read from each run's evaluations; then a sample from the backprop model. Prints markdown.
# Usage: bash examples/fortunes-lm-results.sh [steps] [eval-every]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-800}
every=${2:-100}
dotnet build -c Release examples/ForwardAD.Cli -v quiet -nologo >/dev/null
cli="dotnet examples/ForwardAD.Cli/bin/Release/net10.0/ForwardAD.Cli.dll"
out=$(mktemp -d)
common="--model transformer:l4-h4-d128-t64 --optimizer adamw --lr 1e-3 --batch-size 32 --seed 1 --steps $steps --eval-every $every --validation-windows 256 --cosine-every 50 --quiet"
for guesser in backprop ap wt dfa grape; do
  extra=""
  [ "$guesser" = backprop ] && extra="--checkpoint $out/backprop.safetensors"
  $cli lm --guesser "$guesser" $common --metrics "$out/$guesser.csv" $extra >/dev/null 2>"$out/$guesser.err" || echo "$guesser failed: $(tail -n 1 "$out/$guesser.err")" >&2
done
# columns: step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global,tokens_per_second,training_seconds,run
budget=$(tail -n 1 "$out/backprop.csv" | cut -d, -f7)
echo "| method | validation bits/char after $steps steps | next-byte accuracy | mean cosine to backprop | training time | validation bits/char after $(printf %.0f "$budget") s (backprop's time) |"
echo "|---|---:|---:|---:|---:|---:|"
for guesser in backprop ap wt dfa grape; do
  [ -s "$out/$guesser.csv" ] || { echo "| $guesser | failed | – | – | – | – |"; continue; }
  awk -F, -v name="$guesser" -v budget="$budget" 'NR > 1 { last = $3; accuracy = $4; if ($5 == $5 + 0 && $5 != "NaN") { cosines += $5; n++ } time = $7; if ($7 <= budget + 1e-9) atBudget = $3 }
    END { printf "| %s | %.3f | %.1f%% | %s | %.0f s | %s |\n", name, last, 100 * accuracy, n ? sprintf("%.3f", cosines / n) : "–", time, atBudget == "" ? "–" : sprintf("%.3f", atBudget) }' "$out/$guesser.csv"
done
echo
echo "Sample from the backprop model (temperature 0.8, seed 1):"
echo
echo '```'
$cli sample --checkpoint "$out/backprop.safetensors" --prompt "Q: " --length 400 --temperature 0.8 --seed 1
echo '```'
rm -rf "$out"
