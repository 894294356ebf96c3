"""``reader-study build``: layout, determinism, Latin square, de-identification, errors, atomicity.

One real inference run (session fixture) on four small DICOM chests cut from RG1 with distinctive
fake patient data in their headers: three clean ones and one with BurnedInAnnotation YES.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, run_bundle
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from monai_exaggeration.cli import main
from monai_exaggeration.reader_study.builder import (
    KEY_COLUMNS,
    assign_arms,
    build_study,
    make_case_ids,
)
from monai_exaggeration.reader_study.config import (
    ReaderStudyError,
    default_arms,
    default_questions,
    parse_config,
)
from monai_exaggeration.reader_study.deid import (
    ALLOWED_PNG_CHUNKS,
    png_chunks,
    to_uint8,
)

NUM_FRAMES = 4
#: Fake patient data written into every source header (a leak of any of it fails the test).
PHI = {
    "PatientName": "Zyxwvut^Quintessa",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACC55501234",
    "InstitutionName": "Phantasmagoria Infirmary",
    "InstitutionAddress": "42 Obscurity Lane",
    "ReferringPhysicianName": "Ozymandias^Hieronymus",
    "StudyDescription": "CLANDESTINE CHEST",
    "StudyID": "STX271828",
    "OperatorsName": "Xanthippe^Operatrix",
    "OtherPatientIDs": "OTHR314159",
}
#: Substrings searched for (case-insensitively) in every byte of the study.
PHI_TOKENS = [
    "Zyxwvut",
    "Quintessa",
    "19230405",
    "ACC55501234",
    "Phantasmagoria",
    "Obscurity",
    "Ozymandias",
    "Hieronymus",
    "CLANDESTINE",
    "STX271828",
    "Xanthippe",
    "Operatrix",
    "OTHR314159",
    "PHIID9876",
]


def _write_source(path: Path, chest: np.ndarray, index: int, burned_in: bool) -> dict[str, str]:
    from skimage.transform import resize

    crop = chest[40 * index : 40 * index + 1700, 30 * index : 30 * index + 1600]
    pixels = np.round(resize(crop, (200, 188), anti_aliasing=True) * 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientID = f"PHIID9876{index}"
    ds.Modality = "CR"
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return {"path": str(path), "sop": ds.SOPInstanceUID, "study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID}


@pytest.fixture(scope="session")
def inference(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path) -> dict:
    """Four DICOM sources (named after their fake patient ID), one inference run over them."""
    from monai_exaggeration.transforms import read_cxr

    root = tmp_path_factory.mktemp("reader_study_inference")
    chest = read_cxr(rg1_uncr).pixels
    (root / "sources").mkdir()
    sources = [
        _write_source(root / "sources" / f"PHIID9876{i}_chest.dcm", chest, i, burned_in=i == 3) for i in range(4)
    ]
    out = root / "inference"
    result = run_bundle(
        [
            "run",
            "inference",
            "--config_file",
            "bundles/cxr/configs/inference.json",
            "--bundle_root",
            "bundles/cxr",
            "--input",
            str(root / "sources"),
            "--output_dir",
            str(out),
            "--quicklook",
            "false",
            "--num_frames",
            str(NUM_FRAMES),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "out": out, "sources": sources}


def _cases_csv(folder: Path, sources: list[dict], truths: list[str], saliency: list[str] | None = None) -> Path:
    table = pd.DataFrame({"source": [s["path"] for s in sources], "ground_truth": truths})
    if saliency is not None:
        table["saliency"] = saliency
    path = folder / "cases.csv"
    table.to_csv(path, index=False)
    return path


def _config(folder: Path, inference_dir: Path, **extra) -> Path:
    data = {
        "title": "Cardiomegaly explanations",
        "seed": 7,
        "inference_dir": str(inference_dir),
        "cases": "cases.csv",
        "readers": ["alice", "bob", "carol"],
        **extra,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def study_inputs(tmp_path_factory: pytest.TempPathFactory, inference: dict) -> Path:
    """study.yaml + cases.csv over the three clean sources, with saliency maps (two NPY, one PNG with PHI metadata)."""
    from PIL import Image, PngImagePlugin

    folder = tmp_path_factory.mktemp("reader_study_config")
    rng = np.random.default_rng(0)
    np.save(folder / "sal0.npy", rng.random((16, 16)))
    np.save(folder / "sal1.npy", rng.random((16, 16)))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", PHI["PatientName"])  # metadata that must not survive re-encoding
    info.add_text("Comment", f"patient {PHI['OtherPatientIDs']}")
    Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(folder / "sal2.png", pnginfo=info)
    _cases_csv(folder, inference["sources"][:3], ["1", "0", ""], ["sal0.npy", "sal1.npy", "sal2.png"])
    return _config(folder, inference["out"])


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, study_inputs: Path) -> Path:
    out = tmp_path_factory.mktemp("reader_study_built") / "study"
    assert main(["reader-study", "build", "--config", str(study_inputs), "--out", str(out)]) == 0
    return out


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "private" not in p.parts
    }


# ----------------------------------------------------------------------------------------- layout


def test_layout_follows_the_contract(built: Path, inference: dict) -> None:
    from monai_exaggeration.transforms import read_cxr

    study = json.loads((built / "study.json").read_text())
    assert study["format"] == 1 and study["title"] == "Cardiomegaly explanations" and study["instructions"]
    assert [a["id"] for a in study["arms"]] == ["image", "saliency", "series"]  # every case has a saliency map
    assert study["arms"][2]["shows"] == ["image", "series", "scores"]
    questions = {q["id"]: q for q in study["questions"]}
    assert list(questions) == [
        "confidence_before",
        "real_or_generated",
        "confidence_after",
        "understandability",
        "helpful",
        "what_changed",
        "comment",
    ]
    assert questions["confidence_before"]["phase"] == "before" and questions["confidence_before"]["max"] == 5
    assert "cardiomegaly" in questions["confidence_before"]["prompt"]  # the finding of sources.csv
    assert questions["what_changed"]["multiple"] is True and questions["what_changed"]["arms"] == ["series"]
    assert questions["what_changed"]["options"] == ["heart size", "pleural effusion", "devices", "other"]
    assert questions["understandability"]["arms"] == ["saliency", "series"]
    assert study["readers"] == ["alice", "bob", "carol"]
    assert len(study["cases"]) == 3 and list(study["cases"]) == sorted(study["cases"])
    assert all(len(case_id) == 7 and case_id[0] == "C" and int(case_id[1:], 16) >= 0 for case_id in study["cases"])

    key = pd.read_csv(built / "private" / "key.csv", dtype=str, keep_default_na=False)
    assert list(key.columns) == KEY_COLUMNS + [f"score_{i:03d}" for i in range(NUM_FRAMES)]
    frames_log = pd.read_csv(inference["out"] / "frames.csv", dtype=str)
    sources_log = pd.read_csv(inference["out"] / "sources.csv", dtype=str).set_index("source")
    truths = {s["path"]: t for s, t in zip(inference["sources"], ["1", "0", ""])}
    for row in key.to_dict("records"):
        case = study["cases"][row["case_id"]]
        assert row["ground_truth"] == truths[row["source"]]
        assert row["source_uid"] == sources_log.loc[row["source"], "source_sop_instance_uid"]
        assert case["image"] == f"assets/{row['case_id']}/image.png"
        assert case["frames"] == [f"assets/{row['case_id']}/frame_{i:03d}.png" for i in range(NUM_FRAMES)]
        assert case["saliency"] == f"assets/{row['case_id']}/saliency.png"
        assert case["forced_choice"] == f"assets/{row['case_id']}/choice.png"
        mine = frames_log[frames_log["series_instance_uid"] == row["series_instance_uid"]].sort_values("step")
        assert case["scores"] == pytest.approx([float(s) for s in mine["score"]], abs=1e-4)
        # frames in series order, pixel for pixel the DICOM frames the inference wrote
        frames = [iio_read(built / name) for name in case["frames"]]
        for frame, dicom in zip(frames, mine["output_file"]):
            np.testing.assert_array_equal(frame, to_uint8(read_cxr(dicom).pixels))
        image = iio_read(built / case["image"])
        np.testing.assert_array_equal(image, to_uint8(read_cxr(row["source"]).pixels))
        choice = iio_read(built / case["forced_choice"])
        if row["forced_choice_truth"] == "real":
            np.testing.assert_array_equal(choice, image)
            assert row["forced_choice_step"] == ""
        else:
            assert row["forced_choice_truth"] == "generated"
            step = int(row["forced_choice_step"])
            np.testing.assert_array_equal(choice, frames[step])
            source_bin = int(sources_log.loc[row["source"], "source_bin"])
            distance = (mine["target_bin"].astype(int) - source_bin).abs()
            assert distance.iloc[step] == distance.max()  # the frame farthest from the source
    assert set(key["forced_choice_truth"]) == {"real", "generated"}  # balanced picks over 3 cases: 2 + 1
    for png in built.glob("assets/*/*.png"):
        assert set(png_chunks(png)) <= ALLOWED_PNG_CHUNKS, png
    npy_case = study["cases"][key.loc[key["source"] == inference["sources"][0]["path"], "case_id"].item()]
    assert iio_read(built / npy_case["saliency"]).shape == image_shape(built / npy_case["image"]) + (
        3,
    )  # heat map overlay


def iio_read(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def image_shape(path: Path) -> tuple[int, int]:
    return tuple(iio_read(path).shape[:2])


def test_private_files_and_assignments(built: Path) -> None:
    study = json.loads((built / "study.json").read_text())
    private = built / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for name in ("readers.json", "key.csv"):
        assert stat.S_IMODE((private / name).stat().st_mode) == 0o600
    tokens = json.loads((private / "readers.json").read_text())
    assert set(tokens["readers"]) == set(study["readers"])
    every = [*tokens["readers"].values(), tokens["admin_token"]]
    assert len(set(every)) == 4 and all(len(t) >= 32 for t in every)
    public = (built / "study.json").read_text()
    assert not any(token in public for token in every)
    assert "ground_truth" not in public and "source" not in public.replace('"sources"', "")
    arms = [a["id"] for a in study["arms"]]
    for items in study["assignments"].values():
        assert sorted(i["case_id"] for i in items) == sorted(study["cases"])
        assert {i["arm"] for i in items} == set(arms)  # 3 cases, 3 arms: one case per arm
    for case_id in study["cases"]:  # 3 readers = 1 x 3 arms: each case in each arm exactly once
        assert sorted(items_arm(study, case_id)) == sorted(arms)


def items_arm(study: dict, case_id: str) -> list[str]:
    return [i["arm"] for items in study["assignments"].values() for i in items if i["case_id"] == case_id]


def test_no_patient_data_in_the_study(built: Path, inference: dict) -> None:
    """Every byte of every file: the public part holds no PHI, path or source UID; private/ only where documented."""
    sources = inference["sources"][:3]
    uids = [s[k] for s in sources for k in ("sop", "study", "series")]
    sources_log = pd.read_csv(inference["out"] / "sources.csv", dtype=str)
    written_study_uids = list(sources_log["study_instance_uid"])  # the derived series keep the source study
    names = [Path(s["path"]).name for s in sources] + [str(inference["root"])]
    forbidden = [t.lower().encode() for t in PHI_TOKENS + uids + written_study_uids + names]
    # the inputs really carry it (otherwise this test proves nothing)
    frame_file = pd.read_csv(inference["out"] / "frames.csv")["output_file"].iloc[0]
    assert b"Quintessa" in Path(frame_file).read_bytes() and b"Phantasmagoria" in Path(sources[0]["path"]).read_bytes()
    public = [p for p in built.rglob("*") if p.is_file() and "private" not in p.relative_to(built).parts]
    assert len(public) == 1 + 3 * (NUM_FRAMES + 3)  # study.json + image, frames, saliency, choice per case
    for path in public:
        content = path.read_bytes().lower()
        leaked = [t.decode() for t in forbidden if t in content]
        assert not leaked, f"{path.relative_to(built)} contains {leaked}"
    readers = (built / "private" / "readers.json").read_bytes().lower()
    assert not [t for t in forbidden if t in readers]
    key = pd.read_csv(built / "private" / "key.csv", dtype=str, keep_default_na=False)
    for column in key.columns:
        text = " ".join(key[column]).lower().encode()
        leaked = [t.decode() for t in forbidden if t in text]
        if column == "source":  # the source path, kept on purpose (file names carry the fake patient ID)
            assert all(t.startswith("phiid9876") or t in {n.lower() for n in names} for t in leaked), leaked
        elif column == "source_uid":  # the source SOP Instance UID, kept on purpose
            assert set(leaked) == {s["sop"].lower() for s in sources}
        else:
            assert not leaked, f"key.csv column {column} contains {leaked}"


def test_build_is_deterministic_for_a_seed(built: Path, study_inputs: Path, tmp_path: Path) -> None:
    again = build_study(study_inputs, tmp_path / "again")
    assert (again.out / "study.json").read_bytes() == (built / "study.json").read_bytes()
    assert _tree_digest(again.out) == _tree_digest(built)
    first = json.loads((built / "private" / "readers.json").read_text())
    second = json.loads((again.out / "private" / "readers.json").read_text())
    assert first["readers"]["alice"] != second["readers"]["alice"]  # new secrets at every build
    text = study_inputs.read_text().replace("seed: 7", "seed: 8")
    other = study_inputs.parent / "other_seed.yaml"
    other.write_text(text)
    reseeded = build_study(other, tmp_path / "reseeded")
    assert set(reseeded.case_ids).isdisjoint(again.case_ids)


# ----------------------------------------------------------------------------------------- design


def test_latin_square_assignment() -> None:
    cases = make_case_ids(12, seed=1)
    assert len(set(cases)) == 12 and cases == make_case_ids(12, seed=1) and cases != make_case_ids(12, seed=2)
    readers = [f"R{i}" for i in range(6)]
    arms = ["image", "saliency", "series"]
    plan = assign_arms(cases, readers, arms, seed=1)
    assert plan == assign_arms(cases, readers, arms, seed=1) and plan != assign_arms(cases, readers, arms, seed=2)
    for items in plan.values():
        assert sorted(i["case_id"] for i in items) == sorted(cases)  # every case exactly once
        assert Counter(i["arm"] for i in items) == {arm: 4 for arm in arms}  # balanced within a reader
    for case_id in cases:  # 6 readers, 3 arms: each case twice in each arm
        assert Counter(i["arm"] for items in plan.values() for i in items if i["case_id"] == case_id) == {
            a: 2 for a in arms
        }
    orders = {tuple(i["case_id"] for i in items) for items in plan.values()}
    assert len(orders) == 6  # reading order shuffled per reader
    uneven = assign_arms(cases[:5], readers[:4], arms, seed=3)
    assert all(sorted(i["case_id"] for i in items) == sorted(cases[:5]) for items in uneven.values())


def test_default_design_follows_the_arms() -> None:
    arms = default_arms(with_saliency=False)
    assert [a.id for a in arms] == ["image", "series"]
    questions = {q.id: q for q in default_questions(arms, "effusion")}
    assert questions["understandability"].arms == ("series",) and "effusion" in questions["confidence_after"].prompt
    only_image = default_questions(default_arms(False)[:1])
    assert {q.id for q in only_image} == {"confidence_before", "real_or_generated", "confidence_after", "comment"}
    config = {
        "inference_dir": "x",
        "cases": "c.csv",
        "readers": 2,
        "arms": [{"id": "plain", "label": "Plain", "shows": ["image"]}],
        "questions": [{"id": "q", "type": "likert", "prompt": "How?", "arms": ["nope"]}],
    }
    with pytest.raises(ReaderStudyError, match="unknown arm.*'nope'"):
        parse_config(config, Path("."))
    config["questions"][0].update(arms=["plain"], labels=["a", "b"])
    with pytest.raises(ReaderStudyError, match="one text per scale point"):
        parse_config(config, Path("."))
    del config["questions"][0]["labels"]
    parsed = parse_config(config, Path("/base"))
    assert parsed.readers == ["R01", "R02"] and parsed.inference_dir == Path("/base/x") and parsed.seed == 0


# ----------------------------------------------------------------------------------------- errors


def _fails(args: list[str], caplog: pytest.LogCaptureFixture, *expected: str) -> str:
    caplog.clear()
    assert main(args) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    for text in expected:
        assert text in messages[0], messages[0]
    return messages[0]


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"inference_dir": "/nonexistent/inference"}, ["inference_dir", "is not a folder"]),
        ({"cases": "missing.csv"}, ["missing.csv", "not found"]),
        ({"arms": [{"id": "a", "label": "A", "shows": ["image", "hologram"]}]}, ["'hologram'", "subset of"]),
        ({"questions": [{"id": "q", "type": "essay", "prompt": "Why?"}]}, ["unknown type 'essay'", "likert"]),
        ({"readerz": 3}, ["unknown key(s) 'readerz'"]),
        (
            {"arms": [{"id": "s", "label": "S", "shows": ["image", "saliency"]}]},
            ["shows saliency maps but 1 case(s) have none"],
        ),
    ],
)
def test_configuration_errors(
    change: dict, expected: list[str], inference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _cases_csv(tmp_path, inference["sources"][:1], ["1"])
    config = yaml.safe_load(_config(tmp_path, inference["out"]).read_text())
    config.update(change)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out" / "study"
    _fails(["reader-study", "build", "--config", str(tmp_path / "study.yaml"), "--out", str(out)], caplog, *expected)
    assert not out.exists()


def test_bad_yaml_and_unknown_sources(inference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\nseed: 1\n")
    _fails(
        ["reader-study", "build", "--config", str(bad), "--out", str(tmp_path / "o")], caplog, "not valid YAML", "line"
    )
    _fails(
        ["reader-study", "build", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")],
        caplog,
        "not found",
    )
    stranger = tmp_path / "stranger.dcm"
    stranger.write_bytes(b"")
    pd.DataFrame({"source": [inference["sources"][0]["path"], str(stranger)]}).to_csv(
        tmp_path / "cases.csv", index=False
    )
    config = _config(tmp_path, inference["out"])
    _fails(
        ["reader-study", "build", "--config", str(config), "--out", str(tmp_path / "o")],
        caplog,
        "1 source(s)",
        "stranger.dcm",
        "not in",
        "sources.csv",
    )
    _no_leftovers(tmp_path / "o")


def test_burned_in_sources_are_refused_unless_allowed(
    inference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _cases_csv(tmp_path, [inference["sources"][0], inference["sources"][3]], ["1", "0"])
    config = _config(tmp_path, inference["out"], readers=2)
    out = tmp_path / "study"
    _fails(
        ["reader-study", "build", "--config", str(config), "--out", str(out)],
        caplog,
        "BurnedInAnnotation YES",
        "PHIID98763_chest.dcm",
        "allow_burned_in: true",
    )
    _no_leftovers(out)
    config = _config(tmp_path, inference["out"], readers=2, allow_burned_in=True)
    assert main(["reader-study", "build", "--config", str(config), "--out", str(out)]) == 0
    assert len(json.loads((out / "study.json").read_text())["cases"]) == 2


def test_output_folder_rules(inference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _cases_csv(tmp_path, inference["sources"][:2], ["1", "0"])
    config = _config(tmp_path, inference["out"], readers=1, max_side=64)
    out = tmp_path / "study"
    out.mkdir()  # an empty folder is fine
    assert main(["reader-study", "build", "--config", str(config), "--out", str(out)]) == 0
    assert max(iio_read(next(out.glob("assets/*/image.png"))).shape) == 64
    before = (out / "study.json").read_bytes()
    _fails(["reader-study", "build", "--config", str(config), "--out", str(out)], caplog, "not empty", "--force")
    assert (out / "study.json").read_bytes() == before
    (out / "stale.txt").write_text("old")
    assert main(["reader-study", "build", "--config", str(config), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "study.json").read_bytes() == before
    (out / "responses.sqlite").write_bytes(b"answers")
    _fails(
        ["reader-study", "build", "--config", str(config), "--out", str(out), "--force"],
        caplog,
        "holds reader responses",
    )
    assert (out / "responses.sqlite").read_bytes() == b"answers"


def test_failed_build_leaves_nothing(inference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A saliency map that turns out unreadable while writing the assets: the half-built folder is removed."""
    np.save(tmp_path / "good.npy", np.ones((8, 8)))
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    _cases_csv(tmp_path, inference["sources"][:2], ["1", "0"], ["good.npy", "broken.npy"])
    config = _config(tmp_path, inference["out"], readers=1)
    out = tmp_path / "study"
    _fails(
        ["reader-study", "build", "--config", str(config), "--out", str(out)],
        caplog,
        "broken.npy",
        "not a readable .npy",
    )
    _no_leftovers(out)


