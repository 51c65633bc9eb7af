"""NaN/inf checks read their input a bounded block at a time (issue 22: no whole-split temporaries) and still
name what is non-finite and where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grood.detectors.registry import build_detector
from grood.featureset import FeatureSet, LinearHead
from grood.method import _checks
from grood.method._checks import check_finite, finite_block_rows
from grood.method.prototypes import ClassMeanAccumulator

BLOCK = 60  # elements per block in these tests


@pytest.fixture()
def largest_isfinite(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Blocks of ``BLOCK`` elements; records the element count of every tensor ``torch.isfinite`` is given."""
    sizes: list[int] = []
    original = torch.isfinite

    def recording(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return original(x)

    monkeypatch.setattr(_checks, "FINITE_BLOCK_ELEMENTS", BLOCK)
    monkeypatch.setattr(torch, "isfinite", recording)
    return sizes


@pytest.mark.parametrize("shape", [(50, 7), (40, 3, 2, 2)])
def test_a_nan_in_the_last_row_is_found_a_block_at_a_time(largest_isfinite: list[int], shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    x[-1].view(-1)[-1] = float("nan")
    rows = shape[0]
    with pytest.raises(ValueError, match=rf"^x contains NaN or inf in 1 of {rows} row\(s\) \(first rows: \[{rows - 1}\]\)"):
        check_finite("x", x)
    assert x.numel() > BLOCK and 1 < max(largest_isfinite) <= BLOCK


def test_bad_rows_in_several_blocks_are_all_counted_and_the_first_named(largest_isfinite: list[int]) -> None:
    x = torch.randn(50, 7)  # 8 rows per block
    for row in (3, 17, 18, 30, 41, 49):
        x[row, row % 7] = float("inf") if row % 2 else float("-inf")
    with pytest.raises(ValueError, match=r"in 6 of 50 row\(s\) \(first rows: \[3, 17, 18, 30, 41\]\)"):
        check_finite("x", x)
    assert max(largest_isfinite) <= BLOCK


def test_a_vector_is_checked_a_block_of_values_at_a_time(largest_isfinite: list[int]) -> None:
    x = torch.randn(500)
    x[-1] = float("inf")
    with pytest.raises(ValueError, match=r"^bias contains 1 NaN/inf value\(s\)$"):
        check_finite("bias", x)
    assert 1 < max(largest_isfinite) <= BLOCK


def test_a_row_larger_than_a_block_is_checked_alone() -> None:
    assert finite_block_rows(torch.zeros(10, 3, 50), block_elements=60) == 1
    assert finite_block_rows(torch.zeros(10, 7), block_elements=60) == 8
    assert finite_block_rows(torch.zeros(10), block_elements=60) == 60


def test_finite_values_that_overflow_a_block_sum_pass(largest_isfinite: list[int]) -> None:
    check_finite("x", torch.full((50, 7), 3e38))  # each block's float32 sum is inf: the values are then checked
    assert max(largest_isfinite) <= BLOCK


def test_a_memory_mapped_split_is_checked_a_block_at_a_time(tmp_path: Path, largest_isfinite: list[int]) -> None:
    array = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    array[49, 6] = np.nan
    np.save(tmp_path / "features.npy", array)
    mapped = torch.from_numpy(np.load(tmp_path / "features.npy", mmap_mode="r+"))
    with pytest.raises(ValueError, match=r"in 1 of 50 row\(s\) \(first rows: \[49\]\)"):
        check_finite("features", mapped)
    assert max(largest_isfinite) <= BLOCK and np.isnan(np.load(tmp_path / "features.npy")[49, 6])


def test_the_class_mean_accumulator_checks_its_batch_a_block_at_a_time(largest_isfinite: list[int]) -> None:
    features = torch.randn(40, 3, 2, 2)
    features[39, 2, 1, 1] = float("nan")
    accumulator = ClassMeanAccumulator(3, (3, 2, 2))
    with pytest.raises(ValueError, match=r"^features contains NaN or inf in 1 of 40 row\(s\) \(first rows: \[39\]\)"):
        accumulator.update(features, torch.arange(40) % 3)
    assert max(largest_isfinite) <= BLOCK and accumulator.counts.sum() == 0


@pytest.mark.parametrize("name", ["features", "logits"])
def test_a_baseline_checks_a_split_a_block_at_a_time(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    head = LinearHead(torch.randn(4, 6, generator=generator), torch.randn(4, generator=generator))

    def split(rows: int) -> FeatureSet:
        features = torch.randn(rows, 6, generator=generator)
        return FeatureSet(features @ head.weight.T + head.bias, features, torch.arange(rows) % 4)

    detector = build_detector("ebo").fit(split(40), head)
    test = split(50)
    getattr(test, name)[49, 1] = float("nan")
    sizes: list[int] = []
    original = torch.isfinite
    monkeypatch.setattr(_checks, "FINITE_BLOCK_ELEMENTS", BLOCK)
    monkeypatch.setattr(torch, "isfinite", lambda x: sizes.append(x.numel()) or original(x))
    with pytest.raises(ValueError, match=rf"score: {name} contains NaN or inf in 1 of 50 row\(s\) \(first rows: \[49\]\)"):
        detector.score(test)
    assert test.features.numel() > BLOCK and 1 < max(sizes) <= BLOCK
