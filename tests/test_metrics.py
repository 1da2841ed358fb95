"""repan_zoo.metrics: the shared top-1 count."""
from __future__ import annotations

import pytest
import torch

from repan_zoo.metrics import count_correct, top1


def test_count_correct_takes_no_non_finite_row_for_a_hit():
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, 1.0], [nan, 0.0], [0.0, inf], [-inf, 0.0], [2.0, 1.0]])
    labels = torch.tensor([1, 0, 1, 1, 1])
    assert count_correct(logits, labels) == 1  # row 0 only: NaN / ±inf rows are wrong, row 4 is wrong
    with pytest.raises(ValueError, match="N×K logits and N labels"):
        count_correct(logits, labels[:3])
    with pytest.raises(ValueError, match="N×K logits"):
        count_correct(logits.view(-1), labels)


def test_top1_batches_normalizes_and_checks_its_inputs():
    images = torch.arange(7.0).view(7, 1, 1, 1)
    labels = torch.tensor([1, 0, 1, 0, 1, 1, 1])
    seen = []

    def model(x):  # class 1 for odd values
        seen.append(len(x))
        odd = (x.flatten() % 2 == 1).float()
        return torch.stack([1 - odd, odd], 1)

    assert top1(model, images, labels, normalize=lambda x: x + 1, batch_size=3) == pytest.approx(100 * 6 / 7)
    assert seen == [3, 3, 1]
    assert top1(model, images, labels) == pytest.approx(100 * 1 / 7)  # without normalize
    with pytest.raises(ValueError, match="as many labels as images"):
        top1(model, images, labels[:3])
    with pytest.raises(ValueError, match="at least one"):
        top1(model, images[:0], labels[:0])
