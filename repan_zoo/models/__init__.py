"""The ``repan_*`` model families, registered in timm (``timm.list_models("repan_*")``).

Families are data (:mod:`.families`, schema in :mod:`.config`), built by one generic
classifier (:class:`RepNet`) whose every fusable conv is a :class:`~repan_zoo.blocks.RepBlock`;
:mod:`.repan` registers them with timm; :func:`checkpoint_filter` loads timm's own
``repvgg_*`` / ``mobileone_*`` / ``resnet*`` weights.
"""
from .config import BLOCK_TYPES, BranchRule, FeatureLevel, NetCfg, StageCfg
from .families import MODELS, ModelDef
from .layers import RepBasicBlock, RepBottleneck, RepConvAct, fitting_branches, rep_conv
from .net import RepNet
from .stages import STAGE_BLOCKS, BlockArgs, StageBlockType, get_stage_block, register_stage_block
from .timm_compat import checkpoint_filter
from .repan import create_repnet, default_cfgs, model_names

__all__ = [
    "BLOCK_TYPES",
    "BlockArgs",
    "STAGE_BLOCKS",
    "StageBlockType",
    "get_stage_block",
    "register_stage_block",
    "BranchRule",
    "FeatureLevel",
    "NetCfg",
    "StageCfg",
    "MODELS",
    "ModelDef",
    "RepBasicBlock",
    "RepBottleneck",
    "RepConvAct",
    "RepNet",
    "checkpoint_filter",
    "create_repnet",
    "default_cfgs",
    "fitting_branches",
    "model_names",
    "rep_conv",
]
