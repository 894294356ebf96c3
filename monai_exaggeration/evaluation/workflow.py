"""The evaluation workflow: explain every image of a labelled split and write metrics, tables, plots and a report.

Run from the bundle as an override of the inference config (``evaluate.json``)::

    python -m monai.bundle run evaluating \\
        --config_file "['bundles/cxr/configs/inference.json','bundles/cxr/configs/evaluate.json']" \\
        --bundle_root bundles/cxr --dataset_dir DIR

Output folder: ``metrics.json``, ``per_image.csv``, ``per_frame.csv``, ``plots/*.png`` and
``report.html`` (self-contained, opens offline).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_exaggeration.data import load_split, stratified_head
from monai_exaggeration.data.streaming import LoadFailure, batches, compute_threads, stream_inputs
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.evaluation.measures import SourceMeasures, measure_source
from monai_exaggeration.evaluation.plots import compatibility_plot, ctr_plot, examples_figure, identity_plot
from monai_exaggeration.evaluation.report import write_report
from monai_exaggeration.evaluation.summary import summarise
from monai_exaggeration.handlers import Progress
from monai_exaggeration.inference import ExaggerationInference
from monai_exaggeration.inference.workflow import SourceReader, file_sha256
from monai_exaggeration.networks.segmentation import HeartLungSegmenter
from monai_exaggeration.utils import as_bool, atomic_write, json_text, write_csv_atomic

__all__ = ["EvaluationResult", "ExplanationEvaluation", "evaluate_and_exit"]

logger = logging.getLogger(__name__)


def _built(thing: Any, kind: type) -> Any:
    """``thing`` itself, or what a zero-argument factory (``"_mode_": "callable"``) returns."""
    return thing if isinstance(thing, kind) else thing()


@dataclass
class EvaluationResult:
    """What an evaluation wrote."""

    output_dir: Path
    metrics: dict
    failures: list[dict]

    def describe(self) -> str:
        out = self.output_dir
        v = self.metrics["validity"]["written_frames"]
        c = self.metrics["clinical_faithfulness"]
        identity = self.metrics["preservation"]["identity"]["encoder"]["counterfactual"]
        return "\n".join(
            [
                f"{self.metrics['n_images']} images evaluated ({len(self.failures)} failed).",
                f"  validity (written frames): MAE {v['mae']:.3f}, flip {100 * v['flip_rate']:.1f} %, "
                f"median Spearman {v['median_spearman']:.2f}",
                f"  CTR: median Spearman with step {c['median_spearman_ctr_step']:.2f}, "
                f"mean ΔCTR {c['mean_delta_ctr']:.3f}; identity (encoder) {100 * (identity or 0):.1f} %",
                f"  report      : {out / 'report.html'}",
                f"  metrics     : {out / 'metrics.json'}",
                f"  tables      : {out / 'per_image.csv'}, {out / 'per_frame.csv'}",
                f"  plots       : {out / 'plots'}/",
            ]
        )


class ExplanationEvaluation:
    """Evaluate an explainer on labelled images with the measures of ``monai_exaggeration.metrics``.

    ``runner`` is the inference workflow (or a factory for it); it must generate every bin.
    ``segmenter`` measures CTR and the heart region, ``encoder`` gives the second feature space
    (both modules or factories). ``num_examples`` images (classes interleaved) are drawn in the
    examples figure; ``occlusion`` turns the (slower) occlusion-sensitivity maps on or off.
    """

    def __init__(
        self,
        runner: ExaggerationInference | Callable[[], ExaggerationInference],
        segmenter: HeartLungSegmenter | Callable[[], HeartLungSegmenter],
        encoder: nn.Module | Callable[[], nn.Module],
        finding: str = "cardiomegaly",
        num_examples: int = 4,
        occlusion: bool = True,
        gradcam_layer: str = "model.class_layers.relu",
        seed: int = 0,
    ) -> None:
        self.runner = _built(runner, ExaggerationInference).prepare()  # bins and size come from the explainer file
        every_bin = list(range(self.runner.num_bins))
        if list(self.runner.bins) != every_bin:
            raise ValueError(
                f"the evaluation needs a frame for every bin (0..{self.runner.num_bins - 1}); the inference "
                f"settings select {self.runner.bins}: leave first_bin 0, last_bin null and num_frames null"
            )
        if num_examples < 0:
            raise ValueError(f"num_examples must be 0 or more, got {num_examples}")
        self.segmenter = _built(segmenter, nn.Module).to(self.runner.device)
        self.encoder = _built(encoder, nn.Module).to(self.runner.device).eval()
        self.finding = finding
        self.num_examples = int(num_examples)
        self.occlusion = as_bool(occlusion, "occlusion")  # "--occlusion false" arrives as text
        self.gradcam_layer = gradcam_layer
        self.seed = int(seed)

    def evaluate(self, records: Sequence[dict], output_dir: str | os.PathLike, context: dict | None = None) -> EvaluationResult:
        """Measure every record, then write tables, metrics, plots and the report into ``output_dir``."""
        self.runner.prepare()
        output_dir = Path(output_dir)
        records = stratified_head(records, None, self.finding) if records and self.finding in records[0] else list(records)
        measures: list[SourceMeasures] = []
        failures: list[dict] = []
        start = time.perf_counter()
        progress = Progress(len(records), "evaluating", unit="image", log=logger)
        # Reader processes decode ahead; the explainer runs on a batch of sources at once (each series
        # normalised with its own statistics, as alone); then each source is measured.
        stream = stream_inputs(records, SourceReader(self.runner), num_workers=self.runner.num_workers)
        with compute_threads(self.runner.num_workers, self.runner.device):
            for group in batches(stream, self.runner.sources_per_batch()):
                batch_start = time.perf_counter()
                loaded = [(str(record["image"]), *item) for _, record, item in group if not isinstance(item, LoadFailure)]
                results = iter(self.runner.explain_loaded(loaded) if loaded else [])
                share = (time.perf_counter() - batch_start) / max(1, len(loaded))
                for index, record, item in group:
                    outcome = item if isinstance(item, LoadFailure) else next(results)
                    try:
                        if isinstance(outcome, LoadFailure):
                            raise CXRInputError(record["image"], outcome.error, outcome.hint)
                        if isinstance(outcome, Exception):
                            raise outcome
                        measures.append(
                            measure_source(
                                self.runner, self.segmenter, self.encoder, record, self.finding,
                                keep_example=index < self.num_examples, occlusion=self.occlusion,
                                gradcam_layer=self.gradcam_layer, result=outcome, seconds=share,
                            )
                        )
                    except CXRInputError as error:
                        logger.warning("skipped %s: %s", record["image"], error)
                        failures.append({"source": str(record["image"]), "error": str(error)})
                    progress.update(1)  # a bar on a terminal, else a log line every 30 s with images/s and time left
        progress.close()
        if len(measures) < 2:
            raise ValueError(f"only {len(measures)} of {len(records)} images could be evaluated; at least 2 are needed")
        metrics, images, frames = summarise(measures, self.seed)
        metrics["failures"] = len(failures)
        metrics["seconds_total"] = time.perf_counter() - start
        metrics["context"] = dict(context or {}) | self._models()
        plots = self._plots(metrics, [m.example for m in measures if m.example is not None], output_dir / "plots")
        write_csv_atomic(images, output_dir / "per_image.csv")
        write_csv_atomic(frames, output_dir / "per_frame.csv")
        if failures:
            import pandas as pd

            write_csv_atomic(pd.DataFrame(failures), output_dir / "errors.csv")
        atomic_write(output_dir / "metrics.json", lambda tmp: Path(tmp).write_text(json_text(metrics)))
        write_report(metrics, metrics["context"], plots, output_dir / "report.html")
        return EvaluationResult(output_dir, metrics, failures)

    def _models(self) -> dict:
        runner = self.runner
        facts = {
            "model version": runner.model_version,
            "explainer weights": str(runner.explainer_weights) if runner.explainer_weights else "in memory",
            "settings": f"{runner.num_bins} bins, {runner.image_size} px ({runner.aspect}), norm {runner.norm}, "
            f"frames at {runner.resolution} resolution, {runner.bits} bit",
            "device": str(runner.device),
            "software": f"monai_exaggeration, torch {torch.__version__}, Python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        if runner.explainer_weights and Path(runner.explainer_weights).is_file():
            facts["explainer sha256"] = file_sha256(runner.explainer_weights)[:12]
        return facts

    def _plots(self, metrics: dict, examples: list[dict], folder: Path) -> dict[str, Path]:
        plots = {
            "compatibility": compatibility_plot(metrics["validity"], folder / "compatibility.png"),
            "ctr": ctr_plot(metrics["clinical_faithfulness"], folder / "ctr_vs_step.png"),
            "identity": identity_plot(metrics["preservation"]["identity"], folder / "identity_per_step.png"),
        }
        if examples:
            plots["examples"] = examples_figure(examples, folder / "examples.png")
        return plots


def evaluate_and_exit(
    evaluation: ExplanationEvaluation | Callable[[], ExplanationEvaluation],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    finding: str = "cardiomegaly",
    split: str = "val",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    num_images: int | None = None,
) -> EvaluationResult:
    """Bundle entry point: evaluate one split of a labelled dataset, print the summary; exit 2 on unusable input."""
    try:
        records = load_split(dataset_dir, split, label=finding, fractions=fractions, seed=seed)
        if num_images is not None:
            records = stratified_head(records, int(num_images), finding)
        evaluation = _built(evaluation, ExplanationEvaluation)
        context = {
            "dataset": str(Path(dataset_dir).resolve()),
            "split": f"{split} (fractions {list(fractions)}, seed {seed}), {len(records)} images",
        }
        result = evaluation.evaluate(records, output_dir, context)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        raise SystemExit(2) from None
    print(result.describe(), flush=True)
    return result
