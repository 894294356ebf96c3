"""Methods by name: ``method`` in inference.json picks a registered class, which builds itself.

A method is a class with

* ``name`` (the config value), ``label`` (first words of the DICOM SeriesDescription), ``title``
  (reports), ``version_name`` (first word of ``model_version``);
* ``build(context)``, a class method that loads what the method needs (its weights, the explainer
  file, an autoencoder) from a :class:`MethodContext` and returns the method;
* on the built method: ``num_bins`` (None when the method has no opinion), ``image_size`` (its model
  size), ``composition``, ``weights_id()``, ``version_settings()`` (what enters ``model_version``
  besides the common settings), ``frame_details(details, count)`` (the ``method_detail`` column),
  ``describe()`` (facts for reports) and ``__call__`` (a :class:`~.base.MethodSeries` for a batch).

Adding a method is one module with such a class, decorated with :func:`register_method`, imported
once (for example through a config's ``imports``); see docs/architecture.md.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MethodContext",
    "check_method",
    "method_class",
    "method_names",
    "method_title",
    "register_method",
]

#: The project's own method: the default of ``method`` and the reference of the method comparison.
DEFAULT_METHOD = "progressive_exaggeration"

#: Registered methods: config name -> class.
METHODS: dict[str, type] = {}

#: Constructor arguments a method receives from the context, never from ``method_options``.
_CONTEXT_ARGUMENTS = frozenset({"self", "classifier", "autoencoder", "generator", "weights"})


@dataclass
class MethodContext:
    """What a method may load itself from (``SeriesInferer`` fills it from the inference settings).

    Args:
        classifier: the black box f, on ``device``, in eval mode.
        device: where the models run.
        options: the method's own settings (``method_options``), checked by :func:`check_method`.
        explainer_weights: the explainer file (the explainer only).
        generator: an in-memory generator (the explainer, without a file), or a network to load a
            legacy file's weights into.
        autoencoder_weights: Latent Shift's autoencoder file.
        norm: batch statistics of a generated series (``series`` or ``running``).
        composition: an explicit composition (None: the explainer file's).
        calibrate: scale each frame's change to its bin centre (the explainer).
        extra: anything a registered third-party method needs (from ``method_context`` in the config).
    """

    classifier: nn.Module
    device: torch.device
    options: dict[str, Any] = field(default_factory=dict)
    explainer_weights: str | os.PathLike | None = None
    generator: nn.Module | None = None
    autoencoder_weights: str | os.PathLike | None = None
    norm: str = "series"
    composition: str | None = None
    calibrate: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def register_method(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``method: <cls.name>`` (a later class of the same name
    replaces the earlier one)."""
    for attribute in ("name", "label", "build"):
        if not hasattr(cls, attribute):
            raise TypeError(f"a method class needs {attribute!r}; {cls.__name__} has none")
    METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered method name, the default first."""
    return tuple(sorted(METHODS, key=lambda name: (name != DEFAULT_METHOD, name)))


def method_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` naming the registered ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {list(method_names())}, got {name!r}")
    return METHODS[name]


def method_title(name: str) -> str:
    """How reports name a method (its ``title``, else its name)."""
    cls = METHODS.get(name)
    return getattr(cls, "title", None) or name


def option_names(cls: type) -> list[str]:
    """The settings a method takes from ``method_options``: its constructor arguments minus the context's."""
    return [name for name in inspect.signature(cls).parameters if name not in _CONTEXT_ARGUMENTS]


def check_method(name: str, options: dict | None) -> dict[str, Any]:
    """Validate ``method`` and its ``method_options`` before anything is loaded; return the options."""
    cls = method_class(name)
    options = dict(options or {})
    accepted = list(getattr(cls, "option_names", lambda: option_names(cls))())
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        if not accepted:
            raise ValueError(f"method_options are for the baselines; {name} takes none, got {options}")
        raise ValueError(f"method_options for {name} accept {accepted}, got unknown {unknown}")
    return options
