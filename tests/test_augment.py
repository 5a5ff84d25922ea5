import pytest
import torch

from ssl_cli.core.errors import UserError
from ssl_cli.transforms.ops import (
    OP_RANGES,
    OPS,
    apply_op,
    classic_augment,
    cutout,
    rand_augment,
    strong_augment,
    to_float,
    weak_augment,
)
from ssl_cli.transforms.views import AugmentOptions, Augmenter, Normalizer

AUGMENTS = {
    "weak": weak_augment,
    "rand": rand_augment,
    "cutout": cutout,
    "strong": strong_augment,
    "classic": classic_augment,
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_images(b, c, h, w, seed=1):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen(seed))


def distinct(batch):
    return len({bytes(img.flatten().tolist()) for img in batch})


# --- shapes, dtypes, reproducibility ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(AUGMENTS))
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (5, 3, 32, 32), (4, 3, 12, 20), (3, 1, 8, 96), (0, 3, 32, 32)])
def test_shape_and_dtype_preserved(name, shape):
    images = random_images(*shape)
    out = AUGMENTS[name](images, gen())
    assert out.dtype == torch.uint8
    assert out.shape == images.shape


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_same_seed_same_output_different_seed_different_output(name):
    images = random_images(16, 3, 24, 20)
    first = AUGMENTS[name](images, gen(3))
    again = AUGMENTS[name](images, gen(3))
    other = AUGMENTS[name](images, gen(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_input_not_modified(name):
    images = random_images(8, 3, 16, 16)
    before = images.clone()
    AUGMENTS[name](images, gen())
    assert torch.equal(images, before)


def test_every_op_but_identity_changes_an_image():
    # Mid-grey noise (levels 40..200, not spanning 0..255, so autocontrast and equalize have work to do).
    x = to_float(torch.randint(40, 201, (1, 3, 12, 12), dtype=torch.uint8, generator=gen(5)))
    changed = set()
    for name in OPS:
        ends = OP_RANGES[name] or (0.0,)
        if any(not torch.allclose(apply_op(name, x, float(m)), x, atol=1e-3) for m in ends):
            changed.add(name)
    assert changed == set(OPS) - {"identity"}


def test_all_ops_run_on_every_shape():
    for shape in [(3, 1, 8, 8), (3, 3, 12, 20), (0, 3, 8, 8)]:
        x = to_float(random_images(*shape))
        for name in OPS:
            lo, hi = OP_RANGES[name] or (0.0, 0.0)
            out = apply_op(name, x, torch.linspace(lo, hi, shape[0]))
            assert out.shape == x.shape and out.dtype == torch.float32, name
            assert out.numel() == 0 or (out.min() >= 0 and out.max() <= 1), name


# --- per-image randomness ---------------------------------------------------------------------------


def same_image_batch(b=64, c=3, h=32, w=32):
    return random_images(1, c, h, w).expand(b, c, h, w).contiguous()


def test_weak_augment_randomises_per_image():
    out = weak_augment(same_image_batch(), gen())
    assert distinct(out) >= 4


def test_rand_augment_randomises_per_image():
    out = rand_augment(same_image_batch(), gen(), num_ops=2, apply_prob=1.0)
    assert distinct(out) >= 30


def test_cutout_randomises_per_image():
    out = cutout(same_image_batch(), gen())
    assert distinct(out) >= 30


def test_strong_augment_randomises_per_image():
    out = strong_augment(same_image_batch(), gen())
    assert distinct(out) >= 30


def test_classic_augment_randomises_per_image():
    out = classic_augment(same_image_batch(), gen())
    assert distinct(out) >= 30


def test_rand_augment_magnitudes_per_image_and_apply_prob():
    images = torch.full((200, 3, 8, 8), 200, dtype=torch.uint8)
    out = rand_augment(images, gen(), num_ops=1, apply_prob=1.0, ops=("brightness",))
    values = out[:, 0, 0, 0].float()
    # Each image is scaled by its own factor in [0.05, 0.95]; the image stays uniform.
    assert torch.equal(out, out[:, :1, :1, :1].expand_as(out))
    assert values.min() >= 9 and values.max() <= 191
    assert values.min() <= 30 and values.max() >= 170  # and the factors cover the whole range
    assert len(values.unique()) >= 50
    half = rand_augment(images, gen(), num_ops=1, apply_prob=0.5, ops=("brightness",))
    changed = (half != images).flatten(1).any(1).sum()
    assert 60 <= changed <= 140
    assert torch.equal(rand_augment(images, gen(), num_ops=3, apply_prob=1.0, ops=("identity",)), images)


def test_rand_augment_apply_prob_zero_is_identity():
    images = random_images(8, 3, 16, 16)
    assert torch.equal(rand_augment(images, gen(), num_ops=3, apply_prob=0.0), images)


def test_rand_augment_rejects_unknown_op():
    with pytest.raises(ValueError, match="allowed"):
        rand_augment(random_images(2, 3, 8, 8), gen(), ops=("identity", "blur"))


# --- individual ops against hand-computed results ---------------------------------------------------


def tiny(values, channels=1):
    t = torch.tensor(values, dtype=torch.float32) / 255.0
    return t.expand(1, channels, *t.shape).contiguous()


def levels(x):
    return (x * 255).round().long()


def test_identity_unchanged():
    x = tiny([[0, 10, 200], [255, 7, 90]], channels=3)
    assert torch.equal(apply_op("identity", x), x)


def test_brightness_scales_pixel_values():
    x = tiny([[0, 100, 200], [255, 40, 10]], channels=3)
    out = apply_op("brightness", x, 0.5)
    assert torch.allclose(out, x * 0.5)


def test_color_is_identity_like_for_grayscale():
    x = tiny([[0, 100, 200], [255, 40, 10]], channels=1)
    assert torch.allclose(apply_op("color", x, 0.1), x, atol=1e-6)
    # For colour images factor 0 gives the PIL luma in every channel.
    rgb = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])
    assert torch.allclose(apply_op("color", rgb, 0.0), torch.full((1, 3, 1, 1), 0.299))


