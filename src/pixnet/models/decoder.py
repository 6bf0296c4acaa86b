"""PixNet decoder: four U-Net stages with residual linear attention (paper Eqs. 3-8).

Blocks (SPEC section 1; the design follows Wazir & Kim's MCADS decoder):

- :class:`CompositeBlock` (CB): 3x3 depthwise conv (no bias) -> BN -> LeakyReLU ->
  1x1 conv (no bias) -> BN -> LeakyReLU.
- :class:`DepthToSpaceUp` (DSUB, Eq. 3), deep stages F5->F4 and F4->F3: 3x3 conv to
  ``K = 4C`` -> ReLU -> PixelShuffle(2) -> 3x3 conv to ``C`` -> ReLU -> CB to the skip's
  channel count.
- :class:`BilinearUp` (Eq. 4), shallow stages F3->F2 and F2->F1: CB -> bilinear x2 ->
  CB to the skip's channel count.
- :class:`SkipRefine` (Eq. 5): ``F^ = BN(LeakyReLU(F + Conv1x1(DWConv3x3(F))))``.
- :class:`RowAttention` (Eq. 6): ``softmax(Q K^T / sqrt(d)) V`` along each image row (a
  W x W softmax per row, as in the reference code), optionally plus column attention.
- :class:`RLAB` (Eqs. 7-8): ``Fu = concat(F^, U)``; ``D = Fu + Attention(CB(Fu))``.

Channel flow (``c_l`` = channels of encoder level ``F_l``; ResNet18: 64, 64, 128, 256,
512; stage ``s`` = 0..3 goes from level ``5 - s`` to level ``4 - s``):

- ``D5 = F5`` (512 channels).
- Upsampler of stage ``s``: ``D_in -> U`` with ``U`` at the skip's channel count
  ``c_skip`` (SPEC: "CB to the skip's channel count"). Its working width is the stage's
  *hidden* width ``h_s`` (``C`` of DSUB, so ``K = 4 h_s``; the middle width of the
  bilinear block). With the paper's ``h = 512`` the first stage is exactly Eq. 3 with
  ``C = C_F5 = 512``, ``K = 2048``; the first conv of each upsampler also plays the role
  of the projection from the previous stage's width to ``h_s``, so no extra layer is
  added between stages.
- ``F^ = SkipRefine(F_skip)`` keeps ``c_skip``; ``Fu = concat(F^, U)`` has ``2 c_skip``
  channels; the RLAB's CB maps ``2 c_skip -> 2 c_skip`` and the attention projects back
  to ``2 c_skip``, so ``D = Fu + Attention(CB(Fu))`` is well defined (Eq. 8) and has
  ``2 c_skip`` channels: 512, 256, 128, 128 for D4..D1 (:attr:`PixNetDecoder.out_channels`).
- Head: a 1x1 conv ``D1 (128 ch, stride 2) -> n_genes``.

Output resolution: the map ``G`` stays at stride 2 (``H/2 x W/2``; each cell covers
2x2 input pixels). There is no final upsampling: it would add no information (D1 is
at stride 2) and would quadruple the memory of every map; the aggregation step works
in map cells and converts spot centres and radii from pixels by :attr:`map_stride`.

LeakyReLU slope: 0.3, the Keras default used by the reference TensorFlow code
(``LeakyReLU()``); PyTorch's default would be 0.01.

Where the paper and the MCADS reference code differ, this follows the paper: the RLAB
residual adds ``Fu`` (Eq. 8; the code adds ``U`` and then applies a further CB and
channel/spatial attention, which the paper does not mention), and the attention scores
are scaled by ``1 / sqrt(d)`` (the paper's beta; the code does not scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixnet.errors import PixNetInputError

LEAKY_SLOPE: float = 0.3
"""Negative slope of every LeakyReLU in the decoder (Keras default, as in MCADS)."""

STAGE_STRIDES: tuple[int, ...] = (16, 8, 4, 2)
"""Input pixels per cell of each decoder stage's output, deep stage first."""

CONTEXT_DIM: int = 64
"""Channels the context is projected to before it is upsampled (``context_stride > 2``)."""

