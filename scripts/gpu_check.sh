#!/usr/bin/env bash
# scripts/gpu_check.sh OUT_DIR [--rehearse] [--only PARTS]
#
# Issue 19's whole GPU check in one go (BUDGET_S, 8 minutes, on the H200): carried wheels, ssl-cli
# itself, the CUDA-only tests, ssl-bench for WRN-28-2 FixMatch (eager at 64 + 448 and at a batch that
# fills the GPU, then --compile and --compile reduce-overhead), and a real CIFAR-10 FixMatch run
# (WRN-28-2, 250 labels) with as many steps as the time left allows (at most TRAIN_SECONDS) at the
# measured eager speed. CIFAR-10 is unpacked and decoded into the cache in the background during the
# tests (about 35 s of one core), so the run starts on decoded data. Each step has its own time limit.
# Order: tests, eager benches, compile benches (capped, and stopped early enough to leave training
# TRAIN_RESERVE_S), then training gets what is left of BUDGET_S.
# It writes 8 files into OUT_DIR (the device tool returns at most 8):
#   summary.json         every step's status, seconds and command; environment; pytest counts; bench
#                        headlines; the training run's final accuracy and wall time
#   gpu_check.log        the script's timeline         tests.log    pytest -k cuda -rs output
#   bench.json           the ssl-bench JSON results, keyed eager / big / compile / reduce_overhead
#   bench.log            ssl-bench's printed tables    train.log    ssl-train's output
#   train_summary.json   the run's summary.json        gpu_check.tar.gz  everything else (no checkpoints)
#
# --rehearse: the same commands on this CPU at tiny sizes (cnn, batch 4, a few steps, 30 images a class),
#             to catch typos before device time is spent. Rehearsed on a 2-core CPU (see docs/gpu_check.md):
#   PYTHON=/work/main/.venv/bin/python bash scripts/gpu_check.sh /tmp/gpu_out --rehearse
#   (clean: every step ok in 117 s, about 3 minutes with a cold torch.compile cache; `--only train`: 41 s;
#   again on the restructured package (ssl-cli 0.2), AMD EPYC 2 cores: every step ok in 71 s)
# --only PARTS: a comma list of tests,bench,train,compile (default: all), e.g. a second call with
#             --only train when the first one left too little of BUDGET_S for training.
#
# ---- The device call -------------------------------------------------------------------------------
# Only the session's own checkout travels (not a helper's worktree), so prepare it there, in its root:
#   bash scripts/gpu_wheels.sh            # .whl/: 3 pure-Python wheels, 384 KiB
#   python3 scripts/pack_cifar10.py       # .gpu_data/cifar10.pack: 54.2 MiB (tree + carry <= 64 MiB)
# then, with the device tool:
#   run(command="bash scripts/gpu_check.sh $OUT", carry=[".whl", ".gpu_data"], timeout_s=540)
# That spends about 8 + 1-2 (start) of the 15 device minutes; training gets 2-4 minutes of it, depending
# on how long compiling takes. For 4-5 minutes of training instead (about 11 device minutes in all):
#   run(command="BUDGET_S=570 bash scripts/gpu_check.sh $OUT", carry=[".whl", ".gpu_data"], timeout_s=600)
# A rerun right after (the machine stays warm 30 s) reuses /tmp/site, /tmp/cifar10 and the decode cache;
# without an eager bench in that call, give the steps (the first call's steps/s x seconds):
#   run(command="TRAIN_STEPS=N TRAIN_SECONDS=240 bash scripts/gpu_check.sh $OUT --only train",
#       carry=[".whl", ".gpu_data"], timeout_s=400)
# -----------------------------------------------------------------------------------------------------
#
# Only stable command-line interfaces are used (ssl-train key=value, ssl-bench --flags, pytest -k);
# the arguments are in the variables below, to fix them in one place if the CLI changes.
# Expected on a GPU today: tests/test_cli.py's "trainer.device=cuda" case of
# test_bad_input_gives_one_line_and_exit_2 FAILS there (it expects "CUDA is not available").
set -u -o pipefail

