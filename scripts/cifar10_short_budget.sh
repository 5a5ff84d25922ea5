#!/usr/bin/env bash
# Issue 13, must-show 2: the short-budget table nobody publishes. CIFAR-10 (the shared JPEG copy), small
# cnn, 250 and 4,000 labels, seed 0, the SAME step count for every method (2,000 steps at ratio 7: about
# 15-20 minutes per run on 2 cores, docs/benchmarks.md), every method at its published (USB) defaults,
# nothing tuned. Two jobs at a time, one thread each: 14 runs, about 2.5 hours. Not run yet (lead).
#
#   bash scripts/cifar10_short_budget.sh [ROOT=../shared/data/cifar10] [OUT=bench] [STEPS=2000]
#
# Then: the ranked accuracy table (ssl-report), the mask rate (SoftMatch: mean weight) at each
# evaluation (scripts/curves.py), and each run's wall time (summary.json "wall_time_s").
set -euo pipefail
ROOT=${1:-../shared/data/cifar10}
OUT=${2:-bench}
STEPS=${3:-2000}
COMMON="dataset=cifar10 dataset.root=$ROOT backbone=cnn dataset.num_labels=250,4000 seed=0 trainer.device=cpu
        trainer.max_steps=$STEPS trainer.eval_every=250 trainer.num_threads=1 trainer.progress_bar=false
        hydra/launcher=joblib hydra.launcher.n_jobs=2"

ssl-train -m sweep=label_budget $COMMON method=supervised,fixmatch,flexmatch,freematch,softmatch,adamatch \
  hydra.sweep.dir=$OUT/c10_short_budget
# FixMatch with distribution alignment (ReMixMatch-style, labeled-histogram target): a variant in the same report.
ssl-train -m sweep=label_budget $COMMON method=fixmatch method.distribution_alignment=true \
  hydra.sweep.dir=$OUT/c10_short_budget/fixmatch_da

ssl-report $OUT/c10_short_budget
for N in 250 4000; do
  python scripts/curves.py --metric train/mask_rate $OUT/c10_short_budget/*_${N}_seed0 $OUT/c10_short_budget/fixmatch_da/*_${N}_seed0
  python scripts/curves.py --metric test/accuracy $OUT/c10_short_budget/*_${N}_seed0 $OUT/c10_short_budget/fixmatch_da/*_${N}_seed0
done
grep -H '"wall_time_s"' $OUT/c10_short_budget/*/summary.json $OUT/c10_short_budget/fixmatch_da/*/summary.json
