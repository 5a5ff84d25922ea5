"""Using a trained model: ssl-predict, ssl-evaluate, ssl-export, and the decoder they share.

The module's run is FixMatch trained for a few steps on a tiny image folder (train/<class>, unlabeled/,
val/<class>, test/<class>).
Its test-folder accuracy must come out the same three ways: from ssl-predict's CSV, from ssl-evaluate,
and in the run's own summary.json; the exported ONNX graph must agree with PyTorch to within 1e-4.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from conftest import run_cli, write_image_folder
from ssl_cli import load_model
from ssl_cli.apps import evaluate as evaluate_app
from ssl_cli.apps import export as export_app
from ssl_cli.apps import predict as predict_app
from ssl_cli.data.files import decode_image, list_image_files
from ssl_cli.engine import inference
from ssl_cli.engine.inference import calibration

CLASSES = ("cat", "dog", "frog", "ship")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, run directory) of a FixMatch run on a tiny folder: train/<class>, unlabeled/, val/, test/<class>."""
    root = tmp_path_factory.mktemp("use_model")
    folder = write_image_folder(root / "images", classes=CLASSES, per_class=12, size=12, seed=3)
    # The layout users have: unlabeled/ (no classes, any depth) and val/ beside train/ and test/. Today's
    # loader reads train/ and test/ only; the data half of issue 12 adds the other two. Either way the
    # test split is test/, which is what the three accuracies below are computed on.
    extra = write_image_folder(root / "extra", classes=CLASSES, per_class=6, size=12, seed=4, test=False)
    for i, png in enumerate(sorted((extra / "train").rglob("*.png"))):
        target = folder / "unlabeled" / f"batch{i % 2}" / f"{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        png.rename(target)
    write_image_folder(root / "val_src", classes=CLASSES, per_class=3, size=12, seed=5, test=False)
    (root / "val_src" / "train").rename(folder / "val")
    code, _, err = run_cli(["dataset=imagefolder", f"dataset.root={folder}", f"dataset.cache_dir={root / 'cache'}",
                            "dataset.num_labels=8", "method=fixmatch", "method.unlabeled_ratio=2", "backbone=cnn",
                            "trainer.max_steps=30", "trainer.eval_every=30", "trainer.batch_size=8",
                            "trainer.device=cpu", "trainer.num_threads=1", "trainer.progress_bar=false",
                            f"hydra.run.dir={root / 'run'}"], root)
    assert code == 0, err[-2000:]
    return folder, root / "run"


