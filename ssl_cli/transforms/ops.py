"""Batched image augmentation on the training device: the operations (ssl_cli.transforms.views names them).

Images stay uint8 [B, C, H, W] tensors on the device (CPU or CUDA). Every function here transforms a
whole batch at once, but each image draws its own random parameters: semi-supervised methods such as
FixMatch rely on the views of different images (and of the same image in different steps) being
independent. All randomness comes from the `generator` argument, a `torch.Generator` on the images'
device, so a run is reproducible from its seed.

Views:
  weak_augment     flip + reflect-padded random translation (FixMatch's weak view)
  rand_augment     FixMatch's RandAugment over the 14 ops in OPS
  cutout           one grey square per image
  strong_augment   weak_augment -> rand_augment -> cutout (FixMatch's strong view)
  classic_augment  Keras-style rotation / shift / flips in a single affine warp
  rotate_quarter_turns  each image turned by its own multiple of 90° (ReMixMatch's rotation loss)
  all_quarter_turns  every image in all four turns (CRMatch's rotation loss)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_cli.core.errors import UserError

OPS: Tuple[str, ...] = (
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)

# Magnitude range of each op, in the units `apply_op` takes: blend factors for the enhance ops,
# bits for posterize, degrees for rotate, shear coefficient, threshold on the 0..255 scale for
# solarize, fraction of the side for translate. None: the op takes no magnitude.
OP_RANGES: Dict[str, Optional[Tuple[float, float]]] = {
    "autocontrast": None,
    "brightness": (0.05, 0.95),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "equalize": None,
    "identity": None,
    "posterize": (4, 8),
    "rotate": (-30.0, 30.0),
    "sharpness": (0.05, 0.95),
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 256.0),
    "translate_x": (-0.3, 0.3),
    "translate_y": (-0.3, 0.3),
}

# FixMatch fills the area that geometric ops uncover with grey (128).
GEOMETRIC_FILL = 128.0 / 255.0


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected a uint8 tensor of shape [B, C, H, W], got {got}")


def to_float(images_uint8: Tensor) -> Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1]."""
    return images_uint8.float().div_(255.0)


def to_uint8(images_float: Tensor) -> Tensor:
    """float in [0, 1] -> uint8, rounding to the nearest level."""
    return images_float.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)


def _randint(high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Integers uniform in [0, high), drawn from rand so CPU and CUDA use the same code path."""
    return (torch.rand(n, generator=generator, device=device) * high).long().clamp_(max=high - 1)


# --------------------------------------------------------------------------------------------------
# Weak view
# --------------------------------------------------------------------------------------------------


def _reflect(index: Tensor, size: int) -> Tensor:
    """Reflect out-of-range indices back into [0, size) without repeating the edge (like 'reflect'
    padding); valid for indices in [-(size - 1), 2 * (size - 1)]."""
    last = size - 1
    return last - (last - index.abs()).abs()


def weak_augment(images: Tensor, generator: torch.Generator, flip: bool = True, translate: float = 0.125) -> Tensor:
    """Per image: horizontal flip with probability 0.5 and a random shift of up to `translate` of
    each side (reflect padding, then a random crop back to H x W)."""
    _check_images(images)
    b, c, h, w = images.shape
    if b == 0:
        return images.clone()
    device = images.device
    # Reflect padding needs pad < side, hence the clamp (only matters for translate near 0.5).
    pad_h = min(round(translate * h), h - 1)
    pad_w = min(round(translate * w), w - 1)

    # Instead of padding and cropping, compute for every output pixel which source pixel the
    # pad+crop would have put there, and gather it. Rows and columns are independent, so two
    # 1-D index tables per image suffice and no padded copy of the batch is ever built.
    cols = torch.arange(w, device=device).expand(b, w)
    if pad_w > 0:
        dx = _randint(2 * pad_w + 1, b, generator, device)
        cols = _reflect(cols + (dx - pad_w)[:, None], w)
    if flip:
        # Mirroring the source columns is the same as flipping before the crop.
        mirrored = _rand(b, generator, device) < 0.5
        cols = torch.where(mirrored[:, None], (w - 1) - cols, cols)
    out = images
    if pad_h > 0:
        dy = _randint(2 * pad_h + 1, b, generator, device)
        rows = _reflect(torch.arange(h, device=device) + (dy - pad_h)[:, None], h)
        out = torch.gather(out, 2, rows[:, None, :, None].expand(b, c, h, w))
    if pad_w > 0 or flip:
        out = torch.gather(out, 3, cols[:, None, None, :].expand(b, c, h, w))
    return out.clone() if out is images else out


# --------------------------------------------------------------------------------------------------
# RandAugment ops: each takes float images [b, C, H, W] in [0, 1] and magnitudes [b]
# --------------------------------------------------------------------------------------------------


def _per_image(m: Tensor) -> Tensor:
    return m.view(-1, 1, 1, 1)


_LUMA_WEIGHTS: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def _grayscale(x: Tensor) -> Tensor:
    """[b, 1, H, W] luma with PIL's ITU-R 601-2 weights; a 1-channel image is its own grayscale."""
    if x.shape[1] == 1:
        return x
    key = (x.device, x.dtype)
    if key not in _LUMA_WEIGHTS:  # made once per device: a host-to-device copy would sync on every call
        _LUMA_WEIGHTS[key] = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1).to(x.device)
    return (x * _LUMA_WEIGHTS[key]).sum(dim=1, keepdim=True)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    # PIL ImageEnhance: factor 0 gives the degenerate image, 1 the original, >1 extrapolates.
    return (degenerate + _per_image(factor) * (x - degenerate)).clamp_(0.0, 1.0)