def test_contrast_blends_towards_mean():
    x = tiny([[0, 100], [200, 100]])
    out = apply_op("contrast", x, 0.5)
    mean = 100 / 255
    assert torch.allclose(out, mean + 0.5 * (x - mean))


def test_sharpness_factor_zero_smooths_interior_only():
    x = tiny([[0, 0, 0], [0, 130, 0], [0, 0, 0]])
    out = levels(apply_op("sharpness", x, 0.0))
    # Centre: (5 * 130) / 13 = 50; the border is kept.
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 50, 0], [0, 0, 0]]


def test_solarize_inverts_pixels_at_or_above_threshold():
    x = tiny([[0, 99, 100, 101], [150, 255, 3, 100]])
    out = levels(apply_op("solarize", x, 100.0))
    assert out[0, 0].tolist() == [[0, 99, 155, 154], [105, 0, 3, 155]]
    assert torch.equal(apply_op("solarize", x, 256.0), x)


def test_posterize_four_bits_clears_low_bits():
    values = [[0, 15, 16, 31], [200, 255, 129, 7]]
    out = levels(apply_op("posterize", tiny(values), 4.0))
    assert out[0, 0].tolist() == [[v & 0xF0 for v in row] for row in values]
    assert torch.equal(levels(apply_op("posterize", tiny(values), 8.0)), levels(tiny(values)))


def test_autocontrast_stretches_each_channel():
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.3]], [[0.1, 0.1], [0.5, 0.9]], [[0.5, 0.5], [0.5, 0.5]]]])
    out = apply_op("autocontrast", x)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.tensor([[0.0, 0.0], [0.5, 1.0]]), atol=1e-6)
    assert torch.equal(out[0, 2], x[0, 2])  # a flat channel stays as it is


