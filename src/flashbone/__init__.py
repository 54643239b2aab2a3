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

from .version import __version__

from .config import BoneConfig
from .errors import (
    AdapterFileError,
    BoneConfigError,
    BoneError,
    BoneShapeError,
    MergeError,
    TargetError,
)
from .layer import AdapterModule, BlockAdapter, BoneLayer
from .model import BoneModel, TrainableReport, get_adapter_params, get_bone_model, load_adapter
from .variants import VARIANTS, Variant, get_variant, num_params

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