def _identity(x: Tensor, m: Tensor) -> Tensor:
    return x.clone()


def _brightness(x: Tensor, m: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x), x, m)


def _color(x: Tensor, m: Tensor) -> Tensor:
    return _blend(_grayscale(x), x, m)


def _contrast(x: Tensor, m: Tensor) -> Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean, x, m)


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    b, c, h, w = x.shape
    degenerate = x.clone()
    if h >= 3 and w >= 3:
        kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
        kernel[1, 1] = 5.0
        kernel = (kernel / 13.0).view(1, 1, 3, 3)
        # Every channel is smoothed with the same kernel, so fold channels into the batch.
        smooth = F.conv2d(x.reshape(b * c, 1, h, w), kernel).view(b, c, h - 2, w - 2)
        # PIL keeps the one-pixel border of the original image.
        degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, m)


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    spread = hi - lo
    # A flat channel has nothing to stretch; PIL leaves it unchanged.
    flat = spread <= 0
    scale = torch.where(flat, torch.ones_like(spread), 1.0 / spread.clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    b, c, h, w = x.shape
    n = b * c
    levels = (x * 255.0).round_().clamp_(0, 255).long().reshape(n, h * w)
    # One 256-bin histogram per (image, channel): offset each row's levels into its own bin range
    # so a single bincount builds all of them.
    offsets = torch.arange(n, device=x.device).mul_(256)[:, None]
    flat = (levels + offsets).view(-1)
    if x.device.type == "cpu":
        hist = torch.bincount(flat, minlength=n * 256).view(n, 256)
    else:  # bincount reads its input's maximum back to the host (a sync); scatter_add counts the same
        hist = torch.zeros(n * 256, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        hist = hist.view(n, 256)
    cum_before = hist.cumsum(dim=1) - hist  # pixels strictly below each level
    # PIL's equalize spreads all pixels except those of the top level over 0..255.
    top = levels.amax(dim=1, keepdim=True)
    denom = h * w - hist.gather(1, top)  # [n, 1]
    # lut = round(cum_before * 255 / denom), in integers so it is exact. PIL floors the step to an
    # integer, which turns equalize into a no-op for images under 255 pixels; the exact ratio works
    # for the small images (8x8) this project also handles.
    safe = denom.clamp_min(1)
    lut = (2 * 255 * cum_before + safe).div_(2 * safe, rounding_mode="floor").clamp_(max=255)
    # A single-valued channel (denom 0) is left as it is.
    lut = torch.where(denom > 0, lut, torch.arange(256, device=x.device).expand(n, 256))
    return lut.gather(1, levels).view(b, c, h, w).float().div_(255.0)


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    # Keeping the top `bits` bits = rounding each level down to a multiple of 2**(8 - bits).
    step = torch.pow(2.0, 8.0 - m.round().clamp(1, 8)).to(x.dtype)
    step = _per_image(step)
    levels = (x * 255.0).round_()
    return (torch.div(levels, step, rounding_mode="floor") * step).div_(255.0)


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    levels = (x * 255.0).round_()
    return torch.where(levels >= _per_image(m), 255.0 - levels, levels).div_(255.0)


# Geometric ops are described by affine matrices in centred pixel coordinates, mapping an output
# pixel to the input pixel it samples from: p_in = A @ p_out + t. Each builder returns
# (a00, a01, a10, a11, tx, ty) per image.
AffineParts = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _rotate_parts(m: Tensor, h: int, w: int) -> AffineParts:
    rad = m * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(m)
    return cos, -sin, sin, cos, zero, zero


def _shear_x_parts(m: Tensor, h: int, w: int) -> AffineParts:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return one, m, zero, one, zero, zero


def _shear_y_parts(m: Tensor, h: int, w: int) -> AffineParts:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return one, zero, m, one, zero, zero


def _translate_x_parts(m: Tensor, h: int, w: int) -> AffineParts:
    # Positive magnitude moves the content right.
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return one, zero, zero, one, -m * w, zero


def _translate_y_parts(m: Tensor, h: int, w: int) -> AffineParts:
    # Positive magnitude moves the content down.
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return one, zero, zero, one, zero, -m * h


def _theta(parts: AffineParts, h: int, w: int) -> Tensor:
    """Pixel-space affine parts -> [b, 2, 3] matrices in affine_grid's normalised coordinates.

    affine_grid's coordinates run -1..1 along each side, so on a non-square image one normalised
    unit is a different number of pixels in x and y; converting keeps rotations rigid.
    """
    a00, a01, a10, a11, tx, ty = parts
    row0 = torch.stack([a00, a01 * (h / w), tx * (2.0 / w)], dim=-1)
    row1 = torch.stack([a10 * (w / h), a11, ty * (2.0 / h)], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def _warp(x: Tensor, theta: Tensor, fill: float = GEOMETRIC_FILL) -> Tensor:
    """Nearest-neighbour affine warp; uncovered pixels become `fill`."""
    if x.shape[0] == 0:
        return x.clone()  # affine_grid rejects an empty batch
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # grid_sample only fills with zeros, so shift the image by -fill and back.
    out = F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.add_(fill).clamp_(0.0, 1.0)


_GEOMETRIC: Dict[str, Callable[[Tensor, int, int], AffineParts]] = {
    "rotate": _rotate_parts,
    "shear_x": _shear_x_parts,
    "shear_y": _shear_y_parts,
    "translate_x": _translate_x_parts,
    "translate_y": _translate_y_parts,
}

_PIXEL_OPS: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "autocontrast": _autocontrast,
    "brightness": _brightness,
    "color": _color,
    "contrast": _contrast,
    "equalize": _equalize,
    "identity": _identity,
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": _solarize,
}


def _geometric_op(parts_fn: Callable[[Tensor, int, int], AffineParts]) -> Callable[[Tensor, Tensor], Tensor]:
    def op(x: Tensor, m: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return _warp(x, _theta(parts_fn(m.to(x.dtype), h, w), h, w))

    return op


# The op table: name -> function(images_float [b, C, H, W], magnitudes [b]) -> images_float.
OP_FUNCTIONS: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    name: _PIXEL_OPS[name] if name in _PIXEL_OPS else _geometric_op(_GEOMETRIC[name]) for name in OPS
}


def apply_op(name: str, images_float: Tensor, magnitudes: Union[Tensor, float, None] = None) -> Tensor:
    """Apply one named op to float images [b, C, H, W] in [0, 1]; `magnitudes` is one value per image
    (or a scalar for all) in the units of OP_RANGES. Returns a new tensor."""
    if name not in OP_FUNCTIONS:
        raise ValueError(f"unknown augmentation op {name!r}; allowed: {', '.join(OPS)}")
    b = images_float.shape[0]
    if magnitudes is None:
        magnitudes = 0.0
    m = torch.as_tensor(magnitudes, dtype=torch.float32, device=images_float.device).expand(b)
    return OP_FUNCTIONS[name](images_float, m)


def _magnitudes(name: str, u: Tensor) -> Tensor:
    """Map uniform [0, 1) draws to the op's magnitude range."""
    bounds = OP_RANGES[name]
    if bounds is None:
        return torch.zeros_like(u)
    lo, hi = bounds
    if name == "posterize":
        # Integer bits, each of lo..hi equally likely.
        return (lo + u * (hi - lo + 1)).floor_().clamp_(lo, hi)
    return lo + u * (hi - lo)


def _rand_augment_round_sync_free(x: Tensor, choice: Tensor, u: Tensor, names: Sequence[str]) -> Tensor:
    """One RandAugment round without reading anything back to the host: each op transforms the whole
    batch and `torch.where` keeps, per image, the result of the op it drew (choice -1: none)."""
    h, w = x.shape[-2:]
    out = x
    for k, name in enumerate(names):
        if name in _PIXEL_OPS and name != "identity":
            out = torch.where(_per_image(choice == k), _PIXEL_OPS[name](x, _magnitudes(name, u)), out)
    geometric = [k for k, name in enumerate(names) if name in _GEOMETRIC]
    if geometric:
        # One warp for all geometric ops: each image gets its own op's matrix (identity if it drew none).
        one, zero = torch.ones_like(u), torch.zeros_like(u)
        parts = [one, zero, zero, one, zero, zero]
        warped = torch.zeros_like(choice, dtype=torch.bool)
        for k in geometric:
            chosen = choice == k
            op_parts = _GEOMETRIC[names[k]](_magnitudes(names[k], u), h, w)
            parts = [torch.where(chosen, new, old) for new, old in zip(op_parts, parts)]
            warped |= chosen
        out = torch.where(_per_image(warped), _warp(x, _theta(tuple(parts), h, w)), out)
    return out


def rand_augment(
    images: Tensor,
    generator: torch.Generator,
    num_ops: int = 2,
    apply_prob: float = 0.5,
    ops: Optional[Sequence[str]] = None,
    sync_free: Optional[bool] = None,
) -> Tensor:
    """FixMatch's RandAugment: each image draws `num_ops` ops (with replacement) and applies each
    with probability `apply_prob` at a magnitude drawn uniformly in the op's range.

    Two ways to compute the same result: on the CPU, the images of each op are grouped and only they
    are transformed (grouping reads the op counts on the host); elsewhere (`sync_free`, the default off
    the CPU) every op runs on the whole batch and each image keeps its own op's result, so the step
    never waits for the device."""
    _check_images(images)
    names = tuple(OPS if ops is None else ops)
    unknown = [n for n in names if n not in OP_FUNCTIONS]
    if unknown or not names:
        raise ValueError(f"unknown augmentation ops {unknown}; allowed: {', '.join(OPS)}")
    b, _, h, w = images.shape
    if b == 0 or num_ops <= 0:
        return images.clone()
    device = images.device
    x = to_float(images)
    geometric_ids = [k for k, n in enumerate(names) if n in _GEOMETRIC]
    if sync_free is None:
        sync_free = device.type != "cpu"

    for _ in range(num_ops):
        choice = _randint(len(names), b, generator, device)
        active = _rand(b, generator, device) < apply_prob
        u = _rand(b, generator, device)
        if sync_free:
            x = _rand_augment_round_sync_free(x, torch.where(active, choice, torch.full_like(choice, -1)), u, names)
            continue
        # -1 marks images that skip this round. Sorting by op groups the images of each op into
        # one contiguous run of `order`; the counts come to the host in one transfer (one device
        # sync per round instead of one per op).
        choice = torch.where(active, choice, torch.full_like(choice, -1))
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice + 1, minlength=len(names) + 1).tolist()
        ends = list(itertools.accumulate(counts))  # ends[0] = number of skipping images
        groups = {k: order[ends[k] : ends[k + 1]] for k in range(len(names)) if counts[k + 1] > 0}

        for k, idx in groups.items():
            name = names[k]
            if name in _PIXEL_OPS and name != "identity":
                x[idx] = _PIXEL_OPS[name](x[idx], _magnitudes(name, u[idx]))

        # All geometric ops of this round share one grid_sample call: each image gets the matrix
        # of its own op, then the images that drew any geometric op are warped together.
        geo_ids = [k for k in geometric_ids if k in groups]
        if geo_ids:
            idx = torch.cat([groups[k] for k in geo_ids])
            per_op = [_GEOMETRIC[names[k]](_magnitudes(names[k], u[groups[k]]), h, w) for k in geo_ids]
            parts = tuple(torch.cat(column) for column in zip(*per_op))
            x[idx] = _warp(x[idx], _theta(parts, h, w))

    return to_uint8(x)


# --------------------------------------------------------------------------------------------------
# Cutout, strong view, classic view
# --------------------------------------------------------------------------------------------------


def cutout(images: Tensor, generator: torch.Generator, max_size: float = 0.5, fill: int = 127) -> Tensor:
    """Per image, set one square (side uniform in 1..max_size*min(H, W), random centre, clipped at
    the borders) to `fill`."""
    _check_images(images)
    b, _, h, w = images.shape
    longest = int(max_size * min(h, w))
    if b == 0 or longest < 1:
        return images.clone()
    device = images.device
    side = 1 + _randint(longest, b, generator, device)
    cy = _randint(h, b, generator, device)
    cx = _randint(w, b, generator, device)
    y0 = cy - side // 2
    x0 = cx - side // 2
    # Comparing coordinates against each image's box gives the mask without any per-image slicing;
    # parts of the box outside the image simply match no pixel.
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])  # [b, H]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])  # [b, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [b, 1, H, W]
    return images.masked_fill(mask, int(fill))


