"""monai_exaggeration: explain chest X-ray classifiers by progressive exaggeration (MONAI plugin)."""

__version__ = "0.6.0"