usage() { echo "usage: bash scripts/gpu_check.sh OUT_DIR [--rehearse] [--only tests,bench,train,compile]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT_ARG=$1; shift
REHEARSE=0; ONLY="tests,bench,train,compile"
while [ $# -gt 0 ]; do
    case $1 in
        --rehearse) REHEARSE=1 ;;
        --only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
        *) usage ;;
    esac
    shift
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT_ARG" && OUT_DIR=$(cd "$OUT_ARG" && pwd) || { echo "cannot create $OUT_ARG" >&2; exit 2; }

# ---- Settings (GPU) ----------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}            # there: /opt/torch/.venv/bin/python3 (torch 2.11)
SITE=${SITE:-/tmp/site}              # carried wheels and ssl-cli itself, then PYTHONPATH=$SITE
WORK=${WORK:-/tmp/gpu_check}         # scratch: logs, JSON, run directory (wiped at the start)
DATA=${DATA:-/tmp/cifar10}           # the unpacked image folder
PACK=${PACK:-$REPO/.gpu_data/cifar10.pack}
export SSL_CLI_CACHE=${SSL_CLI_CACHE:-/tmp/ssl_cli_cache}   # decoded CIFAR-10 (about 35 s the first time)
BUDGET_S=${BUDGET_S:-480}            # the whole script; a step that would start later is skipped
DEVICE=cuda
CONFIG_PACKAGE=ssl_cli.configs       # only reported in summary.json (is the config package importable)
TEST_ARGS=(-q -rs -k cuda -p no:cacheprovider)
T_TESTS=150
# ssl-bench: WRN-28-2 FixMatch at 64 labeled + 7 x 64 unlabeled (two views each: 960 images a step)
BENCH_COMMON=(--backbone wrn28_2 --method fixmatch --device "$DEVICE" --unlabeled-ratio 7)
BENCH_SMALL=(--batch-size 64 --repeats 10 --warmup 3 --steps-per-repeat 10)
BENCH_BIG=(--batch-size 512 --repeats 5 --warmup 2 --steps-per-repeat 3)   # 7,680 images a step
BENCH_COMPILE=(--compile)                   # ssl-bench --compile [MODE]; MODE default
BENCH_REDUCE_OVERHEAD=(--compile reduce-overhead)   # CUDA graphs
T_BENCH=90; T_BENCH_BIG=120; T_COMPILE=120; T_REDUCE_OVERHEAD=150
# ssl-train: the published recipe's config, shortened to TRAIN_STEPS (default: the training seconds x the
# eager bench's steps/s x TRAIN_SPEED_SHARE, within [TRAIN_MIN_STEPS, TRAIN_MAX_STEPS]). The training
# seconds: TRAIN_SECONDS, or less when less is left of BUDGET_S after T_TRAIN_EXTRA (skipped below
# TRAIN_MIN_SECONDS).
TRAIN_SECONDS=${TRAIN_SECONDS:-270}
TRAIN_MIN_SECONDS=60
TRAIN_RESERVE_S=${TRAIN_RESERVE_S:-150}   # the compile benches stop early enough to leave training this much
TRAIN_SPEED_SHARE=0.8                # training also evaluates, keeps the EMA and logs
TRAIN_MIN_STEPS=2000; TRAIN_MAX_STEPS=40000
TRAIN_FALLBACK_STEPS=${TRAIN_FALLBACK_STEPS:-5000}   # without an eager bench in the same call (--only train)
TRAIN_EVALS=10                       # evaluations over the run (trainer.eval_every = steps / this)
TRAIN_OVERRIDES=(experiment=fixmatch_cifar10_250 trainer.device="$DEVICE" dataset.root="$DATA"
                 trainer.progress_bar=false)
