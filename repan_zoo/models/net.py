"""``RepNet``: the one generic timm-style classifier that builds every family of :mod:`.families`."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead

from .config import NetCfg, StageCfg
from ..blocks import RepBlock, rep_blocks
from ..checkpoint import wrapper_prefix_hint
from ..errors import StateDictMismatchError
from ..recompute import checkpoint_seq
from ..timm_private import feature_take_indices
from ..verify import weights_device_dtype
from .layers import RepConvAct
from .stages import BlockArgs, get_stage_block

__all__ = ["RepNet"]


class RepNet(nn.Module):
    """Stem → stages → classifier head, assembled from a :class:`NetCfg`; every conv is a RepBlock.

    Module layout (shared by all families, so one checkpoint filter and one feature map serve all):
    ``stem`` (:class:`RepConvAct`), ``stem_pool`` (max-pool or identity), ``stages``
    (``nn.Sequential`` of ``nn.Sequential``: the modules of each stage's blocks, built by the
    stage's registered block type, :mod:`.stages`), ``head`` (timm ``ClassifierHead``: ``head.fc``).

    Args:
        cfg: the architecture.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels of the stem.
        global_pool: timm pooling type ('' keeps the spatial map).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of residual branches (stages of a residual block type
            only: a plain VGG-style chain has no residual branch to drop).
        deploy: build the Rep blocks as single fused convs (the deploy form).
        zero_init_last: zero the last BN γ of every residual branch (default: the family's).
        device, dtype: where and in which precision the weights live.

    The modules are built on the ``meta`` device and every parameter and buffer is then written
    exactly once by :meth:`_init_weights` (checked), so that big models (RepVGG-B3: 123 M
    train-form parameters) do not pay for PyTorch's default init before ours.
    """

    def __init__(
        self,
        cfg: NetCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        deploy: bool = False,
        zero_init_last: Optional[bool] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        with torch.device("meta"):
            self._build(cfg, num_classes, in_chans, global_pool, drop_rate, drop_path_rate, deploy)
        self.to_empty(device=device if device is not None else "cpu")
        self._init_weights(cfg.zero_init_last if zero_init_last is None else zero_init_last)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build(self, cfg, num_classes, in_chans, global_pool, drop_rate, drop_path_rate, deploy) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        rule = cfg.branches
        self.stem = RepConvAct(
            in_chans, cfg.stem_out, cfg.stem_kernel, cfg.stem_stride, branches=rule.stem_kinds, deploy=deploy
        )
        self.stem_pool = nn.MaxPool2d(3, 2, 1) if cfg.stem_pool else nn.Identity()

        depths = [s.depth for s in cfg.stages if get_stage_block(s.block).residual]
        total = sum(depths)
        index = 0
        stages = []
        prev = cfg.stem_out
        for stage, geometry in zip(cfg.stages, cfg.stage_geometry()):
            blocks, prev, index = self._make_stage(stage, geometry, prev, deploy, drop_path_rate, index, total)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

        self.num_features = prev
        self.feature_info = [lv.as_dict() for lv in cfg.feature_levels()]
        self._tap_positions = [0 if fi["module"] == "stem" else int(fi["module"].split(".")[1]) + 1 for fi in self.feature_info]
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.head_hidden_size = self._pooled_width()
        self.global_pool = global_pool

    # -- construction -------------------------------------------------------------------------
    def _make_stage(
        self, stage: StageCfg, geometry: Tuple[int, int, int], in_chs: int, deploy: bool, drop_path_rate: float,
        index: int, total: int,
    ) -> Tuple[List[nn.Module], int, int]:
        """The modules of one stage's blocks, built by the stage's registered block type;
        ``geometry`` = ``(stride, first_dilation, dilation)`` from :meth:`NetCfg.stage_geometry`
        (the first block's strided conv keeps ``first_dilation``); ``index`` counts the residual
        blocks built so far (of ``total``) for the linear stochastic-depth rule."""
        cfg = self.cfg
        block_type = get_stage_block(stage.block)
        out = cfg.channels(stage.chs)
        blocks: List[nn.Module] = []
        stage_stride, first_dilation, dilation = geometry
        for i in range(stage.depth):
            stride, layout = (stage_stride, stage.stride) if i == 0 else (1, 1)
            dpr = drop_path_rate * index / max(total - 1, 1) if block_type.residual else 0.0
            blocks.extend(block_type.build(BlockArgs(
                in_chs, out, stride, layout, first_dilation if i == 0 else dilation, dilation,
                se=i >= stage.depth - stage.se, branches=cfg.branches, drop_path_rate=dpr, deploy=deploy,
            )))
            in_chs = out * block_type.expansion
            index += int(block_type.residual)
        return blocks, in_chs, index

    @torch.no_grad()
    def _init_weights(self, zero_init_last: bool) -> None:
        """timm's conventions: convs He-normal (fan-out), BN γ=1 β=0 with fresh running statistics,
        classifier N(0, 0.01²); Rep blocks λ=1 (Eq. 3: an ordinary Rep block). Raises if any
        parameter or buffer was left unwritten (they start uninitialised, see the class docstring)."""
        written = set()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, RepBlock):
                m.set_lambda(1.0)
            else:
                continue
            written.update(id(t) for t in m.parameters(recurse=False))
            written.update(id(t) for t in m.buffers(recurse=False))
        left = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if id(t) not in written]
        if left:
            raise RuntimeError(f"RepNet._init_weights left {left[:5]} uninitialised: add their module type to it")
        if zero_init_last:  # the blocks that define it (stages.py: a residual branch's last BN γ = 0)
            for m in self.modules():
                if m is not self and callable(getattr(m, "zero_init_last", None)):
                    m.zero_init_last()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` (deploy entries into a train-form block are unfolded on the
        way, :meth:`RepBlock._load_from_state_dict`), all or nothing: a state dict that does not fit
        (another architecture, head or width: missing / unexpected keys, shape mismatches) raises
        :class:`~repan_zoo.errors.StateDictMismatchError` (a ``RuntimeError`` too) naming this model
        and the fix, and the model keeps every tensor it had. timm's ``checkpoint_path=`` and
        ``load_checkpoint`` come through here."""
        saved = None if assign else {k: v.detach().clone() for k, v in self.state_dict(keep_vars=True).items()}
        flags = [(b, b.load_flags()) for _, b in rep_blocks(self)]
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as exc:
            for block, before in flags:
                block.restore_load_flags(before)
            if saved is not None:
                with torch.no_grad():
                    for k, v in self.state_dict(keep_vars=True).items():
                        if k in saved and v.shape == saved[k].shape:
                            v.copy_(saved[k])
            name = (getattr(self, "pretrained_cfg", None) or {}).get("architecture") or type(self).__name__
            advice = wrapper_prefix_hint(state_dict) or (  # a wrapper's keys: that is the cause, nothing else to try
                " Build the model the weights were saved from: a repan checkpoint names it "
                "in its metadata (repan_zoo.checkpoint.read_checkpoint(path)[1]['architecture']) and "
                "repan_zoo.checkpoint.load_into(model, *read_checkpoint(path)) compares the two; pass the same "
                "num_classes / in_chans, or drop the head entries and load with strict=False to re-train it; a "
                "timm-native state dict goes through repan_zoo.models.checkpoint_filter.")
            raise StateDictMismatchError(
                f"the state dict does not fit {name} (num_classes={self.num_classes}, in_chans={self.in_chans}); the "
                f"model was left unchanged.{advice} PyTorch: {exc}") from exc

    def _pooled_width(self) -> int:
        """Width of the pooled (pre-logits) features: ×2 for timm's 'catavgmax' pooling."""
        return self.num_features * self.head.global_pool.feat_mult()

    def _device_dtype(self) -> Dict[str, Any]:
        """``{device, dtype}`` of the model's weights, for a head built later (``reset_classifier``,
        ``prune_intermediate_layers``) to match. timm ≥ 1.0.29 passes these to the head's
        constructor (``timm.layers.get_device_dtype``); moving the new head keeps older timm
        releases working too."""
        device, dtype = weights_device_dtype(self)
        return {"device": device, "dtype": dtype}

    # -- timm model API ----------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the stages' activations in backward (:mod:`repan_zoo.recompute`: BN running
        statistics are updated once per step, as without checkpointing)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier of ``num_classes`` outputs (0: none) and pooling ``global_pool`` (None: kept),
        on the model's device and in its dtype, in its train/eval mode (timm's contract)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        self.head.to(**self._device_dtype()).train(self.training)
        self.head_hidden_size = self._pooled_width()
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The feature maps of ``feature_info`` (``indices``: all, last n, or a list), and the
        final features unless ``intermediates_only``. No norm layer exists, so ``norm`` is a no-op."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: RepNet feature maps are NCHW")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = [self._tap_positions[i] for i in take_indices]
        last = self._tap_positions[max_index]
        intermediates: List[torch.Tensor] = []
        x = self.stem(x)
        if 0 in taps:
            intermediates.append(x)
        x = self.stem_pool(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:last]
        for i, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i + 1 in taps:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last wanted feature (and the classifier)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self._tap_positions[max_index]
        self.stages = self.stages[:last]
        if last < len(self.cfg.stages):
            self.num_features = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type="", drop_rate=self.drop_rate).to(
                **self._device_dtype()).train(self.training)
            self.head_hidden_size = self.num_features
            self.num_classes = 0
            self.global_pool = ""
        return take_indices
