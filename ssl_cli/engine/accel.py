"""Speed settings that do not change what a run computes: torch.compile, and CPU memory reuse.

`trainer.compile=true` compiles the backbone in place with `nn.Module.compile`, so its parameters,
`state_dict` keys and checkpoints stay those of the eager model, and the EMA copy (made before) stays
eager. Compilation happens during the first training steps (and again for evaluation mode): seconds to
minutes, which only pays off in long runs. `trainer.compile_mode=reduce-overhead` adds CUDA graphs
(fewer kernel launches per step); `max-autotune` also searches kernel configurations.

`trainer.reuse_cpu_memory=true` (the default; CPU runs on Linux with glibc): a training step allocates
and frees the same large activation buffers every step. glibc serves each buffer above its mmap
threshold (128 KB, rising to at most 32 MB) with a fresh mmap and unmaps it on free, so by default
every step faults in, and the kernel zeroes, gigabytes of pages again: about a third of the small cnn's
CPU time on a FixMatch batch of 960 images. With mmap off for malloc and
heap trimming off, freed buffers are reused. The process's resident memory then stays at its peak.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def reuse_cpu_memory() -> bool:
    """glibc: serve large allocations from the heap and never give freed heap back (see the module doc).

    Process-wide and permanent; returns whether it applied (False off Linux or without glibc's mallopt).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, -1) == 1  # -1: never trim


def apply_speed_settings(model: nn.Module, compile: bool, compile_mode: str, reuse_memory: bool,
                         device: torch.device) -> None:
    """trainer.compile / compile_mode (the model is compiled in place), and reuse_cpu_memory on the CPU."""
    if reuse_memory and device.type == "cpu":
        reuse_cpu_memory()
    if compile:
        model.compile(mode=compile_mode)
