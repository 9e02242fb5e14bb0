"""Load any vision model and address every one of its units exactly.

    lm = load_model("torchvision:googlenet", weights="DEFAULT")
    lm = load_model("torchvision:mobilenet_v2", weights="bundled:mobilenet_v2_imagenet")  # shipped, offline
    lm.catalog["inception4a"]            # LayerInfo: channels 512, spatial (14, 14)
    with capture(lm, ["inception4a_pre_relu"]) as cap:
        acts = cap.run(images)           # images: RGB in [0, 1]
"""

from loupe.pipeline.models.activation_capture import ActivationCapture, capture
from loupe.pipeline.models.bundled import BUNDLED, BundledWeights, bundled_weights
from loupe.pipeline.models.catalog import LOGITS, LayerCatalog, LayerInfo, UnitRef
from loupe.pipeline.models.device import pick_device
from loupe.pipeline.models.loaded import AssumedPreprocessingWarning, LoadedModel, load_model
from loupe.pipeline.models.preprocessing import Preprocessing
from loupe.pipeline.models.sources import parse_source, torchvision_builders
from loupe.pipeline.models.weights import read_state_dict, weights_digest

__all__ = [
    "BUNDLED",
    "LOGITS",
    "ActivationCapture",
    "AssumedPreprocessingWarning",
    "BundledWeights",
    "LayerCatalog",
    "LayerInfo",
    "LoadedModel",
    "Preprocessing",
    "UnitRef",
    "bundled_weights",
    "capture",
    "load_model",
    "parse_source",
    "pick_device",
    "read_state_dict",
    "torchvision_builders",
    "weights_digest",
]
