"""Progress without bars (grood/progress.py) and CPU resources (grood/resources.py)."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from grood import resources
from grood.data.imagelist import build_loader
from grood.method.detector import GROOD
from grood.progress import phase, track

PROGRESS_LOGGER = "grood.progress"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == PROGRESS_LOGGER]


def test_track_without_bars_logs_start_and_end_with_counts_and_time(caplog):
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    seen = [batch[0].tolist() for batch in track(loader, "toy/test", progress=False)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    lines = _lines(caplog)
    assert lines[0] == "toy/test: started, 3 batches (10 images)"
    assert re.fullmatch(r"toy/test: done, 3 batches \(10 images\) in \d+\.\d s", lines[1]), lines
    assert len(lines) == 2


def test_track_with_bars_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    assert list(track(range(5), "quiet", progress=True)) == [0, 1, 2, 3, 4]
    assert _lines(caplog) == []


def test_track_that_stops_early_says_how_far_it_got(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    iterator = track(["a", "b", "c", "d"], "APS knn", progress=False, unit="combinations")
    for element in iterator:
        if element == "b":
            break
    iterator.close()
    lines = _lines(caplog)
    assert lines[0] == "APS knn: started, 4 combinations"
    assert re.fullmatch(r"APS knn: stopped after 2 of 4 combinations in \d+\.\d s", lines[1]), lines


def test_track_counts_one_batch_in_the_singular(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    list(track(DataLoader(TensorDataset(torch.arange(1.0)), batch_size=4), "one", progress=False))
    assert _lines(caplog)[0] == "one: started, 1 batch (1 image)"


def test_track_of_an_unsized_iterable(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    assert sum(track((i for i in range(3)), "gen", progress=False)) == 3
    lines = _lines(caplog)
    assert lines[0] == "gen: started, ? batches" and lines[1].startswith("gen: done, 3 batches in ")


def test_phase_logs_done_and_failed(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    with phase("IVF k-means (8 cells)", 1000):
        pass
    with pytest.raises(RuntimeError, match="boom"):
        with phase("broken"):
            raise RuntimeError("boom")
    lines = _lines(caplog)
    assert lines[0] == "IVF k-means (8 cells): started, 1,000 vectors"
    assert re.fullmatch(r"IVF k-means \(8 cells\): done, 1,000 vectors in \d+\.\d s", lines[1])
    assert lines[2] == "broken: started" and re.fullmatch(r"broken: failed after \d+\.\d s", lines[3])


def test_grood_fit_and_score_without_bars_log_each_phase(caplog):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 8, generator=generator)
    labels = torch.arange(60) % 3
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    detector = GROOD(index="torch", progress=False)
    detector.fit(features, labels, ood_prototype=torch.zeros(8))
    detector.score(features[:20])
    lines = _lines(caplog)
    starts = [line for line in lines if ": started" in line]
    ends = [line for line in lines if ": done" in line]
    assert starts and len(starts) == len(ends)
    assert any(line.startswith("GROOD training gradients (60 rows): done") for line in ends), lines
    assert any("neighbour search (20 queries): done" in line for line in ends), lines


# --------------------------------------------------------------------------- resources
@pytest.fixture()
def two_cpus(monkeypatch):
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(resources, "_noticed", set())


def test_loader_workers_are_clamped_to_the_cpus_with_one_notice(two_cpus, caplog):
    caplog.set_level(logging.INFO, logger="grood.resources")
    assert resources.available_cpus() == 2
    assert resources.loader_workers(0) == 0 and resources.loader_workers(2) == 2
    assert resources.loader_workers(4) == 2
    assert resources.loader_workers(4) == 2
    notices = [r.getMessage() for r in caplog.records if r.name == "grood.resources"]
    assert notices == ["num_workers=4 but this process may use 2 CPUs: using 2 loader workers"]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_loader_workers_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        resources.loader_workers(bad)


def test_a_loader_asked_for_too_many_workers_runs_warning_free():
    cpus = resources.available_cpus()
    loader = build_loader(TensorDataset(torch.arange(8.0)), batch_size=4, num_workers=cpus + 3)
    assert loader.num_workers == cpus
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch warns (UserWarning) when workers exceed the CPUs
        assert [batch[0].tolist() for batch in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_follows_omp_num_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resources.configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resources.configure_threads() == resources.available_cpus() == torch.get_num_threads()


@pytest.mark.parametrize("bad", ["0", "two", "-3"])
def test_configure_threads_rejects_a_bad_omp_num_threads(monkeypatch, restore_threads, bad):
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS='{bad}' is not a positive integer"):
        resources.configure_threads()
