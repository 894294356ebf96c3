"""The deformation explainer (issue 25): fields, warps, training terms, explainer files, calibration, measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.networks.blocks import Warp
from torch import nn

from monai_exaggeration.binning import bin_centre
from monai_exaggeration.engines import ExaggerationTrainer
from monai_exaggeration.losses import ExaggerationLoss
from monai_exaggeration.methods import ProgressiveExaggeration
from monai_exaggeration.methods.calibration import calibrate_strengths
from monai_exaggeration.methods.series import compose_series, deformation_series, generate_series
from monai_exaggeration.metrics.geometry import border_shift, geometric_share
from monai_exaggeration.networks import (
    BlackBoxClassifier,
    DeformationGenerator,
    ExaggerationDiscriminator,
    ExplainerRecord,
    folding_fraction,
    jacobian_determinant,
    load_explainer,
    save_explainer,
    upsample_displacement,
)

SIZE = 32
NUM_BINS = 5


def tiny_deformation(seed: int = 0, **kwargs) -> DeformationGenerator:
    torch.manual_seed(seed)
    kwargs.setdefault("intensity", 0.0)
    return DeformationGenerator(
        num_bins=NUM_BINS, stem_channels=8, encoder_channels=(8, 16, 16), grid_factor=4, image_size=SIZE, **kwargs
    )


def disc_classifier() -> BlackBoxClassifier:
    """A black box that reads the mean brightness of a central disc (sigmoid of 6 x brightness)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2) <= (SIZE / 4) ** 2).float()

    def logit(images: torch.Tensor) -> torch.Tensor:
        return 6.0 * ((images * disc).sum(dim=(-1, -2)) / disc.sum()).reshape(-1, 1)

    return BlackBoxClassifier(logit, activation="sigmoid")


def images(count: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, SIZE, SIZE, generator=generator) * 2 - 1) * 0.5


# --------------------------------------------------------------------------------------------- fields
def test_warping_with_a_zero_field_is_the_identity() -> None:
    x = images()
    warped = Warp(mode="bilinear", padding_mode="border")(x, torch.zeros(4, 2, SIZE, SIZE))
    assert torch.allclose(warped, x, atol=1e-5)
    generator = tiny_deformation()
    fields = generator(x, torch.zeros(4, dtype=torch.long))
    frame, ddf = generator.compose(x, fields, fields)
    assert float(ddf.abs().max()) == 0.0
    assert torch.allclose(frame, x, atol=1e-5)


