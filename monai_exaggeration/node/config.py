"""The DICOM node's settings: one YAML file, validated with messages that name the key and the fix.

    node:
      ae_title: EXAGGERATION            # our AE title (the PACS sends to it)
      host: 0.0.0.0                     # interface to listen on
      port: 11112
      allowed_calling_aes: [PACS]       # who may send; [] = anyone (not recommended)
      accept: [CR, DX, DX_PROCESSING, SC]
      max_associations: 10
      refuse_unusable: true             # failure status for what the inference would refuse from the header
      tls: {cert: node.pem, key: node.key, ca: pacs-ca.pem}   # optional; ca: require client certificates
    work_dir: /var/lib/exaggeration-node  # spool/, queue.sqlite, jobs/, export_ledger.sqlite
    queue: {max_jobs: 1000, max_spool_mb: 20480, min_free_mb: 1024, max_attempts: 5, backoff_s: 60, max_backoff_s: 3600}
    destination: research-pacs         # a name in `destinations:` (or in destinations_file)
    destinations: {research-pacs: {host: pacs, port: 11112, called_ae: ARCHIVE, calling_ae: EXAGGERATION}}
    inference: {num_frames: 10, quicklook: false}   # keys of bundles/cxr/configs/inference.json
    outputs: {presentation_state: true, burned_in: false, report: true, ctr: true, keep_results: false}

Relative paths are relative to the YAML file's folder. The file is checked by pydantic models
(:class:`NodeFile`, :mod:`~monai_exaggeration.config_models`); :func:`load_node_config` raises
:class:`NodeConfigError` (a :class:`~monai_exaggeration.errors.UserError`) for anything wrong, one
line naming the key.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, model_validator

from monai_exaggeration.config_models import (
    LIST,
    AeTitle,
    Flag,
    Number,
    Port,
    Problem,
    StrictModel,
    Text,
    Whole,
    as_list,
    at_least,
    one_line,
)
from monai_exaggeration.errors import UserError
from monai_exaggeration.retry import BACKOFF_S, RETRIES

__all__ = [
    "SOP_CLASSES",
    "NodeConfig",
    "NodeConfigError",
    "NodeFile",
    "OutputSettings",
    "QueueSettings",
    "ScpSettings",
    "TlsFiles",
    "load_node_config",
]

#: The storage SOP classes the node can accept, by the names used in ``node.accept``.
SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "DX_PROCESSING": "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "SC": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
#: inference.json keys the node sets itself (they may not appear under ``inference:``).
_NODE_OWNED = {
    "input",
    "output_dir",
    "export",
    "export_config",
    "export_destination",
    "runner",
    "inference",
    "run",
    "classifier",
    "exporter",
    "imports",
    "network_def",
    "ckpt_dir",
    "dataset_dir",
    "preprocessing",
    "dataset",
    "inferer",
    "writers",
    "handlers",
    "evaluator",
    "burned_in_copy",  # the node's own switch is outputs.burned_in (the copies it writes are the ones it sends)
}


class NodeConfigError(UserError, ValueError):
    """The node's YAML file is missing, unreadable or has a wrong setting."""


def _file(value: Any, info: ValidationInfo) -> str:
    """An existing file, relative to the YAML file's folder (``context["base"]``); "" when not set."""
    if not value:
        return ""
    resolved = Path((info.context or {}).get("base", ".")) / Path(str(value)).expanduser()
    if not resolved.is_file():
        raise Problem(f"file not found: {resolved}")
    return str(resolved)


def _sop_classes(value: Any) -> list[str]:
    names = [str(name).upper() for name in as_list(value)]
    if not names or any(name not in SOP_CLASSES for name in names):
        raise Problem(f"choose from {', '.join(SOP_CLASSES)}; got {value!r}")
    return names


#: A file that must exist (relative to the YAML file).
File = Annotated[str, BeforeValidator(_file)]
AtLeastOne = Annotated[Whole, at_least(1)]
NotNegative = Annotated[Number, at_least(0)]


