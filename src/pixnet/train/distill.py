"""Self-distillation of test-time augmentation (``pixnet train --distill-epochs``).

A spot loss fixes the map only through its integrals over spots; what a network draws
inside spots beyond that differs between the frames of the square, and ``--tta 8``
cancels it by averaging the eight (``pixnet.ops.dihedral``) at eight times the network's
cost per tile. Distillation moves that average into the weights: after the ``--epochs``
of spot training, the chosen model is frozen as a *teacher*, and for ``--distill-epochs``
more the network (starting from the same weights) learns, besides the spot loss, the
teacher's map of each training crop averaged over ``--distill-views`` random frames,
mapped back, cell by cell. Over the steps that target's expectation is the 8-frame mean
(every frame is equally likely), so the student is pulled towards the map ``--tta 8``
would predict; prediction then costs one forward pass.

Unlike ``--consistency`` (both maps trained, from the first step) the teacher is fixed
and already trained: the student is asked for a known, averaged map, not for invariance
in itself.

``--distill-rounds R`` repeats this R times: each round's teacher is the model the
previous round kept, whose own frames already agree better than its teacher's, so each
round's target is the frame average of a better map.

Run folder: ``teacher.pt`` holds the current round's teacher from the round's first
epoch on, so a resumed run distils towards the same model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixnet.errors import PixNetInputError
from pixnet.models.inference import as_input, inference_network
from pixnet.models.pixnet import PixNet
from pixnet.ops.dihedral import frames_average
from pixnet.ops.readout import get_readout

TEACHER_FILE = "teacher.pt"


class Teacher:
    """A frozen, prediction-only copy of a trained PixNet whose maps the student learns."""

    def __init__(self, model: PixNet, readout: str, views: int) -> None:
        if not 1 <= views <= 8:
            raise ValueError(f"views={views}: expected 1 to 8 frames of the square")
        self.net = inference_network(model)
        self.readout = get_readout(readout)
        self.cell_area_px = float(model.map_stride**2)
        self.views = views

    def frames(self, rng: np.random.Generator) -> list[int]:
        """``views`` distinct transforms of the square, drawn uniformly from the 8."""
        return [int(k) for k in rng.choice(8, size=self.views, replace=False)]

    @torch.no_grad()
    def target(self, images: Tensor, frames: list[int]) -> Tensor:
        """``(B, G, h, w)``: the teacher's maps of ``images`` on the targets' scale
        (``Readout.map_values``) in each of ``frames``, mapped back and averaged."""
        cell_area_px = self.cell_area_px

        def one_frame(x: Tensor) -> Tensor:
            return self.readout.map_values(self.net(as_input(x, self.net)), cell_area_px)

        return frames_average(one_frame, images, frames)


def distill_penalty(maps: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Mean squared difference between the student's maps and the teacher's targets,
    over every cell, gene and crop of the step's shares."""
    return torch.stack([(m - t).pow(2).mean() for m, t in zip(maps, targets, strict=True)]).mean()


def teacher_weights(out: Path, model_path: Path, fresh: bool) -> dict[str, Tensor]:
    """The teacher's state dict: with ``fresh`` (the first epoch of a distillation round)
    the weights ``model.pt`` holds (the epoch the spot training or the previous round
    kept), else those of a resumed run's ``out/teacher.pt``.

    Raises:
        PixNetInputError: the file to read is missing (no spot epoch was kept, or a run
            stopped in its distillation without its teacher).
    """
    if fresh:
        if not model_path.is_file():
            raise PixNetInputError(
                model_path,
                "missing: no epoch of --epochs was kept, so there is no model to distil",
                "look at log.jsonl (validation losses) and train without --distill-epochs",
            )
        return torch.load(model_path, map_location="cpu", weights_only=True)["state_dict"]
    path = out / TEACHER_FILE
    if not path.is_file():
        raise PixNetInputError(
            path,
            "missing: the run stopped during --distill-epochs but its teacher was not kept",
            "start the run again with --overwrite",
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def build_teacher(model: PixNet, state: dict[str, Tensor], readout: str, views: int) -> Teacher:
    """A :class:`Teacher` with ``state``'s weights on ``model``'s device (``model`` is
    not changed)."""
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return Teacher(twin, readout, views)


__all__ = ["TEACHER_FILE", "Teacher", "build_teacher", "distill_penalty", "teacher_weights"]