def strong_augment(
    images: Tensor,
    generator: torch.Generator,
    flip: bool = True,
    translate: float = 0.125,
    num_ops: int = 2,
    apply_prob: float = 0.5,
    cutout_size: float = 0.5,
) -> Tensor:
    """FixMatch's strong view: weak_augment, then rand_augment, then cutout."""
    out = weak_augment(images, generator, flip=flip, translate=translate)
    out = rand_augment(out, generator, num_ops=num_ops, apply_prob=apply_prob)
    return cutout(out, generator, max_size=cutout_size)


def classic_augment(
    images: Tensor,
    generator: torch.Generator,
    rotation: float = 20.0,
    shift: float = 0.2,
    hflip: bool = True,
    vflip: bool = True,
) -> Tensor:
    """Keras-style: per image a rotation in +-`rotation` degrees, a shift of up to +-`shift` of each
    side, and horizontal / vertical flips with probability 0.5 each, in one bilinear warp."""
    _check_images(images)
    b, _, h, w = images.shape
    if b == 0:
        return images.clone()
    device = images.device
    angle = (2.0 * _rand(b, generator, device) - 1.0) * (rotation * math.pi / 180.0)
    tx = (2.0 * _rand(b, generator, device) - 1.0) * (shift * w)
    ty = (2.0 * _rand(b, generator, device) - 1.0) * (shift * h)
    ones = torch.ones(b, device=device)
    fx = torch.where(_rand(b, generator, device) < 0.5, -ones, ones) if hflip else ones
    fy = torch.where(_rand(b, generator, device) < 0.5, -ones, ones) if vflip else ones
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rotation after the flips: A = R @ diag(fx, fy), so all four transforms cost one warp.
    parts = (cos * fx, -sin * fy, sin * fx, cos * fy, tx, ty)
    x = to_float(images)
    grid = F.affine_grid(_theta(parts, h, w), list(x.shape), align_corners=False)
    # Keras fills uncovered pixels from the nearest edge (fill_mode="nearest") = "border" here.
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return to_uint8(out)