def test_command_line_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai_exaggeration",
            "reader-study",
            "build",
            "--config",
            str(tmp_path / "nope.yaml"),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.yaml not found" in lines[0], result.stderr


# ----------------------------------------------------------------------- build -> serve -> analyze


def _an_answer(question: dict) -> object:
    kind = question["type"]
    if kind == "likert":
        return int(question.get("max", 5))
    if kind == "yes_no":
        return "yes"
    if kind == "forced_choice":
        return "generated"
    if kind == "choice":
        return [question["options"][0]] if question.get("multiple") else question["options"][0]
    return "reader comment"


def test_built_study_is_served_and_analysed(built: Path, tmp_path: Path) -> None:
    """The builder's folder works in the reading app as is: every reader answers every case, the analysis counts them all."""
    import shutil

    pytest.importorskip("fastapi", reason="the reading app needs fastapi (pip install -e .[test])")
    from fastapi.testclient import TestClient

    from monai_exaggeration.reader_study.analysis import analyze_study
    from monai_exaggeration.reader_study.server import create_app

    study_dir = shutil.copytree(built, tmp_path / "study")
    tokens = json.loads((study_dir / "private" / "readers.json").read_text())
    client = TestClient(create_app(study_dir))
    given = 0
    for token in tokens["readers"].values():
        headers = {"Authorization": f"Bearer {token}"}
        listing = client.get("/api/study", headers=headers).json()
        assert len(listing["cases"]) == 3
        for item in listing["cases"]:
            case = client.get(f"/api/cases/{item['case_id']}", headers=headers).json()
            choice = [q for q in case["questions"] if q["type"] == "forced_choice"]
            assert choice and case["forced_choice"]  # the default design asks real-versus-generated in every arm
            assert client.get(case["image"], headers=headers).status_code == 403  # not before the forced choice
            assert client.get(case["forced_choice"], headers=headers).status_code == 200
            for question in choice + [q for q in case["questions"] if q["type"] != "forced_choice"]:
                response = client.put(
                    f"/api/answers/{item['case_id']}/{question['id']}",
                    json={"value": _an_answer(question)},
                    headers=headers,
                )
                assert response.status_code == 200, response.text
                given += 1
            shown = [case["image"], *case.get("frames", []), *([case["saliency"]] if "saliency" in case else [])]
            assert all(client.get(url, headers=headers).status_code == 200 for url in shown)
    admin = {"Authorization": f"Bearer {tokens['admin_token']}"}
    progress = client.get("/api/progress", headers=admin).json()["readers"]
    assert all(row["complete"] == row["cases"] == 3 for row in progress)
    result = analyze_study(study_dir)
    assert result.summary["responses"] == given
    exported = pd.read_csv(result.out_dir / "responses.csv", dtype=str, keep_default_na=False)
    assert len(exported) == given and set(exported["reader_id"]) == set(tokens["readers"])
    assert (result.out_dir / "report.html").is_file()


def test_the_study_reads_only_columns_the_inference_logs_define() -> None:
    """The reader study names the log columns it reads; the inference's FRAME_COLUMNS/SOURCE_COLUMNS define them."""
    from monai_exaggeration.inference import FRAME_COLUMNS, SOURCE_COLUMNS
    from monai_exaggeration.reader_study import builder

    assert set(builder._FRAME_LOG_COLUMNS) <= set(FRAME_COLUMNS)
    assert set(builder._SOURCE_LOG_COLUMNS) <= set(SOURCE_COLUMNS)
