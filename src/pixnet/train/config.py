"""Configuration of ``pixnet train`` (every field is a command-line option)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixnet.cli_options import DEVICE_HINT, DEVICE_PATTERN
from pixnet.cli_options import help_meta as _h
from pixnet.data.crops import ColourJitter
from pixnet.data.regions import REGION_SOURCES
from pixnet.models.pixnet import PRESETS
from pixnet.models.vit_pyramid import PYRAMIDS
from pixnet.ops.dihedral import CONSISTENCY_FRAMES
from pixnet.ops.readout import READOUTS

ATTENTIONS: tuple[str, ...] = ("preset", "row", "axial")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
SELECTIONS: tuple[str, ...] = ("best", "last")
CONTEXT_STRIDES: tuple[int, ...] = (2, 4, 8, 16)


@dataclass
class TrainConfig:
    samples: str = field(default="", metadata=_h("sample manifest CSV (empty: generated example)"))
    holdout: list[str] = field(
        default_factory=list, metadata=_h("sample ids left out of training (test samples)")
    )
    out: str = field(default="runs/example", metadata=_h("run folder"))
    preset: str = field(
        default="cpu", metadata=_h("model preset: cpu or paper", choices=tuple(PRESETS))
    )
    n_genes: int = field(default=250, metadata=_h("top genes by mean expression to predict", ge=1))
    working_mpp: float = field(default=2.0, metadata=_h("um per pixel the network sees", gt=0))
    crop_px: int = field(
        default=256, metadata=_h("training crop side, working pixels", ge=32, multiple_of=32)
    )
    batch_size: int = field(default=8, metadata=_h("crops per batch", ge=1))
    epochs: int = field(default=30, metadata=_h("training epochs (paper: 200)", ge=1))
    micro_batches: int = field(
        default=1,
        metadata=_h(
            "forward each batch in this many parts (BatchNorm statistics per part); one "
            "process with N equals a torchrun job of N processes",
            ge=1,
        ),
    )
    crops_per_epoch: int = field(
        default=0, metadata=_h("crops per epoch (0: about one supervision per spot)", ge=0)
    )
    lr: float = field(default=5e-4, metadata=_h("Adam learning rate (paper: 5e-4)", gt=0))
    lr_schedule: str = field(
        default="constant",
        metadata=_h(
            "learning rate per epoch: constant (paper) or cosine (from --lr to 0 over the "
            "epochs after the warm-up)",
            choices=LR_SCHEDULES,
        ),
    )
    warmup_epochs: int = field(
        default=0, metadata=_h("epochs of linear warm-up to --lr (counted in --epochs)", ge=0)
    )
    ema: float = field(
        default=0.0,
        metadata=_h(
            "decay of an exponential moving average of the weights per step (e.g. 0.99; "
            "0: off); validation and model.pt use the averaged weights",
            ge=0,
            lt=1,
        ),
    )
    precise_bn_batches: int = field(
        default=16,
        metadata=_h(
            "before each validation, recompute BatchNorm statistics of the weights being "
            "validated and saved from this many batches of unaugmented training crops "
            "(forward only; at most one epoch's worth); 0: keep the running averages from "
            "training (what runs before 2026-11-29 did)",
            ge=0,
        ),
    )
    select: str = field(
        default="best",
        metadata=_h(
            "which epoch's weights model.pt keeps: best (lowest validation loss) or last",
            choices=SELECTIONS,
        ),
    )
    weight_decay: float = field(default=1e-4, metadata=_h("Adam weight decay (paper: 1e-4)", ge=0))
    pcc_weight: float = field(default=0.5, metadata=_h("lambda of the PCC loss (paper: 0.5)", ge=0))
    smoothness: float = field(
        default=0.0,
        metadata=_h(
            "weight of a penalty on squared differences between adjacent map cells (0: "
            "off, the paper); removes within-spot patterns the spot loss cannot see",
            ge=0,
        ),
    )
    consistency: float = field(
        default=0.0,
        metadata=_h(
            "weight of a penalty on the difference between a crop's map and the map of the "
            "crop flipped or turned (one transform of --consistency-frames per batch), "
            "mapped back (0: off, the paper); each step then runs the network on twice the "
            "crops",
            ge=0,
        ),
    )
    consistency_frames: str = field(
        default="all",
        metadata=_h(
            "the transforms --consistency draws from: all (the 7 flips and turns) or rows "
            "(the 3 that keep rows as rows: both flips and the half turn)",
            choices=tuple(CONSISTENCY_FRAMES),
        ),
    )
    distill_epochs: int = field(
        default=1,
        metadata=_h(
            "epochs per round of --distill-rounds, after --epochs, in which the map also "
            "learns, cell by cell, a frozen copy of the trained model's map averaged over "
            "the flips and turns of the square (what --tta 8 predicts), so that one forward "
            "pass gives it; the learning-rate schedule restarts and the validation band "
            "picks among these epochs (0: off, the paper, and --distill-rounds is ignored). "
            "More --distill-epochs on --resume continue a finished run",
            ge=0,
        ),
    )
    distill_rounds: int = field(
        default=8,
        metadata=_h(
            "rounds of --distill-epochs each: every round freezes the model the previous "
            "one kept as its teacher (the first: the spot training's) and restarts the "
            "schedule, so a student of a student learns the frame average of a map that is "
            "already closer to it. More rounds on --resume continue a finished run",
            ge=1,
        ),
    )
    distill_weight: float = field(
        default=1.0,
        metadata=_h(
            "weight of the mean squared difference between the map and the teacher's in "
            "--distill-epochs (beside the spot loss)",
            ge=0,
        ),
    )
    distill_views: int = field(
        default=2,
        metadata=_h(
            "flips and turns the teacher's map is averaged over per step in "
            "--distill-epochs, drawn at random from the 8 (over the steps the target is "
            "their 8-frame mean); each costs one forward pass without gradients",
            ge=1,
            le=8,
        ),
    )
    readout: str = field(
        default="mean",
        metadata=_h("spot read-out: mean, density, or the paper's sum", choices=READOUTS),
    )
    val_fraction: float = field(
        default=0.15,
        metadata=_h("share of each training sample's spots held out for validation", ge=0, lt=1),
    )
    coarsen: int = field(
        default=1,
        metadata=_h(
            "supervise K x K blocks of array positions as one region (counts summed); "
            "1: single spots",
            ge=1,
        ),
    )
    regions: str = field(
        default="spots",
        metadata=_h(
            "spots (single spots or --coarsen blocks) or group (the samples' 'group' labels)",
            choices=REGION_SOURCES,
        ),
    )
    attention: str = field(
        default="preset",
        metadata=_h(
            "decoder attention: preset (its own), row (paper: each row attends within "
            "itself), axial (rows and columns)",
            choices=ATTENTIONS,
        ),
    )
    context_stride: int = field(
        default=2,
        metadata=_h(
            "decoder stride that carries context into the map: 2 (every stage, the paper) or "
            "4, 8, 16 (stop there and upsample bilinearly: smooth below that scale)",
            choices=CONTEXT_STRIDES,
            ge=2,
            le=16,
        ),
    )
    local_path: bool = field(
        default=False,
        metadata=_h("add a pointwise path from the encoder's stride-2 features into the head"),
    )
    gene_scales: bool = field(
        default=False,
        metadata=_h(
            "smooth each gene's map with a Gaussian of learned width (one per gene, up to "
            "8 map cells; the widths are saved in the model and written by predict)"
        ),
    )
    augment: bool = field(default=True, metadata=_h("flips, rotations, colour jitter"))
    stain_sigma: float = field(
        default=ColourJitter.stain_sigma,
        metadata=_h(
            "HED stain jitter of training crops: each stain's density scaled by 1 +- this "
            "(0.05: light; Tellez et al. call 0.2 strong)",
            ge=0,
            le=0.9,
        ),
    )
    stain_bias: float = field(
        default=ColourJitter.stain_bias,
        metadata=_h("HED stain jitter: each stain's density shifted by +- this", ge=0, le=1),
    )
    brightness_contrast: float = field(
        default=ColourJitter.brightness_contrast,
        metadata=_h(
            "brightness and contrast of training crops each scaled by 1 +- this (0: off)",
            ge=0,
            le=0.9,
        ),
    )
    stain_normalise: bool = field(
        default=True,
        metadata=_h(
            "bring every slide's tissue to the training sections' mean stain density (per-"
            "channel optical density scaled by the reference over the slide's tissue median), "
            "in training and, from the model file, in prediction (--no-stain-normalise: each "
            "slide's own colours)"
        ),
    )
    pretrained: str | None = field(
        default=None,
        metadata=_h(
            "encoder weights file: ResNet18 (torchvision/timm/Ciga/pixnet pretrain) or, for a "
            "ViT --encoder, pytorch_model.bin, model.safetensors or their folder"
        ),
    )
    encoder: str = field(
        default="resnet18",
        metadata=_h(
            "encoder by name: resnet18, vit-b16, uni, uni2-h, virchow2, h-optimus-0 "
            "(pixnet.models.registry); recorded in model.pt"
        ),
    )
    vit_pyramid: str = field(
        default="dpt",
        metadata=_h(
            "ViT feature pyramid: dpt (four blocks) or simple (last block)", choices=PYRAMIDS
        ),
    )
    freeze_encoder: bool = field(
        default=False, metadata=_h("train the decoder only (a ViT's stem and neck still train)")
    )
    seed: int = field(default=0, metadata=_h("random seed", ge=0))
    ensemble: int = field(
        default=1,
        metadata=_h(
            "members trained with seeds SEED, SEED+1000, ... into OUT/members/K and saved in "
            "one OUT/model.pt; predict averages them",
            ge=1,
            le=64,
        ),
    )
    device: str = field(
        default="auto",
        metadata=_h(
            "auto (the process's GPU if CUDA is available, else cpu), cpu, cuda:N",
            pattern=DEVICE_PATTERN,
            pattern_hint=DEVICE_HINT,
        ),
    )
    threads: int = field(default=0, metadata=_h("torch CPU threads (0: torch default)", ge=0))
    resume: bool = field(default=False, metadata=_h("continue from OUT/checkpoint.pt"))
    overwrite: bool = field(default=False, metadata=_h("replace an existing run folder's model"))

    @property
    def colour_jitter(self) -> ColourJitter:
        """The colour augmentation of training crops (``--stain-sigma``, ``--stain-bias``,
        ``--brightness-contrast``)."""
        return ColourJitter(self.stain_sigma, self.stain_bias, self.brightness_contrast)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: ``--epochs`` of spot training, then every round of
        distillation (none where ``--distill-epochs`` is 0)."""
        return self.epochs + self.distill_rounds * self.distill_epochs
