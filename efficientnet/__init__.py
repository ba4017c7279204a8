"""EfficientNet B0-B7 and the Noisy Student L0/L1/L2 in Keras 3."""

from efficientnet.model import EfficientNet, build_model
from efficientnet.reference_checkpoint import checkpoint_classes, load_reference_checkpoint
from efficientnet.spec import VARIANTS, BlockArgs, Stage, Variant, expand_blocks, get_variant

__all__ = ["EfficientNet", "build_model", "checkpoint_classes", "load_reference_checkpoint",
           "VARIANTS", "BlockArgs", "Stage", "Variant", "expand_blocks", "get_variant"]
