"""Helpers the bundle configs call: bundle locations, and each shipped model loaded from its own bundle.

One model per bundle (MONAI model-zoo style): ``bundles/cxr`` is the explainer, ``cxr_classifier``
the black-box classifier, ``cxr_segmentation`` the heart/lung segmentation, ``cxr_encoder`` the
self-supervised encoder and ``cxr_autoencoder`` the Latent Shift baseline's autoencoder. A loader
reads the network from its model's bundle (``configs/train.json``) and its weights from that
bundle's ``models/`` (or ``weights``); it never looks into another bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_exaggeration.networks.classifier import BlackBoxClassifier, load_state_dict_file
from monai_exaggeration.networks.encoder import CXREncoder
from monai_exaggeration.networks.segmentation import HeartLungSegmenter
from monai_exaggeration.utils import select_device

__all__ = [
    "BUNDLES",
    "CLASSIFIER_CONFIGS",
    "DATASET_ENV",
    "default_bundle_root",
    "default_dataset_dir",
    "load_bundle_classifier",
    "load_bundle_encoder",
    "load_bundle_segmenter",
]

#: Environment variable that overrides the default dataset folder.
DATASET_ENV = "EXAG_DATASET_DIR"

#: The shipped bundles (folder name under ``bundles/``) and the model each holds.
BUNDLES = {
    "cxr": "progressive-exaggeration explainer (generator)",
    "cxr_classifier": "black-box classifier",
    "cxr_segmentation": "heart/lung segmentation",
    "cxr_encoder": "self-supervised CXR encoder",
    "cxr_autoencoder": "autoencoder of the Latent Shift baseline",
}

#: The config files that define the shipped classifier (merged in this order), relative to its bundle root.
CLASSIFIER_CONFIGS = ("configs/train.json", "configs/classifier_cpu.json")


def default_bundle_root(name: str = "cxr") -> str:
    """``bundles/<name>`` of the source tree this package is installed from, else ``./bundles/<name>``.

    ``name`` is one of :data:`BUNDLES`; ``cxr`` (the default) is the explainer's bundle.
    """
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}: choose one of {', '.join(BUNDLES)}")
    source_tree = Path(__file__).resolve().parents[1] / "bundles" / name
    if (source_tree / "configs").is_dir():
        return str(source_tree)
    return str(Path("bundles") / name)


def default_dataset_dir(bundle_root: str | os.PathLike) -> str:
    """``$EXAG_DATASET_DIR`` when set, else ``<bundle_root>/data`` (see docs/datasets.md)."""
    return os.environ.get(DATASET_ENV) or str(Path(bundle_root) / "data")


def _read_bundle_configs(bundle_root: str | os.PathLike, config_files: tuple[str, ...], what: str, name: str) -> Any:
    """A parser over ``config_files`` of ``bundle_root`` with ``bundle_root`` set; one-line error if one is missing."""
    from monai.bundle import ConfigParser

    root = Path(bundle_root)
    files = [root / config for config in config_files]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} not found: {root} is not a {what} bundle -- give the folder of a {what} bundle "
            f"(the shipped one: bundles/{name})"
        )
    parser = ConfigParser()
    parser.read_config([str(path) for path in files])
    parser["bundle_root"] = str(root)
    return parser


def _weights_path(parser: Any, weights: str | os.PathLike | None) -> Path:
    """``weights``, else ``<ckpt_dir>/<ckpt_name>`` of the model's bundle (its shipped file)."""
    if weights is not None:
        return Path(weights)
    return Path(parser.get_parsed_content("ckpt_dir")) / parser.get_parsed_content("ckpt_name")


def load_bundle_classifier(
    bundle_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    config_files: tuple[str, ...] = CLASSIFIER_CONFIGS,
) -> BlackBoxClassifier:
    """The classifier of a classifier bundle as a frozen black box.

    Args:
        bundle_root: the classifier bundle (default: the shipped ``bundles/cxr_classifier``).
        weights: the weights file (default: ``<ckpt_dir>/<ckpt_name>`` of the bundle's configs,
            ``models/classifier.pt`` for the shipped CPU model).
        device: torch device (default: cuda if available, else cpu).
        config_files: the bundle's configs that define ``network_def`` (merged in this order).
    """
    parser = _read_bundle_configs(
        bundle_root or default_bundle_root("cxr_classifier"), config_files, "classifier", "cxr_classifier"
    )
    network = parser.get_parsed_content("network_def")
    finding = parser.get_parsed_content("finding")
    classifier = BlackBoxClassifier.from_state_dict(
        network, _weights_path(parser, weights), labels=[finding], output=finding,
        input_size=parser.get_parsed_content("image_size"),
    )
    return classifier.to(select_device(device))


def _bundle_instrument(
    name: str, what: str, bundle_root: str | os.PathLike | None, weights: str | os.PathLike | None
) -> tuple[nn.Module, Any]:
    """``network_def`` of the bundle's ``configs/train.json`` with its weights, and the parser."""
    parser = _read_bundle_configs(bundle_root or default_bundle_root(name), ("configs/train.json",), what, name)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_state_dict_file(_weights_path(parser, weights)))
    return network, parser


def load_bundle_segmenter(
    bundle_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> HeartLungSegmenter:
    """The heart/lung segmentation network of a segmentation bundle (default: the shipped
    ``bundles/cxr_segmentation``; weights default to its ``models/segmentation.pt``) as a frozen instrument."""
    network, parser = _bundle_instrument("cxr_segmentation", "segmentation", bundle_root, weights)
    segmenter = HeartLungSegmenter(network, image_size=parser.get_parsed_content("image_size"))
    return segmenter.to(select_device(device))


def load_bundle_encoder(
    bundle_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> CXREncoder:
    """The self-supervised CXR encoder of an encoder bundle (default: the shipped ``bundles/cxr_encoder``;
    weights default to its ``models/encoder.pt``), frozen, eval mode."""
    network, _ = _bundle_instrument("cxr_encoder", "encoder", bundle_root, weights)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(select_device(device)).eval()
