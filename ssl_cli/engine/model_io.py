"""A trained model without its training data: `load_model(run_dir_or_checkpoint)`.

Every checkpoint of format 2 carries a model card: the backbone and its options, the input channels and
size, the normalisation mean/std and the class names. That is enough to rebuild the network, load the
weights it was evaluated with (the EMA weights where the run kept an EMA) and apply it to new images.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch
from PIL import Image

from ssl_cli.core.errors import UserError
from ssl_cli.data.files import decode_image
from ssl_cli.engine.checkpoint import WRITTEN_BY, find_checkpoint, load_checkpoint
from ssl_cli.engine.outputs import LAST
from ssl_cli.engine.precision import PRECISIONS, autocast, resolve_precision
from ssl_cli.models import BACKBONES, build_backbone
from ssl_cli.transforms.views import Normalizer

ImageLike = Union[str, Path, Image.Image]


class TrainedModel(torch.nn.Module):
    """A trained classifier with its preprocessing. `model(images)` -> (class names, probabilities).

    `precision` ("fp32" or "bf16") is how calls compute (bf16: autocast around the network); the weights
    stay float32 either way, so `model.network` exports as a float32 model.
    """

    def __init__(self, network: torch.nn.Module, card: dict, source: Path, precision: str = "fp32"):
        super().__init__()
        self.precision = precision
        self.network = network.eval()
        self.card, self.source = card, source
        self.class_names: List[str] = list(card["class_names"])
        self.channels: int = int(card["channels"])
        self.image_size: Tuple[int, int] = tuple(card["image_size"])
        self.resize: str = card.get("resize", "crop")  # checkpoints from before dataset.resize: crop
        self.normalize = Normalizer(card["mean"], card["std"])

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def probabilities(self, images_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities [N, classes] of uint8 images [N, C, H, W] at the model's input size."""
        if tuple(images_uint8.shape[1:]) != (self.channels, *self.image_size):
            raise UserError(f"images of shape {tuple(images_uint8.shape[1:])} given; this model takes "
                            f"{self.channels}x{self.image_size[0]}x{self.image_size[1]} (use model.preprocess)")
        out = []
        for start in range(0, len(images_uint8), batch_size):
            x = self.normalize(images_uint8[start:start + batch_size].to(self.device))
            with autocast(self.precision, self.device):
                logits = self.network(x).logits
            out.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """One image (a path or a PIL image) as the model's uint8 input [C, H, W]: EXIF orientation,
        the model's channels, shorter side to the input size, centre crop (ssl_cli.data.files)."""
        return decode_image(image, self.channels, self.image_size, self.resize)

    def forward(self, images: Sequence[ImageLike]) -> Tuple[List[str], torch.Tensor]:
        """Predicted class names and class probabilities [N, classes] of a list of PIL images or paths."""
        batch = torch.stack([self.preprocess(i) for i in images]) if len(images) else \
            torch.zeros(0, self.channels, *self.image_size, dtype=torch.uint8)
        probs = self.probabilities(batch)
        return [self.class_names[i] for i in probs.argmax(dim=1).tolist()], probs


def load_model(source, device: Union[str, torch.device] = "cpu", precision: str = "auto") -> TrainedModel:
    """The model a run trained (the weights it evaluated), rebuilt from its checkpoint alone.

    `precision` as `trainer.precision` (auto: bf16 on CUDA and on CPUs with native bf16, else fp32).
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = find_checkpoint(source, stage="finetune")
    state = load_checkpoint(path, map_location="cpu")
    card = state.get("model_card") or {}
    if state.get("upgraded_from") or not card.get("class_names"):
        version = state.get("upgraded_from", 1)
        raise UserError(f"{path} was written by {WRITTEN_BY.get(version, 'an older ssl-cli')} (checkpoint format "
                        f"{version}), which kept no class names or normalisation; resume it once (ssl-train "
                        f"resume={path.parent}), which rewrites its {LAST} in the current format")
    options = BACKBONES.options(card["backbone"])(**card["backbone_options"])
    network = build_backbone(card["backbone"], options, card["channels"], card["num_classes"], card["image_size"])
    weights = state["ema"] if card.get("evaluated_weights") == "ema" and state.get("ema") else state["model"]
    network.load_state_dict(weights)
    device = torch.device(device)
    return TrainedModel(network, card, path, resolve_precision(precision, device)).to(device)

