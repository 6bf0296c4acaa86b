"""Load ResNet18 encoder weights from a user-given file, safely and completely.

Accepted files (all read with ``torch.load(..., weights_only=True)``: nothing in the file
is executed):

- ``torchvision``: a plain torchvision / timm ``resnet18`` state dict (``conv1.weight``,
  ..., ``fc.weight``); ``fc.*`` is dropped.
- ``ciga-simclr``: Ciga et al.'s histopathology SimCLR checkpoint
  (``pytorchnative_tenpercent_resnet18.ckpt``): ``{"state_dict": {"model.resnet.conv1.weight":
  ..., "model.resnet.fc.1.weight": ...}}``; ``fc.*`` (the projection head) and keys
  outside ``model.resnet.`` are ignored.
- ``wrapped``: a state dict under ``state_dict``, ``model``, ``model_state_dict`` or
  ``encoder`` and/or with a prefix (``module.``, ``encoder.``, ``backbone.``, ``model.``,
  ...), e.g. a whole PixNet training checkpoint (encoder under ``encoder.``). A prefix is
  stripped only when all ResNet18 keys are found under it.
- ``pixnet-encoder``: PixNet's own encoder-only file, written by
  :func:`save_encoder_weights`.

After mapping, every encoder tensor must be present with the right shape
(``num_batches_tracked`` may be absent); otherwise :class:`PixNetInputError` lists the
missing, unexpected and mis-shaped keys. Loading is all or nothing.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pixnet.errors import PixNetInputError

log = logging.getLogger(__name__)

PIXNET_ENCODER_FORMAT = "pixnet-encoder"
"""Value of the ``format`` field of PixNet's own encoder weights files."""

CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "encoder")
"""Keys under which a checkpoint may wrap its state dict (searched in this order)."""

KNOWN_PREFIXES: tuple[str, ...] = (
    "",
    "model.resnet.",
    "module.",
    "encoder.",
    "backbone.",
    "model.",
    "resnet.",
    "module.encoder.",
    "module.backbone.",
    "model.encoder.",
    "model.backbone.",
    "encoder.backbone.",
)
"""Prefixes tried first (in this order); any other prefix is found from the keys."""

_RESNET_ROOTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
# Keys that look like ResNet body tensors (also of deeper or wider ResNets): if such a key
# is under the chosen prefix but not in ResNet18, the file is another architecture.
_RESNET_LIKE = re.compile(r"^(conv\d+|bn\d+|layer\d+)\.")
_ACCEPTED = (
    "accepted: a torchvision/timm resnet18 state dict (fc.* is dropped); Ciga et al.'s "
    "SimCLR checkpoint pytorchnative_tenpercent_resnet18.ckpt ({'state_dict': "
    "{'model.resnet.conv1.weight': ...}}); a state dict wrapped under 'state_dict' or "
    "'model' with a prefix such as 'module.', 'encoder.' or 'backbone.'; or a PixNet "
    "encoder file (pixnet.models.save_encoder_weights)"
)
_SHOW = 10


def save_encoder_weights(
    encoder: nn.Module, path: str | Path, *, name: str = "resnet18", arch: str = "resnet18"
) -> None:
    """Write an encoder-only weights file that the loader of encoder ``name`` reads back
    (:func:`pixnet.models.registry.load_pretrained`; for a ResNet18,
    :func:`load_encoder_weights`).

    Args:
        encoder: the module pretrained weights fill (``registry.trunk_of(encoder)``: a
            :class:`~pixnet.models.resnet.ResNet18Encoder`, an EfficientNet-Lite, a ViT's
            transformer).
        path: destination file (``.pt``); holds ``{"format": "pixnet-encoder",
            "version": 2, "arch": arch, "encoder_name": name, "state_dict": {...}}``
            (version 1, without ``encoder_name``, only ever held a ResNet18).
        name, arch: the registry name and architecture of the encoder, recorded so that
            loading into another encoder is refused (:func:`recorded_encoder_name`).
    """
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    payload = {
        "format": PIXNET_ENCODER_FORMAT,
        "version": 2,
        "arch": arch,
        "encoder_name": name,
    }
    from pixnet.io.atomic import atomic_write
    from pixnet.io.modelfile import torch_save

    atomic_write(path, lambda tmp: torch_save({**payload, "state_dict": state}, tmp))


