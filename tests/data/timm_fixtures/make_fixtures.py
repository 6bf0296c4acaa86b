"""Generate the timm reference fixtures for tests/test_vit.py (NOT run by the tests).

Run in a scratch environment outside the project, with timm installed (timm 1.0.31 was
used; its torchvision imports were satisfied by a stub package, since no ViT forward pass
touches torchvision):

    python -m venv /tmp/timmenv
    /tmp/timmenv/bin/pip install torch==2.13.0 pyyaml huggingface_hub safetensors numpy pillow
    /tmp/timmenv/bin/pip install --no-deps timm
    PYTHONPATH=/tmp/tvstub /tmp/timmenv/bin/python tests/data/timm_fixtures/make_fixtures.py

For each tiny random-initialised timm VisionTransformer it writes:

- ``NAME.bin`` (torch.save of the state dict, as ``pytorch_model.bin``) or
  ``NAME.safetensors`` (safetensors.torch.save_file, as ``model.safetensors``);
- ``NAME_io.pt``: ``{"arch": {...}, "inputs": [uint8 image...] (x = img / 255 * 2 - 1),
  "tokens": [forward_features(x)...],
  "taps": [{block: output}...], "timm_version": ...}`` for two input sizes, the native
  one and one that makes timm interpolate the position embeddings
  (``dynamic_img_size=True``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.layers import SwiGLU, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

OUT = Path(__file__).resolve().parent

# name -> (timm kwargs, our ViTArch fields, weight file format, input sizes (H, W))
FIXTURES = {
    # ViT-B/16-like: patch 16, class token, GELU MLP, no LayerScale.
    "vit_p16_cls_gelu": (
        dict(patch_size=16, img_size=64, embed_dim=8, depth=3, num_heads=2, mlp_ratio=4.0),
        dict(
            patch_size=16, img_size=64, embed_dim=8, depth=3, num_heads=2, mlp_ratio=4.0, mlp="gelu"
        ),
        "bin",
        [(64, 64), (48, 80)],
    ),
    # UNI (ViT-L/16)-like: patch 16, class token, LayerScale, GELU.
    "vit_p16_cls_ls_gelu": (
        dict(
            patch_size=16,
            img_size=64,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            init_values=1e-1,
        ),
        dict(
            patch_size=16,
            img_size=64,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            mlp="gelu",
            init_values=1e-1,
        ),
        "safetensors",
        [(64, 64), (48, 80)],
    ),
    # UNI2-h / H-optimus-0-like: patch 14, class + register tokens, pos_embed for patches
    # only (no_embed_class), LayerScale, SwiGLU packed.
    "vit_p14_reg_noembcls_ls_swiglupacked": (
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            init_values=1e-1,
            reg_tokens=4,
            no_embed_class=True,
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
        ),
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            mlp="swiglu_packed",
            init_values=1e-1,
            reg_tokens=4,
            no_embed_class=True,
        ),
        "safetensors",
        [(56, 56), (42, 70)],
    ),
    # Virchow2-like: patch 14, class + register tokens with their own position entries,
    # LayerScale, SwiGLU packed.
    "vit_p14_reg_ls_swiglupacked": (
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            init_values=1e-1,
            reg_tokens=4,
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
        ),
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            mlp="swiglu_packed",
            init_values=1e-1,
            reg_tokens=4,
            no_embed_class=False,
        ),
        "bin",
        [(56, 56), (70, 42)],
    ),
    # No class token, SwiGLU unpacked (fc1_g / fc1_x), LayerScale, one register token.
    "vit_p16_nocls_reg_ls_swiglu": (
        dict(
            patch_size=16,
            img_size=64,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            init_values=1e-1,
            class_token=False,
            global_pool="avg",
            reg_tokens=1,
            no_embed_class=True,
            mlp_layer=SwiGLU,
            act_layer=torch.nn.SiLU,
        ),
        dict(
            patch_size=16,
            img_size=64,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            mlp="swiglu",
            init_values=1e-1,
            class_token=False,
            reg_tokens=1,
            no_embed_class=True,
            final_norm=False,
        ),
        "bin",
        [(64, 64), (80, 48)],
    ),
    # No class token, no registers, GELU: every token is a patch token.
    "vit_p14_nocls_gelu": (
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            class_token=False,
            global_pool="avg",
        ),
        dict(
            patch_size=14,
            img_size=56,
            embed_dim=8,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            mlp="gelu",
            class_token=False,
            final_norm=False,
        ),
        "safetensors",
        [(56, 56), (42, 84)],
    ),
}
TAPS = (0, 1)

# Published configurations, as each model card creates the model with timm (built on the
# meta device: only the state-dict names and shapes are recorded, in presets.json).
PRESETS = {
    # UNI: timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
    # init_values=1e-5, num_classes=0, dynamic_img_size=True)
    "uni": dict(
        img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, init_values=1e-5
    ),
    # UNI2-h: the timm_kwargs of its model card
    "uni2-h": dict(
        img_size=224,
        patch_size=14,
        depth=24,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        no_embed_class=True,
        mlp_layer=SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=8,
    ),
    # Virchow2: vit_huge_patch14_224 with its hub config (mlp_ratio 5.3375, 4 registers,
    # init_values 1e-5) and the model card's mlp_layer=SwiGLUPacked, act_layer=SiLU
    "virchow2": dict(
        img_size=224,
        patch_size=14,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        mlp_ratio=5.3375,
        reg_tokens=4,
        init_values=1e-5,
        mlp_layer=SwiGLUPacked,
        act_layer=torch.nn.SiLU,
    ),
    # H-optimus-0: vit_giant_patch14_reg4_dinov2 with img_size=224, init_values=1e-5
    "h-optimus-0": dict(
        img_size=224,
        patch_size=14,
        embed_dim=1536,
        depth=40,
        num_heads=24,
        mlp_ratio=2.66667 * 2,
        mlp_layer=SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
    ),
    # ViT-B/16: vit_base_patch16_224
    "vit-b16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def preset_shapes() -> dict[str, dict[str, object]]:
    """Per preset: depth and the shapes of the non-block keys and of block 0's keys."""
    out: dict[str, dict[str, object]] = {}
    for name, kw in PRESETS.items():
        with torch.device("meta"):
            m = VisionTransformer(num_classes=0, dynamic_img_size=True, **kw)
        sd = m.state_dict()
        shapes = {
            k: list(v.shape)
            for k, v in sd.items()
            if not k.startswith("blocks.") or k.startswith("blocks.0.")
        }
        out[name] = {"depth": len(m.blocks), "n_keys": len(sd), "shapes": shapes}
    return out


