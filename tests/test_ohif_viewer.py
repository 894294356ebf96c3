"""The node's outputs in a real viewer: OHIF v3 (``@ohif/app``, pinned) reading a throw-away Orthanc over
DICOMweb, driven by Chromium through Playwright.

Skipped with a message when OHIF's dist is not cached (``.ci/run`` fetches it), or when Chromium,
Playwright or Orthanc with its DICOMweb plugin are missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
from orthanc_harness import LocalOrthanc, _dicomweb_plugin, orthanc_binary

from monai_exaggeration.viewer import OHIF_VERSION, ViewerServer, ohif_dist

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPLAINER = REPO_ROOT / "bundles" / "cxr" / "models" / "explainer.pt"


def _requirements() -> tuple[str, Path]:
    try:
        dist = ohif_dist(fetch=False)
    except FileNotFoundError as error:
        pytest.skip(f"OHIF {OHIF_VERSION} is not cached ({error}); .ci/run fetches it")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    if orthanc_binary() is None or _dicomweb_plugin() is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    return chromium, dist


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, rg1_uncr: Path):
    """RG1 explained as the node does it (SC series, GSPS, SR with CTR widths, burned-in copy), in an Orthanc."""
    chromium, dist = _requirements()
    from monai_exaggeration.dicom.report import read_report
    from monai_exaggeration.viewer_demo import explain_and_send

    work = tmp_path_factory.mktemp("ohif")
    pacs = LocalOrthanc(work / "orthanc").start()
    try:
        made = explain_and_send(rg1_uncr, f"{pacs.url}/dicom-web", work)  # what viewer-demo does
        assert len(made.files) == 22 and len(pacs.instances()) == 22
        yield {
            "pacs": pacs,
            "dist": dist,
            "chromium": chromium,
            "rows": made.rows,
            "report": read_report(made.report),
            "tracking_uids": _tracking_uids(made.report),
            "study_uid": made.study_instance_uid,
        }
    finally:
        pacs.stop(kill=True)


def _tracking_uids(path: Path) -> dict[str, list[str]]:
    """The report's tracking UIDs by the frame their group is drawn on."""
    by_frame: dict[str, list[str]] = {}
    groups = pydicom.dcmread(path).ContentSequence[-1].ContentSequence  # Imaging Measurements
    for group in groups:
        uid = next(item.UID for item in group.ContentSequence if item.ValueType == "UIDREF")
        region = next(item for item in group.ContentSequence if item.ValueType == "SCOORD")
        frame = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        by_frame.setdefault(str(frame), []).append(str(uid))
    return by_frame


def _dismiss(page) -> None:
    """OHIF's first-visit tour and its investigational-use notice."""
    for label in ("Skip all", "Confirm and hide"):
        button = page.get_by_text(label, exact=True)
        if button.count():
            button.first.click()


def test_series_and_report_in_ohif(study, tmp_path: Path) -> None:
    """The SC series is one 10-frame stack that steps frame by frame; the SR loads with no error and draws
    every frame's groups (the frame's probability, target and CTR; the cardiac and thoracic widths)."""
    from playwright.sync_api import expect, sync_playwright

    artifacts = Path(os.environ.get("EXAG_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    rows, report = study["rows"], study["report"]
    console: list[tuple[str, str]] = []
    with (
        ViewerServer(study["dist"], f"{study['pacs'].url}/dicom-web") as viewer,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=study["chromium"], headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: console.append((message.type, message.text)))
        page.goto(viewer.study_url(study["study_uid"]))
        thumbnails = page.locator('[data-cy="study-browser-thumbnail"]')
        expect(thumbnails).to_have_count(2, timeout=90_000)  # the series and its burned-in copy, as stacks
        texts = thumbnails.all_inner_texts()
        assert any("S:900" in text and text.rstrip().endswith("10") for text in texts), texts
        assert any("Captioned cardiomegaly" in text and "S:903" in text for text in texts), texts
        overlay = page.locator('[data-cy="viewport-overlay-bottom-right"]')
        expect(overlay).to_contain_text("(1/10)", timeout=60_000)
        _dismiss(page)
        page.locator('[data-cy="viewport-pane"]').first.click()
        for frame in range(2, 11):  # step through the stack with the keyboard
            page.keyboard.press("ArrowDown")
            expect(overlay).to_contain_text(f"({frame}/10)")
        page.screenshot(path=artifacts / "ohif_series.png")
        # the report: OHIF's SR display draws each group with its values on the frame it refers to
        page.locator('[data-cy="study-browser-thumbnail-no-image"][data-series="902"]').dblclick()
        labels = page.locator("svg.svg-layer g[data-annotation-uid]")
        expect(labels).to_have_count(3, timeout=60_000)  # frame 1: the frame, its cardiac and thoracic widths
        first = str(rows["sop_instance_uid"].iloc[0])
        drawn = sorted(labels.evaluate_all("nodes => nodes.map(n => n.getAttribute('data-annotation-uid'))"))
        assert drawn == sorted(study["tracking_uids"][first])
        text = " ".join(labels.all_text_contents())
        entry = report[0]
        assert f"Probability: {entry['score']:.2f}" in text
        assert f"Cardiothoracic ratio: {entry['ctr']:.2f}" in text
        assert f"Width: {entry['cardiac_width'].width:.2f} {{pixels}}" in text
        assert f"Width: {entry['thoracic_width'].width:.2f} {{pixels}}" in text
        layer = page.locator("svg.svg-layer")
        assert layer.locator("polyline").count() == 1 and layer.locator('line[stroke-dasharray="4,4"]').count() == 2
        page.screenshot(path=artifacts / "ohif_report.png")
        page.locator('[data-cy="viewport-pane"]').first.click()
        for _ in range(9):
            page.keyboard.press("ArrowDown")
        expect(overlay).to_contain_text("(10/10)")
        last = report[-1]
        expect(labels.first).to_be_attached()
        expect(page.locator("svg.svg-layer")).to_contain_text(f"Probability: {last['score']:.2f}")
        page.screenshot(path=artifacts / "ohif_report_last.png")
        assert page.get_by_text("Something went wrong").count() == 0
        browser.close()
    errors = [text for kind, text in console if kind == "error"]
    assert errors == [], errors
    unsupported = [text for _, text in console if "not currently supported" in text]
    assert unsupported == [], unsupported


def test_viewer_demo_command(tmp_path: Path) -> None:
    """``viewer-demo``: a private Orthanc, the explained study stored in it, the viewer's URL printed and served."""
    import subprocess
    import sys

    _requirements()
    result = subprocess.run(
        [sys.executable, "-m", "monai_exaggeration", "viewer-demo", "--port", "0", "--serve_seconds", "1"]
        + ["--work_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "22 instances stored. Open the viewer:" in result.stdout and "/viewer?StudyInstanceUIDs=" in result.stdout
    assert (tmp_path / "explained" / "frames.csv").is_file() and (tmp_path / "orthanc" / "orthanc.json").is_file()