def recorded_encoder_name(path: str | Path) -> str | None:
    """The encoder name a PixNet encoder file (:func:`save_encoder_weights`) records;
    ``"resnet18"`` for a version-1 file (it only held a ResNet18); ``None`` for any other
    or unreadable file or a folder (its loader then says what it holds).

    Only the file's small header is read (``mmap``: the tensors stay on disk).
    """
    p = Path(path)
    if not p.is_file():
        return None
    with p.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            return None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable or unsafe: the loader reports it
        return None
    if not isinstance(obj, Mapping) or obj.get("format") != PIXNET_ENCODER_FORMAT:
        return None
    return str(obj.get("encoder_name", "resnet18"))


def _looks_pickled(path: Path) -> bool:
    """True if ``path`` starts like a torch.save zip archive or a pickle (protocol >= 2)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def _read_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; refusals become PixNetInputError."""
    if not path.is_file():
        raise PixNetInputError(
            path, "weights file not found", "pass the path of an existing weights file"
        )
    try:
        with warnings.catch_warnings():
            # Files written by plain pickle use protocol 4+; torch warns but reads them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "global" in ln.lower()), "")
        # weights_only refuses a pickle (torch.save zip or bare pickle) that names a Python
        # global (class, function) or uses opcodes it does not vet: it may hold objects or
        # code. A refusal of a file that is neither means it is not a weights file at all.
        if "Weights only load failed" not in text or not (detail or _looks_pickled(path)):
            first = next((ln for ln in lines if "unsupported" in ln.lower()), "")
            first = first or (lines[0] if lines else type(exc).__name__)
            raise PixNetInputError(
                path,
                f"could not be read as a PyTorch weights file ({first[:200]})",
                _ACCEPTED,
            ) from None
        raise PixNetInputError(
            path,
            "refused for safety: not a plain weights file; it holds pickled objects or code "
            "that torch.load(weights_only=True) will not run"
            + f" ({(detail or 'pickle opcodes that weights_only does not vet')[:200]})",
            "use a plain state dict (e.g. Ciga et al.'s pytorchnative_tenpercent_resnet18.ckpt "
            "rather than the PyTorch Lightning tenpercent_resnet18.ckpt), or, only if you "
            "trust the file, convert it once in a separate environment: "
            "torch.save(torch.load(src, weights_only=False)['state_dict'], dst); " + _ACCEPTED,
        ) from None
    except Exception as exc:  # any other failure means "cannot read it"
        raise PixNetInputError(
            path,
            f"could not be read as a PyTorch weights file ({type(exc).__name__}: {str(exc)[:200]})",
            _ACCEPTED,
        ) from None


def _tensor_dicts(obj: Any) -> list[tuple[str | None, dict[str, Tensor]]]:
    """Candidate flat state dicts in ``obj``: (container key or None, {name: tensor})."""
    out: list[tuple[str | None, dict[str, Tensor]]] = []
    if not isinstance(obj, Mapping):
        return out
    top = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if top:
        out.append((None, top))
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            for sub_key, sub in _tensor_dicts(inner):
                out.append((key if sub_key is None else f"{key}.{sub_key}", sub))
    return out


def _prefix_coverage(keys: list[str], expected: set[str]) -> dict[str, int]:
    """For every prefix p such that some key is p + an expected name: how many are."""
    cover: dict[str, set[str]] = {}
    for k in keys:
        for root in _RESNET_ROOTS:
            i = k.find(root + ".")
            while i >= 0:
                if (i == 0 or k[i - 1] == ".") and k[i:] in expected:
                    cover.setdefault(k[:i], set()).add(k[i:])
                i = k.find(root + ".", i + 1)
    return {p: len(names) for p, names in cover.items()}


def _rank_prefixes(coverage: dict[str, int]) -> list[str]:
    """Prefixes by coverage (desc), known prefixes first, then shorter first."""

    def order(p: str) -> tuple[int, int, int]:
        known = KNOWN_PREFIXES.index(p) if p in KNOWN_PREFIXES else len(KNOWN_PREFIXES)
        return (-coverage[p], known, len(p))

    return sorted(coverage, key=order)


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)}: [{shown}{more}]"


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """``"missing keys 2: [...]; unexpected keys ...; shape mismatches ..."`` (non-empty parts)."""
    parts = []
    if missing:
        parts.append(f"missing keys {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_first(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches {_first(mismatched)}")
    return "; ".join(parts)


