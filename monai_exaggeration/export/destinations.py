"""PACS destinations: DIMSE peers (C-STORE) and DICOMweb servers (STOW-RS), from a config file or flags.

A destinations file (YAML or JSON) names several peers, as PACS administrators keep them::

    destinations:
      orthanc:
        host: 127.0.0.1
        port: 4242
        called_ae: ORTHANC
        calling_ae: EXAGGERATION
      archive-tls:
        host: pacs.example.org
        port: 2762
        called_ae: ARCHIVE
        tls: {ca: /etc/pki/pacs-ca.pem, cert: /etc/pki/me.pem, key: /etc/pki/me.key}
      dicomweb:
        url: https://pacs.example.org/dicom-web
        bearer_token_env: PACS_TOKEN      # or username / password_env
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = ["Destination", "DestinationError", "load_destinations", "select_destination", "destination_if_enabled"]

_AE_MAX = 16


class DestinationError(ValueError):
    """A destination is missing or badly described."""


@dataclass
class Destination:
    """One peer. ``url`` set means DICOMweb (STOW-RS); otherwise DIMSE (host, port, AE titles)."""

    name: str = ""
    host: str = ""
    port: int = 104
    called_ae: str = "ANY-SCP"
    calling_ae: str = "EXAGGERATION"
    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 0  # 0: unlimited

    def __post_init__(self) -> None:
        if self.url:
            if not self.url.startswith(("http://", "https://")):
                raise DestinationError(f"destination {self.label}: url must start with http:// or https://, got {self.url!r}")
            return
        if not self.host:
            raise DestinationError(f"destination {self.label}: give host and port (DIMSE) or url (DICOMweb)")
        try:
            self.port = int(self.port)
        except (TypeError, ValueError):
            raise DestinationError(f"destination {self.label}: port must be a number, got {self.port!r}") from None
        if not 0 < self.port < 65536:
            raise DestinationError(f"destination {self.label}: port {self.port} is out of range 1-65535")
        for name in ("called_ae", "calling_ae"):
            value = getattr(self, name)
            if not value or len(value) > _AE_MAX or "\\" in value or not value.isprintable():
                raise DestinationError(f"destination {self.label}: {name} {value!r} must be 1-16 printable characters")

    @property
    def kind(self) -> str:
        return "dicomweb" if self.url else "dimse"

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    @property
    def label(self) -> str:
        """The key of this destination in the send ledger and the reports."""
        if self.name:
            return self.name
        if self.url:
            return self.url
        return f"{self.called_ae}@{self.host}:{self.port}"


def _from_mapping(name: str, entry: dict) -> Destination:
    entry = dict(entry)
    tls = entry.pop("tls", None) or {}
    for key in ("ca", "cert", "key"):
        if key in tls:
            entry[f"tls_{key}"] = str(tls[key])
    for secret in ("password", "bearer_token"):  # secrets may come from the environment
        variable = entry.pop(f"{secret}_env", None)
        if variable:
            if variable not in os.environ:
                raise DestinationError(f"destination {name}: environment variable {variable} (for {secret}) is not set")
            entry[secret] = os.environ[variable]
    known = {f.name for f in fields(Destination)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise DestinationError(f"destination {name}: unknown setting(s) {unknown}; known: {sorted(known - {'name'})}")
    return Destination(name=name, **entry)


def load_destinations(path: str | os.PathLike) -> dict[str, Destination]:
    """Named destinations of a YAML or JSON file (top-level ``destinations:`` mapping)."""
    path = Path(path)
    if not path.is_file():
        raise DestinationError(f"destinations file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            content = json.loads(text)
        else:
            import yaml

            content = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 - any parse error is a config error
        raise DestinationError(f"cannot parse destinations file {path}: {error}") from error
    entries = (content or {}).get("destinations") if isinstance(content, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise DestinationError(f"{path} must have a 'destinations:' mapping of name -> settings")
    return {str(name): _from_mapping(str(name), entry or {}) for name, entry in entries.items()}


def select_destination(path: str | os.PathLike, name: str | None = None) -> Destination:
    """Destination ``name`` of a destinations file (the only one when ``name`` is None)."""
    destinations = load_destinations(path)
    if not name:
        if len(destinations) != 1:
            raise DestinationError(f"{path} names {sorted(destinations)}: choose one (--destination / export_destination)")
        return next(iter(destinations.values()))
    if name not in destinations:
        raise DestinationError(f"no destination {name!r} in {path}; it has {sorted(destinations)}")
    return destinations[name]


def destination_if_enabled(enabled: bool | str, config: str | None, name: str | None) -> Destination | None:
    """For the inference bundle: the export destination when ``enabled``, else None."""
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() in ("true", "yes", "on", "1")
    if not enabled:
        return None
    if not config:
        raise DestinationError("export is on but export_config (a destinations file, see docs/pacs_export.md) is not set")
    return select_destination(config, name)
