"""Generate the torchvision-layout ResNet18 fixture (timm's ``resnet18`` has torchvision's
state-dict names and architecture) for tests/test_vit.py (NOT run by the tests):

    PYTHONPATH=/tmp/tvstub /tmp/timmenv/bin/python tests/data/timm_fixtures/make_resnet_fixture.py

An 11.7M-parameter file is too large for the repository, so the weights are not stored:
both sides make them with :func:`seeded_state_dict` (``torch.Generator`` seeded, one
``randn``/``rand`` per tensor in key order; the test has a copy), and only timm's outputs
are stored: per-channel means of F1..F4 (stem after ReLU, layer1..layer3) and F5
(layer4) in full, for one 64 x 96 input, in ``resnet18_io.pt``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

OUT = Path(__file__).resolve().parent


def seeded_state_dict(template: dict[str, torch.Tensor], seed: int = 11) -> dict[str, torch.Tensor]:
    """Deterministic weights for every tensor of ``template`` (key order sorted)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(template):
        t = template[k]
        if not t.is_floating_point():
            out[k] = t.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(t.shape, generator=g)
        elif k.endswith("running_mean"):
            out[k] = 0.1 * torch.randn(t.shape, generator=g)
        elif k.endswith("bn1.weight") or k.endswith("bn2.weight") or ".1.weight" in k:
            out[k] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[k] = 0.05 * torch.randn(t.shape, generator=g)
    return out


def main() -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    caught: dict[str, torch.Tensor] = {}
    for name in ("act1", "layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, n=name, c=caught: c.__setitem__(n, out.detach().clone())
        )
    img = torch.randint(
        0, 256, (1, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    x = img.float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        model((x - mean) / std)
    levels = [caught[n] for n in ("act1", "layer1", "layer2", "layer3", "layer4")]
    torch.save(
        {
            "input": img,
            "channel_means": [f.mean(dim=(0, 2, 3)) for f in levels[:4]],
            "f5": levels[4],
            "keys": sorted(model.state_dict()),
            "timm_version": timm.__version__,
        },
        OUT / "resnet18_io.pt",
    )
    print([tuple(f.shape) for f in levels])


if __name__ == "__main__":
    main()
