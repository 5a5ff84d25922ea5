"""Evaluation: features and predictions of a batch-wise forward pass, classification metrics (scikit-learn),
and the frozen-feature monitors (weighted kNN, L-BFGS linear probe) used by every evaluation."""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn


@torch.no_grad()
def embed(model, images_uint8: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
          batch_size: int, autocast) -> torch.Tensor:
    """The model's features [N, feature_dim] (float32) of every image, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images_uint8.shape[0], batch_size):
        with autocast():
            out.append(model(prepare(images_uint8[start:start + batch_size])).features.float())
    model.train(was_training)
    if out:
        return torch.cat(out)
    return torch.zeros(0, model.classifier.in_features, device=images_uint8.device)


@torch.no_grad()
def classify(classifier: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Logits from features (the linear classifier), float32."""
    return classifier(features.to(classifier.weight.dtype)).float()


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, object]:
    """Accuracy, per-class precision / recall / F1, macro-F1 over all classes, confusion matrix (rows: true)."""
    y_pred, y_true = preds.cpu().numpy(), labels.cpu().numpy()
    classes = list(range(num_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=classes) if len(y_true) else np.zeros((num_classes,) * 2, int)
    return {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0,
        "macro_f1": float(np.mean(f1)),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "confusion_matrix": cm.tolist(),
    }


@torch.no_grad()
def knn_predict(bank_features: torch.Tensor, bank_labels: torch.Tensor, features: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class of each row of `features` by a vote of its k most cosine-similar bank rows.

    Each neighbour votes for its label with weight exp(similarity / temperature) (Wu et al. 2018, the
    monitor used throughout the self-supervised literature); k is capped at the bank's size.
    """
    bank = F.normalize(bank_features.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, features.shape[0], chunk):
        query = F.normalize(features[start:start + chunk].float(), dim=1)
        sim, idx = (query @ bank.t()).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=features.device)


@torch.enable_grad()
def fit_linear_probe(classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor,
                     weight_decay: float = 1e-4, max_iter: int = 200) -> None:
    """Fits `classifier` in place as an L2-regularised logistic regression on frozen features (L-BFGS).

    The features are standardised with the bank's own mean and scale; the fitted weights absorb that
    standardisation, so the classifier then takes raw features like any other.
    """
    x = features.detach().float()
    mean, scale = x.mean(dim=0), x.std(dim=0)
    # Features (almost) constant on the bank, such as ReLU units that never fire on it, are left out:
    # dividing by their tiny spread would give them huge weights that explode on other images.
    scale = torch.where(scale > 1e-3 * scale.max().clamp_min(1e-12), scale, torch.full_like(scale, float("inf")))
    xs = (x - mean) / scale
    weight = torch.zeros(classifier.out_features, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(classifier.out_features, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weight.t() + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        w = weight / scale  # (x - mean) / scale @ W.T + b  ==  x @ (W / scale).T + (b - (W / scale) @ mean)
        classifier.weight.copy_(w.to(classifier.weight.dtype))
        classifier.bias.copy_((bias - w @ mean).to(classifier.bias.dtype))
