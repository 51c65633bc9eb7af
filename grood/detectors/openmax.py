"""OpenMax (Bendale & Boult, CVPR 2016) on cached logits, as OpenOOD v1.5 runs it; own code.

Matched: OpenOOD ``openmax_postprocessor.py`` (its constants: Weibull tail 20, ``alpha`` 3 revised
classes, Euclidean distance, one "channel") with ``libmr`` 0.1.9 (PyPI) for the extreme-value fit:

1. Fit, on the ID **training** split: for each class ``c``, the mean activation vector ``MAV_c`` =
   mean **logit** vector of the training samples of class ``c`` that the network classifies correctly;
   their Euclidean distances to ``MAV_c``; a Weibull fit to the ``tail_size`` largest distances the way
   ``libmr.MR().fit_high(tail, tail_size)`` does it: shift the tail to ``d + translate_amount - min(tail)``
   (libmr 0.1.9's default ``translate_amount`` is 1) and fit shape and scale by maximum likelihood
   (libmr's ``weibull_fit`` is MATLAB's ``wblfit``; here ``scipy.stats.weibull_min.fit`` with ``floc=0``).
2. Score, per sample with logits ``v``: ranks ``r = 1..alpha`` of the top classes get weights
   ``omega = (alpha + 1 - r) / alpha`` (0 elsewhere); ``w_c`` = Weibull CDF of the shifted distance of
   ``v`` to ``MAV_c`` (``libmr``'s ``w_score``, 0 for a negative shifted distance); revised logits
   ``v_c (1 - omega_c w_c)`` and an unknown logit ``sum_c v_c omega_c w_c``; the score is minus the
   softmax probability of the unknown class (OpenOOD's ``conf``; higher = more ID).

The softmax is evaluated stably (``logsumexp``) where OpenOOD exponentiates raw logits, which only
matters where OpenOOD would overflow. Not pytorch-ood's ``OpenMax``: it shifts by 10,000 (libmr before
2017), fits on every training sample rather than the correctly classified ones, and leaves the
distance at 0 for revised classes that no sample of the batch predicts.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import scipy.optimize
import scipy.stats

from grood.detectors._common import DEFAULT_CHUNK_ROWS, BaselineDetector
from grood.featureset import FeatureSet, LinearHead
from grood.valid_values import Count, Positive, checked_arguments


def weibull_mle(samples: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Weibull ``(shape, scale)`` of positive ``samples [n]``, as ``wblfit``/libmr.

    Two-parameter fit (location fixed at 0, as libmr's ``weibull_fit``, which is MATLAB's ``wblfit``):
    ``scipy.stats.weibull_min.fit(samples, floc=0)`` with a tight optimizer tolerance. libmr solves the
    likelihood equation to machine precision; scipy's default tolerance leaves ~1e-5 relative error in the
    shape, this one ~1e-8.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 1 or samples.size < 2:
        raise ValueError(f"a Weibull fit needs at least 2 samples; got shape {samples.shape}")
    if not np.all(samples > 0):
        raise ValueError(f"a Weibull fit needs positive samples; got min {samples.min()}")
    if not samples.max() > samples.min():
        raise ValueError(f"a Weibull fit needs samples that differ; all {samples.size} equal {samples[0]}")
    shape, _, scale = scipy.stats.weibull_min.fit(samples, floc=0, optimizer=_tight_fmin)
    return float(shape), float(scale)


def _tight_fmin(func, x0, args=(), disp=0):  # noqa: ANN001 - scipy's optimizer protocol
    return scipy.optimize.fmin(func, x0, args=args, disp=disp, xtol=1e-13, ftol=1e-15, maxiter=20_000)


def weibull_cdf(x: torch.Tensor, shape: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``1 - exp(-(x / scale)^shape)``, and 0 for ``x < 0`` (libmr's ``weibull_cdf``), elementwise."""
    ratio = (x.clamp_min(0.0) / scale).pow(shape)
    return torch.where(x < 0, torch.zeros_like(x), -torch.expm1(-ratio))


