"""Choosing the labeled images with a selector: features from another run's model, then ssl_cli.selection.

`dataset.labeled_selection=typiclust dataset.selection_features=<run dir>` makes a run's labeled set the
images a selector picks from the features of that run's model (one forward pass per batch gives the
features and the predictions). The selector never sees a label; the labels are used only for the
class-balanced validation split, which is drawn first, exactly as for a random split, and kept out of
the selector's pool. What was chosen, and how, is recorded in labeled_indices.json; the choice is a pure
function of (features, label count, seed), so every method of a sweep gets the same labeled images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ssl_cli.core.errors import UserError
from ssl_cli.data.split import Split, label_budget, make_split, selection_pool
from ssl_cli.engine.config import RunConfig
from ssl_cli.engine.model_io import TrainedModel, load_model
from ssl_cli.selection import NEEDS_NO_FEATURES, l2_normalize, select


@torch.no_grad()
def pool_outputs(model: TrainedModel, images_uint8: torch.Tensor, batch_size: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """Features [N, D] and class probabilities [N, classes] of uint8 images, from one model call per batch."""
    if tuple(images_uint8.shape[1:]) != (model.channels, *model.image_size):
        raise UserError(f"the feature model {model.source} takes {model.channels}x{model.image_size[0]}x"
                        f"{model.image_size[1]} images; these are {'x'.join(map(str, images_uint8.shape[1:]))}")
    features, probabilities = [], []
    for start in range(0, len(images_uint8), batch_size):
        out = model.network(model.normalize(images_uint8[start:start + batch_size].to(model.device)))
        features.append(out.features.float().cpu())
        probabilities.append(torch.softmax(out.logits.float(), dim=1).cpu())
    return torch.cat(features).numpy(), torch.cat(probabilities).numpy()


def feature_model(source: Union[str, Path], label: Optional[str] = None) -> TrainedModel:
    """load_model, with its one-line errors naming the option that gave the run (`label`)."""
    try:
        return load_model(source)
    except UserError as e:
        raise UserError(f"{label}={source}: {e}" if label else str(e)) from None


def selected_split(run: RunConfig, data) -> Split:
    """The split of a run whose labeled images a selector chooses (dataset.labeled_selection)."""
    d = run.dataset
    if not isinstance(data.train_images, torch.Tensor):
        raise UserError(f"dataset.labeled_selection={d.labeled_selection} needs the images in memory "
                        f"(dataset.streaming=false)")
    labels = data.train_labels.numpy()  # for the validation split only; the selector never sees them
    pool = selection_pool(labels, data.num_classes, run.seed, d.num_validation)
    budget = label_budget(len(pool), data.num_classes, d.num_labels, d.label_fraction)
    if d.labeled_selection in NEEDS_NO_FEATURES and d.selection_features is None:
        features, probabilities, feature_run = np.zeros((len(pool), 1), dtype=np.float32), None, None
    else:
        model = feature_model(d.selection_features, "dataset.selection_features")
        try:
            features, probabilities = pool_outputs(model, data.train_images[torch.from_numpy(pool)])
        except UserError as e:
            raise UserError(f"dataset.selection_features={d.selection_features}: {e}") from None
        feature_run = str(model.source)
    chosen = select(d.labeled_selection, l2_normalize(features), budget, seed=run.seed, probabilities=probabilities,
                    num_classes=data.num_classes, delta=d.probcover_delta, label="dataset.labeled_selection")
    labeled = pool[chosen.indices]
    record = {"strategy": d.labeled_selection, "feature_run": feature_run, "seed": run.seed,
              "budget": budget, **chosen.info, "picked_in_order": labeled.tolist()}
    return make_split(labels, data.num_classes, run.seed, num_validation=d.num_validation,
                      unlabeled_includes_labeled=d.unlabeled_includes_labeled, labeled=labeled, selection=record)
