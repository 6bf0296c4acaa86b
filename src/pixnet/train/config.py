"""Configuration of ``pixnet train`` (every field is a command-line option)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixnet.config import help_meta as _h


@dataclass
class TrainConfig:
    samples: str = field(default="", metadata=_h("sample manifest CSV (empty: generated example)"))
    holdout: list[str] = field(
        default_factory=list, metadata=_h("sample ids left out of training (test samples)")
    )
    out: str = field(default="runs/example", metadata=_h("run folder"))
    preset: str = field(default="cpu", metadata=_h("model preset: cpu or paper"))
    n_genes: int = field(default=250, metadata=_h("top genes by mean expression to predict"))
    working_mpp: float = field(default=2.0, metadata=_h("um per pixel the network sees"))
    crop_px: int = field(default=256, metadata=_h("training crop side, working pixels"))
    batch_size: int = field(default=8, metadata=_h("crops per batch"))
    epochs: int = field(default=30, metadata=_h("training epochs (paper: 200)"))
    micro_batches: int = field(
        default=1,
        metadata=_h(
            "forward each batch in this many parts (BatchNorm statistics per part); one "
            "process with N equals a torchrun job of N processes"
        ),
    )
    crops_per_epoch: int = field(
        default=0, metadata=_h("crops per epoch (0: about one supervision per spot)")
    )
    lr: float = field(default=5e-4, metadata=_h("Adam learning rate (paper: 5e-4)"))
    weight_decay: float = field(default=1e-4, metadata=_h("Adam weight decay (paper: 1e-4)"))
    pcc_weight: float = field(default=0.5, metadata=_h("lambda of the PCC loss (paper: 0.5)"))
    readout: str = field(
        default="mean", metadata=_h("spot read-out: mean, density, or the paper's sum")
    )
    val_fraction: float = field(
        default=0.15, metadata=_h("share of each training sample's spots held out for validation")
    )
    augment: bool = field(default=True, metadata=_h("flips, rotations, stain jitter"))
    pretrained: str | None = field(default=None, metadata=_h("encoder weights file"))
    seed: int = field(default=0, metadata=_h("random seed"))
    device: str = field(
        default="auto",
        metadata=_h("auto (the process's GPU if CUDA is available, else cpu), cpu, cuda:N"),
    )
    threads: int = field(default=0, metadata=_h("torch CPU threads (0: torch default)"))
    resume: bool = field(default=False, metadata=_h("continue from OUT/checkpoint.pt"))
    overwrite: bool = field(default=False, metadata=_h("replace an existing run folder's model"))
