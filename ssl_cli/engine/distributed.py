"""Multi-process training on torch.distributed, launched by torchrun (or by `ssl-train trainer.devices=N`).

Without torchrun's environment (RANK, WORLD_SIZE, ...) nothing here runs and a run is one process.
Under torchrun, before Hydra starts:

1. `start(timeout)` joins the process group: gloo on the CPU, and NCCL for CUDA tensors where CUDA is
   available ("cpu:gloo,cuda:nccl": small control messages stay on gloo and never sync the GPU).
2. `agree_on_command_line(argv)`: rank 0 picks the run directory (Hydra's `${now:...}` name can differ
   between processes) and broadcasts the final command line. After a torchrun restart
   (TORCHELASTIC_RESTART_COUNT > 0) the run directory of the first attempt is reused and, when it holds
   last.pt, `resume=` is added, so the restarted group continues from the last checkpoint by itself.
3. Ranks other than 0 write nothing: no .hydra/, no train.log (their warnings go to stderr).

In the trainer, `wrap(model)` makes the DistributedDataParallel model the method calls, and
`average_gradients` averages the gradients of the parameters a method owns itself (projection heads)
the way DDP does for the backbone's.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_cli.core.distributed import is_distributed, is_main, local_rank, rank, restart_count, world_size
from ssl_cli.core.errors import UserError
from ssl_cli.engine.config import compose
from ssl_cli.engine.outputs import LAST

log = logging.getLogger("ssl_cli")

DEFAULT_TIMEOUT_S = 600.0  # the collective timeout before the process group is started from the config


def under_torchrun() -> bool:
    return world_size() > 1


def start(timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Joins the process group torchrun describes in the environment (idempotent)."""
    if dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    timeout = datetime.timedelta(seconds=timeout_s)
    # Our own key prefix per torchrun attempt: after a restart, the agent's store still holds the
    # addresses the dead attempt's workers published, and joining with those fails to connect.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size(),
                          is_master=rank() == 0 and not agent_store, timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore(f"ssl-cli/attempt-{restart_count()}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank(), world_size=world_size(), timeout=timeout)


def stop() -> None:
    """Leaves the process group cleanly (no warning, no hang at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """Each rank on a node trains on its own GPU (LOCAL_RANK); on the CPU all share the device."""
    if device.type == "cuda" and under_torchrun():
        return torch.device("cuda", local_rank())
    return device


def _run_dir_marker() -> Path:
    """Where rank 0 notes the run directory of this torchrun job, for its restarts (same run id)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none").replace(os.sep, "_")
    return Path(tempfile.gettempdir()) / f"ssl-cli-torchrun-{run_id}.rundir"


def with_run_dir(argv: List[str], run_dir: Optional[str] = None) -> List[str]:
    """`argv` with its run directory (Hydra's, resolved now unless given) made explicit."""
    if run_dir is None:
        if any(a.startswith("hydra.run.dir=") for a in argv):
            return list(argv)
        run_dir = str(compose(argv, return_hydra_config=True).hydra.run.dir)
    return [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]


def _pick_command_line(argv: List[str]) -> List[str]:
    """Rank 0: the command line every rank runs, with the run directory made explicit."""
    if any(a in ("-m", "--multirun") for a in argv):
        raise UserError("sweeps (-m) run one job at a time in one process; launch each job with torchrun instead")
    marker = _run_dir_marker()
    if restart_count() > 0 and marker.is_file():
        run_dir = marker.read_text().strip()
    else:
        run_dir = str(compose(argv, return_hydra_config=True).hydra.run.dir)
        marker.write_text(run_dir)
    argv = with_run_dir(argv, run_dir)
    if restart_count() > 0 and (Path(run_dir) / LAST).is_file() and not any(a.startswith("resume=") for a in argv):
        log.warning("torchrun restart %d: resuming from %s", restart_count(), Path(run_dir) / LAST)
        argv.append(f"resume={run_dir}")
    return argv


def agree_on_command_line(argv: List[str]) -> List[str]:
    """Every rank's command line: rank 0's choice of run directory (and resume=), broadcast to all."""
    message = [None]
    if is_main():
        try:
            message = [_pick_command_line(list(argv))]
        except UserError as e:
            message = [e]
    dist.broadcast_object_list(message, src=0)
    if isinstance(message[0], UserError):
        raise message[0]
    argv = list(message[0])
    if not is_main():  # only rank 0 writes the run directory
        argv += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return argv


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def uses_sync_batchnorm(setting, device: torch.device) -> bool:
    """trainer.sync_batchnorm: auto is on for CUDA with more than one rank (torch's SyncBatchNorm is CUDA-only)."""
    if setting == "auto":
        return device.type == "cuda" and under_torchrun()
    if setting and device.type != "cuda":
        raise UserError("trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm); on the CPU use auto or false")
    return bool(setting) and under_torchrun()


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool, find_unused_parameters: bool) -> nn.Module:
    """The model the method calls: DDP over `model` (which keeps its own, unprefixed state_dict)."""
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Averages gradients over ranks, for parameters outside the DDP model (a method's own heads)."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (a CPU message: no GPU sync)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_module(module: nn.Module) -> None:
    """Makes `module`'s parameters and buffers those of rank 0 on every rank."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def launch(devices: int, argv: List[str]) -> int:
    """`ssl-train trainer.devices=N ...`: the same command under torch.distributed.run with N processes on
    this node, as a child process; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           "-m", "ssl_cli", *argv]
    log.info("launching %d processes: %s", devices, " ".join(cmd))
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # torchrun forwards the signal to its workers; they save and stop
        return 130
