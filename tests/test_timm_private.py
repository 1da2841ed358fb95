"""timm's public API only (issue 15.7): private timm modules are imported in one adapter,
``repan_zoo.timm_private``, and this file fails loudly when a timm release moves them."""
from __future__ import annotations

import re
from pathlib import Path

import repan_zoo
from repan_zoo import timm_private

PACKAGE = Path(repan_zoo.__file__).parent
PRIVATE = re.compile(r"(from\s+timm(\.\w+)*\._\w+\s+import|import\s+timm(\.\w+)*\._\w+)")


def test_no_private_timm_import_outside_the_adapter():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{i}"
        for path in PACKAGE.rglob("*.py") if path.name != "timm_private.py"
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)
    ]
    assert not offenders, f"private timm imports outside repan_zoo/timm_private.py: {offenders}"


def test_adapter_names_still_behave_as_relied_on():
    """If timm moves or changes these, this fails here (not deep inside forward_intermediates)."""
    assert timm_private.feature_take_indices(5, None) == ([0, 1, 2, 3, 4], 4)
    assert timm_private.feature_take_indices(5, 2) == ([3, 4], 4)
    assert timm_private.feature_take_indices(5, [0, -1]) == ([0, 4], 4)
    cfg = timm_private.pretrained_cfg_for_features(dict(num_classes=10, classifier="head.fc", input_size=(1, 28, 28)))
    assert cfg == dict(input_size=(1, 28, 28))
