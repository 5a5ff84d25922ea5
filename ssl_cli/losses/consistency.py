"""Consistency losses between two predictions, and VAT's adversarial direction; all in float32.

probability_mse         Π-model / Mean Teacher: squared distance between softmax outputs
kl_divergence           KL(softmax(target) || softmax(logits)), the target detached (VAT)
entropy                 mean prediction entropy (entropy minimisation, VAT's extra term)
feature_distance        CRMatch's FeatDistLoss: masked hinge on the cosine similarity of two views' features
adversarial_perturbation  VAT's power iteration for the direction the prediction is most sensitive to
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def probability_mse(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over images and classes of (softmax(logits) - target)², the target carrying no gradient.

    (Laine & Aila 2017, eq. of the Π-model; Tarvainen & Valpola 2017, sec. 2; USB's 'mse' consistency.)
    """
    return (torch.softmax(logits.float(), dim=1) - target_probs.detach().float()).pow(2).mean()


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over images of KL(q || p), q = softmax(target_logits) (detached), p = softmax(logits)."""
    log_q = F.log_softmax(target_logits.detach().float(), dim=1)
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over images of H(softmax(logits)) = -Σ p log p (its gradient sharpens the predictions)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def feature_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CRMatch's FeatDistLoss as USB computes it: mean over rows of mask · max(0, cos(a, b)).

    (USB: F.cosine_embedding_loss(a, b, target -1, margin 0), masked, averaged over all rows.) Minimising it
    pushes the two views' features apart (equivariance) until they are orthogonal; both get the gradient.
    """
    cosine = F.cosine_similarity(a.float(), b.float(), dim=1)
    return (cosine.clamp_min(0) * mask).mean()


def per_image_unit(d: torch.Tensor) -> torch.Tensor:
    """Each image (row of the first dimension) scaled to L2 norm 1 (a zero image stays zero)."""
    norm = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d / (norm + 1e-16)


def adversarial_perturbation(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, xi: float,
                             eps: float, iterations: int = 1) -> torch.Tensor:
    """VAT's r_adv (Miyato et al. 2018, eq. 7-12): eps times the unit direction d of the power iteration
    d ← ∇_r KL(p(x) || p(x + r)) at r = ξ d, started from a Gaussian d, one per image.

    The gradient is taken with torch.autograd.grad with respect to r alone, so no parameter's .grad is
    touched (an accumulating optimiser step stays intact). `logits_of` is the model's forward pass; the
    caller decides its BatchNorm and precision settings. The result is detached.
    """
    with torch.no_grad():
        clean_logits = logits_of(x)
    d = torch.randn_like(x)
    for _ in range(iterations):
        r = (xi * per_image_unit(d)).requires_grad_(True)
        divergence = kl_divergence(clean_logits, logits_of(x + r))
        (d,) = torch.autograd.grad(divergence, [r])
    return (eps * per_image_unit(d)).detach()