class OpenMax(BaselineDetector):
    """OpenMax: minus the OpenMax probability of the unknown class (higher = more ID).

    Fit on the ID training split with its true labels (correctly classified samples only).

    Args:
        tail_size: largest distances per class fitted by the Weibull (OpenOOD: 20).
        alpha: number of top classes revised (OpenOOD's ``weibull_alpha``: 3).
        translate_amount: libmr's shift of the tail before the fit (libmr 0.1.9 default, used by OpenOOD: 1).
    """

    name: ClassVar[str] = "openmax"
    reference: ClassVar[str] = "Bendale & Boult, Towards Open Set Deep Networks, CVPR 2016"
    uses_labels: ClassVar[bool] = True

    @checked_arguments
    def __init__(
        self,
        tail_size: Count = 20,
        alpha: Count = 3,
        translate_amount: Positive = 1.0,
        chunk_rows: Count = DEFAULT_CHUNK_ROWS,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(chunk_rows=chunk_rows, device=device)
        self.tail_size = int(tail_size)
        self.alpha = int(alpha)
        self.translate_amount = float(translate_amount)

    def fit(self, train: FeatureSet, head: LinearHead) -> "OpenMax":
        self._start_fit(train, head)
        if self.alpha > self.num_classes:
            raise ValueError(f"OpenMax: alpha={self.alpha} exceeds the {self.num_classes} classes")
        logits = train.logits.detach().cpu().to(torch.float64)
        labels = train.labels.cpu()
        correct = logits.argmax(dim=1) == labels
        means, shapes, scales, tail_minima = [], [], [], []
        for c in range(self.num_classes):
            class_logits = logits[correct & (labels == c)]
            if class_logits.shape[0] < 2:
                raise ValueError(
                    f"OpenMax.fit: class {c} has {class_logits.shape[0]} correctly classified training sample(s); "
                    "the Weibull fit needs at least 2"
                )
            mean = class_logits.mean(dim=0)
            distances = (class_logits - mean).norm(dim=1)
            tail = torch.sort(distances).values[-self.tail_size :].numpy()
            shifted = tail + self.translate_amount - tail.min()
            try:
                shape, scale = weibull_mle(shifted)
            except ValueError as error:
                raise ValueError(f"OpenMax.fit: class {c}: {error}") from error
            means.append(mean)
            shapes.append(shape)
            scales.append(scale)
            tail_minima.append(float(tail.min()))
        self.mean_activations = torch.stack(means).to(self.device)
        self.shapes = torch.tensor(shapes, dtype=torch.float64, device=self.device)
        self.scales = torch.tensor(scales, dtype=torch.float64, device=self.device)
        self.tail_minima = torch.tensor(tail_minima, dtype=torch.float64, device=self.device)
        self._fitted = True
        return self

    def unknown_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N]`` OpenMax probability of the unknown class for ``logits [N, C]``."""
        v = logits.to(self.device, torch.float64)
        distances = torch.cdist(v, self.mean_activations)  # [N, C]
        w_scores = weibull_cdf(distances + self.translate_amount - self.tail_minima, self.shapes, self.scales)
        top = torch.topk(v, self.alpha, dim=1).indices
        rank_weights = (self.alpha - torch.arange(self.alpha, dtype=torch.float64, device=v.device)) / self.alpha
        omega = torch.zeros_like(v).scatter_(1, top, rank_weights.expand(v.shape[0], -1))
        revised = v * (1.0 - omega * w_scores)
        unknown = (v - revised).sum(dim=1, keepdim=True)
        return torch.softmax(torch.cat([revised, unknown], dim=1), dim=1)[:, -1]

    @torch.no_grad()
    def score(self, data: FeatureSet) -> torch.Tensor:
        self._start_score(data)
        return self._score_in_chunks(data, lambda chunk: -self.unknown_probability(chunk.logits))
