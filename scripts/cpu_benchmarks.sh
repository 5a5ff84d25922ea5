#!/usr/bin/env bash
# The CPU figures of docs/benchmarks.md, one after another on an otherwise idle machine:
# the throughput table at the default precision (auto), fp32 against bf16 alternated, trainer.compile=true,
# channels_last off. JSON and logs go to OUT (default bench/throughput); a summary table is printed at the end.
#
#   bash scripts/cpu_benchmarks.sh [CIFAR10_ROOT=../shared/data/cifar10] [OUT=bench/throughput]
#
# PART=table|precision|compile|all (default all) runs only one part.
set -euo pipefail
ROOT=${1:-../shared/data/cifar10}
OUT=${2:-bench/throughput}
PART=${PART:-all}
mkdir -p "$OUT"
bench() {  # NAME ARGS...: one ssl-bench run, its output kept beside its JSON
  local name=$1; shift
  echo "== $name: ssl-bench $*" | tee -a "$OUT/commands.txt"
  ssl-bench --device cpu "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1 || echo "   (exit $?; see $OUT/$name.log)"
}
if [[ $PART == all || $PART == table ]]; then
  bench cpu_wrn28_2 --backbone wrn28_2 --check
  bench cpu_cnn --backbone cnn --check
  bench cpu_cnn_no_reuse --backbone cnn --no-reuse-cpu-memory
  bench cpu_cnn_nchw --backbone cnn --no-channels-last
  bench cpu_cnn_stream --backbone cnn --dataset imagefolder --root "$ROOT" --num-workers 2
  bench cpu_cnn_folder_memory --backbone cnn --dataset imagefolder --root "$ROOT" --no-streaming
fi
if [[ $PART == all || $PART == precision ]]; then
  bench cpu_wrn28_2_bf16 --backbone wrn28_2 --precision fp32,bf16 --check
  bench cpu_cnn_bf16 --backbone cnn --precision fp32,bf16 --check
  bench cpu_wrn28_2_bf16_nchw --backbone wrn28_2 --precision fp32,bf16 --no-channels-last
fi
if [[ $PART == all || $PART == compile ]]; then
  bench cpu_cnn_bf16_compile --backbone cnn --precision fp32,bf16 --compile --warmup 3
  bench cpu_wrn28_2_bf16_compile --backbone wrn28_2 --precision fp32,bf16 --compile --warmup 2
fi
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| run | precision | (a) compute ms | (b) step ms | (b)/(a) img/s | (c) augment ms | (d) eval img/s |")
print("|---|---|---:|---:|---:|---:|---:|")
for f in sorted(out.glob("cpu_*.json")):
    r = json.loads(f.read_text())
    for precision, run in r.get("by_precision", {"?": r}).items():
        ph = run["phases"]
        ms = lambda k: f"{1e3 * ph[k]['median_s']:,.0f}" if k in ph else ""
        ev = f"{ph['eval']['images_per_s']:,.0f}" if "eval" in ph and "images_per_s" in ph["eval"] else ""
        print(f"| {f.stem} | {precision} | {ms('compute')} | {ms('step')} | {run['ratios']['step_over_compute']:.2f} "
              f"| {1e3 * ph['augment']['median_s']:.1f} | {ev} |")
PY