TRAIN_EXTRA_OVERRIDES=()             # e.g. (trainer.compile=true) if the compile bench shows it pays
T_TRAIN_EXTRA=60                     # start-up, cache load, evaluations on top of the training seconds
# Decodes CIFAR-10 into SSL_CLI_CACHE in the background (same dataset keys as the run, so the same cache
# entry): a 1-step supervised cnn run on the CPU.
PREWARM_OVERRIDES=(dataset=cifar10 dataset.root="$DATA" dataset.num_labels=250 backbone=cnn method=supervised trainer.device=cpu
                   trainer.max_steps=1 trainer.eval_every=1 trainer.batch_size=8 trainer.progress_bar=false
                   trainer.num_threads=4)
T_PREWARM=240
UNPACK_ARGS=()
MIN_STEP_S=20                        # skip a step with less time left than this

# ---- Settings (--rehearse: the same commands, tiny, on the CPU) ----------------------------------------
if [ $REHEARSE = 1 ]; then
    SITE=${SITE_REHEARSE:-/tmp/gpu_check_rehearse/site}
    WORK=/tmp/gpu_check_rehearse/work
    DATA=/tmp/gpu_check_rehearse/cifar10
    export SSL_CLI_CACHE=/tmp/gpu_check_rehearse/cache
    BUDGET_S=${BUDGET_S_REHEARSE:-1500}
    DEVICE=cpu
    TINY=(--repeats 2 --warmup 1 --steps-per-repeat 1 --eval-images 16 --eval-batch-size 8 --peak-tflops 1
          --train-images 64 --threads 1)
    BENCH_COMMON=(--backbone cnn --method fixmatch --device "$DEVICE" --unlabeled-ratio 2)
    BENCH_SMALL=(--batch-size 4 "${TINY[@]}")
    BENCH_BIG=(--batch-size 8 "${TINY[@]}")
    BENCH_COMPILE=(--compile)
    BENCH_REDUCE_OVERHEAD=(--compile reduce-overhead)
    T_BENCH=120; T_BENCH_BIG=120; T_COMPILE=400; T_REDUCE_OVERHEAD=400
    TRAIN_SECONDS=2; TRAIN_MIN_SECONDS=1; TRAIN_RESERVE_S=5; TRAIN_MIN_STEPS=3; TRAIN_MAX_STEPS=4; TRAIN_EVALS=2
    TRAIN_OVERRIDES=(experiment=fixmatch_cifar10_250 trainer.device="$DEVICE" dataset.root="$DATA"
                     trainer.progress_bar=false backbone=cnn trainer.batch_size=4 method.unlabeled_ratio=2
                     trainer.eval_batch_size=64 trainer.num_threads=1)
    T_TRAIN_EXTRA=300
    PREWARM_OVERRIDES=(dataset=cifar10 dataset.root="$DATA" dataset.num_labels=250 backbone=cnn method=supervised trainer.device=cpu
                       trainer.max_steps=1 trainer.eval_every=1 trainer.batch_size=8 trainer.progress_bar=false
                       trainer.num_threads=1)
    UNPACK_ARGS=(--limit 30)         # 300 training and 300 test images: enough for 250 labels
