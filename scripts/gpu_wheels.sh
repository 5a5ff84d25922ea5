#!/usr/bin/env bash
# Downloads the wheels listed in scripts/gpu_wheels.txt into .whl/ (git-ignored) in the repo root, for the
# GPU machine, which has no network: Python 3.12, x86-64 manylinux (see /work/.library/device/README.md).
# A name with no wheel on the index (antlr4-python3-runtime 4.9.3 is an sdist only) is built into a
# wheel here with `pip wheel`; only pure-Python (py3-none-any) wheels are accepted from that path.
#   usage: bash scripts/gpu_wheels.sh            (from anywhere; PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIST=scripts/gpu_wheels.txt
DEST=.whl
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

mkdir -p "$DEST"
mapfile -t SPECS < <(grep -vE '^\s*(#|$)' "$LIST" | sed 's/[[:space:]]//g')
for spec in "${SPECS[@]}"; do
    # shellcheck disable=SC2086
    if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            $PLATFORMS -d "$DEST" "$spec"; then
        echo "downloaded $spec"
    else
        echo "no wheel for $spec on the index: building one with pip wheel"
        tmp=$(mktemp -d)
        "$PYTHON" -m pip wheel -q --no-deps -w "$tmp" "$spec"
        built=("$tmp"/*.whl)
        case "${built[0]}" in
            *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "${built[0]}" "$DEST"/ ;;
            *) echo "error: $spec built ${built[0]##*/}, not a pure-Python wheel; carry it another way" >&2; exit 1 ;;
        esac
        rm -rf "$tmp"
        echo "built $spec"
    fi
done

# Exactly one wheel per listed name, and nothing else: two versions of one package stop the install there.
"$PYTHON" - "$DEST" "${SPECS[@]}" <<'PY'
import re, sys
from pathlib import Path

dest, specs = Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {norm(s.split("==")[0]): s.split("==")[1] for s in specs}
have = {}
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    have.setdefault(norm(name), []).append(version)
problems = [f"{n}: {v}" for n, v in have.items() if n not in want or v != [want[n]]]
problems += [f"{n}=={v}: missing" for n, v in want.items() if n not in have]
total = sum(p.stat().st_size for p in dest.glob("*.whl"))
for whl in sorted(dest.glob("*.whl")):
    print(f"  {whl.stat().st_size / 1024:7.0f} KiB  {whl.name}")
print(f"  {total / 1024:7.0f} KiB  in all, in {dest}/")
if problems:
    sys.exit("error: " + dest.name + "/ does not match gpu_wheels.txt: " + "; ".join(problems))
PY