LOCAL_DIM: int = 32
"""Channels of the :class:`LocalPath`."""


class CompositeBlock(nn.Module):
    """CB: depthwise 3x3 -> BN -> LeakyReLU -> pointwise 1x1 -> BN -> LeakyReLU.

    Args:
        in_ch: input channels.
        out_ch: output channels.

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.
    """

    conv_bn_pairs = (("dw", "bn1"), ("pw", "bn2"))
    """(conv, BatchNorm that follows it): folded for prediction (:mod:`pixnet.models.inference`)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W) -> (B, out_ch, H, W)``."""
        x = self.act(self.bn1(self.dw(x)))
        return self.act(self.bn2(self.pw(x)))


class DepthToSpaceUp(nn.Module):
    """DSUB (Eq. 3): conv3x3 to 4C -> ReLU -> PixelShuffle(2) -> conv3x3 to C -> ReLU -> CB.

    Args:
        in_ch: channels of the incoming decoder feature.
        hidden: working width ``C`` (the first conv has ``K = 4C`` filters).
        out_ch: output channels (the skip's channel count).

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``.
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.conv_expand = nn.Conv2d(in_ch, 4 * hidden, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.cb = CompositeBlock(hidden, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``."""
        x = self.shuffle(F.relu(self.conv_expand(x)))
        return self.cb(F.relu(self.conv(x)))


