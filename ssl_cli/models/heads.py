"""Small heads that methods put on top of a backbone's features."""

from __future__ import annotations

from typing import Optional

from torch import nn


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """SimCLR's MLP: linear, BatchNorm, ReLU, linear (also BYOL's projector and predictor).

    batch_norm=False gives the head of USB's SimMatch and CoMatch: linear (with bias), ReLU, linear.
    """
    if not batch_norm:
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def rotation_head(in_dim: int, hidden_dim: Optional[int] = None) -> nn.Module:
    """The 4-way classifier of a rotation-prediction loss (which multiple of 90° an image was turned by).

    ReMixMatch's is one linear layer (hidden_dim None); CRMatch's (USB's rot_classifier) is linear, ReLU,
    linear with a hidden layer as wide as the features.
    """
    if hidden_dim is None:
        return nn.Linear(in_dim, 4)
    return projection_head(in_dim, hidden_dim, 4, batch_norm=False)
