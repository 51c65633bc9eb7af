"""Eq. 7 / eq. 8 prototypes, the mean of prototypes and the section 5.2 proximity filter."""

from __future__ import annotations

import pytest
import torch

from grood.method import prototypes
from grood.method.prototypes import (
    ClassMeanAccumulator,
    PresentClassSums,
    class_prototypes,
    mean_of_class_prototypes,
    nearest_prototype_distance,
    ood_prototype,
    proximity_filter,
)


def _reference_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.stack([features[labels == c].double().mean(dim=0) for c in range(num_classes)])


@pytest.mark.parametrize("feature_shape", [(7,), (3, 4, 5)])
def test_streaming_accumulator_equals_one_shot_mean(feature_shape: tuple[int, ...]) -> None:
    num_classes = 4
    features = torch.randn(103, *feature_shape) * 5 + 2
    labels = torch.arange(103) % num_classes
    labels = labels[torch.randperm(103)]

    streamed = ClassMeanAccumulator(num_classes, feature_shape)
    for start in range(0, 103, 10):  # uneven last batch on purpose
        streamed.update(features[start : start + 10], labels[start : start + 10])
    one_shot = ClassMeanAccumulator(num_classes, feature_shape)
    one_shot.update(features, labels)

    expected = _reference_means(features, labels, num_classes)
    assert streamed.means().dtype == torch.float64
    torch.testing.assert_close(streamed.means(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one_shot.means(), expected, rtol=1e-12, atol=1e-12)
    assert streamed.counts.tolist() == torch.bincount(labels, minlength=num_classes).tolist()
    assert streamed.sums.shape == (num_classes, *feature_shape)
    assert streamed.means(dtype=torch.float32).dtype == torch.float32


def test_class_prototypes_eq7_and_dtype() -> None:
    features = torch.randn(60, 5)
    labels = torch.arange(60) % 3
    protos = class_prototypes(features, labels, 3)
    assert protos.shape == (3, 5) and protos.dtype == torch.float32
    torch.testing.assert_close(protos.double(), _reference_means(features, labels, 3), rtol=1e-6, atol=1e-6)


def test_empty_class_raises_naming_the_classes() -> None:
    accumulator = ClassMeanAccumulator(5, 3)
    accumulator.update(torch.randn(6, 3), torch.tensor([0, 1, 3, 0, 1, 3]))
    with pytest.raises(ValueError, match=r"class\(es\) \[2, 4\] of 5 have no sample"):
        accumulator.means()
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        class_prototypes(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 3)


@pytest.mark.parametrize("bad", [3, -1])
def test_label_out_of_range_names_the_value(bad: int) -> None:
    accumulator = ClassMeanAccumulator(3, 2)
    with pytest.raises(ValueError, match=rf"value\(s\) \[{bad}\] outside the valid class range 0\.\.2"):
        accumulator.update(torch.randn(3, 2), torch.tensor([0, bad, 1]))
    assert accumulator.counts.sum() == 0  # nothing was added


def test_accumulator_rejects_bad_inputs() -> None:
    accumulator = ClassMeanAccumulator(3, (2, 2))
    with pytest.raises(ValueError, match=r"per-sample shape \(4,\) but the accumulator was built for \(2, 2\)"):
        accumulator.update(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="has 2 entries but the features have 3 rows"):
        accumulator.update(torch.randn(3, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        accumulator.update(torch.randn(3, 2, 2), torch.tensor([0.0, 1.0, 2.0]))
    features = torch.randn(3, 2, 2)
    features[1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 3 row\(s\)"):
        accumulator.update(features, torch.tensor([0, 1, 2]))


def test_ood_prototype_eq8() -> None:
    features = torch.randn(11, 4)
    torch.testing.assert_close(ood_prototype(features), features.double().mean(dim=0).float())
    with pytest.raises(ValueError, match="from 0 feature rows"):
        ood_prototype(torch.empty(0, 4))
    with pytest.raises(ValueError, match="2-D"):
        ood_prototype(torch.randn(4))


def test_mean_of_class_prototypes() -> None:
    protos = torch.tensor([[0.0, 2.0], [4.0, 6.0], [2.0, 1.0]])
    torch.testing.assert_close(mean_of_class_prototypes(protos), torch.tensor([2.0, 3.0]))


def test_nearest_prototype_distance_matches_cdist() -> None:
    features = torch.randn(50, 6, dtype=torch.float64)
    protos = torch.randn(4, 6, dtype=torch.float64)
    expected = torch.cdist(features, protos, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    torch.testing.assert_close(nearest_prototype_distance(features, protos), expected)


def _line_candidates() -> tuple[torch.Tensor, torch.Tensor]:
    """One prototype at the origin; candidate i at distance distances[i] from it (shuffled order)."""
    distances = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 10.0, 4.0, 8.0, 6.0])
    candidates = torch.zeros(10, 3)
    candidates[:, 0] = distances
    return candidates, torch.zeros(1, 3)


def test_proximity_filter_drops_the_close_ones_and_keeps_order() -> None:
    candidates, protos = _line_candidates()
    kept = proximity_filter(candidates, protos, quantile=0.5, min_keep=1)
    # median of 1..10 is 5.5: keep 6..10, drop 1..5, in the original order
    assert kept[:, 0].tolist() == [9.0, 7.0, 10.0, 8.0, 6.0]
    assert proximity_filter(candidates, protos, quantile=0.0, min_keep=1).shape[0] == 10


def test_proximity_filter_respects_min_keep() -> None:
    candidates, protos = _line_candidates()
    only_max = proximity_filter(candidates, protos, quantile=1.0, min_keep=1)
    assert only_max[:, 0].tolist() == [10.0]
    three = proximity_filter(candidates, protos, quantile=1.0, min_keep=3)
    assert sorted(three[:, 0].tolist()) == [8.0, 9.0, 10.0]
    everything = proximity_filter(candidates[:2], protos, quantile=0.9, min_keep=5)
    assert everything.shape[0] == 2


def test_proximity_filter_bad_arguments() -> None:
    candidates, protos = _line_candidates()
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]; got 1.5"):
        proximity_filter(candidates, protos, quantile=1.5)
    with pytest.raises(ValueError, match="0 candidate rows"):
        proximity_filter(torch.empty(0, 3), protos, quantile=0.5)
    with pytest.raises(ValueError, match=r"class_prototypes has feature dimension 2 but 3"):
        proximity_filter(candidates, torch.zeros(1, 2), quantile=0.5)


def _varied_batches(num_batches: int, rows: int, shape: tuple[int, ...], classes: list[int]):
    """float32 batches whose values span many magnitudes (float64 sums then round), labels drawn from ``classes``."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(num_batches):
        scale = 10.0 ** torch.randint(-6, 7, (rows, *shape), generator=generator)
        features = (torch.randn(rows, *shape, generator=generator) * scale).float()
        labels = torch.tensor(classes)[torch.randint(len(classes), (rows,), generator=generator)]
        yield features, labels


def test_present_class_sums_hold_the_seen_classes_only_with_the_dense_bits() -> None:
    shape = (3, 4, 5)
    present = PresentClassSums(50, shape)
    dense = ClassMeanAccumulator(50, shape)
    batches = list(_varied_batches(4, 33, shape, [7, 41]))
    batches += list(_varied_batches(6, 33, shape, [41, 3, 19, 7]))  # new classes in later batches: room grows
    for features, labels in batches:
        present.update(features, labels)
        dense.update(features, labels)
    assert present.classes.tolist() == [7, 41, 3, 19]  # in the order first seen, ascending within a batch
    assert present.sums.shape == (4, *shape) and present.counts.tolist() == dense.counts[present.classes].tolist()
    sums, counts = present.dense()
    assert sums.dtype == torch.float64 and torch.equal(sums.view(torch.int64), dense.sums.view(torch.int64))
    assert torch.equal(counts, dense.counts) and sums.shape == (50, *shape)
    assert float((dense.sums.double() - dense.sums.float().double()).abs().max()) > 0  # the sums are not float32 values


def test_present_class_sums_check_their_inputs() -> None:
    present = PresentClassSums(3, 4)
    with pytest.raises(ValueError, match=r"per-sample shape \(5,\)"):
        present.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"value\(s\) \[3\] outside the valid class range 0..2"):
        present.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"features contains NaN or inf in 1 of 2 row\(s\) \(first rows: \[1\]\)"):
        present.update(torch.tensor([[0.0] * 4, [float("nan")] * 4]), torch.tensor([0, 1]))
    assert present.classes.numel() == 0 and present.dense()[1].tolist() == [0, 0, 0]


def test_float64_blocks_are_bounded_by_elements_and_do_not_change_the_sums(monkeypatch) -> None:
    features, labels = next(_varied_batches(1, 40, (6, 5), [0, 1, 2]))
    whole = ClassMeanAccumulator(3, (6, 5))
    whole.update(features, labels)
    converted: list[int] = []
    original = torch.Tensor.index_add_

    def recording(self, dim, index, source, *args, **kwargs):
        converted.append(source.numel())
        return original(self, dim, index, source, *args, **kwargs)

    monkeypatch.setattr(prototypes, "_BLOCK_ELEMENTS", 100)  # 3 rows of 30 elements per block
    monkeypatch.setattr(torch.Tensor, "index_add_", recording)
    blocked = ClassMeanAccumulator(3, (6, 5))
    blocked.update(features, labels)
    assert max(converted) == 90 and len(converted) == 14
    assert torch.equal(blocked.sums.view(torch.int64), whole.sums.view(torch.int64))
