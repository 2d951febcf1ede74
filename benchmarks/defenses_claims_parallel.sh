#!/usr/bin/env bash
# The claims table with one process per (dataset, seed), all at once, then merged: on a GPU the small
# networks leave it mostly idle between launches, so six processes take about the time of one.
#   bash benchmarks/defenses_claims_parallel.sh [--scale recipe] [--device cuda]   (extra flags go to each part)
# Each part stops after $PART_LIMIT seconds (default: no limit); whatever runs finished are merged.
set -u
PARTS=${PARTS_DIR:-/tmp/claims-parts}
rm -rf "$PARTS" && mkdir -p "$PARTS"
IMAGE=abnn-pgd-image,abnn-clean,abnn-cost,nofrost-clean,nofrost-pgd,walter-at-vs-bn,walter-random
VIDEO=abnn-pgd-video,abnn-roa-video,abnn-clean-video
limit=${PART_LIMIT:-0}
for seed in ${SEEDS:-0 1 2}; do
  for part in ${KINDS:-image video}; do
    keys=$IMAGE; [[ $part == video ]] && keys=$VIDEO
    name=$part-s$seed
    timeout "$limit" python3 benchmarks/defenses_claims.py --seeds "$seed" --claims "$keys" \
      --json "$PARTS/$name.json" --work "$PARTS/work-$name" --examples "$PARTS/ex-$name" \
      --readme "$PARTS/README-$name.md" --threads "${THREADS:-2}" --no-progress "$@" \
      >"$PARTS/$name.log" 2>&1 &
  done
done
wait
ls "$PARTS"/*.json >/dev/null 2>&1 || { echo "no part stored a run; logs in $PARTS"; exit 1; }
python3 benchmarks/defenses_claims.py --merge "$PARTS"/*.json
