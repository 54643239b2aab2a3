"""flashbone: exact, fast block-affine adapters (Bone, Bat and variants) for any model.

    from flashbone import BoneConfig, get_bone_model, load_adapter
    model = get_bone_model(hf_model, BoneConfig(variant="bat", r=64))
    ...train...
    model.save_adapter("out/adapter")
    model = load_adapter(hf_model, "out/adapter")
    merged = model.merge_and_unload()

Where things live: the math of every variant in ``variants.py``; fast paths in ``ops/``;
layers in ``layer.py``; model surgery in ``model.py``; files in ``adapter_files.py``;
the layout and what may import what: docs/architecture.md.
"""

from typing import TYPE_CHECKING

from .version import __version__

from .config import BoneConfig
from .errors import AdapterFileError, BoneConfigError, BoneError, BoneShapeError, MergeError, TargetError
from .layer import AdapterModule, BlockAdapter, BoneLayer
from .variants import VARIANTS, Variant, get_variant, num_params

if TYPE_CHECKING:
    from .model import BoneModel, TrainableReport, get_adapter_params, get_bone_model, load_adapter

# flashbone.model subclasses transformers' PreTrainedModel, whose import takes seconds: it is
# imported on first use of these names, so `import flashbone` (and the CLI's start) stays quick
_FROM_MODEL = ("BoneModel", "TrainableReport", "get_adapter_params", "get_bone_model", "load_adapter")


def __getattr__(name: str):
    if name in _FROM_MODEL:
        from . import model

        value = getattr(model, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'flashbone' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_MODEL})


__all__ = [
    "__version__",
    "BoneConfig",
    "BoneModel",
    "BoneLayer",
    "BlockAdapter",
    "AdapterModule",
    "TrainableReport",
    "get_bone_model",
    "load_adapter",
    "get_adapter_params",
    "VARIANTS",
    "Variant",
    "get_variant",
    "num_params",
    "BoneError",
    "BoneConfigError",
    "BoneShapeError",
    "TargetError",
    "AdapterFileError",
    "MergeError",
]