class BilinearUp(nn.Module):
    """Shallow upsampler (Eq. 4): CB -> bilinear x2 (``align_corners=False``) -> CB.

    Args:
        in_ch: channels of the incoming decoder feature.
        hidden: width between the two CBs.
        out_ch: output channels (the skip's channel count).

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``.
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.cb1 = CompositeBlock(in_ch, hidden)
        self.cb2 = CompositeBlock(hidden, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``."""
        x = self.cb1(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.cb2(x)


class SkipRefine(nn.Module):
    """Skip refinement (Eq. 5): ``BN(LeakyReLU(F + Conv1x1(DWConv3x3(F))))``.

    Args:
        channels: channels of the skip feature (kept).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels, 1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W) -> (B, C, H, W)``."""
        return self.bn(self.act(x + self.pw(self.dw(x))))


class _AxisAttention(nn.Module):
    """Single-head dot-product attention along one image axis.

    ``axis="row"``: every row is a sequence of ``W`` positions (``H`` independent
    W x W softmaxes per image); ``axis="col"``: every column is a sequence of ``H``.
    Q, K, V are 1x1 convs to ``attn_dim`` (K without bias, which softmax would ignore);
    the result is projected back to ``channels`` by a 1x1 conv.
    """

    def __init__(self, channels: int, attn_dim: int, axis: str) -> None:
        super().__init__()
        if axis not in ("row", "col"):
            raise ValueError(f"axis must be 'row' or 'col', got {axis!r}")
        self.axis = axis
        self.q = nn.Conv2d(channels, attn_dim, 1)
        # No key bias: q . b_k is the same for every key of a query, so softmax ignores it.
        self.k = nn.Conv2d(channels, attn_dim, 1, bias=False)
        self.v = nn.Conv2d(channels, attn_dim, 1)
        self.proj = nn.Conv2d(attn_dim, channels, 1)
        self.window: int | None = None
        """Positions each side a query attends to (``None``: the whole row or column);
        set by :func:`set_attention_window`, not a weight."""

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W) -> (B, C, H, W)``."""
        # Rows: (B, d, H, W) -> (B, H, W, d); columns: -> (B, W, H, d). The first two
        # dimensions act as batch dimensions of scaled_dot_product_attention, whose
        # default scale is 1 / sqrt(d) (the paper's beta).
        perm = (0, 2, 3, 1) if self.axis == "row" else (0, 3, 2, 1)
        q = self.q(x).permute(perm)
        k = self.k(x).permute(perm)
        v = self.v(x).permute(perm)
        mask = None
        n = q.shape[2]
        if self.window is not None and n > self.window + 1:
            pos = torch.arange(n, device=q.device)
            mask = (pos[:, None] - pos[None, :]).abs() <= self.window  # True: attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        back = (0, 3, 1, 2) if self.axis == "row" else (0, 3, 2, 1)
        return self.proj(out.permute(back))


class RowAttention(nn.Module):
    """Attention of Eq. 6, ``softmax(Q K^T / sqrt(d)) V``, along each image row.

    Full attention over all H*W positions does not fit in memory at decoder
    resolutions; as in the reference code, each row of ``W`` positions attends only
    within itself. With ``axial=True`` a column attention (own Q, K, V and output
    projection, each column a sequence of ``H``) is added: output = row(x) + col(x).

    Args:
        channels: input and output channels ``C``.
        attn_dim: dimension ``d`` of queries, keys and values.
        axial: also attend along columns.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, attn_dim: int, axial: bool = False) -> None:
        super().__init__()
        self.row = _AxisAttention(channels, attn_dim, "row")
        self.col = _AxisAttention(channels, attn_dim, "col") if axial else None

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C, H, W) -> (B, C, H, W)``."""
        out = self.row(x)
        if self.col is not None:
            out = out + self.col(x)
        return out


class RLAB(nn.Module):
    """Residual linear attention block (Eqs. 5-8).

    ``F^ = SkipRefine(skip)``; ``Fu = concat(F^, U)``; ``D = Fu + Attention(CB(Fu))``.

    Args:
        skip_ch: channels of the encoder skip feature.
        up_ch: channels of the upsampled decoder feature ``U``.
        attn_dim: attention dimension ``d``; ``None`` uses the width of ``Fu`` (as the
            reference code's ``Dense(in_channels)``).
        axial: add column attention to the row attention.

    Shapes: skip ``(B, skip_ch, H, W)``, up ``(B, up_ch, H, W)`` ->
    ``(B, skip_ch + up_ch, H, W)``.
    """

    def __init__(self, skip_ch: int, up_ch: int, attn_dim: int | None, axial: bool = False):
        super().__init__()
        fu_ch = skip_ch + up_ch
        self.out_channels = fu_ch
        self.skip_refine = SkipRefine(skip_ch)
        self.cb = CompositeBlock(fu_ch, fu_ch)
        self.attn = RowAttention(fu_ch, attn_dim if attn_dim is not None else fu_ch, axial)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        """``skip: (B, skip_ch, H, W)``, ``up: (B, up_ch, H, W)`` -> ``(B, fu_ch, H, W)``."""
        fu = torch.cat([self.skip_refine(skip), up], dim=1)
        return fu + self.attn(self.cb(fu))


class LocalPath(nn.Module):
    """Pointwise path from the encoder's stride-2 features into the head.

    Two 1x1 convs (no bias) -> BN -> LeakyReLU on ``F1``: no spatial mixing beyond
    ``F1``'s own receptive field (7 input pixels for ResNet18's first conv), so what it
    adds to a map cell depends only on the image around that cell. A spot loss cannot
    make it draw patterns that average out inside spots: its output is one function of
    the local image everywhere.

    Shapes: ``(B, in_ch, H/2, W/2) -> (B, out_ch, H/2, W/2)``.
    """

    conv_bn_pairs = (("pw1", "bn1"), ("pw2", "bn2"))

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.pw2 = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W) -> (B, out_ch, H, W)``."""
        return self.act(self.bn2(self.pw2(self.act(self.bn1(self.pw1(x))))))


