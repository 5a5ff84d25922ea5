"""`dataset=csv`: images listed in a CSV file of `path,label` rows, as labeling tools export them.

A row with an empty label is an unlabeled image (it joins the unlabeled pool). Paths are relative to the
CSV file's folder (or absolute). An optional header row `path,label` is skipped; further columns are
ignored. `dataset.val_csv` and `dataset.test_csv` list the validation and test splits the same way
(every row labeled). The files then load as an image folder does (ssl_cli.data.folders.load_listing).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import MISSING, option
from ssl_cli.data.base import DATASETS, ImageData
from ssl_cli.data.folders import ListedImagesOptions, Listing, load_listing

Row = Tuple[int, Path, str]  # (line number, file, label or "")


@dataclass
class CsvOptions(ListedImagesOptions):
    path: str = option(MISSING, "the CSV file of path,label rows (label empty: unlabeled); paths relative "
                                "to the file's folder")
    val_csv: Optional[str] = option(None, "a CSV of the validation split (every row labeled); null: "
                                          "dataset.num_validation training images are held out")
    test_csv: Optional[str] = option(None, "a CSV of the test split (every row labeled); null: "
                                           "dataset.test_fraction of the labeled images are held out")
    classes: Optional[List[str]] = option(None, "the class names in model order; null: the labels found, "
                                                "sorted")


def _csv_file(value: Optional[str], key: str) -> Path:
    if value in (None, "", MISSING):
        raise UserError(f"dataset=csv needs dataset.{key} (a CSV file of path,label rows)")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise UserError(f"dataset.{key}: no file {path} (a CSV file of path,label rows)")
    return path


def read_rows(csv_path: Path, seen: Dict[Path, str]) -> List[Row]:
    """The rows of one CSV file, each path checked to exist and to be listed once (across every file read
    with the same `seen`)."""
    rows: List[Row] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {csv_path}: {e}") from None
    for number, fields in enumerate(lines, start=1):
        fields = [x.strip() for x in fields]
        if not fields or not any(fields):
            continue
        if number == 1 and [x.lower() for x in fields[:2]] == ["path", "label"]:
            continue  # the header row
        name, label = fields[0], fields[1] if len(fields) > 1 else ""
        where = f"{csv_path}:{number}"
        if not name:
            raise UserError(f"{where}: empty path (rows are path,label)")
        file = Path(name).expanduser()
        file = file if file.is_absolute() else csv_path.parent / file
        if not file.is_file():
            raise UserError(f"{where}: listed file {file} does not exist (paths are relative to {csv_path.parent})")
        key = file.resolve()
        if key in seen:
            raise UserError(f"{where}: {file} is listed twice (also at {seen[key]}); list each image once")
        seen[key] = where
        rows.append((number, file, label))
    return rows


def _labeled(rows: List[Row], csv_path: Path, classes: List[str]) -> List[Tuple[Path, int]]:
    entries = []
    for number, file, label in rows:
        if not label:
            raise UserError(f"{csv_path}:{number}: {file} has no label; every row of a validation or test "
                            f"CSV needs one")
        entries.append((file, _class_index(label, classes, f"{csv_path}:{number}")))
    return entries


def _class_index(label: str, classes: List[str], where: str) -> int:
    if label not in classes:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise UserError(f"{where}: unknown label {label!r} (classes: {shown})")
    return classes.index(label)


def list_csv(o: CsvOptions) -> Listing:
    train_csv = _csv_file(o.path, "path")
    seen: Dict[Path, str] = {}  # one file may not be in two splits either
    rows = read_rows(train_csv, seen)
    if o.classes is not None:
        classes = [str(c) for c in o.classes]
        if len(set(classes)) != len(classes) or not all(classes):
            raise UserError(f"dataset.classes must name each class once, got {classes}")
    else:
        classes = sorted({label for _, _, label in rows if label})
    if not classes:
        raise UserError(f"{train_csv} has no labeled rows (path,label with a label); at least one per class")
    train, unlabeled = [], []
    for number, file, label in rows:
        if label:
            train.append((file, _class_index(label, classes, f"{train_csv}:{number}")))
        else:
            unlabeled.append(file)
    listing = Listing(train_csv.parent, classes, train, unlabeled,
                      sources={"train": f"{train_csv} (labeled rows)", "unlabeled": f"{train_csv} (unlabeled rows)"})
    for key, split in (("val_csv", "validation"), ("test_csv", "test")):
        value = getattr(o, key)
        if value is not None:
            path = _csv_file(value, key)
            setattr(listing, split, _labeled(read_rows(path, seen), path, classes))
            listing.sources[split] = str(path)
    return listing


@DATASETS.register("csv", CsvOptions)
def load_csv(o: CsvOptions) -> ImageData:
    """Images listed in a CSV of path,label rows (ssl_cli.data.csvlist)."""
    data = load_listing(list_csv(o), o, o)
    data.name = "csv"
    return data
