"""Load ViT weights as users have them: ``pytorch_model.bin`` or ``model.safetensors``.

Accepted files:

- ``pytorch_model.bin`` / any ``torch.save`` file: read with
  ``torch.load(..., weights_only=True)`` (nothing in the file is executed), a flat state
  dict or one wrapped under ``state_dict`` / ``model`` / ``model_state_dict`` /
  ``encoder``;
- ``model.safetensors``: read by :func:`read_safetensors`, a small pure-Python reader of
  the safetensors format (8-byte little-endian header length, JSON header, raw tensor
  bytes), so the ``safetensors`` package is not needed;
- a folder holding either (a Hugging Face download): ``model.safetensors`` is preferred.

Key names are timm's ``VisionTransformer`` names (:mod:`pixnet.models.vit`). A common
prefix (``module.``, ``model.``, ``backbone.``, ``encoder.``, ``trunk.``, ``vit.``,
``encoder.vit.``) is stripped when every required key is found under it. Classifier
heads (``head.*``, ``fc_norm.*``, ``head_drop``) are ignored. Anything else is refused:
the error names the missing, unexpected and mis-shaped keys. Loading is all or nothing.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixnet.errors import PixNetInputError
from pixnet.models.weights import CONTAINER_KEYS, _read_file, key_problems

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors dtype codes this reader understands."""

VIT_PREFIXES: tuple[str, ...] = (
    "",
    "module.",
    "model.",
    "backbone.",
    "encoder.",
    "trunk.",
    "vit.",
    "encoder.vit.",
    "module.backbone.",
)
"""Key prefixes tried, in this order."""

IGNORED_ROOTS: tuple[str, ...] = ("head.", "head_drop.", "fc_norm.", "attn_pool.")
"""Classifier / pooling parts of a timm ViT that an encoder does not use."""

WEIGHT_FILE_NAMES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
"""Names looked for inside a folder, in this order."""