def main() -> None:
    manifest = {
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "fixtures": {},
    }
    for i, (name, (tkw, arch, fmt, sizes)) in enumerate(FIXTURES.items()):
        torch.manual_seed(1000 + i)
        model = VisionTransformer(num_classes=0, dynamic_img_size=True, **tkw).eval()
        # timm zero-initialises biases and LayerNorm affine; randomise every tensor so a
        # wrong mapping cannot hide behind zeros or ones.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        if fmt == "bin":
            torch.save(sd, OUT / f"{name}.bin")
        else:
            safetensors.torch.save_file(sd, str(OUT / f"{name}.safetensors"))
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            model.blocks[b].register_forward_hook(
                lambda _m, _i, out, b=b, c=captured: c.__setitem__(b, out.detach().clone())
            )
            for b in TAPS
        ]
        inputs, tokens, taps = [], [], []
        for h, w in sizes:
            # stored as uint8 (small files); both sides compute x the same way
            img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
            x = img.float() / 255.0 * 2.0 - 1.0
            captured.clear()
            with torch.no_grad():
                y = model.forward_features(x)
            inputs.append(img)
            tokens.append(y)
            taps.append(dict(captured))
        for hk in hooks:
            hk.remove()
        torch.save(
            {
                "arch": arch,
                "inputs": inputs,
                "tokens": tokens,
                "taps": taps,
                "timm_version": timm.__version__,
                "weights": f"{name}.{fmt}",
            },
            OUT / f"{name}_io.pt",
        )
        manifest["fixtures"][name] = {
            "timm_kwargs": {k: str(v) for k, v in tkw.items()},
            "weights": f"{name}.{fmt}",
            "sizes": sizes,
            "keys": sorted(sd),
        }
        print(name, len(sd), "tensors", [tuple(t.shape) for t in tokens], file=sys.stderr)
    (OUT / "presets.json").write_text(
        json.dumps({"timm_version": timm.__version__, "presets": preset_shapes()}, indent=1) + "\n"
    )
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
