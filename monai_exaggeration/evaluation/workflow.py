"""The evaluation workflow: explain every image of a labelled split and write metrics, tables, plots and a report.

Run from the bundle as an override of the inference config (``evaluate.json``)::

    python -m monai.bundle run evaluating \\
        --config_file "['bundles/cxr/configs/inference.json','bundles/cxr/configs/evaluate.json']" \\
        --bundle_root bundles/cxr --dataset_dir DIR

Output folder: ``metrics.json``, ``per_image.csv``, ``per_frame.csv``, ``plots/*.png`` and
``report.html`` (self-contained, opens offline).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from monai_exaggeration.data import SPLIT_FRACTIONS, SPLIT_SEED, load_split, stratified_head
from monai_exaggeration.data.streaming import ERROR_COLUMNS, LoadFailure, failure_row
from monai_exaggeration.errors import CXRInputError
from monai_exaggeration.evaluation.comparison import compare_methods
from monai_exaggeration.evaluation.faithfulness import FaithfulnessChecks
from monai_exaggeration.evaluation.measures import SourceMeasures, measure_source
from monai_exaggeration.evaluation.plots import compatibility_plot, ctr_plot, examples_figure, identity_plot
from monai_exaggeration.evaluation.report import write_report
from monai_exaggeration.evaluation.summary import summarise
from monai_exaggeration.findings import finding_profile
from monai_exaggeration.handlers import Progress
from monai_exaggeration.inference import ExaggerationInference, Explained, SeriesEngine, SourceDataset
from monai_exaggeration.methods import check_method
from monai_exaggeration.networks.segmentation import HeartLungSegmenter
from monai_exaggeration.utils import as_bool, atomic_write, for_inference, json_text, write_csv_atomic

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
    examples: list[dict] = field(default_factory=list, repr=False)  # the example images' series and maps

    def describe(self) -> str:
        out = self.output_dir
        v = self.metrics["validity"]["written_frames"]
        c = self.metrics["clinical_faithfulness"]
        a = self.metrics.get("anatomy", {})
        identity = self.metrics["preservation"]["identity"]["encoder"]["counterfactual"]
        clinical = (
            f"CTR: median Spearman with step {c['median_spearman_ctr_step']:.2f}, mean ΔCTR {c['mean_delta_ctr']:.3f}; "
            if c.get("n_series")
            else "no clinical measure for this finding; "
        )
        share = a.get("median_geometric_share")
        return "\n".join(
            [
                f"{self.metrics['n_images']} images evaluated ({len(self.failures)} failed).",
                f"  validity (written frames): MAE {v['mae']:.3f}, flip {100 * v['flip_rate']:.1f} %, "
                f"median Spearman {v['median_spearman']:.2f}",
                f"  {clinical}geometric share {'n/a' if share is None else f'{share:.2f}'}; "
                f"identity (encoder) {100 * (identity or 0):.1f} %",
                *self._faithfulness_lines(),
                f"  report      : {out / 'report.html'}",
                f"  metrics     : {out / 'metrics.json'}",
                f"  tables      : {out / 'per_image.csv'}, {out / 'per_frame.csv'}",
                f"  plots       : {out / 'plots'}/",
            ]
        )

    def _faithfulness_lines(self) -> list[str]:
        f = self.metrics.get("faithfulness")
        if not f:
            return []
        s, flip, random = f["shortcut"], f["label_flip"], f["randomisation"]

        def pct(value):
            return "n/a" if value is None else f"{100 * value:.0f} %"

        def num(value):
            return "n/a" if value is None else f"{value:.2f}"

        shortcut = (
            f"shortcut hit {pct(s['hit_rate'])}, box ratio {num(s['median_box_ratio'])}"
            if s.get("n_series")
            else "shortcut test not run (no markers.csv)"
        )
        return [
            f"  faithfulness: {shortcut}; label flip followed {pct(flip['follow_rate'])}, mirrored "
            f"{pct(flip['mirror_rate'])}; randomised SSIM {num(random['full_ssim'])}, ρ {num(random['full_spearman'])}"
        ]


class ExplanationEvaluation:
    """Evaluate an explainer on labelled images with the measures of ``monai_exaggeration.metrics``.

    ``runner`` is the inference workflow (or a factory for it); it must generate every bin.
    ``segmenter`` measures CTR and the heart region, ``encoder`` gives the second feature space
    (both modules or factories). ``num_examples`` images (classes interleaved) are drawn in the
    examples figure; ``occlusion`` turns the (slower) occlusion-sensitivity maps on or off.
    ``method`` (a :data:`~monai_exaggeration.methods.METHOD_NAMES` entry) is passed to a ``runner``
    factory, so one inference config builds every method's runner; None keeps the runner's own.
    """

    def __init__(
        self,
        runner: ExaggerationInference | Callable[[], ExaggerationInference],
        segmenter: HeartLungSegmenter | Callable[[], HeartLungSegmenter],
        encoder: nn.Module | Callable[[], nn.Module],
        finding: str | None = None,
        num_examples: int = 4,
        occlusion: bool = True,
        gradcam_layer: str = "model.class_layers.relu",
        seed: int = 0,
        method: str | None = None,
        faithfulness: FaithfulnessChecks | None = None,
    ) -> None:
        if method is not None and not isinstance(runner, ExaggerationInference):
            runner = functools.partial(runner, method=method)
        self.runner = _built(runner, ExaggerationInference).prepare()
        if method is not None and self.runner.method_name != method:
            raise ValueError(
                f"the evaluation was asked for method {method!r} but its runner uses {self.runner.method_name!r}"
            )  # bins and size come from the explainer file
        every_bin = list(range(self.runner.num_bins))
        if list(self.runner.bins) != every_bin:
            raise ValueError(
                f"the evaluation needs a frame for every bin (0..{self.runner.num_bins - 1}); the inference "
                f"settings select {self.runner.bins}: leave first_bin 0, last_bin null and num_frames null"
            )
        if num_examples < 0:
            raise ValueError(f"num_examples must be 0 or more, got {num_examples}")
        self.segmenter = _built(segmenter, nn.Module).to(self.runner.device)
        self.encoder = for_inference(_built(encoder, nn.Module), self.runner.device)  # (the segmentation gains nothing)
        self.finding = finding or self.runner.finding  # None: the finding the explainer file records
        self.profile = finding_profile(self.finding)
        self.num_examples = int(num_examples)
        self.occlusion = as_bool(occlusion, "occlusion")  # "--occlusion false" arrives as text
        self.gradcam_layer = gradcam_layer
        self.seed = int(seed)
        self.faithfulness = faithfulness

    def evaluate(
        self, records: Sequence[dict], output_dir: str | os.PathLike, context: dict | None = None
    ) -> EvaluationResult:
        """Measure every record, then write tables, metrics, plots and the report into ``output_dir``."""
        self.runner.prepare()
        output_dir = Path(output_dir)
        label = self.profile.label
        records = stratified_head(records, None, label) if records and label in records[0] else list(records)
        measures: list[SourceMeasures] = []
        failures: list[dict] = []
        start = time.perf_counter()
        progress = Progress(len(records), "evaluating", unit="image", log=logger)

        def measure(explained: Explained) -> None:  # the sink: each source measured as its batch comes out
            index = len(measures) + len(failures)
            try:
                if isinstance(explained.outcome, LoadFailure):
                    raise CXRInputError(explained.path, explained.outcome.error, explained.outcome.hint)
                if isinstance(explained.outcome, Exception):
                    raise explained.outcome
                measures.append(
                    measure_source(
                        self.runner,
                        self.segmenter,
                        self.encoder,
                        explained.record,
                        self.profile,
                        keep_example=index < self.num_examples,
                        occlusion=self.occlusion,
                        gradcam_layer=self.gradcam_layer,
                        result=explained.outcome,
                        seconds=explained.seconds,
                        loaded=explained.item,
                    )
                )
            except CXRInputError as error:
                logger.warning("skipped %s: %s", explained.path, error)
                failures.append(failure_row(explained.path, error))
            progress.update(1)  # a bar on a terminal, else a log line every 30 s with images/s and time left

        # The inference's engine: reader processes decode ahead, the explainer runs on a batch of sources
        # at once (each series normalised with its own statistics, as alone), then each source is measured.
        SeriesEngine(self.runner.inferer, SourceDataset(records, self.runner.reading), sinks=[measure]).run()
        progress.close()
        if len(measures) < 2:
            raise ValueError(f"only {len(measures)} of {len(records)} images could be evaluated; at least 2 are needed")
        metrics, images, frames = summarise(measures, self.seed)
        metrics["failures"] = len(failures)
        metrics["seconds_total"] = time.perf_counter() - start
        metrics["context"] = dict(context or {}) | self._models()
        plots = self._plots(metrics, [m.example for m in measures if m.example is not None], output_dir / "plots")
        if self.faithfulness is not None:
            checked = self.faithfulness.run(self.runner, records, label, output_dir / "plots")
            metrics["faithfulness"] = checked["metrics"]
            plots |= {f"faithfulness_{name}": path for name, path in checked["plots"].items()}
            write_csv_atomic(pd.DataFrame(checked["rows"]), output_dir / "faithfulness.csv")
        write_csv_atomic(images, output_dir / "per_image.csv")
        write_csv_atomic(frames, output_dir / "per_frame.csv")
        if failures:
            write_csv_atomic(pd.DataFrame(failures, columns=ERROR_COLUMNS), output_dir / "errors.csv")
        atomic_write(output_dir / "metrics.json", lambda tmp: Path(tmp).write_text(json_text(metrics)))
        write_report(metrics, metrics["context"], plots, output_dir / "report.html")
        return EvaluationResult(output_dir, metrics, failures, [m.example for m in measures if m.example is not None])

    def _models(self) -> dict:
        runner = self.runner
        facts = {"method": runner.method_name, "model version": runner.model_version}
        facts |= {key: value for key, value in runner.series_method.describe().items() if "sha256" not in key}
        if runner.method_options:
            facts["method options"] = json.dumps(runner.method_options, sort_keys=True)
        facts |= {
            "settings": f"{runner.num_bins} bins, {runner.image_size} px ({runner.aspect}), norm {runner.norm}, "
            f"frames at {runner.resolution} resolution, {runner.bits} bit"
            + (", calibrated" if getattr(runner.series_method, "calibrate", False) else ""),
            "device": str(runner.device),
            "software": f"monai_exaggeration, torch {torch.__version__}, Python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        facts |= {key: value for key, value in runner.series_method.describe().items() if "sha256" in key}
        return facts

    def _plots(self, metrics: dict, examples: list[dict], folder: Path) -> dict[str, Path]:
        plots = {"compatibility": compatibility_plot(metrics["validity"], folder / "compatibility.png")}
        if metrics["clinical_faithfulness"].get("n_series"):  # a finding with a clinical measure (CTR)
            plots["ctr"] = ctr_plot(metrics["clinical_faithfulness"], folder / "ctr_vs_step.png")
        plots["identity"] = identity_plot(metrics["preservation"]["identity"], folder / "identity_per_step.png")
        if examples:
            plots["examples"] = examples_figure(examples, folder / "examples.png")
        return plots


def evaluate_and_exit(
    evaluation: ExplanationEvaluation | Callable[[], ExplanationEvaluation],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    finding: str | None = None,
    split: str = "val",
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = SPLIT_SEED,
    num_images: int | None = None,
    methods: Sequence[str] | None = None,
) -> EvaluationResult | pd.DataFrame:
    """Bundle entry point: evaluate one split of a labelled dataset, print the summary; exit 2 on unusable input.

    ``methods``: None evaluates the runner's method into ``output_dir``; a list of method names
    evaluates each on the same images (``output_dir/<method>/``) and writes the comparison
    (:func:`~monai_exaggeration.evaluation.comparison.compare_methods`) into ``output_dir``.
    """
    try:
        if finding is None:  # the finding the explainer file records
            evaluation = _built(evaluation, ExplanationEvaluation) if not methods else evaluation
            finding = evaluation.finding if isinstance(evaluation, ExplanationEvaluation) else evaluation().finding
        label = finding_profile(finding).label
        records = load_split(dataset_dir, split, label=label, fractions=fractions, seed=seed)
        if num_images is not None:
            records = stratified_head(records, int(num_images), label)
        context = {
            "dataset": str(Path(dataset_dir).resolve()),
            "split": f"{split} (fractions {list(fractions)}, seed {seed}), {len(records)} images",
        }
        if methods:
            if isinstance(evaluation, ExplanationEvaluation):
                raise ValueError('comparing methods needs the evaluation as a factory ("_mode_": "callable")')
            methods = [methods] if isinstance(methods, str) else list(methods)
            for name in methods:
                check_method(name, None)
            table, _ = compare_methods(lambda name: evaluation(method=name), methods, records, output_dir, context)
            print(describe_comparison(table, Path(output_dir)), flush=True)
            return table
        evaluation = _built(evaluation, ExplanationEvaluation)
        result = evaluation.evaluate(records, output_dir, context)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        raise SystemExit(2) from None
    print(result.describe(), flush=True)
    return result


def describe_comparison(table: pd.DataFrame, output_dir: Path) -> str:
    """The comparison's console summary: a line per method, then where the files are."""
    lines = [f"{len(table)} rows compared on {int(table['n_images'].max())} images:"]
    for _, row in table.iterrows():
        if pd.isna(row.get("validity_mae")):
            lines.append(f"  {row['method']:<26} mass inside the heart {row['difference_mass_inside_heart']:.2f}")
            continue
        faithfulness = (
            f"; shortcut hit {100 * row['shortcut_hit_rate']:.0f} %, flip followed {100 * row['flip_follow_rate']:.0f} %, "
            f"randomised SSIM {row['randomised_ssim']:.2f}"
            if not pd.isna(row.get("flip_follow_rate")) and not pd.isna(row.get("shortcut_hit_rate"))
            else ""
        )
        lines.append(
            f"  {row['method']:<26} {row['seconds_per_series']:.2f} s/series, MAE {row['validity_mae']:.3f}, "
            f"flip {100 * row['flip_rate']:.0f} %, ΔCTR {row['mean_delta_ctr']:+.3f}, SSIM outside {row['ssim_outside_heart']:.3f}"
            + faithfulness
        )
    lines += [f"  report      : {output_dir / 'report.html'}", f"  table       : {output_dir / 'methods.csv'}"]
    return "\n".join(lines)
