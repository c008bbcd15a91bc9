#!/usr/bin/env bash
# Regenerate the synthetic training data of the shipped default model (frs13; its model card's
# training.lineage lists the same commands): nineteen datasets, the last three in the slide
# styles of `amseg synth --style` (outlined, ghosted, blotchy); 3280 training slides of 768x768
# and 120 validation slides (13120 and 480 images, as the card's data summary records), about
# 4 GB, 204 s with --jobs 16 on 16 cores.
#
#   scripts/make-training-data.sh [OUT_DIR] [--dry-run] [--jobs N]
#       (OUT_DIR default: /tmp/amseg_train; --jobs runs N datasets at once, default 2)
#
# Then, e.g. to fine-tune the default model (see docs/model.md, "Training"):
#   .venv/bin/amseg train OUT_DIR --matrix DHB --epochs 16 --crops-per-epoch 2048 --lr 1e-4 \
#       --scale-range 0.7,1.4 --mark-range 8,60 --ema 0.999 --loss bce-lovasz
# Every slide is fully determined by its seed, so a rerun writes the same files. Datasets run
# --jobs at a time; the script exits non-zero once all end if any failed.
set -euo pipefail

out="/tmp/amseg_train"
dry_run=0
jobs=2
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
        *) out="$1" ;;
    esac
    shift
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

# The real failure modes of issue 28 (`amseg synth --style`), each with validation slides.
styled=(
    "--count 300 --valid-fraction 0.08 --seed 11000 --dataset outlined --style outlined"
    "--count 300 --valid-fraction 0.08 --seed 12000 --dataset ghosted --style ghosted"
    "--count 300 --valid-fraction 0.08 --seed 13000 --dataset blotchy --style blotchy"
)
recipe=("${chain_one[@]}" "${chain_two[@]}" "${styled[@]}")

if [ "$dry_run" = 1 ]; then
    for options in "${recipe[@]}"; do
        echo "amseg synth $out $common $options"
    done
    exit 0
fi

[ -x "$amseg" ] || { echo "$amseg not found: run 'make venv' first (or set AMSEG)" >&2; exit 1; }

run_one() {
    # shellcheck disable=SC2086  # the options are words on purpose
    "$amseg" synth "$out" $common $1 >/dev/null && echo "done: amseg synth $out $common $1"
}

# At most $jobs datasets at once; every one runs, and the script fails if any did.
status=0
running=0
for options in "${recipe[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=$?
        running=$((running - 1))
    fi
    run_one "$options" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || status=$?
    running=$((running - 1))
done
[ "$status" = 0 ] || { echo "a synth run failed (status $status)" >&2; exit "$status"; }
echo "training data in $out: $(find "$out/train" -path '*/source/*' -type f | wc -l) training" \
     "and $(find "$out/valid" -path '*/source/*' -type f | wc -l) validation images"
