"""Models: encoders (ResNet18, timm-named ViTs, EfficientNet-Lite0), RLAB decoder, PixNet,
and the weight loaders.

Data flows image -> :class:`ResNet18Encoder` (pyramid F1..F5) -> :class:`PixNetDecoder`
-> map G at stride 2. Encoders are chosen by name from :data:`ENCODERS`
(:mod:`pixnet.models.registry`). Only the weight loaders (:func:`load_encoder_weights`,
:func:`save_encoder_weights`, :mod:`pixnet.models.vit_weights`) touch files.
"""

from pixnet.models.decoder import (
    RLAB,
    BilinearUp,
    CompositeBlock,
    DecoderStage,
    DepthToSpaceUp,
    PixNetDecoder,
    RowAttention,
    SkipRefine,
)
from pixnet.models.pixnet import (
    INPUT_MULTIPLE,
    PRESETS,
    PixNet,
    PixNetConfig,
    build_pixnet,
    check_input,
    count_parameters,
    from_preset,
    pad_to_multiple,
    padded_size,
)
from pixnet.models.registry import (
    ENCODERS,
    EncoderSpec,
    build_encoder,
    get_encoder_spec,
    load_pretrained,
    register_encoder,
)
from pixnet.models.resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, ResNet18Encoder
from pixnet.models.vit import VisionTransformer, ViTArch
from pixnet.models.vit_pyramid import ViTPyramidEncoder
from pixnet.models.weights import load_encoder_weights, save_encoder_weights

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_MULTIPLE",
    "PRESETS",
    "RLAB",
    "BasicBlock",
    "BilinearUp",
    "CompositeBlock",
    "DecoderStage",
    "DepthToSpaceUp",
    "EncoderSpec",
    "PixNet",
    "PixNetConfig",
    "PixNetDecoder",
    "ResNet18Encoder",
    "RowAttention",
    "SkipRefine",
    "ViTArch",
    "ViTPyramidEncoder",
    "VisionTransformer",
    "build_encoder",
    "build_pixnet",
    "check_input",
    "count_parameters",
    "from_preset",
    "get_encoder_spec",
    "load_encoder_weights",
    "load_pretrained",
    "pad_to_multiple",
    "padded_size",
    "register_encoder",
    "save_encoder_weights",
]
