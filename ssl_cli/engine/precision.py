"""Which arithmetic a run's forward passes use: `trainer.precision` = auto | fp32 | bf16.

bf16 means `torch.autocast(dtype=torch.bfloat16)` around the forward pass (training, evaluation,
`load_model`): convolutions and matmuls run in bf16, while the master weights, the optimiser, the EMA,
the BatchNorm statistics and everything the losses compute (softmax, log-softmax, confidence masks,
SimCLR's similarity matrix) stay float32 (see ssl_cli/losses). No gradient scaler is needed: bf16 has
float32's exponent range.

`auto` picks bf16 where the hardware runs it natively: on CUDA (as before), and on CPUs with AMX-BF16
tiles (Intel Sapphire Rapids and later) or AVX-512 BF16 instructions (Cooper Lake, AMD Zen 4 and later),
as PyTorch's own CPU probes report them. Elsewhere bf16 is emulated and slower than fp32, so auto picks
fp32 and a forced `trainer.precision=bf16` warns once. Exported models (ONNX) always stay float32: the
weights are float32, autocast only changes how a call computes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict

import torch

log = logging.getLogger("ssl_cli")

PRECISIONS = ("auto", "fp32", "bf16")

# PyTorch's CPU feature probes (torch.cpu, 2.3+) that mean native bf16 arithmetic.
BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")

_warned = False


def cpu_bf16_features() -> Dict[str, bool]:
    """Which native-bf16 features PyTorch finds on this CPU (absent probes count as False)."""
    found = {}
    for name in BF16_PROBES:
        probe = getattr(torch.cpu, name, None)
        key = name[len("_is_"):-len("_supported")]  # amx_tile, avx512_bf16
        try:
            found[key] = bool(probe()) if probe else False
        except RuntimeError:  # a probe may fail on an unusual build; then the feature counts as absent
            found[key] = False
    return found


def cpu_supports_bf16() -> bool:
    """True where this CPU runs bf16 natively (AMX-BF16 tiles or AVX-512 BF16)."""
    return any(cpu_bf16_features().values())


def cpu_capability() -> dict:
    """The CPU as PyTorch sees it, for benchmark records: vector ISA, bf16/AMX features, name, cores."""
    info = {"capability": torch.backends.cpu.get_cpu_capability(), **cpu_bf16_features()}
    details = getattr(torch._C._cpu, "_get_cpu_capability", None)  # torch 2.9+: cpuinfo's flags
    if details is not None:
        flags = details()
        keep = ("cpu_name", "num_sockets", "num_physical_cores", "num_logical_cores", "l2_cache_size")
        info.update({k: flags[k] for k in keep if k in flags})
        info.update({k: v for k, v in flags.items() if k.startswith(("amx", "avx512_bf16", "avx512_fp16",
                                                                       "avx512_vnni", "avx_ne_convert"))})
    return info


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16': what `trainer.precision=requested` runs with on `device`.

    auto: bf16 on CUDA and on CPUs with native bf16 (cpu_supports_bf16), fp32 elsewhere. bf16 forced on a
    CPU without it runs (emulated) after one warning line per process.
    """
    global _warned
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device.type != "cpu":
        return "fp32" if requested == "fp32" else "bf16"
    native = cpu_supports_bf16()
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native and not _warned:
        _warned = True
        log.warning("precision bf16 on a CPU without AMX-BF16 or AVX-512 BF16: bf16 is emulated and "
                    "likely slower than fp32 (precision auto picks fp32 here)")
    return requested


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast on `device`'s type, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

