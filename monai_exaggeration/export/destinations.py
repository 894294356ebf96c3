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
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from monai_exaggeration.config_models import AeTitle, Number, Port, Problem, StrictModel, Text, Whole, one_line

__all__ = ["Destination", "DestinationError", "load_destinations", "select_destination", "destination_if_enabled"]


class DestinationError(ValueError):
    """A destination is missing or badly described."""


class Destination(StrictModel):
    """One peer. ``url`` set means DICOMweb (STOW-RS); otherwise DIMSE (host, port, AE titles).

    A pydantic model: a wrong setting raises :class:`DestinationError`, one line naming it.
    """

    name: Text = ""
    host: Text = ""
    port: Port = 104
    called_ae: AeTitle = "ANY-SCP"
    calling_ae: AeTitle = "EXAGGERATION"
    url: Text = ""
    username: Text = ""
    password: Text = Field(default="", repr=False)
    bearer_token: Text = Field(default="", repr=False)
    tls_ca: Text = ""
    tls_cert: Text = ""
    tls_key: Text = ""
    connect_timeout: Number = 10.0
    acse_timeout: Number = 30.0
    dimse_timeout: Number = 60.0
    network_timeout: Number = 60.0
    max_pdu: Whole = 0  # 0: unlimited

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise DestinationError(f"destination {_label(settings)}: {one_line(error)}") from None

    @field_validator("url")
    @classmethod
    def _web_address(cls, url: str) -> str:
        if url and not url.startswith(("http://", "https://")):
            raise Problem(f"must start with http:// or https://, got {url!r}")
        return url

    @model_validator(mode="after")
    def _peer(self) -> Destination:
        if not self.url and not self.host:
            raise Problem("give host and port (DIMSE) or url (DICOMweb)")
        return self

    @property
    def kind(self) -> str:
        return "dicomweb" if self.url else "dimse"

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    @property
    def label(self) -> str:
        """The key of this destination in the send ledger and the reports."""
        return _label(self.__dict__)


def _label(settings: dict[str, Any]) -> str:
    if settings.get("name"):
        return str(settings["name"])
    if settings.get("url"):
        return str(settings["url"])
    return f"{settings.get('called_ae', 'ANY-SCP')}@{settings.get('host', '')}:{settings.get('port', 104)}"


def _from_mapping(name: str, entry: dict) -> Destination:
    """A destination of a file: ``tls: {ca, cert, key}`` and secrets named by ``password_env``/``bearer_token_env``."""
    if not isinstance(entry, dict):
        raise DestinationError(f"destination {name}: must be a mapping of settings, got {type(entry).__name__}")
    entry = dict(entry)
    tls = entry.pop("tls", None) or {}
    if not isinstance(tls, dict) or set(tls) - {"ca", "cert", "key"}:
        raise DestinationError(f"destination {name}: tls: must be a mapping with ca, cert and key, got {tls!r}")
    entry.update({f"tls_{key}": value for key, value in tls.items()})
    for secret in ("password", "bearer_token"):  # secrets may come from the environment
        variable = entry.pop(f"{secret}_env", None)
        if variable:
            if variable not in os.environ:
                raise DestinationError(f"destination {name}: environment variable {variable} (for {secret}) is not set")
            entry[secret] = os.environ[variable]
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
            raise DestinationError(
                f"{path} names {sorted(destinations)}: choose one (--destination / export_destination)"
            )
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
        raise DestinationError(
            "export is on but export_config (a destinations file, see docs/pacs_export.md) is not set"
        )
    return select_destination(config, name)