_YIQ: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}


def _hue_shift(x: Tensor, turns: Tensor) -> Tensor:
    """Rotates each RGB image's hue by `turns` of a full circle, as a rotation about the grey axis.

    This is the YIQ-space hue rotation: exact for the chroma plane and batched, unlike an HSV round trip.
    """
    angle = turns * (2.0 * math.pi)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    key = (x.device, x.dtype)
    if key not in _YIQ:  # made once per device: a host-to-device copy would sync on every call
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              dtype=torch.float64)
        _YIQ[key] = (to_yiq.to(x.dtype).to(x.device), torch.linalg.inv(to_yiq).to(x.dtype).to(x.device))
    to_yiq, to_rgb = _YIQ[key]
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotate = torch.cat([torch.cat([one, zero, zero], 2), torch.cat([zero, cos, -sin], 2),
                        torch.cat([zero, sin, cos], 2)], 1)  # [b, 3, 3] on (Y, I, Q)
    matrix = to_rgb @ rotate @ to_yiq
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp_(0.0, 1.0)


def contrastive_augment(
    images: Tensor,
    generator: torch.Generator,
    crop_scale: Tuple[float, float] = (0.2, 1.0),
    flip: bool = True,
    jitter: float = 0.4,
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
) -> Tensor:
    """SimCLR's view, per image: random resized crop (area share in `crop_scale`, aspect ratio 3/4..4/3,
    bilinear), horizontal flip, colour jitter with probability `jitter_prob` (brightness, contrast and
    saturation factors in [1 - jitter, 1 + jitter], hue shift up to jitter / 4 of a turn), then
    grayscale with probability `grayscale_prob`."""
    _check_images(images)
    b, c, h, w = images.shape
    if b == 0:
        return images.clone()
    device = images.device
    lo, hi = crop_scale
    area = lo + (hi - lo) * _rand(b, generator, device)
    log_ratio = (2.0 * _rand(b, generator, device) - 1.0) * math.log(4.0 / 3.0)
    ratio = log_ratio.exp()
    # Crop side shares, clamped to the image; the crop's centre is uniform over where it fits.
    sw = (area * ratio).sqrt().clamp(max=1.0)
    sh = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1.0 - sw) * (2.0 * _rand(b, generator, device) - 1.0) * (w / 2.0)
    cy = (1.0 - sh) * (2.0 * _rand(b, generator, device) - 1.0) * (h / 2.0)
    ones = torch.ones(b, device=device)
    fx = torch.where(_rand(b, generator, device) < 0.5, -ones, ones) if flip else ones
    zero = torch.zeros_like(sw)
    theta = _theta((sw * fx, zero, zero, sh, cx, cy), h, w)
    x = F.grid_sample(to_float(images), F.affine_grid(theta, [b, c, h, w], align_corners=False),
                      mode="bilinear", padding_mode="border", align_corners=False)
    if jitter > 0:
        factor = lambda: 1.0 + jitter * (2.0 * _rand(b, generator, device) - 1.0)  # noqa: E731
        brightness, contrast, saturation = factor(), factor(), factor()
        hue = (jitter / 4.0) * (2.0 * _rand(b, generator, device) - 1.0)
        jittered = _contrast(_brightness(x, brightness), contrast)
        if c == 3:
            jittered = _hue_shift(_color(jittered, saturation), hue)
        apply = _per_image(_rand(b, generator, device) < jitter_prob)
        x = torch.where(apply, jittered, x)
    if c == 3 and grayscale_prob > 0:
        gray = _per_image(_rand(b, generator, device) < grayscale_prob)
        x = torch.where(gray, _grayscale(x).expand_as(x), x)
    return to_uint8(x)


