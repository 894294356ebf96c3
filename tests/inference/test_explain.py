"""The series inferer (:class:`~monai_exaggeration.inference.SeriesInferer`, ``explain``): its frames and scores.

Scores of the written frames, the source's own bin, the frames on the full source grid, settings
validation, weights that do not fit, in-memory generators in the model version, stage timings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from inference.helpers import png_chest, read_frames, tiny_generator
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.methods import exaggeration as exaggeration_method_module
from monai_exaggeration.networks import ExaggerationGenerator
from monai_exaggeration.transforms import LoadCXR, cxr_preprocessing


def test_written_scores_are_the_scores_of_the_written_frames(png_runs, runner) -> None:
    """The logged score is f of the file a reader opens, preprocessed like any input."""
    frames = read_frames(png_runs["a"])
    preprocessing = cxr_preprocessing("image", runner.image_size, "pad")
    for row in frames.iloc[[0, 9]].itertuples():
        image = preprocessing({"image": row.output_file})["image"]
        with torch.no_grad():
            score = float(runner.classifier(image[None].as_tensor()))
        assert abs(score - row.score) < 1e-4


def test_source_bin_frame_equals_source_at_full_resolution(rg1_uncr: Path, runner) -> None:
    """x + up(G(x, b_src) - G(x, b_src)) = x: the frame of the source's own bin is the source."""
    result = runner.explain(rg1_uncr)
    source = LoadCXR()(rg1_uncr)[0].numpy()
    own = result.bins.index(result.source_bin)
    frames = result.unit_frames
    assert result.frames.dtype == np.uint8 and frames.shape == (10, *source.shape)
    assert np.abs(frames[own] - source).max() <= 0.5 / 255 + 1e-6
    assert np.abs(frames[-1] - frames[0]).max() > 0.05  # the series does change something


def test_known_change_is_written_at_full_resolution_on_a_real_cr(
    tmp_path: Path, rg1_uncr: Path, classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RG1 (1955 x 1841, 15-bit MONOCHROME1): with a generator that changes the image by c * bin (model units),
    frame k written to DICOM is the source + c * (bin_k - source_bin) / 2, to within the 8-bit quantisation,
    on the full matrix: the source's detail is kept, nothing is transposed or blurred."""
    c = 0.06

    def known_series(generator, images, num_bins, bins=None, norm="series"):
        offsets = c * torch.arange(num_bins, dtype=torch.float32).reshape(1, num_bins, 1, 1, 1)
        return images[:, None] + offsets  # (B, N, C, S, S)

    monkeypatch.setattr(exaggeration_method_module, "generate_series", known_series)
    generator = ExaggerationGenerator(
        in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[8, 8], image_size=64
    )
    runner = ExaggerationInference(
        generator, classifier, num_bins=10, num_frames=3, quicklook=False, device="cpu", calibrate=False
    )  # the raw change, to compare with the known one
    summary = runner.run(rg1_uncr, tmp_path / "out")
    assert summary.exit_code == 0 and summary.num_files == 3

    source = LoadCXR()(rg1_uncr)[0].numpy()
    assert source.shape == (1955, 1841)
    source_bin = int(pd.read_csv(tmp_path / "out" / "sources.csv")["source_bin"][0])
    files = sorted((tmp_path / "out" / "dicom").rglob("step_*.dcm"))
    assert [f.name for f in files] == ["step_000.dcm", "step_001.dcm", "step_002.dcm"]
    for path, target_bin in zip(files, [0, 4, 9]):
        written = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0
        expected = np.clip(source + c * (target_bin - source_bin) / 2.0, 0.0, 1.0)
        assert written.shape == source.shape
        assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-4, path.name


def test_bad_settings_are_rejected(runner_factory) -> None:
    for bad in [
        dict(bits=12),
        dict(resolution="full"),
        dict(aspect="fit"),
        dict(norm="batch"),
        dict(quicklook="maybe"),
    ]:
        with pytest.raises(ValueError):
            runner_factory(**bad)
    assert runner_factory(quicklook="false").quicklook is False


def test_weights_that_do_not_fit_the_network_say_so(tmp_path: Path, classifier, runner_factory) -> None:
    from monai_exaggeration.networks import ExplainerRecord, save_explainer

    small = ExaggerationGenerator(in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[8, 8], image_size=16)
    bare = tmp_path / "bare.pt"
    torch.save(small.state_dict(), bare)  # a pre-0.6 file: no architecture recorded
    with pytest.raises(ValueError, match="legacy_explainer_v0.json"):
        runner_factory(explainer_weights=bare).prepare()
    recorded = save_explainer(tmp_path / "recorded.pt", small, ExplainerRecord(small))
    assert runner_factory(explainer_weights=recorded).prepare().image_size == 16  # built from its record
    other = ExaggerationGenerator(in_channels=1, num_bins=10, stem_channels=8, encoder_channels=[16, 8], image_size=16)
    mismatched = ExaggerationInference(other, classifier, explainer_weights=recorded)
    with pytest.raises(ValueError, match="do not fit the generator"):
        mismatched.prepare()
    with pytest.raises(ValueError, match="trained with image_size = 16"):
        runner_factory(explainer_weights=recorded, image_size=64).prepare()


def test_in_memory_generator_weights_enter_the_model_version(tmp_path: Path, classifier) -> None:
    """Without a weights file (``explainer_weights=None``) the UIDs must still change with the generator's weights:
    two different generators give different pixels, so they must not give the same SOP Instance UIDs."""
    png = png_chest(tmp_path / "chest.png")
    outs = []
    for seed in (1, 2):
        runner = ExaggerationInference(
            tiny_generator(seed), classifier, num_bins=10, num_frames=2, quicklook=False, device="cpu"
        )
        runner.run(png, tmp_path / f"out{seed}")
        outs.append(read_frames(tmp_path / f"out{seed}"))
    pixels = [pydicom.dcmread(frame["output_file"][1]).pixel_array for frame in outs]
    assert not np.array_equal(*pixels)  # different generators, different frames
    assert outs[0]["model_version"][0] != outs[1]["model_version"][0]
    assert set(outs[0]["sop_instance_uid"]).isdisjoint(outs[1]["sop_instance_uid"])
    # the same generator again gives the same version
    again = ExaggerationInference(
        tiny_generator(1), classifier, num_bins=10, num_frames=2, quicklook=False, device="cpu"
    )
    assert again.prepare().model_version == outs[0]["model_version"][0]


def test_stage_timings_are_recorded(png_runs) -> None:
    """A run without quick-looks (png_runs "a") times the generator and the writing, and no quick-look."""
    summary = png_runs["summaries"]["a"]
    assert summary.stage_seconds["generator"] > 0 and summary.stage_seconds["write"] > 0
    assert summary.stage_seconds["quicklook"] == 0.0
    assert sum(summary.stage_seconds.values()) <= summary.seconds + 1e-3
