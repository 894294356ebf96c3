"""monai_exaggeration: explain chest X-ray classifiers by progressive exaggeration (MONAI plugin)."""

__version__ = "0.9.0"

from monai_exaggeration.errors import install_bundle_error_hook as _install_bundle_error_hook

_install_bundle_error_hook()  # one-line user errors under `python -m monai.bundle` (no-op otherwise)
