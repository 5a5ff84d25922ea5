#!/usr/bin/env bash
# FixMatch against supervised on CIFAR-10 (4,000 labels, small cnn) in a ~20-minute CPU budget.
# Everything that is chosen is chosen on a validation split (1,000 training images held out, seed 0);
# the test set only measures the final runs. Results: docs/benchmarks.md. About 2 hours on 2 cores.
#
#   bash scripts/cifar10_budget.sh [ROOT=../shared/data/cifar10] [OUT=bench]
set -euo pipefail
ROOT=${1:-../shared/data/cifar10}
OUT=${2:-bench}
DATA="dataset=cifar10 dataset.root=$ROOT dataset.num_labels=4000 backbone=cnn trainer.device=cpu"
VAL="$DATA dataset.num_validation=1000 seed=0 trainer.num_threads=1"

# 1. The confidence threshold at 1,000 steps (two jobs at a time, one thread each): read val acc.
ssl-train -m $VAL method=fixmatch trainer.max_steps=1000 'method.confidence_threshold=0.95,0.85,0.75,0.6' \
  hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=$OUT/c10_tune_threshold

# 2. The same time spent two ways, with the chosen threshold: ratio 2 for 6,000 steps, or the
#    paper's ratio 7 for 2,000 steps; supervised at both step counts as the reference (val acc).
ssl-train $VAL method=fixmatch method.confidence_threshold=0.6 method.unlabeled_ratio=2 trainer.max_steps=6000 \
  trainer.eval_every=500 hydra.run.dir=$OUT/c10_val/fixmatch_r2_t0.6_6000 &
( ssl-train $VAL method=supervised trainer.max_steps=6000 trainer.eval_every=500 hydra.run.dir=$OUT/c10_val/supervised_6000
  ssl-train $VAL method=supervised trainer.max_steps=2000 hydra.run.dir=$OUT/c10_val/supervised_2000
  ssl-train $VAL method=fixmatch method.confidence_threshold=0.6 trainer.max_steps=2000 \
    hydra.run.dir=$OUT/c10_val/fixmatch_r7_t0.6_2000 )
wait

# 3. The chosen setting (experiment=fixmatch_cifar10_cpu) on fresh seeds, no validation split, all
#    training images; supervised with the same seed, split and steps.
for SEED in 1 2; do
  ssl-train $DATA seed=$SEED method=supervised trainer.max_steps=6000 trainer.eval_every=500 trainer.num_threads=1 \
    hydra.run.dir=$OUT/c10_final/supervised_seed$SEED
  ssl-train $DATA seed=$SEED experiment=fixmatch_cifar10_cpu hydra.run.dir=$OUT/c10_final/fixmatch_seed$SEED
done

python "$(dirname "$0")/curves.py" --every 1000 --metric test/accuracy $OUT/c10_final/*_seed[12]
