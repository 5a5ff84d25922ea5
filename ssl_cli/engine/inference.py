"""Applying a trained model to image files: what ssl-predict, ssl-evaluate and ssl-export share.

The model is `load_model`'s (the weights the run evaluated, EMA where it kept one), and every image goes
through the same decoder (ssl_cli.data.files) and normaliser, so a prediction here is the prediction
the run's own evaluation made on the same pixels.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssl_cli.core.errors import UserError
from ssl_cli.data.files import decode_images
from ssl_cli.engine.evaluation import classification_metrics
from ssl_cli.engine.model_io import TrainedModel
from ssl_cli.engine.outputs import SUMMARY

ECE_BINS = 15


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} but CUDA is not available on this machine; allowed here: cpu, auto")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UserError(f"--device {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(name)


@contextlib.contextmanager
def file_progress(total: int, label: str, enabled: Optional[bool] = None, console: Optional[Console] = None):
    """A rich progress bar over `total` files on a terminal (stderr), nothing otherwise. Yields advance(n)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console or Console(stderr=True), transient=True)
    task = progress.add_task(label, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)


@dataclass
class Predictions:
    """Class probabilities of the readable files, in the order given, and the files that could not be read."""

    paths: List[str]
    probabilities: torch.Tensor  # [len(paths), classes], float32 on the CPU
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # (path, why)


def predict_files(model: TrainedModel, files: Sequence[Path], batch_size: int = 256,
                  progress: Optional[bool] = None, label: str = "predict") -> Predictions:
    """Decodes `files` batch by batch and returns their class probabilities; unreadable files are listed."""
    paths, chunks, unreadable = [], [], []
    with file_progress(len(files), label, progress) as advance:
        for start in range(0, len(files), batch_size):
            part = list(files[start:start + batch_size])
            images, kept, bad = decode_images(part, model.channels, model.image_size, model.resize)
            unreadable += bad
            if kept:
                chunks.append(model.probabilities(images, batch_size).cpu())
                paths += [str(part[i]) for i in kept]
            advance(len(part))
    probs = torch.cat(chunks) if chunks else torch.zeros(0, len(model.class_names))
    return Predictions(paths, probs, unreadable)


def top_k(probabilities: torch.Tensor, class_names: Sequence[str], k: int) -> List[List[Tuple[str, float]]]:
    """The k most probable (class name, probability) of each row, most probable first."""
    k = min(k, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    return [[(class_names[i], p) for i, p in zip(idx, val)] for idx, val in zip(indices.tolist(), values.tolist())]


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins (Guo et al. 2017) and the bins:
    ECE = sum over bins of (share of images in the bin) * |accuracy - mean confidence| in the bin."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 goes into the first.
    which = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, bins - 1)
    n = max(len(confidence), 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        accuracy = float(correct[inside].mean()) if count else None
        mean_confidence = float(confidence[inside].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - mean_confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "accuracy": accuracy, "confidence": mean_confidence})
    return {"ece": ece, "bins": rows}


def labeled_files(class_folders: Dict[str, List[Path]], class_names: Sequence[str], folder) -> Tuple[List[Path], List[int]]:
    """Files and label indices of a labeled folder, its class folders matched to the model's classes by name."""
    unknown = [c for c in class_folders if c not in class_names]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        known = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
        raise UserError(f"class folder{'s' if len(unknown) > 1 else ''} {shown} in {folder} "
                        f"{'are' if len(unknown) > 1 else 'is'} not a class of this model (its classes: {known})")
    files, labels = [], []
    for name, paths in class_folders.items():
        files += paths
        labels += [list(class_names).index(name)] * len(paths)
    if not files:
        raise UserError(f"no images in the class folders of {folder}")
    return files, labels


def evaluate_files(model: TrainedModel, files: Sequence[Path], labels: Sequence[int], batch_size: int = 256,
                   progress: Optional[bool] = None) -> dict:
    """The run's test metrics (accuracy, per-class precision / recall / F1, macro-F1, confusion matrix, as
    ssl-train computes them) plus expected calibration error, on labeled files."""
    predictions = predict_files(model, files, batch_size, progress, label="evaluate")
    label_of = {str(f): y for f, y in zip(files, labels)}
    y_true = torch.tensor([label_of[p] for p in predictions.paths], dtype=torch.int64)
    confidence, y_pred = predictions.probabilities.max(dim=1) if len(y_true) else (torch.zeros(0), y_true)
    names = list(model.class_names)
    metrics = classification_metrics(y_pred, y_true, len(names))
    support = np.bincount(y_true.numpy(), minlength=len(names)).tolist()
    return {
        "num_images": len(y_true),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": {n: {"precision": p, "recall": r, "f1": f, "support": s} for n, p, r, f, s in
                      zip(names, metrics["precision"], metrics["recall"], metrics["f1"], support)},
        "confusion_matrix": {"class_names": names, "matrix": metrics["confusion_matrix"],
                             "rows": "true class", "columns": "predicted class"},
        "calibration": calibration(confidence, (y_pred == y_true), ECE_BINS),
        "unreadable": [{"path": p, "error": why} for p, why in predictions.unreadable],
    }


