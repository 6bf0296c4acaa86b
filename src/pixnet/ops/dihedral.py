"""Test-time augmentation over the dihedral group of the square (flips and quarter turns).

A spot loss fixes a map only through its integrals over spots, so part of what a network
draws inside spots is not determined by the data: it differs from seed to seed, and it
need not rotate with the image (row attention, for one, draws along rows). Averaging a
map over the eight symmetries of the square, each prediction mapped back to the slide's
frame, keeps what the network predicts in every orientation and cancels what it does
not; the result is exactly equivariant (:func:`group_average`).

Transform ``k`` in ``0..7``: ``k % 4`` quarter turns (``torch.rot90`` over the last two
axes), then, for ``k >= 4``, a left-right flip. Maps at stride ``s`` of an input whose
sides are multiples of ``s`` transform exactly like the input (a map cell covers the
same pixels after the transform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

# --tta N: which transforms (identity first). 2 adds the transpose (rows become
# columns); 4 keeps rows as rows (flips and a half turn); 8 is the whole group.
TTA_TRANSFORMS: dict[int, tuple[int, ...]] = {
    1: (0,),
    2: (0, 7),
    4: (0, 2, 4, 6),
    8: tuple(range(8)),
}

# train --consistency-frames: the transforms a training step draws its twin from (never
# the identity). "rows" keeps rows as rows (the half turn and both flips), which row
# attention can follow exactly; "all" adds the four that turn rows into columns.
CONSISTENCY_FRAMES: dict[str, tuple[int, ...]] = {
    "all": tuple(range(1, 8)),
    "rows": (2, 4, 6),
}


def dihedral(x: Tensor, k: int) -> Tensor:
    """Transform ``k`` of ``x (..., H, W)``."""
    y = x.rot90(k % 4, dims=(-2, -1)) if k % 4 else x
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(y: Tensor, k: int) -> Tensor:
    """The inverse of :func:`dihedral`: ``dihedral_inverse(dihedral(x, k), k) == x``."""
    x = y.flip(-1) if k >= 4 else y
    return x.rot90(-(k % 4), dims=(-2, -1)) if k % 4 else x


def frames_average(fn: Callable[[Tensor], Tensor], x: Tensor, ks: Sequence[int]) -> Tensor:
    """Mean over the transforms ``ks`` of ``fn`` applied in each frame and mapped back:
    ``mean_k T_k^-1 fn(T_k x)``, one transform at a time (memory of one call).

    ``fn`` maps ``(B, C, H, W)`` to ``(B, G, H / s, W / s)``; the result is float32.
    """
    acc = None
    for k in ks:
        y = dihedral_inverse(fn(dihedral(x, k)), k).float()
        acc = y if acc is None else acc.add_(y)
    assert acc is not None
    return acc.div_(len(ks))


def group_average(fn: Callable[[Tensor], Tensor], x: Tensor, n: int) -> Tensor:
    """:func:`frames_average` over the transforms of ``--tta n``. With ``n = 8`` the result
    is equivariant: ``group_average(fn, T_j x) == T_j group_average(fn, x)``.
    """
    return frames_average(fn, x, TTA_TRANSFORMS[n])
