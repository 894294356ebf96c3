"""Captions every viewer shows: the inference's burned-in captioned copy (``burned_in_copy``) and the caption fields.

OHIF v3 renders no presentation state (OHIF issue 4106) and its default overlay draws the
SeriesDescription and the frame's InstanceNumber, not ImageComments; so the copy carries the
captions in its pixels, each frame's caption in ImageComments and the scores in its SeriesDescription.
The runs use inference.json's own ``writers`` (parsed as ``monai.bundle run`` does) on RG1_UNCR.dcm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from inference.helpers import (
    INFERENCE,
    all_files,
    assert_dciodvfy_clean,
    parsed_inference,
    read_frames,
    read_sources,
    shipped_runner,
)

from monai_exaggeration.bundle import check_overrides, load_bundle_classifier
from monai_exaggeration.dicom.presentation import (
    CAPTION_NOTE,
    FrameCaption,
    captioned_series_description,
    series_rows,
    write_burned_in_series,
)
from monai_exaggeration.inference.writers import CaptionedCopyWriter, DicomSeriesWriter

NUM_FRAMES = 4


@pytest.fixture(scope="module")
def classifier():
    return load_bundle_classifier()


def _writers(tmp_path: Path, burned_in_copy: bool | None) -> list:
    """inference.json's writers, with ``burned_in_copy`` set as ``--burned_in_copy`` would (None: the default)."""
    overrides = {} if burned_in_copy is None else {"burned_in_copy": burned_in_copy}
    return parsed_inference(tmp_path, quicklook=False, **overrides).get_parsed_content("writers")


def _run(classifier, rg1_uncr: Path, out: Path, writers: list):
    runner = shipped_runner(classifier, writers=writers, num_frames=NUM_FRAMES, resolution="model")
    summary = runner.run(rg1_uncr, out)
    assert summary.exit_code == 0
    return summary


@pytest.fixture(scope="module")
def runs(classifier, rg1_uncr: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """RG1 with the copy ("a", and again into "b") and with the default settings ("off")."""
    root = tmp_path_factory.mktemp("captions")
    outs = {}
    for name, flag in (("a", True), ("b", True), ("off", None)):
        outs[name] = root / name
        _run(classifier, rg1_uncr, outs[name], _writers(root / f"config_{name}", flag))
    return outs


def _series(out: Path) -> tuple[list[Path], list[Path]]:
    """The SC frames (frames.csv) and the captioned copy's files (the other folder under dicom/)."""
    plain = [Path(p) for p in read_frames(out)["output_file"]]
    folders = [p for p in (out / "dicom").iterdir() if p.is_dir() and p != plain[0].parent]
    return plain, sorted(p for folder in folders for p in folder.glob("*.dcm"))


def test_the_option_is_a_key_of_inference_json_and_off_by_default(tmp_path: Path) -> None:
    args = ["run", "inference", "--config_file", INFERENCE, "--burned_in_copy", "true"]
    check_overrides(args)  # accepted: a key of inference.json
    assert parsed_inference(tmp_path).get_parsed_content("burned_in_copy") is False
    writers = _writers(tmp_path, None)
    copies = [w for w in writers if isinstance(w, CaptionedCopyWriter)]
    assert len(copies) == 1 and not copies[0].enabled
    assert isinstance(writers[0], DicomSeriesWriter) and writers.index(copies[0]) == 1
    assert [w for w in _writers(tmp_path, True) if isinstance(w, CaptionedCopyWriter)][0].enabled


def test_captioned_copy_is_a_separate_burned_in_series_with_one_file_per_frame(runs: dict[str, Path]) -> None:
    plain, copies = _series(runs["a"])
    assert len(plain) == NUM_FRAMES and len(copies) == NUM_FRAMES
    assert [p.name for p in copies] == [p.name for p in plain]
    frames = read_frames(runs["a"])
    sources = read_sources(runs["a"])
    assert len(frames) == NUM_FRAMES and len(sources) == 1  # the logs list the SC series only
    finding = str(sources["finding"][0])
    for path, plain_path, row in zip(copies, plain, frames.itertuples()):
        copy, image = pydicom.dcmread(path), pydicom.dcmread(plain_path)
        assert copy.BurnedInAnnotation == "YES"
        assert copy.SeriesInstanceUID != image.SeriesInstanceUID and copy.SOPInstanceUID != image.SOPInstanceUID
        assert copy.StudyInstanceUID == image.StudyInstanceUID
        assert int(copy.SeriesNumber) == int(image.SeriesNumber) + 3
        assert copy.InstanceNumber == image.InstanceNumber == row.step + 1
        assert copy.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
        assert copy.Rows == image.Rows and copy.Columns == image.Columns
        changed = copy.pixel_array != image.pixel_array
        assert changed.any() and not changed[copy.Rows // 3 : 2 * copy.Rows // 3].any()  # text at top and bottom only
        # the frame's caption, as the presentation state says it, in ImageComments
        caption = FrameCaption(int(row.step) + 1, NUM_FRAMES, float(row.target_centre), float(row.score), finding)
        assert copy.ImageComments == f"{caption.text}; {CAPTION_NOTE.lower()}"
        assert f"score {float(row.score):.2f}" in copy.ImageComments
        assert f"target {float(row.target_centre):.2f}" in copy.ImageComments
        # ... and every frame's score in the SeriesDescription OHIF shows, the InstanceNumber-th value
        description = str(copy.SeriesDescription)
        assert len(description) <= 64 and description.startswith(f"Captioned {finding}, % by frame:")
        values = description.split(":", 1)[1].split()
        assert values[int(copy.InstanceNumber) - 1] == str(round(100 * float(row.score)))
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in copies}) == 1