def one_line_error(capsys, prog: str, *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


# --------------------------------------------------------------------------- must-show 1

@pytest.mark.slow
def test_predict_csv_evaluate_and_summary_give_the_same_test_accuracy(trained, tmp_path, capsys):
    folder, run = trained
    summary = json.loads((run / "summary.json").read_text())
    csv_path = tmp_path / "predictions.csv"
    assert predict_app.main([str(run), str(folder / "test"), "--output", str(csv_path), "--topk", "2",
                             "--device", "cpu"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4 * len(CLASSES)
    assert set(rows[0]) == {"path", "prediction", "confidence", "top1", "top1_probability", "top2", "top2_probability"}
    csv_accuracy = np.mean([Path(r["path"]).parent.name == r["prediction"] for r in rows])

    assert evaluate_app.main([str(run), str(folder / "test"), "--output-dir", str(tmp_path / "eval"),
                              "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert csv_accuracy == report["accuracy"] == summary["final"]["test/accuracy"]
    # Not only the accuracy: every cell of the confusion matrix is the run's own.
    run_matrix = json.loads((run / "confusion_matrix.json").read_text())
    assert report["confusion_matrix"]["matrix"] == run_matrix["matrix"]
    assert report["macro_f1"] == pytest.approx(summary["final"]["test/macro_f1"])
    for name in CLASSES:
        assert report["per_class"][name]["f1"] == pytest.approx(summary["final"]["per_class"][name]["f1"])
    assert 0.0 <= report["calibration"]["ece"] <= 1.0 and len(report["calibration"]["bins"]) == 15
    for png in ("confusion_matrix.png", "reliability.png"):
        with Image.open(tmp_path / "eval" / png) as img:
            assert img.format == "PNG" and img.width > 100


@pytest.mark.slow
def test_export_onnx_matches_pytorch_with_a_dynamic_batch(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    folder, run = trained
    out = tmp_path / "model.onnx"
    assert export_app.main([str(run), "--format", "onnx", "--output", str(out),
                            "--check-images", str(folder / "test"), "--device", "cpu"]) == 0
    assert "largest absolute difference onnxruntime vs PyTorch" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["class_names"] == list(CLASSES) and sidecar["input"]["dtype"] == "uint8"
    assert sidecar["input"]["image_size"] == [12, 12] and sidecar["self_check"]["max_abs_diff"] < 1e-4
    assert sidecar["opset"] >= 18 and sidecar["mean"] == load_model(run).card["mean"]
    assert sidecar["run_test_accuracy"] == json.loads((run / "summary.json").read_text())["final"]["test/accuracy"]

    model = load_model(run, precision="fp32")  # exports are float32
    files = list_image_files([folder / "test"])
    images = torch.stack([decode_image(f, 3, (12, 12)) for f in files])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5, len(images)):  # any batch size
        (probs,) = session.run(None, {"images": images[:n].numpy()})
        assert probs.shape == (n, len(CLASSES))
        assert np.abs(probs - model.probabilities(images[:n]).numpy()).max() < 1e-4

    # ssl-predict takes the exported file too (onnxruntime) and predicts what the run's model predicts.
    capsys.readouterr()
    for source, name in ((out, "onnx.csv"), (run, "torch.csv")):  # PyTorch in float32, as exported
        assert predict_app.main([str(source), str(folder / "test"), "--output", str(tmp_path / name),
                                 "--precision", "fp32"]) == 0
    onnx_rows = list(csv.DictReader((tmp_path / "onnx.csv").open()))
    torch_rows = list(csv.DictReader((tmp_path / "torch.csv").open()))
    assert [(r["path"], r["prediction"]) for r in onnx_rows] == [(r["path"], r["prediction"]) for r in torch_rows]
    assert max(abs(float(a["confidence"]) - float(b["confidence"])) for a, b in zip(onnx_rows, torch_rows)) < 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_torchscript_matches_pytorch(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "model.pt"
    assert export_app.main([str(run), "--format", "torchscript", "--output", str(out), "--device", "cpu"]) == 0
    module = torch.jit.load(str(out))
    x = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    assert torch.allclose(module(x), load_model(run, precision="fp32").probabilities(x), atol=1e-5)


@pytest.mark.slow
def test_predict_jsonl_lists_unreadable_files_and_summarises(trained, tmp_path, capsys):
    folder, run = trained
    (tmp_path / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(tmp_path / "big.jpg")
    out = tmp_path / "p.jsonl"
    assert predict_app.main([str(run), str(tmp_path / "*.png"), str(tmp_path / "*.jpg"), str(folder / "test" / "cat"),
                             "--output", str(out), "--topk", "9", "--min-confidence", "1.0", "--batch-size", "3"]) == 0
    stdout = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["path"].endswith("big.jpg")  # 4 cat test images and the 30x20 photo
    assert all(len(r["topk"]) == len(CLASSES) and r["prediction"] == r["topk"][0]["class"] for r in rows)
    assert "1 unreadable" in stdout and "broken.png" in stdout
    assert "below confidence 1: 5 of 5" in stdout


# --------------------------------------------------------------------------- bad input: one line each

@pytest.mark.slow
def test_bad_inputs_are_one_line_and_write_nothing(trained, tmp_path, capsys, monkeypatch):
    folder, run = trained
    assert predict_app.main([str(tmp_path / "no_run"), str(folder)]) == 2
    one_line_error(capsys, "ssl-predict", "no_run", "no such file or directory")
    assert predict_app.main([str(run), str(tmp_path / "missing")]) == 2
    one_line_error(capsys, "ssl-predict", "missing", "no such file or folder")
    (tmp_path / "empty").mkdir()
    assert predict_app.main([str(run), str(tmp_path / "empty")]) == 2
    one_line_error(capsys, "ssl-predict", "no image files found")
    assert predict_app.main([str(run), str(tmp_path / "*.png")]) == 2
    one_line_error(capsys, "ssl-predict", "no file matches")
    assert predict_app.main([str(run), str(folder), "--output", str(tmp_path / "p.txt")]) == 2
    one_line_error(capsys, "ssl-predict", "unknown format", ".csv, .jsonl")
    (tmp_path / "kept.csv").write_text("earlier\n")
    assert predict_app.main([str(run), str(folder), "--output", str(tmp_path / "kept.csv")]) == 2
    one_line_error(capsys, "ssl-predict", "exists", "--overwrite")
    assert (tmp_path / "kept.csv").read_text() == "earlier\n"
    with pytest.raises(SystemExit) as exit_info:
        predict_app.main([str(run), str(folder), "--topk", "two"])
    assert exit_info.value.code == 2
    one_line_error(capsys, "ssl-predict", "--topk")

    # A class folder the model does not know: the labeled folder's layout is named.
    assert evaluate_app.main([str(run), str(folder), "--output-dir", str(tmp_path / "e")]) == 2
    one_line_error(capsys, "ssl-evaluate", "'test', 'train'", "not a class of this model", "cat, dog, frog, ship")
    assert not (tmp_path / "e").exists()

    with pytest.raises(SystemExit) as exit_info:
        export_app.main([str(run), "--format", "tflite"])
    assert exit_info.value.code == 2
    one_line_error(capsys, "ssl-export", "invalid choice: 'tflite'", "onnx", "torchscript")

    def broken_exporter(*args):
        raise RuntimeError("no translation for aten::something\nmore detail")

    with monkeypatch.context() as patch:
        patch.setattr(export_app, "export_onnx", broken_exporter)
        assert export_app.main([str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    one_line_error(capsys, "ssl-export", "could not export backbone cnn as onnx", "aten::something",
                   "try --format torchscript")
    assert sorted(p.name for p in tmp_path.iterdir() if "m." in p.name) == []

    real_import = inference.importlib.import_module

    def without_onnxruntime(name, *args):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(inference.importlib, "import_module", without_onnxruntime)
    assert export_app.main([str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    one_line_error(capsys, "ssl-export", "onnxruntime", "pip install 'ssl-cli[export]'")
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- the decoder, calibration

def test_list_image_files_takes_files_folders_and_globs_once_each(tmp_path):
    for rel in ("a/1.png", "a/b/2.jpg", "a/.hidden/3.png", "a/notes.txt", "c.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = list_image_files([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "c.png", str(tmp_path / "a/**/*.jpg")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.png", "a/b/2.jpg", "c.png"]


def test_decode_image_resizes_the_shorter_side_then_crops_the_centre(tmp_path):
    # 40 wide x 20 high: black edges 6 pixels wide, white between them.
    array = np.zeros((20, 40), np.uint8)
    array[:, 6:34] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 1, (10, 10))
    assert out.shape == (1, 10, 10) and out.dtype == torch.uint8
    assert out.min() == 255  # the centre crop holds only the white middle (a squeeze would keep the black)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent: composited on white
    assert decode_image(rgba, 3, (8, 8)).min() == 255
    deep = Image.fromarray(np.full((6, 6), 65535, np.uint16))  # 16-bit grey scales to 8 bits, not clipped
    assert decode_image(deep, 1, (6, 6)).min() == 255 and decode_image(
        Image.fromarray(np.full((6, 6), 32896, np.uint16)), 1, (6, 6)).max() == 128


def test_decode_image_applies_exif_orientation(tmp_path):
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10] = 255  # left half white
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    out = decode_image(tmp_path / "photo.jpg", 3, (20, 20))
    assert out.shape == (3, 20, 20)
    assert out[:, :8].float().mean() > 200 and out[:, 12:].float().mean() < 50  # white now on top (a 20x10 upright photo, centre-cropped to a square)


def test_expected_calibration_error_on_known_bins():
    confidence = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, False, True, True])
    result = calibration(confidence, correct, bins=10)
    # bin (0.9, 1]: accuracy 0.5, confidence 0.95; bin (0.5, 0.6]: accuracy 1, confidence 0.55
    assert result["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert [b["count"] for b in result["bins"]] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert calibration(torch.tensor([1.0, 0.0]), torch.tensor([True, False]), bins=15)["ece"] == 0.0


@pytest.mark.slow
def test_predict_benchmark_script_on_a_tiny_folder(trained, tmp_path):
    """The timing script the lead runs on CIFAR-10, here on the tiny run: it must report both runtimes,
    their agreement, and that ssl-predict's accuracy is the run's."""
    import importlib.util

    folder, run = trained
    spec = importlib.util.spec_from_file_location("predict_benchmark", Path(__file__).parents[1] / "scripts" /
                                                  "predict_benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main(["--root", str(folder), "--run", str(run), "--out", str(tmp_path), "--repeats", "1",
                           "--num-threads", "1", "--markdown", str(tmp_path / "table.md")])
    assert [r["runtime"] for r in results["runtimes"]] == ["PyTorch", "onnxruntime"]
    assert results["images"] == 4 * len(CLASSES) and results["max_abs_diff"] < 1e-4
    assert results["predict_accuracy_equals_run"] is True
    assert results["runtimes"][0]["accuracy"] == results["runtimes"][1]["accuracy"]
    assert "| onnxruntime |" in (tmp_path / "table.md").read_text()


def test_progress_bar_shows_only_when_enabled(capsys):
    with inference.file_progress(10, "predict", enabled=False) as advance:
        advance(4)
    assert capsys.readouterr().err == ""
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    with inference.file_progress(10, "predict", enabled=True, console=terminal) as advance:
        advance(10)
    assert "predict" in terminal.file.getvalue() and "10/10" in terminal.file.getvalue()


def test_prediction_decodes_new_images_with_the_runs_resize_policy(tmp_path):
    # dataset.resize=stretch trained on squashed images; a wide photo must be squashed, not centre-cropped.
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=12)
    code, _, err = run_cli(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=12",
                            "dataset.resize=stretch", "dataset.num_labels=4", "method=supervised",
                            "trainer.device=cpu", "trainer.max_steps=1", "trainer.eval_every=1",
                            "trainer.progress_bar=false", "hydra.run.dir=run"], tmp_path)
    assert code == 0, err
    wide = np.zeros((12, 36, 3), np.uint8)
    wide[:, :12] = 255  # white left third: cropping the centre loses it, stretching keeps it
    Image.fromarray(wide).save(tmp_path / "wide.png")
    model = load_model(tmp_path / "run")
    assert model.resize == "stretch"
    assert model.preprocess(tmp_path / "wide.png")[:, :, :3].float().mean() > 200