def run_summary(model: TrainedModel) -> Optional[dict]:
    """The summary.json of the run that wrote the model's checkpoint, where it is next to it."""
    path = Path(model.source).parent / SUMMARY
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- export

class UInt8Classifier(torch.nn.Module):
    """The exported graph: uint8 images [N, C, H, W] (0..255) in, class probabilities [N, classes] out.

    Normalisation is inside, so a caller only decodes, resizes and crops (the sidecar JSON says how)."""

    def __init__(self, model: TrainedModel):
        super().__init__()
        self.network = model.network
        self.register_buffer("mean", model.normalize.mean.clone() * 255.0)
        self.register_buffer("std", model.normalize.std.clone() * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std  # == (x / 255 - mean) / std, one op fewer
        return torch.softmax(self.network(x).logits.float(), dim=1)


def require_module(name: str, extra: str, what: str):
    """An optional dependency, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{what} needs the {name} package, which is not installed; install the optional extra: "
                        f"pip install 'ssl-cli[{extra}]'") from None


def export_onnx(model: TrainedModel, path: Path, opset: int) -> int:
    """ONNX with a dynamic batch axis, by the current (dynamo) exporter; one self-contained file.
    Returns the opset the file declares (the exporter may raise a lower request to its own minimum)."""
    onnx = require_module("onnx", "export", "--format onnx")
    require_module("onnxscript", "export", "--format onnx (the dynamo exporter)")
    module = UInt8Classifier(model).cpu().eval()
    example = torch.zeros(2, model.channels, *model.image_size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"],
                                    output_names=["probabilities"], dynamic_shapes={"images": {0: batch}},
                                    opset_version=opset, verbose=False)
    program.save(str(path), external_data=False)
    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(model: TrainedModel, path: Path) -> None:
    """TorchScript by tracing (PyTorch marks torch.jit deprecated; it still runs in C++ with libtorch alone)."""
    module = UInt8Classifier(model).cpu().eval()
    example = torch.zeros(2, model.channels, *model.image_size, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example)
    traced.save(str(path))


def onnxruntime_probabilities(path: Path, images_uint8: torch.Tensor) -> torch.Tensor:
    ort = require_module("onnxruntime", "export", "the onnxruntime check")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["probabilities"], {"images": images_uint8.cpu().numpy()})
    return torch.from_numpy(out)


def torchscript_probabilities(path: Path, images_uint8: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(images_uint8.cpu()).float()


class OnnxRuntimeModel:
    """An exported model (model.onnx and its model.onnx.json sidecar) run by onnxruntime on the CPU.

    It has what ssl-predict and ssl-evaluate use of a TrainedModel (class names, input shape,
    `probabilities(uint8 images)`), so both commands take an exported .onnx file as well as a run."""

    def __init__(self, path, num_threads: Optional[int] = None):
        ort = require_module("onnxruntime", "export", "running an .onnx model")
        self.source = Path(path)
        sidecar = self.source.with_name(self.source.name + ".json")
        if not self.source.is_file():
            raise UserError(f"{path}: no such file; give a run directory, a checkpoint or an exported .onnx file")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path}: its sidecar {sidecar} (class names, input size; written by ssl-export) is "
                            f"missing or not JSON") from None
        self.card = meta
        self.class_names: List[str] = list(meta["class_names"])
        self.channels: int = int(meta["input"]["channels"])
        self.image_size: Tuple[int, int] = tuple(meta["input"]["image_size"])
        self.resize: str = meta["input"].get("resize", "crop")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(self.source), options, providers=["CPUExecutionProvider"])

    def probabilities(self, images_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = []
        for start in range(0, len(images_uint8), batch_size):
            batch = images_uint8[start:start + batch_size].cpu().numpy()
            out.append(torch.from_numpy(self.session.run(["probabilities"], {"images": batch})[0]))
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))
