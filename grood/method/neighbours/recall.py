"""How approximate an approximate index was: recall@1 against exact search on a fixed sample of queries.

Every run with an approximate index (``index=ivf``, ``index=faiss_ivf``, and so ``method=grood_openood``)
calls :func:`measure_recall` after scoring and records its answer in ``run.json``. A sampled query counts
as found when the neighbour the index returned lies at the exact nearest distance (relative
:data:`TIE_TOLERANCE`: another training gradient at the same distance is as good). The exact search streams
the training gradients (recomputed from the features a chunk at a time), so it needs no second index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from grood.method.neighbours.base import _direct_distances
from grood.method.neighbours.streamed import streamed_k_nearest
from grood.method.streaming import RowReader, argmax_rows

log = logging.getLogger(__name__)

#: The index kinds whose search is approximate.
APPROXIMATE_KINDS = ("ivf", "faiss_ivf")
#: Queries sampled (all of them when fewer).
RECALL_SAMPLE = 1000
#: A returned neighbour within this relative distance of the exact nearest one counts as found.
TIE_TOLERANCE = 1e-4
#: Candidates per query kept by the streamed exact search, whose distances are then computed directly.
_EXACT_CANDIDATES = 4


def is_approximate(detector: Any) -> bool:
    """Whether ``detector`` (a fitted GROOD) searches with an approximate index."""
    return getattr(detector, "index", None) is not None and detector.index.kind in APPROXIMATE_KINDS


def sample_queries(sizes: Mapping[str, int], sample: int = RECALL_SAMPLE, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{name: sorted row indices}``: a seeded uniform sample of ``sample`` rows over the query sets of
    ``sizes`` (``{name: rows}``, pooled in this order); every row when they hold ``sample`` or fewer."""
    total = sum(sizes.values())
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(sample, total)]
    chosen = torch.sort(chosen).values
    out, offset = {}, 0
    for name, size in sizes.items():
        mine = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        out[name] = mine
        offset += size
    return out


def measure_recall(
    detector: Any, train: Any, queries: Mapping[str, Any], sample: int = RECALL_SAMPLE, seed: int = 0
) -> dict[str, Any]:
    """recall@1 of ``detector``'s index (a fitted GROOD) against exact search.

    Args:
        detector: a GROOD fitted on ``train``.
        train: the training :class:`~grood.featureset.FeatureSet` it was fitted on (its rows are streamed).
        queries: ``{name: FeatureSet}`` the sets it scored; ``sample`` rows are drawn over all of them with
            ``seed``.
    Returns:
        ``{"recall_at_1", "queries", "seed", "index", "by_set": {name: {"recall_at_1", "queries"}}}``.
    """
    picked = sample_queries({name: len(data) for name, data in queries.items()}, sample, seed)
    needs_predictions = detector.variant == "class_gradient" and detector.class_labels_from == "network"
    gradients, names = [], []
    for name, rows in picked.items():
        if rows.numel() == 0:
            continue
        data = queries[name]
        predictions = data.logits[rows].argmax(dim=1) if needs_predictions else None
        gradients.append(detector.gradients(data.features[rows], predictions))
        names += [name] * rows.numel()
    query_gradients = torch.cat(gradients)
    approximate = detector.index.search(query_gradients, 1)[0][:, 0].to(query_gradients.device)
    exact = exact_nearest_distances(detector, train, query_gradients)
    found = approximate <= exact * (1.0 + TIE_TOLERANCE)
    by_set = {}
    for name in picked:
        mask = torch.tensor([n == name for n in names], dtype=torch.bool)
        if bool(mask.any()):
            by_set[name] = {"recall_at_1": float(found[mask].float().mean()), "queries": int(mask.sum())}
    report = {"recall_at_1": float(found.float().mean()), "queries": int(found.numel()), "seed": int(seed),
              "index": detector.index.kind, "by_set": by_set}
    log.info("GROOD index %s: recall@1 %.4f against exact search on %d sampled queries (%s)", detector.index.kind,
             report["recall_at_1"], report["queries"],
             ", ".join(f"{name} {value['recall_at_1']:.4f}" for name, value in by_set.items()))
    return report


def exact_nearest_distances(detector: Any, train: Any, query_gradients: torch.Tensor) -> torch.Tensor:
    """``[B]`` exact distance of each query gradient ``[B, D]`` to its nearest indexed training gradient (the
    rows ``detector`` indexed: all, or with ``fit_on="correct"`` those the network classifies correctly),
    the training gradients recomputed and streamed a chunk at a time."""
    predictions = argmax_rows(train.logits) if (detector.fit_on == "correct" or detector.variant == "class_gradient"
                                                 and detector.class_labels_from == "network") else None
    keep = None if detector.fit_on != "correct" else predictions == train.labels
    labels = predictions if detector.variant == "class_gradient" and detector.class_labels_from == "network" else None
    reader = RowReader(train.features, detector.device)

    def chunks():
        for rows, h in reader.chunks(detector.batch_size):
            ids = torch.arange(rows.start, rows.stop)
            y = None if labels is None else labels[rows].to(detector.device)
            if keep is not None:
                mask = keep[rows]
                ids, h = ids[mask], h[mask.to(h.device)]
                y = None if y is None else y[mask.to(y.device)]
            if ids.numel():
                yield ids, detector._gradient(h, y)

    count = detector.num_indexed
    _, candidates = streamed_k_nearest(query_gradients, chunks(), min(_EXACT_CANDIDATES, count))
    unique, inverse = torch.unique(candidates, return_inverse=True)
    h = reader.take(unique)
    y = None if labels is None else labels[unique].to(detector.device)
    vectors = detector._gradient(h, y)
    return _direct_distances(query_gradients, vectors, inverse.reshape(candidates.shape), 2**22).amin(dim=1)
