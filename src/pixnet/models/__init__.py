"""Models: ResNet18 encoder, RLAB decoder, PixNet, and the encoder-weights loader.

Data flows image -> :class:`ResNet18Encoder` (pyramid F1..F5) -> :class:`PixNetDecoder`
-> map G at stride 2. Only :func:`load_encoder_weights` / :func:`save_encoder_weights`
touch files.
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
from pixnet.models.resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, ResNet18Encoder
from pixnet.models.weights import load_encoder_weights, save_encoder_weights

__all__ = [
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
    "PixNet",
    "PixNetConfig",
    "PixNetDecoder",
    "ResNet18Encoder",
    "RowAttention",
    "SkipRefine",
    "build_pixnet",
    "check_input",
    "count_parameters",
    "from_preset",
    "load_encoder_weights",
    "pad_to_multiple",
    "padded_size",
    "save_encoder_weights",
]
