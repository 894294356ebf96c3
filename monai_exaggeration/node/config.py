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

Relative paths are relative to the YAML file's folder. :func:`load_node_config` raises
:class:`NodeConfigError` (a :class:`~monai_exaggeration.errors.UserError`) for anything wrong.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from monai_exaggeration.errors import UserError

__all__ = ["SOP_CLASSES", "NodeConfig", "NodeConfigError", "OutputSettings", "QueueSettings", "ScpSettings",
           "load_node_config"]

#: The storage SOP classes the node can accept, by the names used in ``node.accept``.
SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "DX_PROCESSING": "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "SC": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
#: inference.json keys the node sets itself (they may not appear under ``inference:``).
_NODE_OWNED = {"input", "output_dir", "export", "export_config", "export_destination", "runner", "inference", "run",
               "classifier", "exporter", "imports", "network_def", "ckpt_dir", "dataset_dir", "preprocessing", "dataset",
               "inferer", "writers", "handlers", "evaluator"}


class NodeConfigError(UserError, ValueError):
    """The node's YAML file is missing, unreadable or has a wrong setting."""


@dataclass
class ScpSettings:
    ae_title: str = "EXAGGERATION"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: list[str] = field(default_factory=list)
    accept: list[str] = field(default_factory=lambda: list(SOP_CLASSES))
    max_associations: int = 10
    refuse_unusable: bool = True  # answer a failure status to instances the inference would refuse from the header
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    network_timeout: float = 60.0

    @property
    def accepted_sop_classes(self) -> dict[str, str]:
        """SOP Class UID -> name, of the accepted classes."""
        return {SOP_CLASSES[name]: name for name in self.accept}

    def ssl_context(self) -> ssl.SSLContext | None:
        """Server TLS context (None without ``tls``); with ``ca`` clients must present a certificate it signed."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, keyfile=self.tls_key or None)
        if self.tls_ca:
            context.load_verify_locations(cafile=self.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass
class QueueSettings:
    max_jobs: int = 1000  # jobs not yet done (queued, running, waiting to retry)
    max_spool_mb: float = 20480.0  # received files waiting in the spool
    min_free_mb: float = 1024.0  # free space the spool's disk must keep
    max_attempts: int = 5
    backoff_s: float = 60.0
    max_backoff_s: float = 3600.0
    poll_s: float = 0.5


@dataclass
class OutputSettings:
    presentation_state: bool = True
    burned_in: bool = False
    report: bool = True
    ctr: bool = True
    keep_results: bool = False
    export_retries: int = 3
    export_backoff_s: float = 1.0


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
        return InputLimits.for_sources(**{key: value for key, value in settings.items()
                                          if key in known and isinstance(value, (int, float)) and not isinstance(value, bool)})

    def destination(self):
        """The :class:`~monai_exaggeration.export.Destination` results are sent to."""
        from monai_exaggeration.export import DestinationError, select_destination

        try:
            return select_destination(self.destination_file, self.destination_name)
        except DestinationError as error:
            raise NodeConfigError(f"{self.path}: {error}") from None


# ------------------------------------------------------------------------------------------ parsing


def _fail(path: Path, key: str, problem: str) -> NodeConfigError:
    return NodeConfigError(f"{path}: {key}: {problem}")


def _section(path: Path, content: dict, key: str) -> dict:
    value = content.get(key) or {}
    if not isinstance(value, dict):
        raise _fail(path, key, f"must be a mapping of settings, got {type(value).__name__}")
    return dict(value)


_KINDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a text"}


def _typed(path: Path, section: str, cls: type, values: dict) -> Any:
    """``cls(**values)`` with each value checked against the field's type; unknown keys are errors."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = key
        if name not in known:
            raise _fail(path, f"{section}.{key}", f"unknown setting; known: {', '.join(sorted(known))}")
        kind = known[name].type
        try:
            if kind == "bool" and not isinstance(value, bool):
                raise TypeError
            if kind in ("int", "float", "str") and isinstance(value, bool):
                raise TypeError
            if kind == "int":
                if int(value) != float(value):
                    raise ValueError
                value = int(value)
            elif kind == "float":
                value = float(value)
            elif kind == "str":
                if not isinstance(value, (str, int)):
                    raise TypeError
                value = str(value)
        except (TypeError, ValueError):
            raise _fail(path, f"{section}.{key}", f"must be {_KINDS.get(kind, kind)}, got {value!r}") from None
        kwargs[name] = value
    return cls(**kwargs)


