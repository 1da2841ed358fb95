"""The registries a newcomer extends (issue 17): a dataset is one function in one place, a stage
block type one builder (plus the family that uses it), each then served by the normal path:
``load_splits`` / ``repan-train --dataset``, ``RepNet`` / ``reparameterize``. Also the probe
adapters of :mod:`repan_zoo.verify` and the layering moves (old import paths still work)."""
from __future__ import annotations

import json
from typing import List

import pytest
import torch
import torch.nn as nn

import tinyrep_models  # noqa: F401  (registers tinyrep_test with timm)
from helpers import randomize, single_thread  # noqa: F401  (fixture)
from repan_zoo import reparameterize
from repan_zoo.data import DATASETS, load_splits
from repan_zoo.datasets import DATASET_READERS, DatasetArrays, register_dataset
from repan_zoo.errors import DatasetNotFoundError, ModelConfigError
from repan_zoo.models import (
    STAGE_BLOCKS, BlockArgs, BranchRule, NetCfg, RepConvAct, RepNet, StageCfg, register_stage_block, rep_conv,
)
from repan_zoo.models.layers import zero_init_block_output

pytestmark = pytest.mark.usefixtures("single_thread")


# -- a dataset in one place ---------------------------------------------------------------------
@pytest.fixture
def toy_dataset():
    """The whole of a new dataset: one registered reader (removed again after the test)."""

    @register_dataset("toy_bright")
    def toy_bright(data_dir, *, img_size):
        gen = torch.Generator().manual_seed(0)

        def split(n):  # 4 classes, the class shifts the brightness (learnable)
            labels = torch.randint(0, 4, (n,), generator=gen)
            noise = torch.randint(0, 100, (n, 1, 16, 16), generator=gen)
            return (noise + 40 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels

        (train_x, train_y), (test_x, test_y) = split(160), split(48)
        return DatasetArrays(train_labels=train_y, test_labels=test_y, train_images=train_x, test_images=test_x,
                             classes=("a", "b", "c", "d"), source="synthetic")

    yield "toy_bright"
    DATASET_READERS.pop("toy_bright")


def test_new_dataset_in_one_place_loads_and_trains(toy_dataset, tmp_path):
    from repan_zoo.train_cli import run

    assert "toy_bright" in DATASETS  # the names --dataset accepts are the registry's
    data = load_splits("toy-bright", val_size=32, augment="crop_flip", seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (128, 32, 48)
    assert data.num_classes == 4 and data.input_size == (1, 16, 16) and data.info["source"] == "synthetic"
    assert 0 < data.mean[0] < 1 and 0 < data.std[0] < 1  # the training images' own statistics

    out = tmp_path / "run"
    run(["--dataset", "toy_bright", "--model", "tinyrep_test", "--method", "baseline", "--cycles", "1", "--epochs", "1",
         "--max-steps-per-epoch", "2", "--val-size", "32", "--batch-size", "16", "--eval-batch-size", "64",
         "--augment", "crop_flip", "--threads", "1", "--device", "cpu", "--no-progress", "--no-plot", "--out", str(out)])
    final = json.loads((out / "final.json").read_text())
    assert final["data"]["dataset"] == "toy_bright" and final["data"]["num_classes"] == 4
    assert final["data"]["augment"]["name"] == "crop_flip"


def test_a_dataset_from_an_import_plugin_is_accepted_on_the_command_line(tmp_path):
    from repan_zoo.train_cli import main

    plugin = tmp_path / "toy_plugin_set.py"
    plugin.write_text(
        "import torch\n"
        "from repan_zoo.datasets import DatasetArrays, register_dataset\n\n"
        "@register_dataset('toy_plugin')\n"
        "def read(data_dir, *, img_size):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    y = torch.randint(0, 3, (96,), generator=g)\n"
        "    x = (torch.randint(0, 60, (96, 1, 12, 12), generator=g) + 60 * y.view(-1, 1, 1, 1)).to(torch.uint8)\n"
        "    return DatasetArrays(train_labels=y[:64], test_labels=y[64:], train_images=x[:64], test_images=x[64:])\n"
    )
    common = ["--model", "tinyrep_test", "--method", "baseline", "--cycles", "1", "--epochs", "1", "--val-size", "16",
              "--batch-size", "16", "--max-steps-per-epoch", "1", "--threads", "1", "--device", "cpu", "--no-plot",
              "--no-progress"]
    try:
        assert main(["--import", str(plugin), "--dataset", "toy_plugin", *common, "--out", str(tmp_path / "a")]) == 0
    finally:
        DATASET_READERS.pop("toy_plugin", None)
    assert main(["--dataset", "toy_unknown", *common, "--out", str(tmp_path / "b")]) == 2  # named, one line


def test_dataset_names_are_matched_the_same_way_everywhere():
    """``--dataset Fashion-MNIST`` is fashion_mnist for the recipe check, the registry and the loader,
    and a reader registered as ``Toy-Named`` is found as ``toy_named``."""
    from repan_zoo.annealing.config import TrainConfig
    from repan_zoo.cli.train import check_recipe
    from repan_zoo.datasets import dataset_key, get_dataset

    check_recipe(TrainConfig(dataset="Fashion-MNIST"))
    assert get_dataset("fashion-mnist") is get_dataset("fashion_mnist")
    register_dataset("Toy-Named")(read := lambda data_dir, *, img_size: None)
    try:
        assert dataset_key("Toy-Named") == "toy_named" in DATASETS and get_dataset("TOY_NAMED") is read
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("toy-named")(read)
    finally:
        DATASET_READERS.pop("toy_named", None)


def test_unknown_dataset_names_the_registered_ones():
    with pytest.raises(DatasetNotFoundError, match="fashion_mnist.*register_dataset"):
        load_splits("no_such_set")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("fashion_mnist")(lambda data_dir, *, img_size: None)
    with pytest.raises(ValueError, match="train_images or train_fetch"):
        DatasetArrays(train_labels=torch.zeros(2), test_labels=torch.zeros(2), test_images=torch.zeros(2, 1, 2, 2))


# -- a stage block type in one place ------------------------------------------------------------
class _ResidualRepConv(nn.Module):
    """``relu(x + rep(x))``: a residual block of one k×k Rep conv (test-only)."""

    def __init__(self, chs: int, kinds, deploy: bool):
        super().__init__()
        self.conv = rep_conv(chs, chs, 3, branches=kinds, deploy=deploy)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv(x))

    def zero_init_last(self) -> None:
        zero_init_block_output(self.conv)


@pytest.fixture
def toy_block():
    """The whole of a new stage block type: one registered builder (removed again after the test)."""

    @register_stage_block("toy_residual", expansion=2, residual=True)
    def toy_residual(a: BlockArgs) -> List[nn.Module]:
        out = a.out_chs * 2
        return [RepConvAct(a.in_chs, out, 3, a.stride, branches=a.branches.kxk, dilation=a.first_dilation,
                           layout_stride=a.layout_stride, deploy=a.deploy),
                _ResidualRepConv(out, a.branches.kxk, a.deploy)]

    yield "toy_residual"
    STAGE_BLOCKS.pop("toy_residual")


def _toy_cfg(block: str) -> NetCfg:
    return NetCfg(family="toy", stages=(StageCfg(block, 2, 4, 1), StageCfg("conv", 1, 16, 2), StageCfg(block, 1, 8)),
                  stem_chs=8, branches=BranchRule(kxk=("conv_1x1", "identity")), zero_init_last=True)


def test_new_stage_block_type_builds_a_repnet_that_fuses_exactly(toy_block):
    cfg = _toy_cfg(toy_block)
    assert cfg.has_residual_blocks and cfg.stage_out(cfg.stages[0]) == 8
    model = RepNet(cfg, num_classes=5, in_chans=1)
    assert [len(s) for s in model.stages] == [4, 1, 2]
    assert model.num_features == 16 and model.feature_info[-1]["num_chs"] == 16
    assert float(model.stages[0][1].conv.trunk.bn.weight.detach().abs().sum()) == 0.0  # zero_init_last reached it
    randomize(model, seed=3)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        deploy = reparameterize(model, inplace=False)
        assert torch.allclose(deploy(x), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    fresh = RepNet(cfg, num_classes=5, in_chans=1, deploy=True)  # the deploy form builds from the same cfg
    fresh.load_state_dict(deploy.state_dict())


def test_stage_block_types_are_checked_against_the_registry(toy_block):
    with pytest.raises(ModelConfigError, match="unknown stage block type 'nope'.*register_stage_block"):
        StageCfg("nope", 1, 8)
    with pytest.raises(ModelConfigError, match="already registered"):
        register_stage_block(toy_block)(lambda a: [])
    assert not _toy_cfg("conv").has_residual_blocks  # drop_path_rate is refused for such a network (models/repan.py)


# -- verify's probe adapters and the moved names -------------------------------------------------
def test_probe_adapter_recognises_torchvision_detectors_by_type_only():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from repan_zoo.verify import probe_adapter, probe_input

    class GeneralizedRCNNTransformLookalike(nn.Module):
        pass

    detector, other = nn.Module(), nn.Module()
    detector.transform = GeneralizedRCNNTransform(32, 32, [0.5], [0.5])
    detector.backbone = nn.Conv2d(1, 1, 1)
    detector.pretrained_cfg = {"input_size": (1, 8, 8)}
    other.transform = GeneralizedRCNNTransformLookalike()
    assert probe_adapter(detector).name == "torchvision_detector" and probe_adapter(other) is None
    images = probe_input(detector, batch_size=3)
    assert isinstance(images, list) and len(images) == 3 and images[0].shape == (1, 8, 8)
    assert probe_adapter(detector).compared(detector) is detector.backbone


def test_moved_names_keep_their_old_import_paths():
    import repan_zoo
    from repan_zoo import blocks, checkpoint, data, datasets, export, fileio, verify

    assert verify.rep_blocks is blocks.rep_blocks is repan_zoo.rep_blocks
    for name in ("atomic_write", "sha256_file", "remove_stale_temps", "TEMP_SUFFIX"):
        assert getattr(checkpoint, name) is getattr(fileio, name)
    for name in ("read_idx", "load_fashion_mnist", "FASHION_MNIST_DIR", "FASHION_MNIST_FILES", "FASHION_MNIST_CLASSES"):
        assert getattr(data, name) is getattr(datasets, name)
    assert blocks.branches.bn_params is blocks.bn.bn_params and blocks.branches.is_bn_like is blocks.bn.is_bn_like
    assert callable(export.onnx_op_counts)
