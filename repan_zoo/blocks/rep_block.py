"""The Rep block: a trunk branch plus λ-gated extra branches (Eq. 3), or one fused conv (deploy)."""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d

from .. import algebra
from ..augment import mix_seed
from ..algebra import BNParams, KernelBias
from ..errors import LambdaRangeError, UncalibratedBNWarning, UnfusableBranchError
from .bn import bn_params
from .branches import BlockSpec, Branch, branch_class, create_branch

__all__ = ["RepBlock", "check_lambda", "convert_block_state", "rep_blocks"]


def check_lambda(value) -> float:
    """Validate the attach rate λ of Eq. (3): a finite number in [0, 1] (a Python or numpy number,
    or a one-element tensor; not a bool or a string, which ``float`` would take silently)."""
    if isinstance(value, (bool, str, bytes)):
        raise LambdaRangeError(f"λ must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise LambdaRangeError(f"λ must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(lam) or lam < 0.0 or lam > 1.0:
        raise LambdaRangeError(
            f"λ={value!r} is outside [0, 1]: Eq. (3) gates the expanded branches with 0 ≤ λ ≤ 1 "
            "(0 keeps the fused function, 1 adds the branches fully); clamp your scheduler's output"
        )
    return lam


class RepBlock(nn.Module):
    """A re-parameterizable conv block (linear: add the activation outside).

    Train form (Eq. 3)::

        Y = trunk(X) + λ · Σ_i extras[i](X)

    where ``trunk`` is a k×k conv + BN (the paper's inverted branch, un-gated) and
    ``extras`` are branches of registered kinds (``conv_1x1``, ``identity``, ``avg``,
    ``1x1_kxk``, ``conv_kx1``, ``conv_1xk``, more ``conv_kxk`` ...), including the
    residual BN. λ is a buffer set by :meth:`set_lambda`; 1.0 gives an ordinary Rep block
    (RepVGG, DBB, ACNet, MobileOne), 0.0 a block whose extras are silent. In train form λ is
    part of the state dict (``<block>.lam``), so that EMA / weight-averaged / copied /
    checkpointed models compute the same function; a train-form state dict written before
    λ was saved (no ``lam`` key) still loads strictly and keeps the block's λ. Deploy form:
    one k×k conv with bias, ``reparam_conv`` (λ is already in it, and not saved).

    ``dilation`` spaces the trunk's taps (timm's ``output_stride``); every branch is built with the
    same spacing, so a dilated block fuses exactly into one dilated k×k conv (see :class:`BlockSpec`).

    :meth:`reparameterize` fuses in place (Eq. 1, 2, 5; λ included); it is the method
    ``timm.utils.reparameterize_model`` calls. :meth:`unfold` goes the other way.
    """

    __jit_unused_properties__ = ["in_channels", "out_channels", "deploy", "branch_kinds", "lam_value"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        branches: Sequence[str] = (),
        *,
        dilation: int = 1,
        lam: float = 1.0,
        deploy: bool = False,
    ):
        super().__init__()
        self.spec = BlockSpec(in_channels, out_channels, kernel_size, stride, groups, dilation)
        self._lam_value = check_lambda(lam)  # see lam_value
        self.register_buffer("lam", torch.tensor(self._lam_value), persistent=not deploy)
        #: the branch kinds this block was built with (kept in deploy form, so a train-form
        #: checkpoint can be loaded into a deploy model and vice versa).
        self.arch_branches = tuple(branches)
        for kind in self.arch_branches:  # fail at construction, in either form, for unfusable kinds
            branch_class(kind).check(self.spec)
        self._inherit_bn: Optional[BNParams] = None
        #: whether the remembered trunk BN's statistics were themselves invented (Branch.uncalibrated)
        self._inherit_uncalibrated = False
        #: whether the train form's BNs were frozen ones (timm's ``freeze``) when this block was last
        #: fused: :meth:`unfold` builds frozen BNs again (kept across weight loads: it is the block's)
        self._frozen_bn = False
        #: whether the train form's BNs were SyncBatchNorms (and their process group) when the block was last
        #: fused: :meth:`unfold` builds synchronised BNs again
        self._sync_bn = False
        self._sync_group = None
        if deploy:
            self.trunk: Optional[Branch] = None
            self.extras = nn.ModuleList()
            self.reparam_conv: Optional[nn.Conv2d] = self._new_conv()
        else:
            self.trunk = create_branch("conv_kxk", self.spec)
            self.extras = nn.ModuleList([create_branch(kind, self.spec) for kind in branches])
            self.reparam_conv = None

    # -- shape and state -------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def out_channels(self) -> int:
        return self.spec.out_channels

    @property
    def deploy(self) -> bool:
        return self.reparam_conv is not None

    @property
    def branch_kinds(self) -> List[str]:
        return [b.kind for b in self.extras]

    def extra_repr(self) -> str:
        s = self.spec
        form = "deploy" if self.deploy else f"train, λ={float(self.lam):g}"
        dil = f", dilation={s.dilation}" if s.dilation != 1 else ""
        return f"{s.in_channels}, {s.out_channels}, k={s.kernel_size}, stride={s.stride}{dil}, groups={s.groups}, {form}"

    def set_lambda(self, value) -> None:
        """Set λ of Eq. (3); raises :class:`LambdaRangeError` outside [0, 1]."""
        self._lam_value = check_lambda(value)
        self.lam.fill_(self._lam_value)

    @property
    def lam_value(self) -> float:
        """λ as a Python float: what a conversion carries over (a deploy state dict has no λ). The
        ``lam`` buffer's value, whoever wrote it (:meth:`set_lambda`, a state dict, timm's model EMA);
        when the buffer holds no λ — on the meta device, or not a number in [0, 1], as
        ``model.to_empty()`` may leave it — the λ last set through construction, :meth:`set_lambda`
        or a load. (``to_empty`` leaving a number in [0, 1] there is indistinguishable from a λ.)"""
        if not self.lam.is_meta:
            value = float(self.lam)
            if math.isfinite(value) and 0.0 <= value <= 1.0:
                return value
        return self._lam_value

    def _new_conv(self) -> nn.Conv2d:
        s = self.spec
        return nn.Conv2d(
            s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.dilation, groups=s.groups, bias=True
        )

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        assert self.trunk is not None
        if self.training and not torch.jit.is_scripting():
            self._warn_if_uncalibrated()
        y = self.trunk(x)
        extra: Optional[torch.Tensor] = None
        for branch in self.extras:
            out = branch(x)
            extra = out if extra is None else extra + out
        if extra is not None:
            y = y + self.lam.to(extra.dtype) * extra
        return y

    @torch.jit.unused
    def _warn_if_uncalibrated(self) -> None:
        """Once per block: say that training mode is about to replace BN statistics that no data
        estimated (:attr:`Branch.uncalibrated`), and how to get real ones."""
        if self.trunk is None or not self.trunk.uncalibrated:
            return
        self.trunk.uncalibrated = False  # from here on its running statistics see data
        warnings.warn(
            "a train-form Rep block runs in training mode on BN statistics that no data estimated: deploy "
            "weights unfolded into the train form (pretrained=True, or repan_zoo.unfold of loaded deploy weights) "
            "restore each trunk BN with invented statistics (μ = 0, σ = 1), and batch statistics now replace "
            "them, so the network starts training from another function than the one it computes in eval mode. "
            "Call repan_zoo.calibrate_bn(model, train_loader, num_batches=5) on a few training batches first "
            "(repan-train --init-checkpoint does).", UncalibratedBNWarning, stacklevel=2)

    # -- fusion ---------------------------------------------------------------------------
    def check_fusable(self) -> None:
        """Refuse, with :class:`UnfusableBranchError` naming the module and the attribute, what the
        fusion formulas cannot represent exactly: a conv mutated after construction (non-zero
        ``padding_mode``, a ``dilation`` other than the block's) or a norm that is not a BatchNorm with running
        statistics (``GroupNorm``, ``LayerNorm``, ...). Structural checks only (no probe), run by
        :meth:`fused_kernel_bias` and so by every fusion path, timm's ``reparameterize_model`` included."""
        for branch_name, branch in [("trunk", self.trunk), *((f"extras.{i}", b) for i, b in enumerate(self.extras))]:
            if branch is None:
                continue
            for name, m in branch.named_modules():
                where = f"{branch_name}.{name}".rstrip(".") + f" ({getattr(branch, 'kind', type(branch).__name__)} branch)"
                if isinstance(m, nn.Conv2d):
                    if m.padding_mode != "zeros":
                        raise UnfusableBranchError(
                            f"{where}: padding_mode={m.padding_mode!r}; branches fuse into one conv only with zero "
                            "padding. Build the block with padding_mode='zeros' (do not change it afterwards)")
                    d = self.spec.dilation  # a dimension of size 1 has no taps to space
                    if any(k > 1 and dil != d for k, dil in zip(m.kernel_size, m.dilation)):
                        raise UnfusableBranchError(
                            f"{where}: dilation={tuple(m.dilation)} but the block was built with dilation={d}; "
                            "branches line up only on the block's tap spacing. Build the block with the dilation "
                            "you want (RepBlock(..., dilation=d), or timm's output_stride) instead of changing a "
                            "conv afterwards")
                elif "norm" in type(m).__name__.lower() and not (
                        hasattr(m, "running_mean") and hasattr(m, "running_var")):
                    raise UnfusableBranchError(
                        f"{where}: {type(m).__name__} has no running statistics, so it is not a fixed affine map "
                        "and cannot be fused into a conv; Rep branches need BatchNorm")

    def fused_kernel_bias(self) -> KernelBias:
        """The single conv this block computes in eval mode, in float64 (Eq. 5, λ included).
        Raises :class:`UnfusableBranchError` (see :meth:`check_fusable`)."""
        if self.reparam_conv is not None:
            kernel = self.reparam_conv.weight.detach().double()
            bias = self.reparam_conv.bias.detach().double()
            return KernelBias(kernel, bias)
        assert self.trunk is not None
        self.check_fusable()
        return algebra.gated_sum(
            self.trunk.kernel_bias(), [b.kernel_bias() for b in self.extras], self.lam.detach().double()
        )

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Train → deploy in place: fuse all branches into ``reparam_conv`` (idempotent). Refuses,
        unchanged, what cannot be fused exactly (:meth:`check_fusable`: :class:`UnfusableBranchError`).
        The fused conv trains (``requires_grad``) when any parameter it sums did: a frozen block
        (``requires_grad_(False)``, timm's ``freeze``) stays frozen."""
        if self.reparam_conv is not None:
            return
        assert self.trunk is not None
        ref = self.trunk.conv.weight
        kernel, bias = self.fused_kernel_bias()
        self._inherit_bn = BNParams(*(t.clone() for t in bn_params(self.trunk.bn)[:4]), self.trunk.bn.eps)
        self._inherit_uncalibrated = self.trunk.uncalibrated
        branches = [self.trunk, *self.extras]
        self._frozen_bn = any(not isinstance(bn, nn.modules.batchnorm._BatchNorm) for b in branches for bn in b.bns())
        sync = next((bn for b in branches for bn in b.bns() if isinstance(bn, nn.SyncBatchNorm)), None)
        self._sync_bn, self._sync_group = sync is not None, getattr(sync, "process_group", None)
        conv = _placed_like(self._new_conv(), ref)
        conv.weight.copy_(kernel.to(ref.dtype))
        conv.bias.copy_(bias.to(ref.dtype))
        conv.requires_grad_(any(p.requires_grad for b in branches for p in b.parameters()))
        self.reparam_conv = conv
        self.trunk = None
        self.extras = nn.ModuleList()
        self._adopt_training_flag()
        self._persist_lambda()

    @torch.no_grad()
    def unfold(
        self,
        branches: Iterable[str] = (),
        *,
        k: int = 1,
        lam: float = 0.0,
        restore: str = "inherit",
        generator: Optional[torch.Generator] = None,
        branch_gamma: float = 0.0,
        skip_unfit: bool = False,
    ) -> List[Branch]:
        """Deploy → train form in place (Expand + Restore of Algorithm 1, lines 4–5).

        The fused conv is split into a trunk conv + BN by :func:`algebra.restore_conv_bn`
        (``restore``: a rule of :data:`repan_zoo.algebra.RESTORE_RULES`; ``"inherit"`` uses the
        trunk BN remembered at the last :meth:`reparameterize` and falls back to its
        ``fallback``, ``"normalized"``, when there is none, e.g. after loading a deploy checkpoint).
        Then ``k`` new branches of every kind in ``branches`` are attached (He-normal
        convs drawn from ``generator``, BN γ = ``branch_gamma``, β = 0) and λ is set.
        At λ = 0 the eval function is unchanged. A train-form block is fused first.
        Kinds that do not fit this block raise, or are skipped with ``skip_unfit=True``.
        A trunk whose BN statistics the rule had to invent (no previous BN to inherit, or a rule
        that does not inherit) is marked :attr:`~repan_zoo.blocks.branches.Branch.uncalibrated`:
        its first training-mode forward warns until :func:`repan_zoo.calibrate_bn` has run.
        A frozen block stays frozen: when the fused conv has ``requires_grad=False`` so has every
        new parameter, and BNs that were frozen when the block was fused (timm's ``freeze``:
        ``FrozenBatchNorm2d``) come back as timm's ``FrozenBatchNorm2d`` — the trunk's always, the new
        branches' only when the block does not train (frozen BNs with trainable convs: the new
        branches get trainable BNs, or their output BN would hold them at γ = 0). BNs that were
        ``SyncBatchNorm`` (``convert_sync_batchnorm``) come back synchronised, in the same process group.
        Returns the new branches.
        """
        lam = check_lambda(lam)
        if k < 0:
            raise ValueError(f"k={k}: the number of new parallel branches per kind must be ≥ 0")
        self.reparameterize()
        assert self.reparam_conv is not None
        ref = self.reparam_conv.weight
        kernel, bias = self.fused_kernel_bias()
        previous = self._inherit_bn
        rule = algebra.get_restore_rule(restore)
        mode = rule.fallback if rule.needs_previous and previous is None else restore
        invented = mode != restore or not rule.needs_previous or self._inherit_uncalibrated
        if previous is not None:
            previous = BNParams(*(t.to(kernel) for t in previous[:4]), previous.eps)
        new_kernel, bn = algebra.restore_conv_bn(kernel, bias, mode, previous=previous)
        trunk = _placed_like(create_branch("conv_kxk", self.spec), ref)
        trunk.conv.weight.copy_(new_kernel.to(ref.dtype))
        _load_bn(trunk.bn, bn)
        trunk.uncalibrated = invented
        new: List[Branch] = []
        for kind in branches:
            for _ in range(k):
                try:
                    branch = create_branch(kind, self.spec)
                except UnfusableBranchError:
                    if skip_unfit:
                        break
                    raise
                init_branch_(branch, generator=generator, gamma=branch_gamma)
                new.append(_placed_like(branch, ref))
        trainable = self.reparam_conv.weight.requires_grad
        if self._frozen_bn:  # frozen BNs (timm's freeze_batch_norm_2d / freeze()): the trunk's stays frozen,
            trunk = freeze_batch_norm_2d(trunk)  # the new branches' too when nothing here trains (a frozen
            if not trainable:                    # output BN at γ = 0 would keep a trainable branch silent)
                new = [freeze_batch_norm_2d(b) for b in new]
        if self._sync_bn:  # a model converted for DDP (convert_sync_batchnorm) keeps synchronising its BNs
            trunk, *new = (nn.SyncBatchNorm.convert_sync_batchnorm(b, self._sync_group) for b in (trunk, *new))
        for branch in (trunk, *new):
            branch.requires_grad_(trainable)
        self.trunk = trunk
        self.extras = nn.ModuleList(new)
        self.reparam_conv = None
        self._adopt_training_flag()
        self._persist_lambda()
        self.set_lambda(lam)
        return new

    def _persist_lambda(self) -> None:
        """λ is saved with the train form only: it changes the train form's output (Eq. 3) and is
        folded into the deploy conv."""
        self.register_buffer("lam", self.lam, persistent=not self.deploy)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        from_deploy = self._convert_other_form(state_dict, prefix, error_msgs)
        # a train-form state dict from before λ was saved has no ``lam``: keep the block's λ (like
        # BatchNorm's num_batches_tracked for old state dicts); checkpoints carry it in metadata
        if not self.deploy and prefix + "lam" not in state_dict:
            like = next((v for k, v in state_dict.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)),
                        self.lam)  # assign=True takes the state dict's device
            state_dict[prefix + "lam"] = torch.tensor(self.lam_value, dtype=self.lam.dtype,
                                                      device="cpu" if like.is_meta else like.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not self.deploy and not self.lam.is_meta:
            self._lam_value = float(self.lam)  # what the state dict held
        if self.trunk is not None and prefix + "trunk.bn.running_mean" in state_dict:
            # statistics that came with the weights, unless this load invented them from a deploy conv
            self.trunk.uncalibrated = from_deploy
        if self.reparam_conv is not None and prefix + "reparam_conv.weight" in state_dict:
            # the trunk BN remembered from this block's last fusion belongs to the weights just replaced
            self._inherit_bn, self._inherit_uncalibrated = None, False

    def load_flags(self) -> tuple:
        """What a ``load_state_dict`` changes besides the tensors (the trunk's ``uncalibrated`` flag,
        the trunk BN remembered from the last fusion), for :meth:`restore_load_flags` after a failed load."""
        return (self.trunk.uncalibrated if self.trunk is not None else None, self._inherit_bn, self._inherit_uncalibrated,
                self._lam_value)

    def restore_load_flags(self, flags: tuple) -> None:
        uncalibrated, self._inherit_bn, self._inherit_uncalibrated, self._lam_value = flags
        if self.trunk is not None:
            self.trunk.uncalibrated = uncalibrated

    def _convert_other_form(self, state_dict: Dict[str, torch.Tensor], prefix: str, error_msgs: List[str]) -> bool:
        """Part of ``load_state_dict`` (timm's ``create_model(checkpoint_path=...)``, a user's own
        call): deploy-form entries for this train-form block are replaced in place by the same
        function in its structure (:func:`convert_block_state`; the children then load them, the trunk
        BN statistics invented). Returns whether it did. Train-form entries for a deploy block are not
        converted: their keys do not say which branch kinds they hold (``identity`` and ``avg`` have
        the same), so the error names the exact ways (train form + ``reparameterize``, ``load_into``)."""
        deploy_in, train_in = prefix + "reparam_conv.weight" in state_dict, prefix + "trunk.conv.weight" in state_dict
        name = prefix.rstrip(".") or "(root)"
        if train_in and not deploy_in and self.deploy:
            error_msgs.append(
                f"block {name} is fused (deploy form) but the state dict holds its train form, whose branch kinds "
                "its keys do not tell: build the model in the train form (deploy=False), load, then "
                "repan_zoo.reparameterize(model); or repan_zoo.checkpoint.load_into(model, *read_checkpoint(path)), "
                "which reads the branches the checkpoint records")
            return False
        if not (deploy_in and not train_in and not self.deploy):
            return False
        keys = [k for k in state_dict if k.startswith(prefix)]
        try:
            converted = convert_block_state({k[len(prefix):]: state_dict[k] for k in keys}, None, self, name=name)
        except RuntimeError as exc:
            error_msgs.append(f"block {name}: its deploy-form entries do not fit this block ({str(exc).strip()})")
            return False
        for k in keys:
            del state_dict[k]
        state_dict.update({prefix + k: v for k, v in converted.items()})
        return True

    def _adopt_training_flag(self) -> None:
        """New submodules take the block's train/eval flag (a block in eval mode must not get
        train-mode BNs from a conversion)."""
        for child in self.children():
            child.train(self.training)


@torch.no_grad()
def convert_block_state(
    sub: Mapping[str, torch.Tensor],
    kinds: Optional[Sequence[str]],
    target: RepBlock,
    load: Optional[Callable[[RepBlock, Mapping[str, torch.Tensor]], None]] = None,
    *,
    name: str,
) -> Dict[str, torch.Tensor]:
    """The state dict, in ``target``'s form and structure, of a block computing what ``sub`` computes.

    ``sub`` holds one block's entries (keys relative to the block): the train form with extra branches
    ``kinds`` (in order), or the deploy form (``kinds`` None). It is loaded into a block of the same
    geometry as ``target`` (``load``, default a strict ``load_state_dict``), fused (Eq. 1, 2, 5; λ
    included) and, for a train-form ``target``, unfolded into ``target``'s current branch kinds at
    γ = 0 with ``target``'s λ (Restore: the source's trunk BN where it had one, else invented
    statistics; the eval function is exact either way), its new branches drawn from the seed of the
    block's qualified ``name`` (:func:`unfold_loaded`).

    Raises:
        RuntimeError: ``sub`` does not have the structure ``kinds`` says (``load``'s own error).
    """
    s = target.spec
    source = RepBlock(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.groups, branches=kinds or (),
                      dilation=s.dilation, deploy=kinds is None)
    if load is None:
        source.load_state_dict(sub, strict=True)
    else:
        load(source, sub)
    source.reparameterize()  # remembers the trunk BN for the inherit restore
    if not target.deploy:
        unfold_loaded(source, target.branch_kinds, lam=target.lam_value, name=name)
    return source.state_dict()


def unfold_loaded(block: RepBlock, kinds: Sequence[str], *, lam: float, name: str) -> None:
    """A block holding loaded (or just fused) weights → train form with one branch of each kind in
    ``kinds`` at γ = 0, in place: the eval function is unchanged (exact), the trunk BN is the one the
    block's last fusion remembered, or invented and flagged
    :attr:`~repan_zoo.blocks.branches.Branch.uncalibrated` (restore ``"inherit"``, falling back to
    ``"normalized"``). The new branches' convs are drawn from a seed of the block's qualified
    ``name`` in the model (e.g. ``"stages.0.1.conv"``): one file loads into the same train-form state
    every time, whichever path loads it, and blocks of one shape get independent draws. They are not
    ``fresh``: :func:`repan_zoo.calibrate_bn` re-estimates their BNs in place rather than as new
    branches. The one conversion of deploy weights into a train form (``load_state_dict``,
    :func:`repan_zoo.checkpoint.load_into`, timm's ``checkpoint_filter``)."""
    seed = mix_seed(zlib.crc32(name.encode("utf-8")), 0x10AD)
    block.unfold(kinds, k=1, lam=lam, restore="inherit", generator=torch.Generator().manual_seed(seed),
                 branch_gamma=0.0)
    for branch in block.extras:
        branch.fresh = False


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D weight stored that way (``model.to(memory_format=torch.channels_last)``)."""
    if weight.dim() == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _placed_like(module: nn.Module, ref: torch.Tensor) -> nn.Module:
    """``module`` on ``ref``'s device, in its dtype and memory layout (new convs of a conversion keep
    the model's channels_last layout)."""
    return module.to(device=ref.device, dtype=ref.dtype, memory_format=_memory_format(ref))


def _load_bn(bn: nn.modules.batchnorm._BatchNorm, params: BNParams) -> None:
    bn.weight.copy_(params.weight)
    bn.bias.copy_(params.bias)
    bn.running_mean.copy_(params.running_mean)
    bn.running_var.copy_(params.running_var)
    bn.eps = params.eps


@torch.no_grad()
def init_branch_(branch: Branch, *, generator: Optional[torch.Generator] = None, gamma: float = 1.0) -> Branch:
    """Fresh branch init: He-normal convs (fan_out, ReLU gain) from ``generator``; BN β=0, μ=0, σ²=1,
    γ=1 inside the branch and γ=``gamma`` on its output BN.

    The branch is marked ``fresh`` so that :func:`repan_zoo.calibrate_bn` gives its BNs the
    batch statistics (the new branch then starts normalised instead of at a raw conv's scale).
    """
    for conv in branch.convs():
        fan_out = conv.out_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        std = math.sqrt(2.0 / fan_out)
        sample = torch.randn(conv.weight.shape, generator=generator, dtype=torch.float32, device="cpu")
        conv.weight.copy_((sample * std).to(conv.weight))
    bns = branch.bns()
    for bn in bns:
        bn.reset_running_stats()
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    if bns:  # the branch's output BN scales what the branch adds (γ=0: an exact no-op that grows by gradient)
        bns[-1].weight.fill_(gamma)
    branch.fresh = True
    return branch


def rep_blocks(model: nn.Module) -> List[Tuple[str, RepBlock]]:
    """All Rep blocks of ``model`` with their qualified names, wherever they sit.

    Args:
        model: any module (a timm model, a detector, a single block).

    Returns:
        ``(qualified name, block)`` pairs in ``named_modules()`` order (a model that is itself a
        :class:`RepBlock` is listed under the name ``""``).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RepBlock)]
