"""Test and validation metrics: accuracy, per-class precision / recall / F1, macro-F1, confusion matrix."""

from __future__ import annotations

from typing import Callable, Dict

import torch


@torch.no_grad()
def embed(model, images_uint8: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
          batch_size: int, autocast) -> torch.Tensor:
    """The backbone's features [N, feature_dim] (float32) of every image, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images_uint8.shape[0], batch_size):
        with autocast():
            out.append(model.features(prepare(images_uint8[start:start + batch_size])).float())
    model.train(was_training)
    if out:
        return torch.cat(out)
    return torch.zeros(0, model.classifier.in_features, device=images_uint8.device)


@torch.no_grad()
def predict(model, images_uint8: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
            batch_size: int, autocast) -> torch.Tensor:
    """Predicted class of every image: the classifier on `embed`'s features."""
    return classify(model, embed(model, images_uint8, prepare, batch_size, autocast))


@torch.no_grad()
def classify(model, features: torch.Tensor) -> torch.Tensor:
    """Predicted class from the backbone's features (embed, then the linear classifier)."""
    return model.classifier(features.to(model.classifier.weight.dtype)).argmax(dim=1)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, object]:
    cm = confusion_matrix(preds.cpu(), labels.cpu(), num_classes).double()
    true_pos = cm.diag()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp_min(1), torch.zeros_like(true_pos))
    recall = torch.where(actual > 0, true_pos / actual.clamp_min(1), torch.zeros_like(true_pos))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(denom))
    total = cm.sum().item()
    return {
        "accuracy": true_pos.sum().item() / total if total else 0.0,
        "macro_f1": f1.mean().item(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "confusion_matrix": cm.long().tolist(),
    }
