"""CRMatch (Fan, Kukleva, Dai & Schiele, "Revisiting Consistency Regularization for Deep Semi-Supervised
Learning", IJCV 2022, arXiv 2112.05825), as USB implements it (semilearn/algorithms/crmatch):

    L = L_s + λ_u L_u + λ_d L_d + λ_rot L_rot

* L_s, L_u: FixMatch's terms (Sohn et al. 2020, eq. 2-4): the weak view's argmax, where its probability
  reaches p_cutoff, is the strong view's cross-entropy target, averaged over all unlabeled images;
* L_d, the paper's FeatDistLoss: a linear "ds" head maps each unlabeled image's features, and the weak and
  strong views' outputs are pushed apart, mean of mask · max(0, cos(d_strong, d_weak)), so the features
  become equivariant to the strong augmentation while the classifier stays invariant (its L_u); both
  views get the gradient (USB's concatenated pass);
* L_rot: rotation prediction (Gidaris et al. 2018): every image of a batch of weakly augmented unlabeled
  images in all four quarter turns, an MLP head (linear, ReLU, linear) predicts the turn.

USB's classic-CV defaults (config/classic_cv/crmatch, get_argument): p_cutoff 0.95, λ_u 1 (USB does not
scale L_u), λ_d 1 (implicit), λ_rot (rot_loss_ratio) 1, μ 7, hard labels. The paper's equation numbers are
not restated here: we follow USB's code, which is what its published numbers come from.

Where this differs from USB, and why:
* USB's ds head takes the flattened 8×8 feature map of a WRN (6×6 on STL-10); our backbones return the
  pooled features only, so it is Linear(feature_dim, feature_dim), as USB's own ViT path does;
* USB rotates `batch_size` (the labeled count) images from a separate unlabeled loader with the labeled
  (weak) transform; we turn the first `batch_size` weak unlabeled views of the step, already a random
  sample with that transform, in the same forward pass (USB's use_cat). No random draw is needed: every
  image is shown in all four turns (0°, then 90°, 180°, 270° counter-clockwise, USB's order).
The method keeps no running statistics; its state is the two heads' weights.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ssl_cli.core.options import option
from ssl_cli.losses.consistency import feature_distance
from ssl_cli.losses.selfsup import rotation_prediction
from ssl_cli.methods.base import METHODS, ThresholdOptions
from ssl_cli.methods.fixmatch import FixMatch
from ssl_cli.models.heads import rotation_head
from ssl_cli.transforms.ops import all_quarter_turns, check_rotatable


@dataclass
class CRMatchOptions(ThresholdOptions):
    feature_distance_weight: float = option(1.0, "weight λ_d of FeatDistLoss, which pushes the weak and strong "
                                                 "views' ds-head features apart (0: no ds head)", low=0)
    rotation_weight: float = option(1.0, "weight λ_rot of the rotation-prediction loss (0: no rotation head)",
                                    low=0)


@METHODS.register("crmatch")
class CRMatch(FixMatch):
    """CRMatch (Fan et al. 2022): FixMatch + FeatDistLoss between weak and strong views + rotation prediction."""

    name = "crmatch"
    Options = CRMatchOptions

    def __init__(self, options, data, max_steps):
        super().__init__(options, data, max_steps)
        if options.rotation_weight > 0:
            check_rotatable(data.image_size, "crmatch")

    def setup(self, model, ema):
        if self.options.feature_distance_weight > 0:
            self.ds_head = nn.Linear(model.feature_dim, model.feature_dim)
        if self.options.rotation_weight > 0:
            self.rotation_head = rotation_head(model.feature_dim, hidden_dim=model.feature_dim)

    def extra_inputs(self, batch, context):
        if self.options.rotation_weight == 0:
            return ()
        n, _ = context["rows"]
        turned, turns = all_quarter_turns(batch.unlabeled[0][:n])  # the first n weak views
        context["rotation_targets"] = turns
        return (turned,)

    def extra_loss(self, logits_strong, mask, context):
        features = context["output"].features
        n, u = context["rows"]
        loss = logits_strong.new_zeros((), dtype=torch.float32)
        metrics = context["metrics"]
        if self.options.feature_distance_weight > 0:
            ds = self.ds_head(features[n:n + 2 * u])  # the weak views' rows, then the strong views'
            distance = feature_distance(ds[u:], ds[:u], mask)
            metrics["feature_distance_loss"] = distance.detach()
            loss = loss + self.options.feature_distance_weight * distance
        if self.options.rotation_weight > 0:
            rotation, accuracy = rotation_prediction(self.rotation_head(features[n + 2 * u:]),
                                                     context["rotation_targets"])
            metrics.update(rotation_loss=rotation.detach(), rotation_acc=accuracy)
            loss = loss + self.options.rotation_weight * rotation
        return loss
