"""Explainer checkpoints that carry their own architecture.

Every explainer file written by training (``explainer_checkpoint_*.pt``, ``explainer_best.pt``,
``explainer_final.pt``) and the shipped ``models/explainer.pt`` hold, next to ``generator`` (the state
dict), an ``explainer`` record: the generator's class and constructor arguments, the image size,
the number of bins, how a frame is composed from G's output (``composition``), what G outputs
(``output``: ``image`` or ``deformation``, see :mod:`.deformation`), the finding and a fingerprint of
the classifier it was trained against. :func:`load_explainer` rebuilds the generator
from that record, so weights trained with any config load with no architecture flags.

Compositions (what the classifier sees of G during training, and what inference writes at model
resolution):

* ``generated``: the frame is G(x, b) itself (ICLR 2020).
* ``transfer``: the frame is x + G(x, b) - G(x, b_src) ("train what you ship"): the generator's
  reconstruction error cancels and only its change is applied; at b = b_src the frame is x exactly.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

__all__ = [
    "Composition",
    "COMPOSITIONS",
    "LEGACY_OVERRIDE",
    "ExplainerRecord",
    "LoadedExplainer",
    "load_explainer",
    "save_explainer",
]

#: How a frame is made from the generator's output (see the module docstring).
Composition = Literal["generated", "transfer"]
COMPOSITIONS: tuple[str, ...] = get_args(Composition)
#: The override that describes explainer files written before records existed (64 px CPU widths).
LEGACY_OVERRIDE = "configs/legacy_explainer_v0.json"
RECORD_FORMAT = 1


def _qualified_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _import(name: str) -> type:
    module_name, _, class_name = name.rpartition(".")
    if not module_name.startswith("monai_exaggeration."):
        raise ValueError(f"explainer record names the class {name!r}: only monai_exaggeration networks are loaded")
    return getattr(importlib.import_module(module_name), class_name)


class ExplainerRecord:
    """The ``explainer`` entry of a checkpoint: a ``state_dict``/``load_state_dict`` object for MONAI's
    ``CheckpointSaver``/``CheckpointLoader`` (put it in the ``save_dict`` next to the generator).

    Args:
        generator: the generator being trained (anything with a ``config()`` method; a DDP wrapper is
            unwrapped).
        composition: one of :data:`COMPOSITIONS`.
        finding: the classifier output the explainer was trained for.
        classifier: the black box (its weights are fingerprinted) or a fingerprint string, or None.
        aspect: the preprocessing aspect policy used in training.
    """

    def __init__(
        self,
        generator: nn.Module,
        composition: Composition = "generated",
        finding: str = "",
        classifier: nn.Module | str | None = None,
        aspect: str = "pad",
    ) -> None:
        if composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
        self.generator = getattr(generator, "module", generator)
        self.composition = composition
        self.finding = finding
        self.aspect = aspect
        if isinstance(classifier, nn.Module):
            from monai_exaggeration.networks.classifier import classifier_fingerprint

            classifier = classifier_fingerprint(classifier)
        self.classifier = classifier or ""
        self.loaded: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        args = self.generator.config()
        return {
            "format": RECORD_FORMAT,
            "class": _qualified_name(self.generator),
            "args": args,
            "image_size": args.get("image_size"),
            "num_bins": args["num_bins"],
            "composition": self.composition,
            "output": getattr(self.generator, "output", "image"),
            "finding": self.finding,
            "aspect": self.aspect,
            "classifier": self.classifier,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """On resume: the checkpoint's architecture must be the configured one."""
        mine = self.state_dict()
        for key in ("class", "args", "composition"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"the checkpoint was trained with {key} = {state[key]!r} but the config gives {mine[key]!r}: "
                    f"resume with the same settings, or start afresh in another bundle_root/ckpt_dir"
                )
        self.loaded = dict(state)


@dataclass
class LoadedExplainer:
    """A generator rebuilt from an explainer file, with the file's record."""

    generator: nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_bins(self) -> int:
        return int(self.record["num_bins"])

    @property
    def image_size(self) -> int:
        return int(self.record["image_size"])

    @property
    def composition(self) -> str:
        return str(self.record.get("composition", "generated"))

    @property
    def output(self) -> str:
        """``image`` (the generator draws the frame) or ``deformation`` (it moves the source)."""
        return str(self.record.get("output", "image"))


def save_explainer(
    path: str | os.PathLike, generator: nn.Module, record: ExplainerRecord | Mapping[str, Any], half: bool = False
) -> Path:
    """Write ``{"generator": state dict, "explainer": record}`` atomically (``half``: floats as fp16)."""
    from monai_exaggeration.utils import atomic_write

    state = {k: v.detach().cpu() for k, v in getattr(generator, "module", generator).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    entry = record.state_dict() if isinstance(record, ExplainerRecord) else dict(record)
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"generator": state, "explainer": entry}, tmp))
    return path


def load_explainer(
    path: str | os.PathLike, network: nn.Module | None = None, map_location: str | torch.device = "cpu"
) -> LoadedExplainer:
    """Rebuild the generator of an explainer file (weights in float32, eval mode).

    ``network``: an explicitly configured generator to load the weights into instead of the recorded
    one (needed for files without a record, written before version 0.6). Raises ``FileNotFoundError``
    or ``ValueError`` with a message that says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights not found: {path} -- train an explainer (docs/training.md) or pass --explainer_weights PATH"
        )
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"explainer weights {path} are not a readable PyTorch file ({error})") from error
    if not isinstance(content, Mapping):
        raise ValueError(f"explainer weights {path} hold a {type(content).__name__}, not a checkpoint dictionary")
    record = content.get("explainer")
    state = content.get("generator", content if record is None else None)
    if not isinstance(state, Mapping):
        raise ValueError(f"explainer weights {path} hold no 'generator' state dict")
    if network is None:
        if not isinstance(record, Mapping):
            raise ValueError(
                f"explainer weights {path} do not record their architecture (written before monai_exaggeration 0.6): "
                f"merge the override that describes them, e.g. --config_file \"['configs/inference.json',"
                f"'{LEGACY_OVERRIDE}']\" for the 64 px CPU model of 0.5, or give network_def explicitly"
            )
        network = _import(str(record["class"]))(**dict(record["args"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"explainer weights {path} do not fit the generator (widths, image_size and num_bins must be those "
            f"of training): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(record, Mapping):  # legacy file with an explicit network: describe it from the network
        args = network.config() if hasattr(network, "config") else {}
        record = {
            "args": args,
            "image_size": args.get("image_size"),
            "num_bins": args.get("num_bins"),
            "composition": "generated",
            "class": _qualified_name(network),
        }
    return LoadedExplainer(generator=network.eval(), record=dict(record), path=path)
