"""Inference frames (pure functions): target-bin selection and full-resolution frames on the source's pixel grid.

``full_resolution_frames`` computes ``clip(source + up((frames - reconstruction) / 2), 0, 1)``: the
generator's change (model units, [-1, 1]) halved into display units and carried back through the
inverse of the preprocessing, so the source's own detail survives wherever nothing was changed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_exaggeration.inference import full_resolution_frames, select_bins, to_source_grid
from monai_exaggeration.transforms import LoadCXR, cxr_preprocessing

ROWS, COLS = 203, 157  # odd, non-square: a transposition or an off-by-one would show
SIZE = 64


def unit_image(pixels: np.ndarray) -> MetaTensor:
    """A loaded [0, 1] image (1, rows, columns) as LoadCXR returns it (identity affine)."""
    return MetaTensor(
        torch.from_numpy(np.asarray(pixels, dtype=np.float32))[None], affine=torch.eye(3, dtype=torch.float64)
    )


def model_view(pixels: np.ndarray, aspect: str, size: int = SIZE) -> tuple[MetaTensor, object]:
    """The preprocessed (1, S, S) model input of ``pixels`` and the preprocessing that made it."""
    preprocessing = cxr_preprocessing("image", size, aspect, load=False)
    return preprocessing({"image": unit_image(pixels)})["image"], preprocessing


# ----------------------------------------------------------------------------------- select_bins


def test_select_bins_defaults_and_ranges() -> None:
    assert select_bins(10) == list(range(10))
    assert select_bins(2) == [0, 1]
    assert select_bins(10, first=3) == [3, 4, 5, 6, 7, 8, 9]
    assert select_bins(10, 5) == [5, 6, 7, 8, 9]  # first, positionally
    assert select_bins(10, last=4) == [0, 1, 2, 3, 4]
    assert select_bins(10, 2, 6) == [2, 3, 4, 5, 6]
    assert select_bins(10, 2, 8, num_frames=4) == [2, 4, 6, 8]
    assert select_bins(10, num_frames=5) == [0, 2, 4, 7, 9]
    assert select_bins(10, 0, 9, 2) == [0, 9]
    assert select_bins(10, num_frames=np.int64(3))[0::2] == [0, 9]  # numpy integers are accepted


@pytest.mark.parametrize("num_frames", range(2, 11))
def test_select_bins_num_frames_are_evenly_spaced_with_both_ends(num_frames: int) -> None:
    bins = select_bins(10, num_frames=num_frames)
    assert len(bins) == num_frames and len(set(bins)) == num_frames  # no repeated frame
    assert bins[0] == 0 and bins[-1] == 9 and bins == sorted(bins)
    assert all(isinstance(b, int) for b in bins)
    ideal = np.linspace(0, 9, num_frames)
    assert np.abs(np.asarray(bins) - ideal).max() <= 0.5  # the nearest bins to even spacing
    if num_frames == 10:
        assert bins == list(range(10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": 5, "last": 5},  # a series needs two ends
        {"first": 6, "last": 2},
        {"first": -1},
        {"last": 10},
        {"num_frames": 1},
        {"num_frames": 0},
        {"num_frames": 11},
        {"first": 5, "num_frames": 6},  # only bins 5..9 exist
        {"num_frames": 3.0},
        {"num_frames": True},
        {"num_frames": "5"},
    ],
    ids=lambda kwargs: ",".join(f"{k}={v!r}" for k, v in kwargs.items()),
)
def test_select_bins_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        select_bins(10, **kwargs)


@pytest.mark.parametrize("num_bins", [0, 1, 2.5, True])
def test_select_bins_rejects_bad_num_bins(num_bins) -> None:
    with pytest.raises(ValueError, match="num_bins"):
        select_bins(num_bins)


# ----------------------------------------------------------------------------------- full resolution


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_frames_equal_to_reconstruction_give_back_the_source(aspect: str) -> None:
    """No change at model size -> exactly the source, fine detail (here: noise) included."""
    source = np.random.default_rng(1).random((ROWS, COLS), dtype=np.float32)
    reference, preprocessing = model_view(source, aspect)
    reconstruction = torch.randn(SIZE, SIZE)  # blurry, wrong, whatever: it cancels
    out = full_resolution_frames(source, reconstruction[None].repeat(3, 1, 1), reconstruction, reference, preprocessing)
    assert out.shape == (3, ROWS, COLS) and out.dtype == np.float32
    assert np.abs(out - source[None]).max() < 1e-6


@pytest.mark.parametrize("grid", ["synthetic", "rg1"])
@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_constant_change_is_halved_into_display_units_on_the_source_grid(aspect: str, grid: str, request) -> None:
    """``synthetic``: an odd 203 x 157 grid (identity affine); ``rg1``: the grid (and affine) of the real
    1955 x 1841 CR as LoadCXR reads it."""
    if grid == "rg1":
        loaded = LoadCXR()(request.getfixturevalue("rg1_uncr"))
        preprocessing = cxr_preprocessing("image", 32, aspect, load=False)
        reference, size = preprocessing({"image": loaded})["image"], 32
        shape = tuple(loaded.shape[1:])
    else:
        shape, size = (ROWS, COLS), SIZE
        reference, preprocessing = model_view(np.zeros(shape, np.float32), aspect)
    source = np.random.default_rng(2).uniform(0.3, 0.7, shape).astype(np.float32)
    reconstruction = torch.randn(size, size)
    d = 0.2  # model units ([-1, 1]) -> +0.1 in display units
    frames = torch.stack([reconstruction + d, reconstruction - d])
    change = full_resolution_frames(source, frames, reconstruction, reference, preprocessing) - source[None]
    assert change.shape == (2, *shape)
    rows, cols = shape
    if aspect == "crop":
        # the model saw only the centred square; outside it nothing may change
        top = (rows - cols) // 2
        inside = slice(top, top + cols)
        assert np.allclose(change[0, inside], d / 2, atol=1e-5) and np.allclose(change[1, inside], -d / 2, atol=1e-5)
        assert np.abs(change[:, :top]).max() == 0.0 and np.abs(change[:, top + cols :]).max() == 0.0
    else:  # pad: the padding is cut off again; stretch: the whole image was seen
        assert np.allclose(change[0], d / 2, atol=1e-5) and np.allclose(change[1], -d / 2, atol=1e-5)


def test_change_is_clipped_to_the_display_range() -> None:
    source = np.full((ROWS, COLS), 0.9, dtype=np.float32)
    reference, preprocessing = model_view(source, "pad")
    reconstruction = torch.zeros(SIZE, SIZE)
    out = full_resolution_frames(
        source, torch.stack([reconstruction + 1.0, reconstruction - 2.0]), reconstruction, reference, preprocessing
    )
    assert np.all(out[0] == 1.0) and np.allclose(out[1], 0.0)


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_local_change_lands_where_it_was_made(aspect: str) -> None:
    """A change of one region (top right, non-square image) comes back at that region: no transposition or shift."""
    pattern = np.zeros((ROWS, COLS), dtype=np.float32)
    pattern[30:90, 95:150] = 0.5
    base = np.full((ROWS, COLS), 0.25, dtype=np.float32)
    reference, preprocessing = model_view(base, aspect)
    # what the model sees of the pattern, minus what it sees of nothing: 2 x down(pattern) in model units
    changed = model_view(pattern, aspect)[0][0].as_tensor()
    unchanged = model_view(np.zeros_like(pattern), aspect)[0][0].as_tensor()
    out = full_resolution_frames(base, changed[None], unchanged, reference, preprocessing)[0] - base
    assert np.allclose(out[40:80, 105:140], 0.5, atol=0.02)  # inside the region (away from its blurred edge)
    assert np.abs(out[:, :80]).max() < 0.02 and np.abs(out[105:]).max() < 0.02  # nothing elsewhere
    assert np.abs(out[:20]).max() < 0.02


def test_mismatched_maps_are_rejected() -> None:
    source = np.zeros((ROWS, COLS), dtype=np.float32)
    reference, preprocessing = model_view(source, "pad")
    with pytest.raises(ValueError, match="maps must be"):
        to_source_grid(torch.zeros(2, 32, 32), reference, preprocessing)
    with pytest.raises(ValueError, match="maps must be"):
        to_source_grid(torch.zeros(SIZE, SIZE), reference, preprocessing)
    restored = to_source_grid(torch.ones(2, SIZE, SIZE), reference, preprocessing)
    assert restored.shape == (2, ROWS, COLS)
    with pytest.raises(ValueError, match="the source is"):
        full_resolution_frames(
            np.zeros((COLS, ROWS), np.float32),
            torch.zeros(1, SIZE, SIZE),
            torch.zeros(SIZE, SIZE),
            reference,
            preprocessing,
        )