class TlsFiles(StrictModel):
    """``node.tls``: the node's certificate and key; with ``ca``, callers must present a certificate it signed."""

    cert: File = ""
    key: File = ""
    ca: File = ""

    @model_validator(mode="after")
    def _loadable(self) -> TlsFiles:
        if (self.key or self.ca) and not self.cert:
            raise Problem("cert (the node's certificate) is needed for TLS")
        try:
            self.context()
        except (OSError, ssl.SSLError) as error:
            raise Problem(f"cannot load the certificate files: {error}") from None
        return self

    def context(self) -> ssl.SSLContext | None:
        if not self.cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, keyfile=self.key or None)
        if self.ca:
            context.load_verify_locations(cafile=self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class ScpSettings(StrictModel):
    """``node:``, the Storage SCP."""

    ae_title: AeTitle = "EXAGGERATION"
    host: Text = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aes: Annotated[list[AeTitle], LIST] = Field(default_factory=list)
    accept: Annotated[list[str], BeforeValidator(_sop_classes)] = Field(default_factory=lambda: list(SOP_CLASSES))
    max_associations: AtLeastOne = 10
    refuse_unusable: Flag = True  # answer a failure status to instances the inference would refuse from the header
    tls: TlsFiles | None = None
    network_timeout: Number = 60.0

    @property
    def tls_cert(self) -> str:
        return self.tls.cert if self.tls else ""

    @property
    def accepted_sop_classes(self) -> dict[str, str]:
        """SOP Class UID -> name, of the accepted classes."""
        return {SOP_CLASSES[name]: name for name in self.accept}

    def ssl_context(self) -> ssl.SSLContext | None:
        """Server TLS context (None without ``tls``); with ``ca`` clients must present a certificate it signed."""
        return self.tls.context() if self.tls else None


class QueueSettings(StrictModel):
    max_jobs: AtLeastOne = 1000  # jobs not yet done (queued, running, waiting to retry)
    max_spool_mb: NotNegative = 20480.0  # received files waiting in the spool
    min_free_mb: NotNegative = 1024.0  # free space the spool's disk must keep
    max_attempts: AtLeastOne = 5
    backoff_s: NotNegative = 60.0
    max_backoff_s: NotNegative = 3600.0
    poll_s: Number = 0.5


class OutputSettings(StrictModel):
    presentation_state: Flag = True
    burned_in: Flag = False
    report: Flag = True
    ctr: Flag = True
    keep_results: Flag = False
    export_retries: Annotated[Whole, at_least(0)] = RETRIES
    export_backoff_s: NotNegative = BACKOFF_S


def _work_dir(value: Any) -> str:
    if not value:
        raise Problem("set the folder for the spool, the queue and the results")
    return str(value)


def _inference(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Problem(f"must be a mapping of settings, got {type(value).__name__}")
    owned = sorted(set(value) & _NODE_OWNED)
    if owned:
        raise Problem("is set by the node itself; remove it", key=(owned[0],))
    return dict(value)


class NodeFile(StrictModel):
    """The whole ``node.yaml`` (see the module docstring)."""

    work_dir: Annotated[str, BeforeValidator(_work_dir)] = Field(default=None, validate_default=True)
    node: ScpSettings = Field(default_factory=ScpSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    inference: Annotated[dict[str, Any], BeforeValidator(_inference)] = Field(default_factory=dict)
    destination: Text | None = None
    destinations: Any = None
    destinations_file: File | None = None
    threads: AtLeastOne | None = None

    @model_validator(mode="after")
    def _where_results_go(self) -> NodeFile:
        if self.destinations_file and self.destinations:
            raise Problem("give either destinations: or destinations_file:, not both", key=("destinations_file",))
        if not self.destinations_file and not self.destinations:
            raise Problem(
                "say where results go: a destinations: mapping (as in docs/pacs_export.md) or destinations_file:",
                key=("destinations",),
            )
        return self


@dataclass
class NodeConfig:
    path: Path
    work_dir: Path
    scp: ScpSettings
    queue: QueueSettings
    outputs: OutputSettings
    destination_file: Path
    destination_name: str | None
    inference: dict[str, Any]
    threads: int | None = None

    def input_limits(self):
        """The inference's :class:`~monai_exaggeration.transforms.InputLimits`: the bundle's ``input_limits``,
        updated by ``inference.input_limits`` of this file."""
        import json

        from monai_exaggeration.transforms.readers import InputLimits

        try:
            config = json.loads((bundle_root(self.path, self.inference) / "configs" / "inference.json").read_text())
        except (OSError, ValueError):
            config = {}
        settings = {}
        for source in (config.get("input_limits"), self.inference.get("input_limits")):
            if isinstance(source, dict):
                settings.update(source)
        known = {f.name for f in fields(InputLimits)}
        return InputLimits.for_sources(
            **{
                key: value
                for key, value in settings.items()
                if key in known and isinstance(value, (int, float)) and not isinstance(value, bool)
            }
        )

    def destination(self):
        """The :class:`~monai_exaggeration.export.Destination` results are sent to."""
        from monai_exaggeration.export import DestinationError, select_destination

        try:
            return select_destination(self.destination_file, self.destination_name)
        except DestinationError as error:
            raise NodeConfigError(f"{self.path}: {error}") from None


def bundle_root(path: Path, inference: dict) -> Path:
    """The bundle whose ``configs/inference.json`` the node runs (``inference.bundle_root``, else the shipped one)."""
    from monai_exaggeration.bundle import default_bundle_root

    if inference.get("bundle_root"):
        return path.parent / Path(str(inference["bundle_root"])).expanduser()
    return Path(default_bundle_root("cxr"))


def _check_inference(path: Path, inference: dict) -> None:
    """Every ``inference:`` key must be a setting of the bundle's inference.json."""
    import json

    config = bundle_root(path, inference) / "configs" / "inference.json"
    try:
        known = set(json.loads(config.read_text())) | {"bundle_root"}
    except (OSError, ValueError) as error:
        raise NodeConfigError(f"{path}: inference.bundle_root: cannot read {config}: {error}") from None
    unknown = sorted(set(inference) - known)
    if unknown:
        raise NodeConfigError(f"{path}: inference.{unknown[0]}: not a setting of {config}")


def load_node_config(path: str | os.PathLike) -> NodeConfig:
    """Read and check the node's YAML file (see the module docstring)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise NodeConfigError(f"node configuration not found: {path} -- see docs/dicom_node.md for an example")
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise NodeConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict):
        raise NodeConfigError(
            f"{path}: must be a mapping with node:, work_dir:, destination(s): ... (see docs/dicom_node.md)"
        )
    try:
        settings = NodeFile.model_validate(content, context={"base": path.parent})
    except ValidationError as error:
        raise NodeConfigError(f"{path}: {one_line(error)}") from None
    _check_inference(path, settings.inference)
    config = NodeConfig(
        path=path,
        work_dir=(path.parent / Path(settings.work_dir).expanduser()).absolute(),
        scp=settings.node,
        queue=settings.queue,
        outputs=settings.outputs,
        destination_file=Path(settings.destinations_file) if settings.destinations_file else path,
        destination_name=settings.destination or None,
        inference=settings.inference,
        threads=settings.threads,
    )
    config.destination()  # checked now: a bad destination is a configuration error
    return config
