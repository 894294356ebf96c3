"""Helpers the bundle configs call: default locations that work from any working directory."""

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


def default_bundle_root(name: str = "cxr") -> str:
    """``bundles/<name>`` of the source tree this package is installed from, else ``./bundles/<name>``.

    ``cxr`` is the explainer's bundle, ``cxr_autoencoder`` the Latent Shift baseline's autoencoder.
    """
    source_tree = Path(__file__).resolve().parents[1] / "bundles" / name
    if (source_tree / "configs").is_dir():
        return str(source_tree)
    return str(Path("bundles") / name)


def default_dataset_dir(bundle_root: str | os.PathLike) -> str:
    """``$EXAG_DATASET_DIR`` when set, else ``<bundle_root>/data`` (see docs/datasets.md)."""
    return os.environ.get(DATASET_ENV) or str(Path(bundle_root) / "data")


#: The config files that define the shipped classifier (merged in this order), relative to the bundle root.
CLASSIFIER_CONFIGS = ("configs/train_classifier.json", "configs/classifier_cpu.json")


def load_bundle_classifier(
    bundle_root: str | os.PathLike | None = None,
    config_files: tuple[str, ...] = CLASSIFIER_CONFIGS,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> BlackBoxClassifier:
    """The bundle's classifier as a frozen black box.

    The network is ``network_def`` of the merged ``config_files``; the weights default to
    ``<ckpt_dir>/<ckpt_name>`` of the same configs (``models/classifier.pt`` for the shipped CPU model).
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root or default_bundle_root())
    shipped = Path(default_bundle_root())
    # A bundle_root without the classifier configs (e.g. a scratch output folder) uses the shipped ones.
    files = [root / name if (root / name).is_file() else shipped / name for name in config_files]
    parser = ConfigParser()
    parser.read_config([str(path) for path in files])
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def")
    finding = parser.get_parsed_content("finding")
    if weights is None:
        weights = Path(parser.get_parsed_content("ckpt_dir")) / parser.get_parsed_content("ckpt_name")
    classifier = BlackBoxClassifier.from_state_dict(
        network, weights, labels=[finding], output=finding, input_size=parser.get_parsed_content("image_size")
    )
    return classifier.to(select_device(device))


def _bundle_instrument(
    config_name: str, bundle_root: str | os.PathLike | None, weights: str | os.PathLike | None
) -> tuple[nn.Module, Any]:
    """``network_def`` of one of the bundle's configs with its weights, and the parser.

    The weights default to ``<ckpt_dir>/<ckpt_name>`` of ``bundle_root``, else the shipped file of the
    same name (so a scratch ``bundle_root``, e.g. a training run's, still finds the shipped instruments).
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root or default_bundle_root())
    config = root / config_name if (root / config_name).is_file() else Path(default_bundle_root()) / config_name
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(root)
    if weights is None:
        weights = Path(parser.get_parsed_content("ckpt_dir")) / parser.get_parsed_content("ckpt_name")
        shipped = Path(default_bundle_root()) / "models" / weights.name
        if not weights.is_file() and shipped.is_file():  # a scratch bundle_root uses the shipped instrument
            weights = shipped
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_state_dict_file(weights))
    return network, parser


def load_bundle_segmenter(
    bundle_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> HeartLungSegmenter:
    """The bundle's heart/lung segmentation network (``train_segmentation.json``) as a frozen instrument."""
    network, parser = _bundle_instrument("configs/train_segmentation.json", bundle_root, weights)
    segmenter = HeartLungSegmenter(network, image_size=parser.get_parsed_content("image_size"))
    return segmenter.to(select_device(device))


def load_bundle_encoder(
    bundle_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> CXREncoder:
    """The bundle's self-supervised CXR encoder (``train_encoder.json``, ``models/encoder.pt``), frozen, eval mode."""
    network, _ = _bundle_instrument("configs/train_encoder.json", bundle_root, weights)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(select_device(device)).eval()
