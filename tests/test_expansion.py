"""The Expand + Restore settings as one value (repan_zoo.expansion) and the Restore-rule registry."""
import math

import pytest
import torch

import repan_zoo as rz
from repan_zoo import algebra
from repan_zoo.annealing.config import TrainConfig
from repan_zoo.errors import RecipeError
from repan_zoo.expansion import ARCH_BRANCHES, MAX_K, Expansion, ExpansionError
from repan_zoo.verify import eval_mode, relative_error

torch.set_num_threads(1)


def test_defaults_are_the_papers_and_the_value_is_frozen():
    e = Expansion()
    assert (e.branches, e.k, e.restore, e.residual, e.branch_gamma) == (ARCH_BRANCHES, 1, "inherit", False, 0.0)
    assert e.arch
    with pytest.raises(Exception):
        e.k = 2  # frozen
    assert Expansion(branches=["conv_kxk", "conv_1x1"]).branches == ("conv_kxk", "conv_1x1")
    assert Expansion(branches="conv_kxk,conv_1x1").branches == ("conv_kxk", "conv_1x1")


@pytest.mark.parametrize("changes,words", [
    ({"branches": ("conv_9x9",)}, "unknown branch kind"),
    ({"branches": ("arch", "conv_1x1")}, "cannot be mixed"),
    ({"k": -1}, "0..5"),
    ({"k": MAX_K + 1}, "0..5"),
    ({"k": True}, "0..5"),
    ({"restore": "magic"}, "register_restore_rule"),
    ({"branch_gamma": math.nan}, "finite"),
    ({"residual": "yes"}, "True or False"),
])
def test_invalid_settings_are_refused_by_name(changes, words):
    with pytest.raises(ExpansionError, match=words):
        Expansion(**changes)
    with pytest.raises(ExpansionError, match=words):
        Expansion().replace(**changes)


def test_replace_of_and_dict_round_trip():
    e = Expansion.of(("conv_kxk",), k=2, residual=True)
    assert e == Expansion(branches=("conv_kxk",), k=2, residual=True)
    assert Expansion.of(e.as_dict()) == e
    assert Expansion.of(None) == Expansion()
    with pytest.raises(TypeError, match="no field"):
        e.replace(kk=3)
    # a string names kinds as the keyword and the command line do (was: split into its characters)
    assert Expansion.of("conv_1x1") == Expansion.of(("conv_1x1",)) == Expansion(branches="conv_1x1")
    assert Expansion.of("conv_kxk,conv_1x1") == Expansion.of(("conv_kxk", "conv_1x1"))


def test_unfold_takes_one_kind_as_a_string():
    from helpers import TinyNet

    deploy = rz.reparameterize(TinyNet())
    as_str, as_tuple = rz.unfold(deploy, "conv_1x1"), rz.unfold(deploy, ("conv_1x1",))
    assert [b.branch_kinds for _, b in rz.rep_blocks(as_str)] == [b.branch_kinds for _, b in rz.rep_blocks(as_tuple)]


def test_train_config_holds_one_expansion_and_records_it_flat():
    cfg = TrainConfig.from_dict({"k": 2, "branches": ["conv_kxk"], "restore": "normalized"})
    assert cfg.expansion == Expansion(branches=("conv_kxk",), k=2, restore="normalized")
    d = cfg.as_dict()
    assert "expansion" not in d and d["branches"] == ["conv_kxk"] and d["k"] == 2
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig.recipe_keys() == list(d)
    with pytest.raises(RecipeError, match="--restore 'magic'"):
        TrainConfig.from_dict({"restore": "magic"})
    with pytest.raises(RecipeError, match="--branch-gamma"):
        TrainConfig.from_dict({"branch_gamma": math.inf})


@pytest.fixture
def deploy_net(tiny_net):
    return rz.reparameterize(tiny_net)


@pytest.fixture
def scaled_rule():
    """A new Restore rule in one place: one function and its registration line."""

    @algebra.register_restore_rule("unit_gamma_test")
    def unit_gamma(kernel, bias, *, previous, eps, min_gamma, target_norm):
        return torch.ones_like(bias), torch.zeros_like(bias), torch.full_like(bias, 4.0 - eps), eps

    yield "unit_gamma_test"
    del algebra.RESTORE_RULES["unit_gamma_test"]


def test_a_new_restore_rule_is_one_function_and_one_registration(scaled_rule, deploy_net, tiny_input):
    with pytest.raises(ValueError, match="already registered"):
        algebra.register_restore_rule(scaled_rule)(lambda *a, **k: None)
    x = tiny_input
    un = rz.unfold(deploy_net, restore=scaled_rule, example_input=x, generator=torch.Generator().manual_seed(0))
    trunk_bn = next(b for _, b in rz.verify.rep_blocks(un)).trunk.bn
    assert torch.allclose(trunk_bn.running_var, torch.full_like(trunk_bn.running_var, 4.0 - trunk_bn.eps))
    with eval_mode(deploy_net), eval_mode(un):
        assert relative_error(deploy_net(x), un(x)) < 1e-5
    # the recipe and the command line accept it with no other change
    assert TrainConfig.from_dict({"restore": scaled_rule}).expansion.restore == scaled_rule


def test_a_rule_that_needs_the_previous_bn_must_name_a_fallback():
    with pytest.raises(ValueError, match="fallback"):
        algebra.register_restore_rule("needs_prev_test", needs_previous=True)
    assert "needs_prev_test" not in algebra.RESTORE_RULES