def test_the_frame_of_the_source_bin_is_the_source_exactly() -> None:
    generator = tiny_deformation().eval()
    x = images(3)
    fields = generate_series(generator, x, NUM_BINS)  # (B, N, 2, h, w)
    assert fields.shape == (3, NUM_BINS, 2, SIZE // 4, SIZE // 4)
    source_bins = torch.tensor([0, 2, 4])
    frames = compose_series(x, fields, source_bins, "transfer", generator=generator)
    for row, b in enumerate(source_bins.tolist()):
        assert torch.equal(frames[row, b], x[row])
        others = [k for k in range(NUM_BINS) if k != b]
        assert float((frames[row, others] - x[row]).abs().amax()) > 0  # the other bins move the image
    again, ddf = deformation_series(generator, x, fields, source_bins)
    assert torch.equal(again, frames) and ddf.shape == (3, NUM_BINS, 2, SIZE // 4, SIZE // 4)


def test_both_bins_receive_gradients_from_the_first_step() -> None:
    """The trap of a frame made from v(b_t) - v(b_src): with identical bins the gradients cancel."""
    generator = tiny_deformation()
    x = images()
    target, source = torch.tensor([4, 3, 2, 1]), torch.tensor([0, 0, 1, 1])
    fields_target, fields_source = generator.field_pair(x, target, source)
    frame, _ = generator.compose(x, fields_target, fields_source)
    frame.mean().backward()
    assert float(generator.head.weight.grad.abs().sum()) > 0
    assert float(generator.encoder[0].conv1.weight.grad.abs().sum()) > 0


def test_upsampled_displacements_are_scaled_to_the_new_grid() -> None:
    ddf = torch.ones(1, 2, 8, 8)
    ddf[:, 1] = -0.5
    up = upsample_displacement(ddf, (32, 16))
    assert up.shape == (1, 2, 32, 16)
    assert torch.allclose(up[:, 0], torch.full((1, 32, 16), 4.0))
    assert torch.allclose(up[:, 1], torch.full((1, 32, 16), -1.0))


def test_jacobian_determinant_finds_folds() -> None:
    assert torch.allclose(jacobian_determinant(torch.zeros(1, 2, 16, 16)), torch.ones(1, 16, 16))
    rows = torch.arange(16.0)
    folding = torch.zeros(1, 2, 16, 16)
    folding[0, 0] = (-2.0 * rows)[:, None]  # rows mapped to -rows: the order of the rows is reversed
    assert folding_fraction(folding) == 1.0
    assert folding_fraction(torch.zeros(1, 2, 16, 16)) == 0.0


def test_a_shared_encoder_encodes_once_and_matches_two_decodes() -> None:
    generator = tiny_deformation(conditional_encoder=False, intensity=0.1).eval()
    x = images(2)
    a, b = torch.tensor([1, 2]), torch.tensor([3, 0])
    pair = torch.cat(generator.field_pair(x, a, b))
    assert pair.shape == (4, 3, SIZE // 4, SIZE // 4)
    assert float(pair[:, 2].abs().max()) <= 0.1  # the intensity term is bounded by epsilon
    series = generate_series(generator, images(3), NUM_BINS)  # grouped statistics reach the plain norms too
    assert series.shape == (3, NUM_BINS, 3, SIZE // 4, SIZE // 4)


# ------------------------------------------------------------------------------------------- training
def toy_records(classifier: BlackBoxClassifier, count: int = 32) -> list[dict]:
    records = []
    for image in images(count, seed=1):
        posterior = float(classifier(image[None]))
        records.append(
            {"image": image, "source_posterior": posterior, "source_bin": min(int(posterior * NUM_BINS), NUM_BINS - 1)}
        )
    return records


def deformation_trainer(generator: nn.Module, **kwargs) -> ExaggerationTrainer:
    classifier = disc_classifier()
    discriminator = ExaggerationDiscriminator(num_bins=NUM_BINS, channels=(8, 16, 16))
    return ExaggerationTrainer(
        device="cpu",
        train_data_loader=DataLoader(toy_records(classifier), batch_size=8, shuffle=True, drop_last=True),
        generator=generator,
        discriminator=discriminator,
        classifier=classifier,
        g_optimizer=torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.0, 0.9)),
        d_optimizer=torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.0, 0.9)),
        loss_function=ExaggerationLoss(num_bins=NUM_BINS, lambda_rec=10.0, lambda_smooth=1.0, lambda_fold=10.0),
        n_critic=1,
        composition="transfer",
        **kwargs,
    )


def test_the_trainer_trains_a_deformation_explainer_with_smoothness_and_folding_terms() -> None:
    generator = tiny_deformation(intensity=0.1)
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    trainer = deformation_trainer(generator, max_iterations=3)
    trainer.run()
    output = trainer.state.output
    for term in ("g_smooth", "g_fold", "g_identity", "g_cycle", "g_cls", "g_adv", "d_loss"):
        assert term in output and np.isfinite(output[term]), term
    assert output["g_smooth"] > 0
    changed = [name for name, value in generator.state_dict().items() if not torch.equal(value, before[name])]
    assert any(name.startswith("head.") for name in changed) and any("gamma" in name for name in changed)


def test_a_warm_start_is_refused_for_a_deformation_explainer() -> None:
    with pytest.raises(ValueError, match="warmup_iterations"):
        deformation_trainer(tiny_deformation(), max_iterations=3, warmup_iterations=2)


def test_the_explainer_file_records_the_output_type(tmp_path: Path) -> None:
    generator = tiny_deformation(intensity=0.05)
    path = save_explainer(tmp_path / "explainer.pt", generator, ExplainerRecord(generator, composition="transfer"))
    loaded = load_explainer(path)
    assert loaded.output == "deformation" and loaded.record["output"] == "deformation"
    assert isinstance(loaded.generator, DeformationGenerator)
    assert loaded.generator.config() == generator.config()
    x = images(2)
    assert torch.equal(loaded.generator(x, 1), generator.eval()(x, 1))