fi
# Rehearsal fidelity: the tests' conftest runs the ssl-train beside sys.executable when there is one, else
# `python -m ...`. There, python3 has no ssl-train beside it; a development venv has its own (which runs that
# checkout's entry points, not $SITE's). So rehearse with a bare venv that sees the venv's packages.
if [ $REHEARSE = 1 ] && [ -e "$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/ssl-train" ]; then
    SHIM=/tmp/gpu_check_rehearse/venv
    PURELIB=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -m venv --without-pip --clear "$SHIM" || exit 2
    SHIM_LIB=$("$SHIM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import site; site.addsitedir('$PURELIB')" >"$SHIM_LIB/_gpu_check_rehearse.pth"
    echo "rehearsal: python $SHIM/bin/python (no ssl-train beside it), packages from $PURELIB"
    PYTHON=$SHIM/bin/python
fi
BIN=$SITE/bin
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
export PYTHONUNBUFFERED=1

# ---- Helpers -------------------------------------------------------------------------------------------
[ -n "$WORK" ] && [ "$WORK" != / ] || exit 2
rm -rf "$WORK" && mkdir -p "$WORK" "$WORK/pytest" || exit 2
: >"$WORK/steps.jsonl"
say() { printf '[gpu_check %4ds] %s\n' $(($(date +%s) - START)) "$*" | tee -a "$WORK/gpu_check.log"; }
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
HAVE_TIMEOUT=0; command -v timeout >/dev/null && HAVE_TIMEOUT=1
FAILED=0

# step NAME CAP_S LOG CMD...: runs CMD with a time limit (CAP_S, or what is left of BUDGET_S), output to the
# console and appended to LOG; one line of JSON per step in $WORK/steps.jsonl.
step() {
    local name=$1 cap=$2 log=$3; shift 3
    local left=$((DEADLINE - $(date +%s))) limit rc status t0 t1
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt "$MIN_STEP_S" ]; then
        say "SKIP $name: ${left}s of the ${BUDGET_S}s budget left"
        record "$name" skipped "" 0 0 "$*"
        return 99
    fi
    say "RUN  $name (limit ${limit}s): $*"
    printf '\n===== %s: %s\n' "$name" "$*" >>"$log"
    t0=$(date +%s.%N)
    if [ $HAVE_TIMEOUT = 1 ]; then
        timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"; rc=${PIPESTATUS[0]}
    else
        "$@" 2>&1 | tee -a "$log"; rc=${PIPESTATUS[0]}
    fi
    t1=$(date +%s.%N)
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    [ $status = ok ] || FAILED=1
    local secs; secs=$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")
    say "DONE $name: $status (exit $rc) in ${secs}s"
    record "$name" "$status" "$rc" "$secs" "$limit" "$*"
    return "$rc"
}
record() {  # NAME STATUS RC SECONDS LIMIT CMD
    "$PYTHON" -c 'import json, sys; n, s, rc, sec, lim, cmd = sys.argv[1:7]
print(json.dumps({"name": n, "status": s, "exit": int(rc) if rc else None, "seconds": float(sec or 0),
                  "limit_s": int(lim or 0), "command": cmd}))' "$@" >>"$WORK/steps.jsonl"
}

say "repo $REPO, out $OUT_DIR, work $WORK, rehearse=$REHEARSE, only=$ONLY, budget ${BUDGET_S}s"