class DecoderStage(nn.Module):
    """One decoder stage: upsample ``D_l`` to the skip's resolution, then RLAB.

    Args:
        in_ch: channels of ``D_l``.
        skip_ch: channels of the skip ``F_{l-1}``.
        hidden: working width of the upsampler.
        attn_dim: attention dimension (``None``: width of ``Fu``).
        deep: DSUB (``True``) or bilinear (``False``) upsampling.
        axial: add column attention.

    Shapes: ``x: (B, in_ch, H, W)``, ``skip: (B, skip_ch, 2H, 2W)`` ->
    ``(B, 2 skip_ch, 2H, 2W)``.
    """

    def __init__(
        self,
        in_ch: int,
        skip_ch: int,
        hidden: int,
        attn_dim: int | None,
        deep: bool,
        axial: bool = False,
    ) -> None:
        super().__init__()
        self.up: nn.Module = (
            DepthToSpaceUp(in_ch, hidden, skip_ch) if deep else BilinearUp(in_ch, hidden, skip_ch)
        )
        self.rlab = RLAB(skip_ch, skip_ch, attn_dim, axial)
        self.out_channels = self.rlab.out_channels

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """``x: (B, in_ch, H, W)``, ``skip: (B, skip_ch, 2H, 2W)`` -> ``(B, 2 skip_ch, 2H, 2W)``."""
        return self.rlab(skip, self.up(x))


def set_attention_window(model: nn.Module, window_px: int | None) -> None:
    """Bound how far the decoder's attention reaches, for every decoder in ``model`` (a
    PixNet or an ensemble): each map position attends to positions at most
    ``window_px / 2`` input pixels away along its row (and column), at every stage.

    Training on crops of ``crop_px`` lets attention span at most ``crop_px``; a
    prediction tile's row is several times longer. ``window_px = crop_px`` gives
    prediction the training context and makes it independent of the tile size (for a
    tile margin of at least ``window_px / 2``). ``None`` or 0: whole rows (a newly built
    model; :func:`~pixnet.predict.tiled.load_predictor` applies the crop by default).
    """
    for dec in model.modules():
        if not isinstance(dec, PixNetDecoder):
            continue
        for s, stage in enumerate(dec.stages):
            stride = STAGE_STRIDES[s]  # the RLAB's resolution
            half = None if not window_px else max(1, math.ceil(window_px / 2 / stride))
            for attn in stage.modules():  # the stage's RLAB attention (rows, columns)
                if isinstance(attn, _AxisAttention):
                    attn.window = half


def _per_stage(value: int | Sequence[int], name: str, n: int = 4) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(int(v) < 1 for v in values):
        raise PixNetInputError(
            f"PixNetDecoder({name}=...)",
            f"{name}={value!r} is not a positive int or a tuple of {n} positive ints",
            f"pass e.g. {name}=64 or {name}=(512, 256, 128, 64) (one per stage, deep first)",
        )
    return tuple(int(v) for v in values)