def load_encoder_weights(
    encoder: nn.Module, path: str | Path, *, prefix: str | None = None
) -> dict[str, Any]:
    """Load ResNet18 weights from ``path`` into ``encoder`` (all tensors or none).

    Args:
        encoder: a :class:`~pixnet.models.resnet.ResNet18Encoder` (torchvision names).
        path: weights file; formats in the module docstring.
        prefix: strip exactly this key prefix (e.g. ``"module.encoder_q."``) instead of
            detecting it.

    Returns:
        Report: ``format`` (``"torchvision"``, ``"ciga-simclr"``, ``"wrapped"``,
        ``"pixnet-encoder"``), ``path``, ``container`` (key the state dict was under, or
        ``None``), ``prefix``, ``n_loaded`` (tensors copied), ``n_expected``,
        ``ignored_keys`` (file keys not used: ``fc.*``, projection heads, other
        modules), ``defaulted_keys`` (``num_batches_tracked`` absent from the file).

    Raises:
        PixNetInputError: unreadable or unsafe file (pickled code), or some encoder
            tensor missing or mis-shaped; the message lists missing, unexpected and
            mis-shaped keys and the accepted formats.
    """
    path = Path(path)
    obj = _read_file(path)
    own = encoder.state_dict()
    expected = set(own)
    required = {k for k in expected if not k.endswith("num_batches_tracked")}
    candidates = _tensor_dicts(obj)
    if not candidates:
        kind = type(obj).__name__
        keys = list(obj)[:_SHOW] if isinstance(obj, Mapping) else []
        raise PixNetInputError(
            path,
            f"holds a {kind} without tensors" + (f" (keys: {keys})" if keys else ""),
            _ACCEPTED,
        )

    # Choose the (container, prefix) pair that covers the most required keys.
    best: tuple[int, str | None, dict[str, Tensor], str] | None = None
    for container, sd in candidates:
        if prefix is not None:
            cov = {prefix: sum(1 for k in required if prefix + k in sd)}
        else:
            cov = _prefix_coverage(list(sd), required)
        if cov:
            top = _rank_prefixes(cov)[0]
            if best is None or cov[top] > best[0]:
                best = (cov[top], container, sd, top)
    if best is None:
        container, sd = candidates[0]
        raise PixNetInputError(
            path,
            f"no ResNet18 keys found (first keys: {list(sd)[:_SHOW]})"
            + (f" with prefix {prefix!r}" if prefix is not None else ""),
            _ACCEPTED,
        )
    _, container, sd, p = best
    if prefix is None:
        full = [q for q, n in _prefix_coverage(list(sd), required).items() if n == len(required)]
        if len(full) > 1:
            log.warning(
                "%s: a complete ResNet18 is found under several prefixes %s; using %r "
                "(pass prefix=... to choose)",
                path,
                full,
                p,
            )

    mapped: dict[str, Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for k, v in sd.items():
        if not k.startswith(p):
            ignored.append(k)
            continue
        name = k[len(p) :]
        if name in expected:
            mapped[name] = v
        elif _RESNET_LIKE.match(name):
            unexpected.append(k)
        else:
            ignored.append(k)  # fc.*, projection heads, other modules
    missing = [p + k for k in own if k in required and k not in mapped]
    mismatched = sorted(
        f"{p + k}: file {tuple(mapped[k].shape)} vs encoder {tuple(own[k].shape)}"
        for k in mapped
        if mapped[k].shape != own[k].shape and not k.endswith("num_batches_tracked")
    )
    if missing or mismatched or unexpected:
        where = f"state dict under {container!r}" if container else "top-level state dict"
        raise PixNetInputError(
            path,
            f"does not hold a complete ResNet18 ({where}, prefix {p!r}): "
            + key_problems(missing, unexpected, mismatched),
            _ACCEPTED,
        )

    defaulted = []
    for k in list(mapped):
        if k.endswith("num_batches_tracked") and mapped[k].shape != own[k].shape:
            del mapped[k]
    for k in sorted(expected - set(mapped)):
        defaulted.append(k)
        mapped[k] = own[k]
    encoder.load_state_dict(mapped, strict=True)

    if isinstance(obj, Mapping) and obj.get("format") == PIXNET_ENCODER_FORMAT:
        fmt = PIXNET_ENCODER_FORMAT
    elif container == "state_dict" and p == "model.resnet.":
        fmt = "ciga-simclr"
    elif container is None and p == "":
        fmt = "torchvision"
    else:
        fmt = "wrapped"
    report: dict[str, Any] = {
        "format": fmt,
        "path": str(path),
        "container": container,
        "prefix": p,
        "n_loaded": len(expected) - len(defaulted),
        "n_expected": len(expected),
        "ignored_keys": sorted(ignored),
        "defaulted_keys": defaulted,
    }
    log.info(
        "%s: loaded %d/%d encoder tensors (format %s, container %r, prefix %r, %d keys ignored)",
        path,
        report["n_loaded"],
        len(expected),
        fmt,
        container,
        p,
        len(ignored),
    )
    return report