@pytest.mark.parametrize("size", [4, 32])
def test_equalize_two_values_span_full_range(size):
    x = torch.full((1, 3, size, size), 50 / 255)
    x[:, :, : size // 2] = 200 / 255
    out = levels(apply_op("equalize", x))
    assert set(out.unique().tolist()) == {0, 255}
    assert (out[:, :, : size // 2] == 255).all() and (out[:, :, size // 2 :] == 0).all()


def test_equalize_is_per_image_and_channel():
    flat = torch.full((1, 1, 4, 4), 128 / 255)
    two = torch.full((1, 1, 4, 4), 0.2)
    two[..., :2] = 0.3
    out = apply_op("equalize", torch.cat([flat, two]))
    assert torch.equal(out[0], flat[0])  # single value: unchanged
    assert set(levels(out[1]).unique().tolist()) == {0, 255}


def test_translate_x_shifts_columns():
    x = tiny([[float(10 * (j + 1)) for j in range(10)]] * 4, channels=3)
    out = levels(apply_op("translate_x", x, 0.2))  # 2 px to the right
    assert torch.equal(out[..., 2:], levels(x)[..., :-2])
    assert (out[..., :2] == 128).all()  # uncovered columns are grey
    back = levels(apply_op("translate_x", x, -0.2))
    assert torch.equal(back[..., :-2], levels(x)[..., 2:])


def test_translate_y_shifts_rows():
    x = tiny([[float(20 * (i + 1))] * 6 for i in range(10)])
    out = levels(apply_op("translate_y", x, 0.3))  # 3 px down
    assert torch.equal(out[..., 3:, :], levels(x)[..., :-3, :])


def test_rotate_is_rigid_on_non_square_images():
    h, w = 6, 10
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / 255
    out = levels(apply_op("rotate", x, 90.0))
    src = levels(x)[0, 0]
    checked = 0
    for i in range(h):
        for j in range(w):
            # Centred pixel coordinates; a 90 degree rotation sends (x, y) to (-y, x) exactly.
            xo, yo = j - (w - 1) / 2, i - (h - 1) / 2
            jj, ii = -yo + (w - 1) / 2, xo + (h - 1) / 2
            if 0 <= ii < h and 0 <= jj < w:
                assert out[0, 0, i, j] == src[int(ii), int(jj)]
                checked += 1
    assert checked >= 20


def test_shear_x_shifts_rows_by_their_offset_from_centre():
    h, w = 5, 12
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) / 255
    out = levels(apply_op("shear_x", x, 1.0))
    src = levels(x)[0, 0]
    # Row i samples from column j + (i - 2): the middle row is unchanged, the others slide.
    assert torch.equal(out[0, 0, 2], src[2])
    assert torch.equal(out[0, 0, 3, :-1], src[3, 1:])
    assert torch.equal(out[0, 0, 0, 2:], src[0, :-2])


def test_apply_op_rejects_unknown_name():
    with pytest.raises(ValueError, match="allowed"):
        apply_op("blur", torch.zeros(1, 1, 8, 8))


# --- weak, cutout, classic ----------------------------------------------------------------------------


def test_weak_without_flip_or_translate_is_identity():
    images = random_images(8, 3, 16, 12)
    assert torch.equal(weak_augment(images, gen(), flip=False, translate=0.0), images)


def test_weak_flip_only_gives_image_or_mirror():
    images = same_image_batch(b=32, h=10, w=14)
    out = weak_augment(images, gen(), flip=True, translate=0.0)
    mirror = images.flip(-1)
    is_same = (out == images).flatten(1).all(1)
    is_mirror = (out == mirror).flatten(1).all(1)
    assert (is_same | is_mirror).all()
    assert is_same.any() and is_mirror.any()


def test_weak_translate_is_a_reflected_crop():
    images = random_images(16, 3, 16, 24)
    out = weak_augment(images, gen(), flip=False, translate=0.125)
    padded = torch.nn.functional.pad(images.float(), (3, 3, 2, 2), mode="reflect")
    for img, res in zip(padded, out.float()):
        crops = [img[:, dy : dy + 16, dx : dx + 24] for dy in range(5) for dx in range(7)]
        assert any(torch.equal(c, res) for c in crops)


def test_cutout_sets_one_clipped_square():
    images = torch.zeros(50, 1, 20, 20, dtype=torch.uint8)
    out = cutout(images, gen(), max_size=0.5, fill=127)
    assert set(out.unique().tolist()) <= {0, 127}
    areas = (out == 127).flatten(1).sum(1)
    assert len(areas.unique()) >= 10  # each image draws its own size
    assert areas.max() > 25  # sides reach well past half of max_size * 20 = 10
    for img in out[:, 0]:
        rows = (img == 127).any(1).nonzero().flatten()
        cols = (img == 127).any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 10 and 1 <= len(cols) <= 10
        # A filled rectangle: exactly the product of its row and column ranges.
        assert (img == 127).sum() == len(rows) * len(cols)
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1))
    assert torch.equal(cutout(images, gen(), max_size=0.0), images)


