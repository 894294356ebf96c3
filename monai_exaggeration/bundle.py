"""Helpers the bundle configs call: bundle locations, and each shipped model loaded from its own bundle.

One model per bundle (MONAI model-zoo style): ``bundles/cxr`` is the explainer, ``cxr_classifier``
the black-box classifier, ``cxr_segmentation`` the heart/lung segmentation, ``cxr_encoder`` the
self-supervised encoder and ``cxr_autoencoder`` the Latent Shift baseline's autoencoder. A loader
reads the network from its model's bundle (``configs/train.json``) and its weights from that
bundle's ``models/`` (or ``weights``); it never looks into another bundle.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_exaggeration.errors import UserError, install_bundle_error_hook, running_bundle_workflow

if TYPE_CHECKING:  # torch and the networks are imported where a model is loaded: the command line's --help stays fast
    import torch
    from torch import nn

    from monai_exaggeration.networks.classifier import BlackBoxClassifier
    from monai_exaggeration.networks.encoder import CXREncoder
    from monai_exaggeration.networks.segmentation import HeartLungSegmenter

__all__ = [
    "BUNDLES",
    "BUNDLES_ENV",
    "CLASSIFIER_CONFIGS",
    "DATASET_ENV",
    "NEW_KEYS",
    "check_overrides",
    "command_line_overrides",
    "default_bundle_root",
    "default_dataset_dir",
    "load_bundle_classifier",
    "load_bundle_encoder",
    "load_bundle_segmenter",
]

#: Environment variable that overrides the default dataset folder.
DATASET_ENV = "EXAG_DATASET_DIR"

#: Environment variable naming a folder of bundles (``<folder>/cxr``, ``<folder>/cxr_classifier`` ...) used
#: before the bundles shipped with the package (see :func:`default_bundle_root`).
BUNDLES_ENV = "EXAG_BUNDLES_DIR"

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
    """The folder of the bundle ``name`` (one of :data:`BUNDLES`; ``cxr``, the default, is the explainer's).

    In order, the first that holds ``<name>/configs``:

    1. ``$EXAG_BUNDLES_DIR/<name>`` (:data:`BUNDLES_ENV`): a folder of bundles of your own; a bundle it
       does not hold comes from the package;
    2. ``monai_exaggeration/bundles/<name>``: the bundles shipped with the package (package data of the
       wheel; in the repository a link to ``bundles/``), whatever the current folder;
    3. ``bundles/<name>`` of the source tree the package is imported from (a checkout without the link).

    Never raises for a missing bundle (command lines take it as a default before anything runs): it then
    returns the shipped location, and loading from it says what is missing.
    """
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}: choose one of {', '.join(BUNDLES)}")
    package = Path(__file__).resolve().parent
    candidates = [package / "bundles" / name, package.parent / "bundles" / name]
    if os.environ.get(BUNDLES_ENV):
        candidates.insert(0, Path(os.environ[BUNDLES_ENV]).expanduser() / name)
    for folder in candidates:
        if (folder / "configs").is_dir():
            return str(folder.resolve())
    return str(package / "bundles" / name)


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


#: ``python -m monai.bundle run``'s own arguments (not config keys).
_RUN_ARGUMENTS = frozenset(
    {
        "run_id",
        "init_id",
        "final_id",
        "meta_file",
        "config_file",
        "logging_file",
        "tracking",
        "args_file",
        "workflow_name",
    }
)
#: The override that names genuinely new config keys: ``--new_keys "['my_key','network_def#dropout']"``.
NEW_KEYS = "new_keys"
#: Flags this package reads itself (``--debug``: tracebacks of user errors).
_PACKAGE_FLAGS = frozenset({NEW_KEYS, "debug"})


def _is_flag(argument: str) -> bool:
    """What ``fire`` (the parser of ``python -m monai.bundle``) takes for a flag: ``--x``, ``-x``, not ``-1``."""
    return argument.startswith("--") or (len(argument) > 1 and argument[0] == "-" and argument[1].isalpha())


def command_line_overrides(argv: list[str]) -> dict[str, str]:
    """The ``--key value`` pairs of a ``python -m monai.bundle`` command line, read as ``fire`` reads them.

    ``--key value``, ``--key=value``, a bare ``--key`` (``True``; ``--nokey``: ``False``); hyphens in
    keys become underscores; nothing after a lone ``--``. Values are returned as typed (strings).
    """
    args = list(argv[: argv.index("--")] if "--" in argv else argv)
    pairs: dict[str, str] = {}
    index = 0
    while index < len(args):
        argument = args[index]
        index += 1
        if not _is_flag(argument):
            continue
        key, equals, value = argument.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not equals:
            if index < len(args) and not _is_flag(args[index]):
                value = args[index]
                index += 1
            elif key.startswith("no") and key not in _RUN_ARGUMENTS:
                key, value = key[2:], "False"
            else:
                value = "True"
        pairs[key] = value
    return pairs


def _literal(value: Any) -> Any:
    """A command-line value as ``fire`` would pass it (a list stays a list, other text stays text)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _key_list(value: Any) -> set[str]:
    value = _literal(value)
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return {str(item).strip().replace("::", "#") for item in items if str(item).strip()}


def _closest_key(key: str, parser: Any) -> str | None:
    """The existing config key nearest to ``key``: the first missing part of its ``#`` path replaced by its
    closest sibling (``num_frame`` -> ``num_frames``, ``network_def#stem_channel`` -> ``network_def#stem_channels``)."""
    parts = key.split("#")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = "#".join(parts[:depth])
        node = parser.get(prefix) if prefix else parser.get()
        if not isinstance(node, dict):
            continue
        names = {str(name).lower(): str(name) for name in node if not str(name).startswith("_") and name != "imports"}
        match = difflib.get_close_matches(parts[depth].lower(), list(names), n=1, cutoff=0.6)
        if not match:
            return None
        return "#".join([*parts[:depth], names[match[0]], *parts[depth + 1 :]])
    return None


def check_overrides(argv: list[str] | None = None) -> None:
    """Refuse command-line settings that are not keys of the merged config (a mistyped ``--num_frame 5``
    would otherwise be added as a new, unused key and silently change nothing).

    Called first in every bundle workflow's ``initialize`` list, where it also installs the one-line
    reporting of user errors (:func:`~monai_exaggeration.errors.install_bundle_error_hook`). Reads the ``--key value`` pairs of
    ``python -m monai.bundle`` (``argv``, default ``sys.argv``; outside a bundle run it does nothing
    unless ``argv`` is given) and checks each key, ``#`` paths included (``--network_def#stem_channels``),
    against the config files of ``--config_file`` merged in order (and ``--args_file``'s pairs). A
    genuinely new key is allowed when it is listed in ``--new_keys`` (for example
    ``--new_keys "['train#dataloader#pin_memory']"``) or defined in one more config file merged last.

    Raises:
        UserError: one line naming each unknown key and its closest valid key (exit status 2).
    """
    if argv is None:
        if not running_bundle_workflow():
            return
        install_bundle_error_hook()  # from here on, user errors are one line and exit 2
        argv = sys.argv[1:]
    from monai.bundle import ConfigParser

    overrides = command_line_overrides(argv)
    if "args_file" in overrides:
        from_file = ConfigParser.load_config_file(str(_literal(overrides["args_file"])))
        overrides = {**{str(key): value for key, value in from_file.items()}, **overrides}
    files = _literal(overrides.get("config_file"))
    if not files:
        return
    parser = ConfigParser()
    parser.read_config(files)
    allowed = _RUN_ARGUMENTS | _PACKAGE_FLAGS | _key_list(overrides.get(NEW_KEYS))
    if "tracking" in overrides:
        from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

        allowed |= set(DEFAULT_MLFLOW_SETTINGS.get("configs", {}))
    unknown = [
        key
        for key in overrides
        if key.replace("::", "#") not in allowed and not key.startswith("_meta_") and key not in parser
    ]
    if not unknown:
        return
    names = " + ".join(Path(str(name)).name for name in (files if isinstance(files, (list, tuple)) else [files]))
    keys = ", ".join(f"--{key}" for key in unknown)
    guesses = [guess for guess in (_closest_key(key.replace("::", "#"), parser) for key in unknown) if guess]
    plural = "s" if len(unknown) > 1 else ""
    hint = f"did you mean {', '.join(f'--{guess}' for guess in guesses)}?" if guesses else "check the spelling"
    raise UserError(
        f"unknown setting{plural} {keys}: not {'keys' if plural else 'a key'} of {names} -- {hint} "
        f'(to add a new key, list it in --{NEW_KEYS}; see docs/install.md, "Settings")'
    )


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
    from monai_exaggeration.networks.classifier import BlackBoxClassifier
    from monai_exaggeration.utils import select_device

    parser = _read_bundle_configs(
        bundle_root or default_bundle_root("cxr_classifier"), config_files, "classifier", "cxr_classifier"
    )
    network = parser.get_parsed_content("network_def")
    finding = parser.get_parsed_content("finding")
    classifier = BlackBoxClassifier.from_state_dict(
        network,
        _weights_path(parser, weights),
        labels=[finding],
        output=finding,
        input_size=parser.get_parsed_content("image_size"),
    )
    return classifier.to(select_device(device))


def _bundle_instrument(
    name: str, what: str, bundle_root: str | os.PathLike | None, weights: str | os.PathLike | None
) -> tuple[nn.Module, Any]:
    """``network_def`` of the bundle's ``configs/train.json`` with its weights, and the parser."""
    from monai_exaggeration.networks.classifier import load_state_dict_file

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
    from monai_exaggeration.networks.segmentation import HeartLungSegmenter
    from monai_exaggeration.utils import select_device

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
    from monai_exaggeration.utils import select_device

    network, _ = _bundle_instrument("cxr_encoder", "encoder", bundle_root, weights)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.to(select_device(device)).eval()


if (
    __name__ == "__main__"
):  # python -m monai_exaggeration.bundle [NAME]: a bundle's folder, for --config_file / --bundle_root
    import argparse

    _parser = argparse.ArgumentParser(
        prog="python -m monai_exaggeration.bundle",
        description="Print the folder of a bundle (the shipped one, or $EXAG_BUNDLES_DIR/NAME when that holds it), "
        'e.g. cxr="$(python -m monai_exaggeration.bundle)"; '
        'python -m monai.bundle run inference --config_file "$cxr/configs/inference.json" --bundle_root "$cxr"',
    )
    _parser.add_argument(
        "name", nargs="?", default="cxr", choices=list(BUNDLES), help="the bundle (default: cxr, the explainer)"
    )
    print(default_bundle_root(_parser.parse_args().name))
