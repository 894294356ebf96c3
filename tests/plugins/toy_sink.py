"""A writer added from outside the package (issue 27): one module plus the config's ``writers`` entry.

``ScoreSheetWriter`` writes ``scores/<SeriesInstanceUID>.json`` (the series' frame scores and
targets) beside the run's other outputs; ``tests/test_sink_plugin.py`` runs it through
``run inference`` with an override config merged last.
"""

from __future__ import annotations

import json
from typing import Any

from monai_exaggeration.inference.writers import OutputRecord


class ScoreSheetWriter:
    """Each series' scores as a JSON sheet; ``fail`` makes it raise after writing (to test the clean-up)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __call__(self, record: OutputRecord, inferer: Any) -> None:
        result = record.result
        path = record.output_dir / "scores" / f"{record.series.series_instance_uid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet = {"source": result.source, "targets": result.centres, "scores": result.scores, "method": result.method}
        path.write_text(json.dumps(sheet))
        record.files.append(path)  # removed with the series if a later writer fails
        record.products["score_sheet"] = [path]
        if self.fail:
            raise RuntimeError("the toy sink failed on purpose")
