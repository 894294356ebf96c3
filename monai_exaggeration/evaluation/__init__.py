"""The evaluation suite: validity, realism, preservation, clinical faithfulness (CTR) and saliency, with a report;
faithfulness checks (shortcut test, model randomisation, label flip)."""

from monai_exaggeration.evaluation.faithfulness import FaithfulnessChecks
from monai_exaggeration.evaluation.measures import FEATURE_SPACES, SourceMeasures, counterfactual_step, measure_source
from monai_exaggeration.evaluation.report import write_report
from monai_exaggeration.evaluation.summary import summarise
from monai_exaggeration.evaluation.workflow import EvaluationResult, ExplanationEvaluation, evaluate_and_exit

__all__ = [
    "FEATURE_SPACES",
    "EvaluationResult",
    "ExplanationEvaluation",
    "FaithfulnessChecks",
    "SourceMeasures",
    "counterfactual_step",
    "evaluate_and_exit",
    "measure_source",
    "summarise",
    "write_report",
]
