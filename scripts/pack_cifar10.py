#!/usr/bin/env python3
"""Packs an image-folder tree (the shared CIFAR-10 copy) into ONE file, and unpacks it again.

The GPU machine gets only the working tree (at most 64 MiB), not ../shared. A tar would add a
512-byte header per file (about 30 MB for 60,000 small JPEGs), so this is a plain length-prefixed
file of the JPEG bytes: 52.7 MiB of bytes plus about 2 MiB of names.

    python3 scripts/pack_cifar10.py [--src DIR] [--pack FILE] [--limit N]     # here: pack
    python3 scripts/pack_cifar10.py --unpack DEST [--pack FILE] [--limit N]    # there: unpack

--limit N keeps the first N files (by name) of each class folder of each split, for a rehearsal.
Standard library only (it runs before anything is installed there).

Format: b"SSLPACK1" | u64 count | count x (u16 path length | path, UTF-8, '/'-separated |
u32 data length | data) | 32-byte SHA-256 of everything before it. Little-endian.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import time
from pathlib import Path

MAGIC = b"SSLPACK1"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "cifar10"
DEFAULT_PACK = REPO / ".gpu_data" / "cifar10.pack"
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _keep(rel: str, limit: int | None, seen: dict) -> bool:
    """True for the first `limit` files of each folder (files come sorted)."""
    if limit is None:
        return True
    folder = rel.rsplit("/", 1)[0]
    seen[folder] = seen.get(folder, 0) + 1
    return seen[folder] <= limit


def pack(src: Path, out: Path, limit: int | None) -> None:
    if not (src / "train").is_dir():
        sys.exit(f"pack_cifar10: error: {src}/train is not a folder (expected an image-folder tree)")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    seen: dict = {}
    files = [p for p in files if _keep(p.relative_to(src).as_posix(), limit, seen)]
    if not files:
        sys.exit(f"pack_cifar10: error: no images under {src}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    data_bytes = 0
    with tmp.open("wb") as f:
        def write(b: bytes) -> None:
            digest.update(b)
            f.write(b)

        write(MAGIC + struct.pack("<Q", len(files)))
        for p in files:
            name = p.relative_to(src).as_posix().encode()
            data = p.read_bytes()
            data_bytes += len(data)
            write(struct.pack("<H", len(name)) + name + struct.pack("<I", len(data)) + data)
        f.write(digest.digest())
    tmp.replace(out)
    print(f"packed {len(files)} files ({data_bytes / 2**20:.1f} MiB of image bytes) from {src} "
          f"into {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def unpack(pack_file: Path, dest: Path, limit: int | None) -> None:
    blob = pack_file.read_bytes()
    body, want = blob[:-32], blob[-32:]
    if blob[:8] != MAGIC or hashlib.sha256(body).digest() != want:
        sys.exit(f"pack_cifar10: error: {pack_file} is not a complete pack (bad magic or checksum)")
    (count,) = struct.unpack_from("<Q", body, 8)
    pos, written, seen = 16, 0, {}
    made = set()
    for _ in range(count):
        (n,) = struct.unpack_from("<H", body, pos)
        rel = body[pos + 2:pos + 2 + n].decode()
        pos += 2 + n
        (size,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if _keep(rel, limit, seen):
            if rel.startswith("/") or ".." in rel.split("/"):
                sys.exit(f"pack_cifar10: error: unsafe path {rel!r} in {pack_file}")
            target = dest / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            target.write_bytes(body[pos:pos + size])
            written += 1
        pos += size
    if pos != len(body):
        sys.exit(f"pack_cifar10: error: {pack_file} has {len(body) - pos} stray bytes after {count} files")
    print(f"unpacked {written} of {count} files into {dest}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=DEFAULT_SRC, help=f"tree to pack (default {DEFAULT_SRC})")
    p.add_argument("--pack", type=Path, default=DEFAULT_PACK, help=f"the pack file (default {DEFAULT_PACK})")
    p.add_argument("--unpack", type=Path, default=None, metavar="DEST", help="write the tree under DEST")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N files of each class folder")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be a positive integer")
    start = time.perf_counter()
    if args.unpack is not None:
        unpack(args.pack, args.unpack, args.limit)
    else:
        pack(args.src, args.pack, args.limit)
    print(f"took {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