# ---- a. carried wheels, b. ssl-cli itself (no dependencies, no index) ------------------------------------
mkdir -p "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PATH=$BIN:$PATH   # the console scripts pip writes there (ssl-train, ssl-bench, ssl-report)
install_wheels() {
    compgen -G "$REPO/.whl/*.whl" >/dev/null || { echo "no wheels in $REPO/.whl (run scripts/gpu_wheels.sh and carry .whl)"; return 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl
}
install_self() {
    # setuptools is there; --no-build-isolation uses it instead of fetching one. The console scripts land in
    # $SITE/bin. (pip builds in a copy of the tree: build/ and *.egg-info are git-ignored.)
    (cd "$REPO" && "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index --no-compile \
        --upgrade --target "$SITE" .) && [ -x "$BIN/ssl-train" ] && [ -x "$BIN/ssl-bench" ] && return 0
    echo "pip install of ssl-cli failed: falling back to copying pyproject's package-dir folders"
    install_self_by_copy
}
install_self_by_copy() {
    # The same layout as pip's, read from pyproject.toml (package-dir, project.scripts): no module names here.
    "$PYTHON" - "$REPO" "$SITE" <<'PY'
import os, shutil, stat, sys, tomllib
from pathlib import Path
repo, site = Path(sys.argv[1]), Path(sys.argv[2])
meta = tomllib.loads((repo / "pyproject.toml").read_text())
dirs = meta["tool"]["setuptools"].get("package-dir", {})
for pkg, src in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):  # parents first
    dest = site / pkg.replace(".", "/")
    shutil.rmtree(dest, ignore_errors=True) if pkg.count(".") == 0 else None
    shutil.copytree(repo / src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
(site / "bin").mkdir(exist_ok=True)
for name, target in meta["project"]["scripts"].items():
    mod, func = target.split(":")
    exe = site / "bin" / name
    exe.write_text(f"#!{sys.executable}\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
print("copied", ", ".join(dirs), "and wrote", ", ".join(meta["project"]["scripts"]))
PY
}
if [ "${FORCE_COPY_INSTALL:-0}" = 1 ]; then install_self() { install_self_by_copy; }; fi
export REPO SITE BIN PYTHON
export -f install_wheels install_self install_self_by_copy   # `timeout` runs programs, not functions
step install_wheels 120 "$WORK/install.log" bash -c install_wheels
step install_ssl_cli 120 "$WORK/install.log" bash -c install_self
step cli_help 60 "$WORK/install.log" "$BIN/ssl-bench" --help

# Environment: torch, GPU, where ssl_cli and its configs were imported from (must be $SITE, not the tree).
(cd "$WORK" && "$PYTHON" - "$CONFIG_PACKAGE" <<'PY' >"$WORK/env.json" 2>>"$WORK/gpu_check.log") || FAILED=1
import importlib, json, os, platform, subprocess, sys
env = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
       "cpu_count": os.cpu_count(), "pythonpath": os.environ.get("PYTHONPATH")}
import torch
env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
               multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version())
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    except Exception as e:
        env["nvidia_smi"] = repr(e)
for mod in ("torchvision", "hydra", "omegaconf", "antlr4", "numpy", "PIL", "sklearn", "matplotlib", "rich",
            "yaml", "pytest", "hypothesis", "ssl_cli", sys.argv[1]):
    try:
        m = importlib.import_module(mod)
        env[mod] = {"version": getattr(m, "__version__", None), "file": getattr(m, "__file__", None)}
    except Exception as e:
        env[mod] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(env, indent=2))
PY
say "environment: $("$PYTHON" -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e.get("torch"), e.get("gpu", "no GPU"), "ssl_cli from", e["ssl_cli"].get("file"))' "$WORK/env.json" 2>&1)"

# ---- e (first half). Unpack CIFAR-10 and decode it into the cache, in the background ----------------------
prewarm() {
    if [ -f "$DATA/.unpacked" ] && [ "$(cat "$DATA/.unpacked")" = "$UNPACK_TAG" ]; then
        echo "data: $DATA already unpacked"
    else
        rm -rf "$DATA"
        "$PYTHON" "$REPO/scripts/pack_cifar10.py" --unpack "$DATA" --pack "$PACK" "${UNPACK_ARGS[@]}" \
            && echo "$UNPACK_TAG" >"$DATA/.unpacked" || return 1
    fi
    (cd "$WORK" && "$BIN/ssl-train" "${PREWARM_OVERRIDES[@]}" hydra.run.dir="$WORK/prewarm")
}
UNPACK_TAG="${UNPACK_ARGS[*]:-all}"
export DATA PACK UNPACK_TAG WORK BIN
export -f prewarm
PREWARM_PID=
if wants train; then
    # Arrays do not cross `bash -c`: pass them as arguments.
    step prewarm "$T_PREWARM" "$WORK/prewarm.log" bash -c 'UNPACK_ARGS=("${@:2:$1}"); shift $(($1 + 1));
        PREWARM_OVERRIDES=("$@"); prewarm' _ "${#UNPACK_ARGS[@]}" "${UNPACK_ARGS[@]}" "${PREWARM_OVERRIDES[@]}" \
        >/dev/null &
    PREWARM_PID=$!
fi

# ---- c. the CUDA-only tests (run outside the tree, so that the installed ssl_cli is the one tested) ------
if wants tests; then
    (cd "$WORK/pytest" && step tests "$T_TESTS" "$WORK/tests.log" \
        "$PYTHON" -m pytest "${TEST_ARGS[@]}" --junitxml="$WORK/tests.xml" "$REPO/tests")
fi

