#!/usr/bin/env bash
# Regenerate the synthetic training data of the shipped default model (frs8; its model card's
# training.lineage lists the same commands): sixteen datasets, 2452 training slides of 768x768
# and 48 validation slides (9808 and 192 images, as the card's data summary records), 2.9 GB,
# 6.5 minutes on 2 cores.
#
#   scripts/make-training-data.sh [OUT_DIR] [--dry-run]     (OUT_DIR default: /tmp/amseg_train)
#
# Then, e.g. to fine-tune the default model (see README "Training"):
#   .venv/bin/amseg train OUT_DIR --matrix DHB --epochs 16 --crops-per-epoch 2048 --lr 1e-4 \
#       --scale-range 0.7,1.4 --mark-range 8,60 --ema 0.999 --loss bce-lovasz
# Every slide is fully determined by its seed, so a rerun writes the same files. Two chains run
# side by side; a failed run stops its chain, and the script exits non-zero once both end.
set -euo pipefail

out="/tmp/amseg_train"
dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
        *) out="$arg" ;;
    esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
amseg="${AMSEG:-$here/.venv/bin/amseg}"
common="--height 768 --width 768"

# One line per dataset: the options after `amseg synth OUT_DIR $common`.
chain_one=(
    "--count 400 --valid-fraction 0.08 --seed 1000"
    "--count 400 --valid-fraction 0.0 --seed 3000 --dataset more --low-contrast-fraction 0.4"
    "--count 300 --valid-fraction 0.0 --seed 6000 --dataset mottled --background mottled --low-contrast-fraction 0.3"
    "--count 75 --valid-fraction 0 --low-contrast-fraction 0.4 --seed 7900 --dataset small9 --mark-size 9 --background granular"
    "--count 75 --valid-fraction 0 --low-contrast-fraction 0.4 --seed 8200 --dataset small12 --mark-size 12 --background granular"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9100 --dataset hard85 --mark-size 8.5"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9300 --dataset hard115 --mark-size 11.5"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9500 --dataset hard15 --mark-size 15"
)
chain_two=(
    "--count 200 --valid-fraction 0.08 --seed 2000 --dataset faint --low-contrast-fraction 0.8"
    "--count 300 --valid-fraction 0.0 --seed 5000 --dataset more3 --low-contrast-fraction 0.5"
    "--count 300 --valid-fraction 0.0 --seed 4000 --dataset more2 --low-contrast-fraction 0.4"
    "--count 75 --valid-fraction 0 --low-contrast-fraction 0.4 --seed 8000 --dataset small10 --mark-size 10.5"
    "--count 75 --valid-fraction 0 --low-contrast-fraction 0.4 --seed 8500 --dataset small15 --mark-size 15"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9200 --dataset hard10 --mark-size 10"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9400 --dataset hard13 --mark-size 13"
    "--count 50 --valid-fraction 0 --low-contrast-fraction 0.6 --seed 9600 --dataset hard17 --mark-size 17"
)

if [ "$dry_run" = 1 ]; then
    for options in "${chain_one[@]}" "${chain_two[@]}"; do
        echo "amseg synth $out $common $options"
    done
    exit 0
fi

[ -x "$amseg" ] || { echo "$amseg not found: run 'make venv' first (or set AMSEG)" >&2; exit 1; }

run_chain() {
    local options
    for options in "$@"; do
        # shellcheck disable=SC2086  # the options are words on purpose
        "$amseg" synth "$out" $common $options >/dev/null
        echo "done: amseg synth $out $common $options"
    done
}

run_chain "${chain_one[@]}" &
first=$!
run_chain "${chain_two[@]}" &
second=$!
status=0
wait "$first" || status=$?
wait "$second" || status=$?
[ "$status" = 0 ] || { echo "a synth run failed (status $status)" >&2; exit "$status"; }
echo "training data in $out: $(find "$out/train" -path '*/source/*' -type f | wc -l) training" \
     "and $(find "$out/valid" -path '*/source/*' -type f | wc -l) validation images"
