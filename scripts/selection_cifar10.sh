#!/usr/bin/env bash
# Which images to label on CIFAR-10: one SimCLR pretraining run gives the features, then FixMatch with
# 10, 20 and 40 labels chosen by random (class-balanced), uniform (label-free chance), typiclust and probcover, 3 seeds each
# (27 jobs, two at a time, one thread each), and the report (one row per strategy and label count).
# Results go into docs/benchmarks.md. Hours on 2 CPU cores at the default step counts.
#
#   bash scripts/selection_cifar10.sh [ROOT=../shared/data/cifar10] [OUT=bench/select_cifar10]
#
# Every setting can be changed through the environment, e.g. the tiny rehearsal in tests/test_scripts.py:
#   DATA="debug=smoke dataset.num_train=64" PRETRAIN_STEPS=2 STEPS=2 LABELS=4 SEEDS=0 bash scripts/selection_cifar10.sh
set -euo pipefail
ROOT=${1:-../shared/data/cifar10}
OUT=${2:-bench/select_cifar10}
DATA=${DATA:-"dataset=cifar10 dataset.root=$ROOT backbone=cnn"}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}   # the selfsup benchmark's SimCLR recipe (7.7 epochs of 256 images)
STEPS=${STEPS:-2000}                     # FixMatch steps per job
LABELS=${LABELS:-10,20,40}
SEEDS=${SEEDS:-0,1,2}
STRATEGIES=${STRATEGIES:-random,uniform,typiclust,probcover}
JOBS=${JOBS:-2}
COMMON="trainer.device=cpu trainer.num_threads=1 trainer.progress_bar=false"

# 1. Features: SimCLR, lr 0.06 with 100 warm-up steps (the recipe of the CIFAR-10 selfsup benchmark).
if [ ! -f "$OUT/simclr/summary.json" ]; then
  ssl-train $DATA $COMMON method=simclr trainer.batch_size=256 trainer.max_steps=$PRETRAIN_STEPS \
    optim.lr=0.06 optim.nesterov=false scheduler=warmup_cosine scheduler.warmup_steps=$(( PRETRAIN_STEPS < 100 ? 0 : 100 )) \
    hydra.run.dir=$OUT/simclr
fi

# 2. FixMatch on the labels each strategy picks from those features (the same picks for every method).
ssl-train -m sweep=selection $DATA $COMMON method=fixmatch dataset.selection_features=$OUT/simclr \
  dataset.labeled_selection=$STRATEGIES dataset.num_labels=$LABELS seed=$SEEDS trainer.max_steps=$STEPS \
  hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS hydra.sweep.dir=$OUT/sweep

# 3. The table per cell and the gain over random (the sweep also wrote its report.md).
python "$(dirname "$0")/selection_table.py" $OUT/sweep