_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file into CPU tensors (no code is run, no package needed).

    Raises:
        PixNetInputError: not a safetensors file, truncated, or an unknown dtype.
    """
    path = Path(path)
    data = path.read_bytes()
    fix = "pass a model.safetensors or pytorch_model.bin file"
    if len(data) < 8:
        raise PixNetInputError(path, "too short to be a safetensors file", fix)
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise PixNetInputError(path, f"bad safetensors header length {n}", fix)
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PixNetInputError(path, f"safetensors header is not JSON ({exc})", fix) from None
    if not isinstance(header, dict):
        raise PixNetInputError(path, "safetensors header is not a JSON object", fix)
    buf = bytearray(data[8 + n :])
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise PixNetInputError(path, f"tensor {name!r}: malformed header entry", fix) from None
        if code not in SAFETENSORS_DTYPES:
            raise PixNetInputError(
                path,
                f"tensor {name!r} has dtype {code}",
                f"supported dtypes: {sorted(SAFETENSORS_DTYPES)}",
            )
        dtype = SAFETENSORS_DTYPES[code]
        count = 1
        for s in shape:
            count *= int(s)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= len(buf)) or end - begin != count * itemsize:
            raise PixNetInputError(
                path, f"tensor {name!r}: data offsets {begin}..{end} do not fit", "is it truncated?"
            )
        if count == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype, count=count, offset=begin).reshape(shape)
        out[str(name)] = t
    return out


def resolve_weights_path(path: str | Path) -> Path:
    """A file as given, or the weights file inside a folder (``model.safetensors`` first)."""
    p = Path(path)
    if p.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise PixNetInputError(
            p, "folder holds no weights file", f"expected one of {list(WEIGHT_FILE_NAMES)}"
        )
    if not p.is_file():
        raise PixNetInputError(p, "weights file not found", "pass the path of an existing file")
    return p


def read_state_dict_file(path: str | Path) -> tuple[dict[str, Tensor], str, str | None]:
    """Read a weights file into a flat ``{name: tensor}``.

    Returns:
        ``(state_dict, file_format, container)``: ``file_format`` is ``"safetensors"`` or
        ``"torch"``; ``container`` is the key the state dict was wrapped under, if any.
    """
    p = resolve_weights_path(path)
    with p.open("rb") as f:
        head = f.read(9)
    is_zip_or_pickle = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")
    if p.suffix == ".safetensors" or (not is_zip_or_pickle and head[8:9] == b"{"):
        return read_safetensors(p), "safetensors", None
    obj = _read_file(p)
    if isinstance(obj, Mapping):
        top = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if top:
            return top, "torch", None
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                sd = {str(k): v for k, v in inner.items() if isinstance(v, Tensor)}
                if sd:
                    return sd, "torch", key
    raise PixNetInputError(
        p,
        f"holds a {type(obj).__name__} without a state dict",
        "pass a timm ViT state dict (pytorch_model.bin or model.safetensors)",
    )


def load_vit_weights(
    vit: nn.Module, path: str | Path, *, preset: str = "", prefix: str | None = None
) -> dict[str, Any]:
    """Load a timm-named ViT state dict (see :func:`load_named_weights`)."""
    return load_named_weights(
        vit, path, preset=preset, prefix=prefix, ignored_roots=IGNORED_ROOTS, label="ViT"
    )


def load_named_weights(
    module: nn.Module,
    path: str | Path,
    *,
    preset: str = "",
    prefix: str | None = None,
    ignored_roots: tuple[str, ...] = IGNORED_ROOTS,
    label: str = "ViT",
    file_label: str = "timm",
) -> dict[str, Any]:
    """Load a state dict with ``module``'s own names from ``path`` (all tensors or none).

    Args:
        module: e.g. a :class:`~pixnet.models.vit.VisionTransformer` (timm names).
        path: ``pytorch_model.bin``, ``model.safetensors`` or a folder holding one.
        preset: encoder name, for the error message.
        prefix: strip exactly this key prefix instead of trying :data:`VIT_PREFIXES`.
        ignored_roots: key beginnings in the file that are not used (classifier heads).
        label: the architecture's name, for messages.
        file_label: the naming convention, for the report's ``format``.

    Returns:
        Report: ``format`` (``"timm-safetensors"`` / ``"timm-torch"``), ``path``,
        ``container``, ``prefix``, ``n_loaded``, ``n_expected``, ``ignored_keys``.

    Raises:
        PixNetInputError: unreadable or unsafe file, or keys missing, unexpected or
            mis-shaped (all listed), e.g. a file of another size of ViT than the preset.
    """
    p = resolve_weights_path(path)
    sd, file_format, container = read_state_dict_file(p)
    own = module.state_dict()
    expected = set(own)
    prefixes = [prefix] if prefix is not None else list(VIT_PREFIXES)
    scores = [(sum(1 for k in expected if q + k in sd), q) for q in prefixes]
    best_n, best_p = max(scores, key=lambda s: s[0])  # first of the best (list order)
    mapped: dict[str, Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for k, v in sd.items():
        if not k.startswith(best_p):
            (unexpected if best_p == "" else ignored).append(k)
            continue
        name = k[len(best_p) :]
        if name in expected:
            mapped[name] = v
        elif name.startswith(ignored_roots):
            ignored.append(k)
        else:
            unexpected.append(k)
    missing = sorted(best_p + k for k in expected if k not in mapped)
    mismatched = sorted(
        f"{best_p + k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if v.shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        problems = key_problems(missing, sorted(unexpected), mismatched)
        name = f" {preset!r}" if preset else ""
        raise PixNetInputError(
            p,
            f"does not hold the {label} of encoder{name} (prefix {best_p!r}, "
            f"{best_n}/{len(expected)} keys found): " + problems,
            f"pass the weights file of the model this --encoder names ({file_label} state-dict "
            "names, pytorch_model.bin or model.safetensors), or choose the --encoder "
            "preset that matches the file (pixnet.models.registry.ENCODERS)",
        )
    module.load_state_dict(
        {k: v.to(own[k].dtype) for k, v in mapped.items()},
        strict=True,
    )
    report: dict[str, Any] = {
        "format": f"{file_label}-{file_format}",
        "path": str(p),
        "container": container,
        "prefix": best_p,
        "n_loaded": len(mapped),
        "n_expected": len(expected),
        "ignored_keys": sorted(ignored),
    }
    log.info(
        "%s: loaded %d/%d %s tensors (%s, prefix %r, %d keys ignored)",
        p,
        len(mapped),
        len(expected),
        label,
        report["format"],
        best_p,
        len(ignored),
    )
    return report


__all__ = [
    "IGNORED_ROOTS",
    "SAFETENSORS_DTYPES",
    "VIT_PREFIXES",
    "WEIGHT_FILE_NAMES",
    "load_named_weights",
    "load_vit_weights",
    "read_safetensors",
    "read_state_dict_file",
    "resolve_weights_path",
]
