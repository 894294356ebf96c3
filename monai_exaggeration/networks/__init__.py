"""Networks: the black-box classifier wrapper (and, later, the explainer's generator/discriminator)."""

from monai_exaggeration.networks.classifier import ACTIVATIONS, BlackBoxClassifier, load_state_dict_file

__all__ = ["ACTIVATIONS", "BlackBoxClassifier", "load_state_dict_file"]