def test_captioned_copy_uids_are_deterministic(runs: dict[str, Path]) -> None:
    uids = {}
    for name in ("a", "b"):
        _, copies = _series(runs[name])
        uids[name] = [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in map(pydicom.dcmread, copies)]
    assert uids["a"] == uids["b"] and len({sop for _, sop in uids["a"]}) == NUM_FRAMES


def test_option_off_writes_nothing_extra(runs: dict[str, Path]) -> None:
    plain, copies = _series(runs["off"])
    assert copies == [] and len(plain) == NUM_FRAMES
    assert [p.name for p in (runs["off"] / "dicom").iterdir()] == [plain[0].parent.name]
    assert {p.name for p in all_files(runs["off"] / "dicom")} == {p.name for p in plain}


def test_node_and_inference_write_the_same_copy(runs: dict[str, Path], tmp_path: Path) -> None:
    """The node's ``outputs.burned_in`` path (frames.csv rows -> write_burned_in_series) gives the same files."""
    _, copies = _series(runs["a"])
    rows = series_rows(read_frames(runs["a"]))
    again = write_burned_in_series(rows, tmp_path, str(read_sources(runs["a"])["finding"][0]))
    for ours, theirs in zip(copies, again):
        a, b = pydicom.dcmread(ours), pydicom.dcmread(theirs)
        assert (a.SOPInstanceUID, a.SeriesDescription, a.ImageComments) == (
            b.SOPInstanceUID,
            b.SeriesDescription,
            b.ImageComments,
        )
        assert np.array_equal(a.pixel_array, b.pixel_array)


def test_captioned_copy_is_removed_with_the_series_when_a_later_writer_fails(
    classifier, rg1_uncr: Path, tmp_path: Path
) -> None:
    seen = []

    def failing(record, inferer) -> None:  # a writer listed after the copy's
        seen.extend(record.products["captioned_copy"])
        assert len(record.products["captioned_copy"]) == NUM_FRAMES and all(
            p.exists() for p in record.products["captioned_copy"]
        )
        raise OSError("No space left on device")

    out = tmp_path / "out"
    writers = [*_writers(tmp_path, True), failing]
    runner = shipped_runner(classifier, writers=writers, num_frames=NUM_FRAMES, resolution="model")
    summary = runner.run(rg1_uncr, out)
    assert summary.exit_code != 0 and summary.num_files == 0 and len(seen) == NUM_FRAMES
    assert list(out.rglob("*.dcm")) == []


def test_burned_in_series_is_all_or_nothing(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai_exaggeration.dicom import presentation

    original, calls = presentation.burn_in, []

    def burn_in_or_fail(pixels, lines):
        calls.append(lines)
        if len(calls) == NUM_FRAMES:  # the last frame fails, after the others were written
            raise OSError("No space left on device")
        return original(pixels, lines)

    monkeypatch.setattr(presentation, "burn_in", burn_in_or_fail)
    with pytest.raises(OSError, match="No space"):
        write_burned_in_series(series_rows(read_frames(runs["a"])), tmp_path, "cardiomegaly")
    assert len(calls) == NUM_FRAMES and list(tmp_path.rglob("*")) == []


def test_series_description_fits_the_vr() -> None:
    captions = [FrameCaption(i + 1, 40, 0.5, i / 40, "cardiomegaly") for i in range(40)]
    text = captioned_series_description(captions)
    assert len(text) <= 64 and text.endswith("...") and text.startswith("Captioned cardiomegaly, % by frame: 0 2 5")
    short = captioned_series_description([FrameCaption(1, 2, 0.1, 0.123, "x"), FrameCaption(2, 2, 0.9, 0.987, "x")])
    assert short == "Captioned x, % by frame: 12 99"


def test_captioned_copy_passes_dciodvfy(runs: dict[str, Path]) -> None:
    _, copies = _series(runs["a"])
    assert_dciodvfy_clean(copies[:1])