# ---- d. ssl-bench, eager (64 + 448, then the big batch) -----------------------------------------------
bench() {  # NAME CAP ARGS...
    local name=$1 cap=$2; shift 2
    (cd "$WORK" && step "bench_$name" "$cap" "$WORK/bench.log" \
        "$BIN/ssl-bench" "${BENCH_COMMON[@]}" "$@" --json "$WORK/bench_$name.json")
}
if wants bench; then
    bench eager "$T_BENCH" "${BENCH_SMALL[@]}"
    bench big "$T_BENCH_BIG" "${BENCH_BIG[@]}"
fi

# ---- d. ssl-bench with torch.compile (each capped: compiling can take minutes or fail) -------------------
compile_cap() {  # CAP: at most CAP seconds, and (when training follows) leave it TRAIN_RESERVE_S + T_TRAIN_EXTRA
    local cap=$1 room
    if wants train; then
        room=$((DEADLINE - $(date +%s) - TRAIN_RESERVE_S - T_TRAIN_EXTRA))
        cap=$((room < cap ? room : cap))
    fi
    echo "$cap"
}
if wants compile; then
    bench compile "$(compile_cap "$T_COMPILE")" "${BENCH_SMALL[@]}" "${BENCH_COMPILE[@]}"
    bench reduce_overhead "$(compile_cap "$T_REDUCE_OVERHEAD")" "${BENCH_SMALL[@]}" "${BENCH_REDUCE_OVERHEAD[@]}"
fi

# ---- e. CIFAR-10 FixMatch, WRN-28-2, 250 labels, for what is left of BUDGET_S (at most TRAIN_SECONDS) --------
if wants train; then
    if [ -n "$PREWARM_PID" ]; then
        say "waiting for the background unpack and decode"
        wait "$PREWARM_PID"
    fi
    LEFT=$((DEADLINE - $(date +%s) - T_TRAIN_EXTRA))
    SECONDS_TO_TRAIN=$((LEFT < TRAIN_SECONDS ? LEFT : TRAIN_SECONDS))
    if [ -n "${TRAIN_STEPS:-}" ]; then STEPS=$TRAIN_STEPS; else STEPS=$("$PYTHON" - "$WORK/bench_eager.json" \
        "$SECONDS_TO_TRAIN" "$TRAIN_SPEED_SHARE" "$TRAIN_MIN_STEPS" "$TRAIN_MAX_STEPS" "$TRAIN_FALLBACK_STEPS" <<'PY'
import json, sys
path, secs, share, lo, hi, fallback = sys.argv[1], *map(float, sys.argv[2:])
try:
    r = json.load(open(path))
    steps_per_s = r["phases"]["step"]["images_per_s"] / r["images_per_step"]
    print(int(min(hi, max(lo, secs * share * steps_per_s))))
except Exception:  # no eager bench in this call (--only train): TRAIN_FALLBACK_STEPS, or set TRAIN_STEPS
    print(int(min(hi, max(lo, fallback))))
PY
); fi
    EVAL_EVERY=$(( STEPS / TRAIN_EVALS > 0 ? STEPS / TRAIN_EVALS : 1 ))
    if [ -z "${TRAIN_STEPS:-}" ] && [ "$SECONDS_TO_TRAIN" -lt "$TRAIN_MIN_SECONDS" ]; then
        say "SKIP train: ${SECONDS_TO_TRAIN}s left for training (TRAIN_MIN_SECONDS=$TRAIN_MIN_SECONDS)"
        record train skipped "" 0 0 "training: ${SECONDS_TO_TRAIN}s left"
    else
        say "training: $STEPS steps for about ${SECONDS_TO_TRAIN}s, evaluating every $EVAL_EVERY"
        (cd "$WORK" && step train $((SECONDS_TO_TRAIN + T_TRAIN_EXTRA)) "$WORK/train.log" \
            "$BIN/ssl-train" "${TRAIN_OVERRIDES[@]}" ${TRAIN_EXTRA_OVERRIDES[@]+"${TRAIN_EXTRA_OVERRIDES[@]}"} \
            trainer.max_steps="$STEPS" trainer.eval_every="$EVAL_EVERY" trainer.checkpoint_every="$STEPS" \
            hydra.run.dir="$WORK/train")
    fi