def test_classic_without_motion_or_flips_is_identity():
    images = random_images(6, 3, 12, 20)
    out = classic_augment(images, gen(), rotation=0.0, shift=0.0, hflip=False, vflip=False)
    assert torch.equal(out, images)


def test_classic_flips_only_give_the_four_mirrors():
    images = same_image_batch(b=40, h=10, w=14)
    out = classic_augment(images, gen(), rotation=0.0, shift=0.0)
    mirrors = [images[0], images[0].flip(-1), images[0].flip(-2), images[0].flip(-1, -2)]
    seen = set()
    for img in out:
        matches = [k for k, m in enumerate(mirrors) if torch.equal(img, m)]
        assert matches
        seen.update(matches)
    assert seen == {0, 1, 2, 3}


# --- normalizer and augmenter ------------------------------------------------------------------------


def test_normalizer_hand_computed():
    norm = Normalizer(mean=[0.5, 0.0, 1.0], std=[0.25, 1.0, 0.5])
    images = torch.tensor([255, 51, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    out = norm(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([2.0, 0.2, -2.0]))
    assert "mean" in dict(norm.named_buffers())


@pytest.mark.parametrize("weak", ["none", "flip_translate", "classic"])
@pytest.mark.parametrize("strong", ["none", "randaugment", "classic"])
def test_augmenter_views(weak, strong):
    augment = Augmenter(AugmentOptions(weak=weak, strong=strong))
    images = random_images(8, 3, 16, 16)
    assert torch.equal(augment("none", images, gen()), images)
    for view, choice in (("weak", weak), ("strong", strong)):
        out = augment(view, images, gen())
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert torch.equal(out, images) == (choice == "none")
    with pytest.raises(UserError, match="unknown augmentation view 'medium'.*weak"):
        augment("medium", images, gen())


def test_augmenter_flip_off_means_no_flips():
    images = same_image_batch(b=32, h=10, w=10)
    augment = Augmenter(AugmentOptions(weak="classic", flip=False, rotation=0.0, shift=0.0))
    assert torch.equal(augment("weak", images, gen()), images)
    augment = Augmenter(AugmentOptions(weak="flip_translate", flip=False, translate=0.0))
    assert torch.equal(augment("weak", images, gen()), images)


def test_augmenter_rejects_unknown_choices():
    # The choices are declared on AugmentOptions: constructing the options refuses them.
    with pytest.raises(UserError, match=r"augmentation\.weak must be one of none, flip_translate, classic, got 'strong'"):
        AugmentOptions(weak="strong")
    with pytest.raises(UserError, match=r"augmentation\.strong must be one of .*randaugment.*got 'autoaugment'"):
        AugmentOptions(strong="autoaugment")
