"""The GPU paths' settings: one typed object, read once from ``FLASHBONE_*`` environment variables.

    from flashbone.settings import SETTINGS
    SETTINGS.replay = False            # same as FLASHBONE_REPLAY=0 before the first import

    field                  variable                          default
    backend                FLASHBONE_BACKEND                 "auto"   (auto | torch | reference)
    kernels                FLASHBONE_KERNELS=0               True     CUDA kernels where they apply
    kernel_min_elements    FLASHBONE_KERNEL_MIN_ELEMENTS     2**23    smaller calls: PyTorch path
    kernel_config          FLASHBONE_KERNEL_CONFIG (JSON)    {}       Triton launch-parameter overrides
    padded                 FLASHBONE_PADDED=0|1|a,b          None     which variants pad their weight
    groups                 FLASHBONE_GROUPS=0                True     sibling layers as one node
    replay                 FLASHBONE_REPLAY=0                True     recompute inputs in backward
    replay_fused           FLASHBONE_REPLAY_FUSED=0          True     RMSNorm recompute in one pass

The modules that use a setting read it from :data:`SETTINGS` at call time, so changing a field
takes effect on the next call (``ops.set_backend`` does it for ``backend``). What each default
is worth was measured: docs/kernel_notes.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping

from .errors import BoneConfigError


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "1").strip() != "0"


def _padded(text: str | None) -> tuple[str, ...] | None:
    """``None`` (each kernel's default) for unset or ``1``, ``()`` for ``0``, else the list."""
    text = (text or "1").strip()
    if text in ("", "1"):
        return None
    return () if text == "0" else tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass
class Settings:
    """Switches and tuning of the GPU paths (see the module docstring for the variables).

    Attributes:
        backend: ``"auto"`` (GPU kernels where registered), ``"torch"`` or ``"reference"``.
        kernels: whether the CUDA kernels may run at all.
        kernel_min_elements: the smallest call (tokens x in) the kernels take; the row-affine
            variants need twice that. Below it a layer is host-bound and the PyTorch path wins.
        kernel_config: ``{kernel: {parameter: value}}`` overriding Triton launch parameters.
        padded: the variants whose frozen weight gets r spare columns; ``None`` for the
            kernels' default set, ``()`` for none.
        groups: whether layers that read one input (q/k/v, gate/up) run as one node.
        replay: whether weight-reading variants recompute their input in backward instead of
            saving it.
        replay_fused: whether the RMSNorm recompute runs as one Triton pass.
    """

    backend: str = "auto"
    kernels: bool = True
    kernel_min_elements: int = 1 << 23
    kernel_config: dict[str, dict] = field(default_factory=dict)
    padded: tuple[str, ...] | None = None
    groups: bool = True
    replay: bool = True
    replay_fused: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``FLASHBONE_*`` variables (``os.environ`` by default); a malformed
        value is a :class:`BoneConfigError` naming the variable."""
        env = os.environ if env is None else env
        try:
            min_elements = int(env.get("FLASHBONE_KERNEL_MIN_ELEMENTS", 1 << 23))
        except ValueError:
            raise BoneConfigError(
                f"FLASHBONE_KERNEL_MIN_ELEMENTS={env['FLASHBONE_KERNEL_MIN_ELEMENTS']!r}: expected an integer"
            ) from None
        config_text = env.get("FLASHBONE_KERNEL_CONFIG")
        try:
            config = json.loads(config_text) if config_text else {}
        except json.JSONDecodeError as e:
            raise BoneConfigError(f"FLASHBONE_KERNEL_CONFIG is not valid JSON ({e})") from None
        if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
            raise BoneConfigError('FLASHBONE_KERNEL_CONFIG: expected {"kernel": {"PARAM": value}, ...}')
        return cls(
            backend=env.get("FLASHBONE_BACKEND", "auto"),
            kernels=_flag(env, "FLASHBONE_KERNELS"),
            kernel_min_elements=min_elements,
            kernel_config=config,
            padded=_padded(env.get("FLASHBONE_PADDED")),
            groups=_flag(env, "FLASHBONE_GROUPS"),
            replay=_flag(env, "FLASHBONE_REPLAY"),
            replay_fused=_flag(env, "FLASHBONE_REPLAY_FUSED"),
        )


SETTINGS = Settings.from_env()

__all__ = ["Settings", "SETTINGS"]