# ---------------------------------------------------------------------------------------- calibration
def test_calibrated_strengths_hit_their_targets_and_flag_the_unreachable() -> None:
    torch.manual_seed(0)
    count = 60
    source = torch.rand(count) * 0.8 + 0.1
    targets = (torch.randint(0, 10, (count,)).float() + 0.5) / 10
    slope = torch.rand(count) * 3 + 0.3
    sign = torch.sign(targets - source)

    def score(index: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # monotone in alpha, towards the target
        return torch.sigmoid(torch.logit(source[index]) + sign[index] * alpha * slope[index])

    found = calibrate_strengths(score, targets, source, upper=2.0, tolerance=0.02)
    at_bound = score(torch.arange(count), torch.full((count,), 2.0))
    reachable = sign * (at_bound - targets) >= -0.02
    assert torch.equal(found.reached, reachable)
    assert float((found.scores - targets)[found.reached].abs().max()) <= 0.02
    assert torch.all(found.alpha[~found.reached] == 2.0)
    assert torch.all((found.alpha >= 0) & (found.alpha <= 2.0))


class BrightnessGenerator(nn.Module):
    """A known 'explainer': G(x, b) = x + 0.1 (b - 2): each bin brightens the image by a known step."""

    output = "image"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        bins = torch.as_tensor(bins).reshape(-1).to(x)
        return x + self.scale * (bins - 2.0).view(-1, 1, 1, 1)


@pytest.mark.parametrize("gain", [6.0, 1.0])
def test_a_calibrated_series_scores_its_bin_centres_on_a_known_classifier(gain: float) -> None:
    """With gain 6 every target is reachable (within 0.02); with gain 1 the far ends are not, and say so."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2) <= (SIZE / 4) ** 2).float()

    def logit(batch: torch.Tensor) -> torch.Tensor:
        return gain * ((batch * disc).sum(dim=(-1, -2)) / disc.sum()).reshape(-1, 1)

    black_box = BlackBoxClassifier(logit, activation="sigmoid")
    x = torch.zeros(2, 1, SIZE, SIZE)
    x[1] -= 0.2
    scores = black_box(x).reshape(-1).tolist()
    source_bins = [min(int(s * NUM_BINS), NUM_BINS - 1) for s in scores]
    bins = list(range(NUM_BINS))
    method = ProgressiveExaggeration(BrightnessGenerator(), "transfer", "running", classifier=black_box, calibrate=True)
    made = method(x, scores, source_bins, bins, NUM_BINS)
    frame_scores = black_box(made.frames.reshape(-1, 1, SIZE, SIZE)).reshape(2, NUM_BINS)
    centres = bin_centre(torch.tensor(bins), NUM_BINS)
    for row in range(2):
        reached = torch.tensor(made.details[row]["reached"])
        assert torch.equal(made.frames[row, source_bins[row]], x[row, 0])  # the source's own bin is the source
        off = (frame_scores[row] - centres).abs()
        moved = torch.tensor([b != source_bins[row] for b in bins])
        assert torch.all(off[reached & moved] <= 0.02)
        assert torch.all(off[~reached] > 0.02)
        if gain == 6.0:
            assert bool(reached.all())
        else:
            assert not bool(reached.all())  # sigmoid(1 x brightness) cannot reach 0.1 or 0.9 within alpha <= 2
        assert torch.all(torch.diff(frame_scores[row]) >= -1e-6)  # still monotone


# -------------------------------------------------------------------------------------------- measures
def _chest_128() -> np.ndarray:
    """RG1_UNCR.dcm (a real CR chest, from pydicom-data) at 128 x 128 in [0, 1], as the evaluation sees NIH images."""
    import torch.nn.functional as F
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    pixels = dcmread(get_testdata_file("RG1_UNCR.dcm", download=False)).pixel_array.astype(np.float32)
    pixels = pixels.max() - pixels  # MONOCHROME1: high values are dark
    small = F.interpolate(torch.from_numpy(pixels)[None, None], size=(128, 128), mode="area")[0, 0].numpy()
    return (small - small.min()) / (small.max() - small.min())


def test_the_geometric_share_tells_a_warp_from_a_painted_blob() -> None:
    image = _chest_128()
    yy, xx = np.mgrid[:128, :128]
    bump = np.exp(-((yy - 60) ** 2 + (xx - 88) ** 2) / (2 * 10**2)).astype(np.float32)  # in the left lung
    ddf = torch.from_numpy(np.stack([bump * 3, bump * 4]))[None]
    warped = Warp(padding_mode="border")(torch.from_numpy(image)[None, None], ddf)[0, 0].numpy()
    blob = np.clip(image + 0.25 * bump, 0, 1)
    warp_share, blob_share = geometric_share(image, warped), geometric_share(image, blob)
    assert warp_share >= 0.75, warp_share
    assert blob_share <= 0.55, blob_share
    assert np.isnan(geometric_share(image, image))


def test_border_shift_measures_how_far_an_outline_moves_outward() -> None:
    yy, xx = np.mgrid[:128, :128]
    small = (yy - 64) ** 2 + (xx - 64) ** 2 < 20**2
    large = (yy - 64) ** 2 + (xx - 64) ** 2 < 24**2
    assert 3.0 <= border_shift(small, large) <= 5.0
    assert -5.0 <= border_shift(large, small) <= -3.0
    assert border_shift(small, small) == pytest.approx(0.0, abs=0.6)
    assert np.isnan(border_shift(small, np.zeros_like(small)))


# ------------------------------------------------------------------------------------ inference end to end
def test_inference_warps_the_full_resolution_source_and_logs_calibration(tmp_path: Path) -> None:
    """A (random) deformation explainer file explains a non-square PNG at source resolution: the source's
    own frame is the source, reached frames score within 0.02 of their centres as written, and the logs
    and the DICOM ImageComments carry the strength and the reached flag."""
    import pandas as pd
    import pydicom
    from inference.helpers import png_chest

    from monai_exaggeration.bundle import load_bundle_classifier
    from monai_exaggeration.inference import ExaggerationInference
    from monai_exaggeration.transforms import LoadCXR

    torch.manual_seed(3)
    generator = DeformationGenerator(
        num_bins=10,
        stem_channels=8,
        encoder_channels=(8, 16, 16),
        grid_factor=4,
        image_size=64,
        intensity=0.05,
        max_velocity=0.15,
    )
    weights = save_explainer(tmp_path / "deform.pt", generator, ExplainerRecord(generator, composition="transfer"))
    source_path = png_chest(tmp_path / "chest.png", shape=(150, 110))
    runner = ExaggerationInference(
        None, load_bundle_classifier(), explainer_weights=weights, quicklook=False, device="cpu"
    ).prepare()
    assert runner.output == "deformation" and runner.calibrate
    result = runner.explain(source_path)
    source = np.rint(LoadCXR()(source_path)[0].numpy() * 255).astype(np.uint8)
    assert result.frames.shape == (10, *source.shape)
    assert np.array_equal(result.frames[result.source_bin], source)
    reached = np.asarray(result.details["reached"])
    error = np.abs(np.asarray(result.scores) - np.asarray(result.centres))
    moved = np.arange(10) != result.source_bin
    assert np.all(error[reached & moved] <= 0.02)
    assert np.all(error[~reached] > 0.02)
    frame_rows, _, _ = runner.write(result, tmp_path / "out")  # the rows frames.csv gets
    frames = pd.DataFrame(frame_rows)
    assert {"reached", "strength"} <= set(frames.columns)
    assert frames["reached"].tolist() == reached.tolist()
    assert frames["strength"].tolist() == pytest.approx(result.details["alpha"])
    for row in frames.itertuples():
        comments = pydicom.dcmread(row.output_file).ImageComments
        assert f"strength {row.strength:g}" in comments
        assert ("target score not reached" in comments) == (not row.reached)


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_the_strip_wise_warp_equals_monai_warp_of_the_carried_field(aspect: str) -> None:
    """At source resolution the field is carried and the film warped a strip at a time (bounded memory);
    the result equals MONAI's Warp of the field carried by the inverse preprocessing."""
    from monai.data import MetaTensor

    from monai_exaggeration.inference.dataset import SourcePreprocessing
    from monai_exaggeration.inference.frames import to_source_grid, warped_frame
    from monai_exaggeration.transforms.cxr import model_scale

    torch.manual_seed(0)
    for shape in ((300, 220), (220, 300)):
        reading = SourcePreprocessing(aspect)
        reading.bind(64)
        source = np.random.default_rng(0).random(shape).astype(np.float32)
        model_input = reading.transform({"image": MetaTensor(torch.from_numpy(source)[None])})["image"]
        ddf = torch.nn.functional.interpolate(torch.randn(1, 2, 8, 8) * 2, size=(64, 64), mode="bilinear")[0]
        intensity = torch.randn(64, 64) * 0.05
        strips = warped_frame(source, ddf, intensity, aspect, strip_rows=37)
        carried = to_source_grid(torch.cat([ddf, intensity[None]]), model_input, reading.transform)
        scale = model_scale(shape, 64, aspect)
        field = carried[None, :2].clone()
        field[:, 0] /= scale[0]
        field[:, 1] /= scale[1]
        whole = Warp(padding_mode="border")(torch.from_numpy(source)[None, None], field)[0, 0] + carried[2] / 2
        assert np.abs(strips - whole.clamp(0, 1).numpy()).max() < 1e-4