def _ae_title(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 16 or "\\" in value or not value.isprintable():
        raise _fail(path, key, f"an AE title is 1-16 printable characters without backslash, got {value!r}")
    return value.strip()


def _file(path: Path, key: str, value: str) -> str:
    resolved = path.parent / Path(value).expanduser() if value else None
    if resolved is None:
        return ""
    if not resolved.is_file():
        raise _fail(path, key, f"file not found: {resolved}")
    return str(resolved)


def _scp(path: Path, values: dict) -> ScpSettings:
    tls = values.pop("tls", None) or {}
    if not isinstance(tls, dict) or set(tls) - {"cert", "key", "ca"}:
        raise _fail(path, "node.tls", "must be a mapping with cert, key and (optional) ca")
    for list_key in ("allowed_calling_aes", "accept"):
        if list_key in values and not isinstance(values[list_key], list):
            raise _fail(path, f"node.{list_key}", f"must be a list, got {values[list_key]!r}")
    lists = {key: values.pop(key) for key in ("allowed_calling_aes", "accept") if key in values}
    scp = _typed(path, "node", ScpSettings, values)
    scp.ae_title = _ae_title(path, "node.ae_title", scp.ae_title)
    scp.allowed_calling_aes = [_ae_title(path, "node.allowed_calling_aes", ae) for ae in lists.get("allowed_calling_aes", [])]
    accept = [str(name).upper() for name in lists.get("accept", list(SOP_CLASSES))]
    unknown = [name for name in accept if name not in SOP_CLASSES]
    if unknown or not accept:
        raise _fail(path, "node.accept", f"choose from {', '.join(SOP_CLASSES)}; got {lists.get('accept')!r}")
    scp.accept = accept
    if not 0 < scp.port < 65536:
        raise _fail(path, "node.port", f"must be 1-65535, got {scp.port}")
    if scp.max_associations < 1:
        raise _fail(path, "node.max_associations", f"must be at least 1, got {scp.max_associations}")
    scp.tls_cert = _file(path, "node.tls.cert", tls.get("cert", ""))
    scp.tls_key = _file(path, "node.tls.key", tls.get("key", ""))
    scp.tls_ca = _file(path, "node.tls.ca", tls.get("ca", ""))
    if (scp.tls_key or scp.tls_ca) and not scp.tls_cert:
        raise _fail(path, "node.tls", "cert (the node's certificate) is needed for TLS")
    try:
        scp.ssl_context()
    except (OSError, ssl.SSLError) as error:
        raise _fail(path, "node.tls", f"cannot load the certificate files: {error}") from None
    return scp


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
        raise _fail(path, "inference.bundle_root", f"cannot read {config}: {error}") from None
    unknown = sorted(set(inference) - known)
    if unknown:
        raise _fail(path, f"inference.{unknown[0]}", f"not a setting of {config}")


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
        raise NodeConfigError(f"{path}: must be a mapping with node:, work_dir:, destination(s): ... (see docs/dicom_node.md)")
    known = {"node", "work_dir", "queue", "outputs", "inference", "destination", "destinations", "destinations_file",
             "threads"}
    unknown = sorted(set(content) - known)
    if unknown:
        raise _fail(path, ", ".join(unknown), f"unknown setting; known: {', '.join(sorted(known))}")
    if not content.get("work_dir"):
        raise _fail(path, "work_dir", "set the folder for the spool, the queue and the results")
    scp = _scp(path, _section(path, content, "node"))
    queue = _typed(path, "queue", QueueSettings, _section(path, content, "queue"))
    for key in ("max_jobs", "max_attempts"):
        if getattr(queue, key) < 1:
            raise _fail(path, f"queue.{key}", f"must be at least 1, got {getattr(queue, key)}")
    for key in ("max_spool_mb", "min_free_mb", "backoff_s", "max_backoff_s"):
        if getattr(queue, key) < 0:
            raise _fail(path, f"queue.{key}", f"must be >= 0, got {getattr(queue, key)}")
    outputs = _typed(path, "outputs", OutputSettings, _section(path, content, "outputs"))
    inference = _section(path, content, "inference")
    owned = sorted(set(inference) & _NODE_OWNED)
    if owned:
        raise _fail(path, f"inference.{owned[0]}", "is set by the node itself; remove it")
    _check_inference(path, inference)
    if content.get("destinations_file") and content.get("destinations"):
        raise _fail(path, "destinations_file", "give either destinations: or destinations_file:, not both")
    destination_file = path
    if content.get("destinations_file"):
        destination_file = Path(_file(path, "destinations_file", str(content["destinations_file"])))
    elif not content.get("destinations"):
        raise _fail(path, "destinations", "say where results go: a destinations: mapping (as in docs/pacs_export.md) "
                    "or destinations_file:")
    threads = content.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise _fail(path, "threads", f"must be a whole number >= 1, got {threads!r}")
    config = NodeConfig(
        path=path, work_dir=(path.parent / Path(str(content["work_dir"])).expanduser()).absolute(), scp=scp, queue=queue,
        outputs=outputs, destination_file=destination_file,
        destination_name=str(content["destination"]) if content.get("destination") else None,
        inference=inference, threads=threads,
    )
    config.destination()  # checked now: a bad destination is a configuration error
    return config