# --------------------------------------------------------------------------------------------------
# Quarter turns (rotation prediction)
# --------------------------------------------------------------------------------------------------


def _four_turns(images: Tensor) -> Tensor:
    """[4, B, ...]: the whole batch turned counter-clockwise by 0°, 90°, 180° and 270°, square images."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"quarter turns need square images, got {tuple(images.shape[-2:])}")
    return torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])


def check_rotatable(image_size: Tuple[int, int], method: str) -> None:
    """Quarter turns keep a batch's shape only for square images: one line naming the way out otherwise."""
    height, width = image_size
    if height != width:
        raise UserError(f"method={method} turns images by 90° for its rotation loss and needs square images, "
                        f"got {height}x{width}: resize them, or set method.rotation_weight=0")


def rotate_quarter_turns(images: Tensor, turns: Tensor) -> Tensor:
    """Image i turned counter-clockwise by turns[i] × 90° (turns in 0..3), any dtype, square images.

    All four turns of the batch are made at once and each image picks its own: four whole-batch
    rotations and one gather instead of a loop over images.
    """
    return _four_turns(images)[turns, torch.arange(images.shape[0], device=images.device)]


def all_quarter_turns(images: Tensor) -> Tuple[Tensor, Tensor]:
    """Every image in all four turns, (turned [4B, ...], turns [4B]): the batch at 0°, then at 90°, 180°,
    270° counter-clockwise (CRMatch's RotNet batch, in USB's order), and each row's number of turns."""
    turns = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return _four_turns(images).flatten(0, 1), turns