class PixNetDecoder(nn.Module):
    """Decode the ResNet pyramid F1..F5 into the gene-expression map G at stride 2.

    Stages (deep first): F5->F4 and F4->F3 upsample with DSUB, F3->F2 and F2->F1 with
    bilinear interpolation; each ends with an RLAB. A 1x1 conv head maps D1 to genes.
    See the module docstring for the channel flow.

    Args:
        encoder_channels: channels of F1..F5.
        hidden: upsampler working width, one int for all stages or four (deep first).
        attn_dim: attention dimension ``d`` (``None``: width of each stage's ``Fu``).
        n_genes: number of genes ``M`` (output channels of G).
        axial: row + column attention instead of row attention only.
        context_stride: the stride whose stage output carries the context into the
            head: 2 runs every stage (the paper); 4, 8 or 16 stop at that stage, project
            its output to :data:`CONTEXT_DIM` channels and upsample it bilinearly to
            stride 2, so the context part of the map is smooth below that scale.
        local_path: concatenate a :class:`LocalPath` of ``F1`` to the head's input.

    Attributes:
        out_channels: channels of the built stages' outputs (D4, D3, D2, D1 with
            ``context_stride`` 2; ``2 x`` the skip's channels).
        head_channels: channels the head reads (:meth:`decode`'s output).
        map_stride: 2, input pixels per map cell along each axis.
    """

    map_stride: int = 2

    def __init__(
        self,
        encoder_channels: Sequence[int] = (64, 64, 128, 256, 512),
        hidden: int | Sequence[int] = 512,
        attn_dim: int | None = None,
        n_genes: int = 250,
        axial: bool = False,
        context_stride: int = 2,
        local_path: bool = False,
    ) -> None:
        super().__init__()
        enc = tuple(int(c) for c in encoder_channels)
        if context_stride not in STAGE_STRIDES:
            raise PixNetInputError(
                "PixNetDecoder(context_stride=...)",
                f"context_stride={context_stride}",
                f"pass one of {sorted(STAGE_STRIDES)}",
            )
        if len(enc) != 5:
            raise PixNetInputError(
                "PixNetDecoder(encoder_channels=...)",
                f"got {len(enc)} levels {enc}",
                "pass the channels of the five pyramid levels F1..F5",
            )
        if n_genes < 1:
            raise PixNetInputError(
                "PixNetDecoder(n_genes=...)", f"n_genes={n_genes}", "pass n_genes >= 1"
            )
        if attn_dim is not None and attn_dim < 1:
            raise PixNetInputError(
                "PixNetDecoder(attn_dim=...)",
                f"attn_dim={attn_dim}",
                "pass a positive int, or None for the full width",
            )
        self.hidden = _per_stage(hidden, "hidden")
        self.encoder_channels = enc
        self.n_genes = n_genes
        self.context_stride = context_stride
        stages = []
        in_ch = enc[4]
        for s in range(STAGE_STRIDES.index(context_stride) + 1):
            skip_ch = enc[3 - s]
            stage = DecoderStage(in_ch, skip_ch, self.hidden[s], attn_dim, s < 2, axial)
            stages.append(stage)
            in_ch = stage.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(st.out_channels for st in stages)
        # Built only when asked, so a default decoder keeps the paper's state-dict names.
        self.context_proj: nn.Module | None = None
        if context_stride > self.map_stride:
            self.context_proj = nn.Conv2d(in_ch, CONTEXT_DIM, 1)
            in_ch = CONTEXT_DIM
        self.local: LocalPath | None = LocalPath(enc[0], LOCAL_DIM) if local_path else None
        self.head_channels = in_ch + (LOCAL_DIM if local_path else 0)
        self.head = nn.Conv2d(self.head_channels, n_genes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Decode the pyramid.

        Args:
            features: ``[F1, ..., F5]`` with ``F_l: (B, c_l, H / 2^l, W / 2^l)``.

        Returns:
            ``G: (B, n_genes, H/2, W/2)``, one value per gene per 2x2-pixel map cell.
        """
        return self.head(self.decode(features))

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Run the four stages without the head.

        Args:
            features: ``[F1, ..., F5]`` as in :meth:`forward`.

        Returns:
            ``(B, head_channels, H/2, W/2)``: D1 (the paper), or the upsampled context
            projection, with the local path's channels after it when there is one.
        """
        if len(features) != 5:
            raise PixNetInputError(
                "PixNetDecoder.forward",
                f"got {len(features)} feature maps",
                "pass the five pyramid levels [F1, ..., F5]",
            )
        d = features[4]
        for s, stage in enumerate(self.stages):
            d = stage(d, features[3 - s])
        if self.context_proj is not None:
            d = F.interpolate(
                self.context_proj(d),
                size=features[0].shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
        if self.local is not None:
            d = torch.cat([d, self.local(features[0])], dim=1)
        return d

    @torch.no_grad()
    def set_head_bias(self, bias: Tensor) -> None:
        """Set the head's bias, the map's value before training (with a zero-mean weight).

        The value that starts each gene at its training mean depends on the read-out:
        :meth:`pixnet.ops.readout.Readout.head_bias`.

        Args:
            bias: ``(n_genes,)`` finite values, on the scale of the head output.
        """
        head_bias = self.head.bias
        assert head_bias is not None  # the head is built with a bias
        bias = torch.as_tensor(bias, dtype=head_bias.dtype).flatten()
        if bias.numel() != self.n_genes or not torch.isfinite(bias).all():
            raise PixNetInputError(
                "set_head_bias(bias=...)",
                f"got {bias.numel()} values (finite: {bool(torch.isfinite(bias).all())}), "
                f"the head has {self.n_genes} genes",
                f"pass a finite ({self.n_genes},) vector",
            )
        head_bias.copy_(bias.to(head_bias.device))