fi

# ---- Results: 8 files in OUT_DIR ------------------------------------------------------------------------
say "writing results into $OUT_DIR"
"$PYTHON" - "$WORK" "$OUT_DIR" "$REHEARSE" "$BUDGET_S" "$START" <<'PY' || FAILED=1
import json, shutil, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

work, out, rehearse, budget, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", *map(int, sys.argv[4:])

def load(p):
    try:
        return json.loads(Path(p).read_text())
    except Exception as e:
        return None

steps = [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines() if l.strip()]
summary = {"rehearsal": rehearse, "budget_s": budget, "total_s": round(time.time() - start, 1),
           "all_ok": all(s["status"] == "ok" for s in steps), "steps": steps, "env": load(work / "env.json")}
try:
    suite = ET.parse(work / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    a = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    a["passed"] = a["tests"] - a["failures"] - a["errors"] - a["skipped"]
    a["cases"] = []
    for c in suite.iter("testcase"):
        res = next((r.tag for r in c if r.tag in ("failure", "error", "skipped")), "passed")
        msg = next((r.get("message", "")[:300] for r in c if r.tag in ("failure", "error", "skipped")), "")
        a["cases"].append({"test": f"{c.get('classname')}::{c.get('name')}", "result": res, "message": msg})
    summary["tests"] = a
except Exception as e:
    summary["tests"] = {"error": f"no junit xml: {e!r}"}

bench = {}
for name in ("eager", "big", "compile", "reduce_overhead"):
    r = load(work / f"bench_{name}.json")
    if r is None:
        continue
    bench[name] = r
    ph = r.get("phases", {})
    summary.setdefault("bench", {})[name] = {
        "images_per_step": r.get("images_per_step"),
        "images_per_s": {k: v.get("images_per_s") for k, v in ph.items()},
        "compute_tflops": ph.get("compute", {}).get("tflops"), "peak_tflops": r.get("peak_tflops"),
        "peak_source": r.get("peak_source"), "ratios": r.get("ratios"), "checks": r.get("checks")}
(out / "bench.json").write_text(json.dumps(bench, indent=2))

run = load(work / "train" / "summary.json")
if run is not None:
    (out / "train_summary.json").write_text(json.dumps(run, indent=2))
    final = run.get("final") or {}
    summary["train"] = {k: run.get(k) for k in ("status", "step", "max_steps", "wall_time_s", "device", "backbone",
                                                "num_labels")}
    summary["train"].update(test_accuracy=final.get("test/accuracy"), test_macro_f1=final.get("test/macro_f1"))
(out / "summary.json").write_text(json.dumps(summary, indent=2))

for name in ("gpu_check.log", "tests.log", "bench.log", "train.log"):
    if (work / name).exists():
        shutil.copyfile(work / name, out / name)
print(json.dumps({k: summary[k] for k in ("all_ok", "total_s")}), "tests:",
      {k: v for k, v in summary["tests"].items() if k != "cases"},
      "| train:", summary.get("train"))
for name, b in summary.get("bench", {}).items():
    print(f"bench {name}: images/s {b['images_per_s']}, ratios {b['ratios']}")
PY
# Everything else, without checkpoints and the installed packages (the tar must stay under 16 MiB).
tar -czf "$OUT_DIR/gpu_check.tar.gz" -C "$(dirname "$WORK")" --exclude='*.pt' --exclude='pytest' "$(basename "$WORK")" \
    || FAILED=1
ls -la "$OUT_DIR"
# Steps ran in subshells too: their statuses are in steps.jsonl.
grep -qE '"status": "(failed|timeout|skipped)"' "$WORK/steps.jsonl" && FAILED=1
say "finished in $(($(date +%s) - START))s; $( [ $FAILED = 0 ] && echo 'every step ok' || echo 'SOME STEPS FAILED, SKIPPED OR TIMED OUT: see summary.json')"
exit $FAILED
