"""Where training metrics go besides ``OUT/metrics.jsonl``: TensorBoard and Weights & Biases.

    --report-to tensorboard   OUT/tensorboard (when tensorboard is installed; the default)
    --report-to wandb         a wandb run in OUT/wandb, project $WANDB_PROJECT (default flashbone),
                              named after OUT; its id is kept in OUT/wandb/run_id so --resume
                              continues the same run (WANDB_MODE=offline works without a login)
    --report-to none          metrics.jsonl only

Scalars are written as ``GROUP/NAME`` at the optimizer step: ``train/loss``, ``eval/loss``...
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BoneError


@dataclass
class Reporters:
    """The open writers of one run (rank 0 only)."""

    tensorboard: object | None = None
    wandb: object | None = None
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, out: Path, start: int, report_to: tuple[str, ...], run_config: dict | None = None) -> "Reporters":
        """Writers for ``report_to``; ``start`` > 0 continues a resumed run (later points dropped)."""
        return cls(
            _tensorboard(out, start) if "tensorboard" in report_to else None,
            _wandb(out, start, run_config or {}) if "wandb" in report_to else None,
        )

    def scalars(self, group: str, values: dict[str, float], step: int) -> None:
        if self.tensorboard is not None:
            for k, val in values.items():
                self.tensorboard.add_scalar(f"{group}/{k}", val, step)
        if self.wandb is not None:
            self.wandb.log({f"{group}/{k}": val for k, val in values.items()}, step=step)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(out: Path, start: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)


def _wandb(out: Path, start: int, run_config: dict):
    try:
        import wandb
    except ImportError:
        raise BoneError("--report-to wandb: wandb is not installed; pip install wandb") from None
    run_file = out / "wandb" / "run_id"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_id = run_file.read_text().strip() if start and run_file.is_file() else uuid.uuid4().hex[:8]
    run_file.write_text(run_id + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "flashbone"),
        name=out.name,
        id=run_id,
        resume="allow",
        dir=str(out),
        config=run_config,
    )


__all__ = ["Reporters"]
