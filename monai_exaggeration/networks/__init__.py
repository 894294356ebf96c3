"""Networks: the black-box classifier wrapper (and, later, the explainer's generator/discriminator)."""

from monai_exaggeration.networks.classifier import (
    ACTIVATIONS,
    BlackBoxClassifier,
    classifier_fingerprint,
    load_state_dict_file,
)

__all__ = ["ACTIVATIONS", "BlackBoxClassifier", "classifier_fingerprint", "load_state_dict_file"]

# explainer GAN
from monai_exaggeration.networks.conditional import ConditionalBatchNorm2d  # noqa: E402
from monai_exaggeration.networks.explainer import (  # noqa: E402
    ExaggerationDiscriminator,
    ExaggerationGenerator,
    count_parameters,
)

__all__ += ["ConditionalBatchNorm2d", "ExaggerationDiscriminator", "ExaggerationGenerator", "count_parameters"]

# heart/lung segmentation (CTR)
from monai_exaggeration.networks.segmentation import HeartLungSegmenter  # noqa: E402

__all__ += ["HeartLungSegmenter"]

# self-supervised CXR encoder (realism / identity features)
from monai_exaggeration.networks.encoder import CXREncoder  # noqa: E402

__all__ += ["CXREncoder"]

# explainer files that carry their architecture
from monai_exaggeration.networks.explainer_file import (  # noqa: E402
    COMPOSITIONS,
    ExplainerRecord,
    LoadedExplainer,
    load_explainer,
    save_explainer,
)

__all__ += ["COMPOSITIONS", "ExplainerRecord", "LoadedExplainer", "load_explainer", "save_explainer"]

# autoencoder (the latent space of the Latent Shift baseline)
from monai_exaggeration.networks.autoencoder import AutoEncoderRecord, CXRAutoEncoder, load_autoencoder  # noqa: E402

__all__ += ["AutoEncoderRecord", "CXRAutoEncoder", "load_autoencoder"]

# the deformation explainer (frames are warps of the source)
from monai_exaggeration.networks.deformation import (  # noqa: E402
    DeformationGenerator,
    folding_fraction,
    jacobian_determinant,
    upsample_displacement,
)

__all__ += ["DeformationGenerator", "folding_fraction", "jacobian_determinant", "upsample_displacement"]
