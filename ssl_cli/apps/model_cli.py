"""What ssl-predict, ssl-evaluate and ssl-export share: a parser whose errors are one line, the run."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Union

import torch

from ssl_cli.core.errors import EXIT_USER_ERROR, UserError, one_line
from ssl_cli.engine.inference import OnnxRuntimeModel, pick_device
from ssl_cli.engine.model_io import TrainedModel, load_model
from ssl_cli.engine.precision import PRECISIONS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line `prog: error: ...` (exit 2), as everywhere in ssl-cli."""

    def error(self, message: str):
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT", help="a run directory (its last.pt), a checkpoint file, or an .onnx file from ssl-export")
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu, cuda, cuda:N")
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="as trainer.precision: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, bf16")


def open_model(args, precision: Optional[str] = None) -> Union[TrainedModel, OnnxRuntimeModel]:
    """The run's model (PyTorch), or an exported .onnx file run by onnxruntime. `precision` overrides
    `args.precision` (export computes its reference in fp32, the precision it exports)."""
    if args.num_threads is not None:
        positive("num-threads", args.num_threads)
        torch.set_num_threads(args.num_threads)
    if str(args.model).endswith(".onnx"):
        if args.device not in ("auto", "cpu"):
            raise UserError(f"--device {args.device}: an .onnx model runs on the CPU here (onnxruntime); use --device cpu")
        return OnnxRuntimeModel(args.model, args.num_threads)
    precision = precision or getattr(args, "precision", "auto")
    return load_model(args.model, device=pick_device(args.device), precision=precision)


def positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name} must be at least 1, got {value}")


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Runs `body`; a UserError ends as one line on stderr and exit code 2, without a traceback."""
    try:
        return body()
    except UserError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
