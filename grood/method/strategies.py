"""GROOD's OOD prototype (eq. 8) and the strategies behind it (eq. 9, appendix A.2, Table 1): one registry.

Each strategy produces candidate penultimate features ``X_ood [M, D]``; the OOD prototype is their
mean (eq. 8), after the section-5.2 proximity filter when ``filter_quantile`` is set. The pipeline,
the OpenOOD postprocessor and the Python API all build prototypes with :func:`build_ood_prototype`;
what a caller has (the network, its training pass, validation or test data) it hands over in a
:class:`PrototypeInputs`, and a strategy that needs something missing says what.

Strategies (:data:`STRATEGIES`; parameters and defaults in each :class:`Strategy`):

- ``mixup`` (default, eq. 9): ``h = f_mid(λ f_early(x) + (1-λ) p_early[c2])`` for ID training images,
  with ``c2`` the 2nd-highest predicted class; ``mixup_lambda`` (λ = 0.5), ``num_images`` (None = all
  training images, else a seeded sample drawn evenly across classes).
- ``uniform``: ``num_images`` uniform-noise images, the ``keep`` with the lowest energy score.
- ``val_ood``: a seeded sample of ``num_images`` (100) auxiliary OOD validation images.
- ``corrupted`` (appendix A.2 "ID-Corrupted Val"): ``num_images`` (100) corrupted ID images. ``source``:
  ``real`` (default, the paper's data) samples them, seeded and evenly across classes, from the
  benchmark's real corrupted images (CIFAR-10-C / CIFAR-100-C, ImageNet-C; they come with the csid
  download); ``synthetic`` corrupts ID validation images in code (noise, blur, contrast, ...;
  ``corruptions``). No source stands in for the other: a missing input is an error.
- ``mean``: the mean of the class prototypes (no OOD data at all; eq. 8 over the class prototypes).
- ``local_oracle`` / ``global_oracle`` (Table 1): ``num_images`` (100) images of the OOD test set itself /
  of each of the *other* OOD test sets. One prototype per OOD test set (``target=``); the evaluation
  must also hold the oracle images (:func:`oracle_split`) out of the scored set.
- the proximity filter (section 5.2), for every strategy: ``filter_quantile`` (None = off) and ``min_keep``.

Besides the registry, the functions behind it work on their own: :func:`mixup_features`,
:func:`uniform_noise_features`, :func:`corrupted_id_features`, :func:`finish_prototype`, ...
"""

from __future__ import annotations

import numbers
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from grood.device import resolve_device
from grood.method.prototypes import mean_of_class_prototypes, ood_prototype, proximity_filter
from grood.progress import track
from grood.resources import loader_workers

def stratified_sample(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``count`` rows drawn evenly across the classes in ``labels``.

    Image lists are usually sorted by class, so "the first ``count``" would be one class only.
    ``count=None`` or ``count >= len(labels)`` returns all indices in order.

    Args:
        labels: ``[N]`` class index per row.
    Returns:
        ``[min(count, N)]`` int64 indices, sorted.
    """
    n = labels.shape[0]
    if count is None or count >= n:
        return torch.arange(n)
    if count <= 0:
        raise ValueError(f"sample size must be positive; got {count}")
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [(labels == c).nonzero().flatten() for c in classes]
    per_class = [rows[torch.randperm(rows.numel(), generator=generator)] for rows in per_class]
    base, extra = divmod(count, len(classes))
    extra_classes = set(torch.randperm(len(classes), generator=generator)[:extra].tolist())
    chosen: list[torch.Tensor] = []
    leftovers: list[torch.Tensor] = []
    for position, rows in enumerate(per_class):
        want = base + (1 if position in extra_classes else 0)
        chosen.append(rows[:want])
        leftovers.append(rows[want:])
    picked = torch.cat(chosen)
    if picked.numel() < count:  # some classes had fewer rows than their share: top up at random
        pool = torch.cat(leftovers)
        pool = pool[torch.randperm(pool.numel(), generator=generator)]
        picked = torch.cat([picked, pool[: count - picked.numel()]])
    return picked.sort().values


def second_predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """``[N, C] -> [N]`` the class with the 2nd-highest logit (``c2`` of eq. 9)."""
    if logits.shape[1] < 2:
        raise ValueError("the mixup prototype needs at least 2 classes")
    return logits.topk(2, dim=1).indices[:, 1]


@torch.no_grad()
def mixup_features(
    network: torch.nn.Module,
    train_dataset: Dataset,
    train_logits: torch.Tensor,
    early_prototypes: torch.Tensor,
    *,
    mixup_lambda: float = 0.5,
    num_images: int | None = None,
    train_labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Synthetic OOD features of eq. 9: ``f_mid(λ f_early(x) + (1-λ) p_early[c2(x)])``.

    Args:
        train_dataset: the ID training images, in the order of ``train_logits``.
        train_logits: ``[N, C]`` the network's logits on ``train_dataset`` (from the cache).
        early_prototypes: ``[C, *S]`` early-layer class prototypes (eq. 7).
        num_images: how many training images to mix (default all); a smaller number is a seeded
            sample drawn evenly across classes (by ``train_labels``, else by predicted class).
    Returns:
        ``[M, D]`` penultimate features of the synthetic samples.
    """
    if not 0.0 <= mixup_lambda <= 1.0:
        raise ValueError(f"mixup_lambda must lie in [0, 1]; got {mixup_lambda}")
    if len(train_dataset) != train_logits.shape[0]:
        raise ValueError(
            f"train_dataset has {len(train_dataset)} images but train_logits has {train_logits.shape[0]} rows"
        )
    device = resolve_device(device)
    network = network.to(device).eval()
    strata = train_labels if train_labels is not None else train_logits.argmax(1)
    rows = stratified_sample(strata, num_images, seed)
    second = second_predicted_class(train_logits)[rows]
    prototypes = early_prototypes.to(device)
    loader = DataLoader(Subset(train_dataset, rows.tolist()), batch_size=batch_size,
                        num_workers=loader_workers(num_workers))
    outputs, start = [], 0
    for images, _ in track(loader, "mixup prototype", progress):
        images = images.to(device)
        c2 = second[start : start + images.shape[0]].to(device)
        start += images.shape[0]
        h_early = network.early(images)
        mixed = mixup_lambda * h_early + (1.0 - mixup_lambda) * prototypes[c2].to(h_early.dtype)
        outputs.append(network.mid(mixed).float().cpu())
    return torch.cat(outputs)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[N, C] -> [N]`` energy score ``T·logsumexp(logits / T)`` (higher = more ID)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


@torch.no_grad()
def uniform_noise_features(
    network: torch.nn.Module,
    *,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int = 1000,
    keep: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Appendix A.2 "Uniform": uniform-noise images, keep the ``keep`` with the lowest energy score.

    Pixels are drawn uniformly in ``[0, 1]`` per channel, then normalised with ``mean``/``std`` like
    real images. Returns ``[keep, D]`` penultimate features of the kept images.
    """
    if keep > num_images:
        raise ValueError(f"keep={keep} exceeds num_images={num_images}")
    device = resolve_device(device)
    network = network.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    energies, features = [], []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        noise = torch.rand((count, *image_shape), generator=generator)
        images = ((noise - mean_t) / std_t).to(device)
        h_pen = network.mid(network.early(images))
        energies.append(energy_score(network.head(h_pen)).float().cpu())
        features.append(h_pen.float().cpu())
    energy = torch.cat(energies)
    lowest = energy.argsort()[:keep]
    return torch.cat(features)[lowest]


def _gaussian_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images + 0.08 * torch.randn(images.shape, generator=generator)


def _gaussian_blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = 1.0
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    channels = images.shape[1]
    horizontal = kernel_1d.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel_1d.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = torch.nn.functional.pad(images, (radius, radius, 0, 0), mode="reflect")
    blurred = torch.nn.functional.conv2d(padded, horizontal, groups=channels)
    padded = torch.nn.functional.pad(blurred, (0, 0, radius, radius), mode="reflect")
    return torch.nn.functional.conv2d(padded, vertical, groups=channels)


def _contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    means = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - means) * 0.3 + means


def _shot_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    rate = 60.0
    return torch.poisson(images.clamp(0, 1) * rate, generator=generator) / rate


def _pixelate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    small = torch.nn.functional.interpolate(images, size=(max(1, height // 4), max(1, width // 4)), mode="area")
    return torch.nn.functional.interpolate(small, size=(height, width), mode="nearest")


#: Corruptions applied to images in ``[0, 1]`` (before normalisation), in the spirit of CIFAR-10-C.
CORRUPTIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "shot_noise": _shot_noise,
    "pixelate": _pixelate,
}


def corrupt_images(
    images: torch.Tensor, corruption: str, mean: Sequence[float], std: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """Corrupt normalised images ``[B, 3, H, W]``: un-normalise, corrupt in ``[0, 1]``, clamp, re-normalise."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; valid: {sorted(CORRUPTIONS)}")
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    raw = images * std_t + mean_t
    corrupted = CORRUPTIONS[corruption](raw, generator).clamp(0.0, 1.0)
    return (corrupted - mean_t) / std_t


@torch.no_grad()
def corrupted_id_features(
    network: torch.nn.Module,
    id_dataset: Dataset,
    id_labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int = 100,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Appendix A.2 "ID-Corrupted Val": ``num_images`` ID validation images, each with one corruption.

    Images are drawn evenly across classes (seeded) and corruptions are assigned round-robin.
    Returns ``[num_images, D]`` penultimate features.
    """
    device = resolve_device(device)
    network = network.to(device).eval()
    rows = stratified_sample(id_labels, num_images, seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(Subset(id_dataset, rows.tolist()), batch_size=batch_size)
    features, position = [], 0
    for images, _ in loader:
        corrupted = []
        for image in images:
            name = corruptions[position % len(corruptions)]
            corrupted.append(corrupt_images(image.unsqueeze(0), name, mean, std, generator))
            position += 1
        batch = torch.cat(corrupted).to(device)
        features.append(network.mid(network.early(batch)).float().cpu())
    return torch.cat(features)


def finish_prototype(
    candidates: torch.Tensor,
    class_prototypes: torch.Tensor,
    *,
    filter_quantile: float | None = None,
    min_keep: int = 1,
) -> torch.Tensor:
    """Eq. 8 on ``candidates [M, D]``, after the section-5.2 proximity filter when ``filter_quantile`` is set.

    Returns the OOD prototype ``[D]``.
    """
    if not torch.isfinite(candidates).all():
        bad = (~torch.isfinite(candidates)).any(dim=1).sum().item()
        raise ValueError(f"{bad} OOD candidate feature row(s) contain NaN or inf")
    if filter_quantile is not None:
        candidates = proximity_filter(candidates, class_prototypes, filter_quantile, min_keep)
    return ood_prototype(candidates)


def mean_prototype(class_prototypes: torch.Tensor) -> torch.Tensor:
    """The "Mean of Prototypes" strategy: ``[C, D] -> [D]``."""
    return mean_of_class_prototypes(class_prototypes)


def oracle_split(count: int, num_oracle: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``count`` OOD test rows into (oracle rows ``[min(num_oracle, count)]``, scored rows)."""
    if count <= num_oracle:
        raise ValueError(
            f"an oracle prototype needs more than {num_oracle} OOD test images to leave some for scoring; got {count}"
        )
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return permutation[:num_oracle].sort().values, permutation[num_oracle:].sort().values



# --------------------------------------------------------------------------- what the strategies read
@dataclass
class TrainingPass:
    """The ID training set as the mixup (eq. 9) reads it.

    Attributes:
        images: the training images, items ``(image [3, H, W], label)``, in the row order of ``logits``.
        logits: ``[N, C]`` the network's logits on them.
        labels: ``[N]`` their class labels.
        early_prototypes: ``[C, *S]`` early-layer class prototypes (eq. 7 at ``l = early``).
    """

    images: Dataset
    logits: torch.Tensor
    labels: torch.Tensor
    early_prototypes: torch.Tensor


@torch.no_grad()
def network_features(
    network: torch.nn.Module,
    images: Dataset,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    description: str = "OOD prototype images",
) -> torch.Tensor:
    """``[M, D]`` float32 penultimate features ``mid(early(x))`` of the ``(image, label)`` items of ``images``."""
    if len(images) == 0:
        raise ValueError(f"{description}: no image to run the network on")
    device = resolve_device(device)
    network = network.to(device).eval()
    loader = DataLoader(images, batch_size=batch_size, num_workers=loader_workers(num_workers))
    outputs = [network.mid(network.early(batch.to(device))).float().cpu()
               for batch, _ in track(loader, description, progress)]
    return torch.cat(outputs)


class FeatureRows:
    """``count`` samples whose ``[M, D]`` penultimate features are read by row index: cached features
    (:meth:`of_features`), or images the network runs over only for the rows asked (:meth:`of_images`)."""

    def __init__(self, count: int, take: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.count = int(count)
        self._take = take

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """``[len(rows), D]``: the features of ``rows`` (int64 indices in ``0..count-1``), in that order."""
        return self._take(rows)

    @classmethod
    def of_features(cls, features: torch.Tensor) -> "FeatureRows":
        """Rows of a ``[N, D]`` feature tensor."""
        return cls(features.shape[0], lambda rows: features[rows])

    @classmethod
    def of_images(cls, network: torch.nn.Module, images: Dataset, **run: Any) -> "FeatureRows":
        """Rows of an ``(image, label)`` dataset; ``run``: the keyword arguments of :func:`network_features`."""
        return cls(len(images), lambda rows: network_features(network, Subset(images, rows.tolist()), **run))


#: The inputs of :class:`PrototypeInputs` that strategies may need, and what each is.
_INPUT_DESCRIPTIONS = {
    "network": "the network (early / mid / head)",
    "training": "the ID training pass (images, logits, labels, early-layer class prototypes)",
    "image_shape": "the image shape (3, H, W)",
    "normalization": "the images' normalisation (mean, std)",
    "id_validation": "ID validation images and their labels",
    "corrupted_id": "real corrupted ID images (CIFAR-10-C, ...) and their labels",
    "val_ood": "OOD validation samples",
    "ood_test": "the OOD test sets",
}


@dataclass
class PrototypeInputs:
    """What a caller can give the strategies. Values that cost a pass over data are zero-argument
    callables, called only by the strategies that need them; a missing input is None.

    Attributes:
        class_prototypes: ``[C, D]`` eq. 7 class prototypes (every strategy: the proximity filter, "mean").
        network: the :class:`~grood.backbones.base.SplitNetwork` ("mixup", "uniform", "corrupted").
        training: ``() -> TrainingPass`` ("mixup").
        image_shape: ``() -> (3, H, W)`` ("uniform").
        normalization: ``() -> (mean, std)``, per channel ("uniform", "corrupted").
        id_validation: ``() -> (images, labels [N])``, ``(image, label)`` items ("corrupted", source=synthetic).
        corrupted_id: ``() -> (images, labels [N])``, real corrupted ID images ("corrupted", source=real).
        val_ood: ``() -> FeatureRows`` of the OOD validation samples ("val_ood").
        ood_test: ``name -> FeatureRows`` of OOD test set ``name``; ``ood_names`` lists them (oracles).
        seed, batch_size, num_workers, device, progress: how the strategies run (seeded samples, passes).
        advice: per input name, what to do when it is missing (added to the error).
    """

    class_prototypes: torch.Tensor
    network: torch.nn.Module | None = None
    training: Callable[[], TrainingPass] | None = None
    image_shape: Callable[[], Sequence[int]] | None = None
    normalization: Callable[[], tuple[Sequence[float], Sequence[float]]] | None = None
    id_validation: Callable[[], tuple[Dataset, torch.Tensor]] | None = None
    corrupted_id: Callable[[], tuple[Dataset, torch.Tensor]] | None = None
    val_ood: Callable[[], FeatureRows] | None = None
    ood_test: Callable[[str], FeatureRows] | None = None
    ood_names: Sequence[str] = ()
    seed: int = 0
    batch_size: int = 128
    num_workers: int = 0
    device: str | torch.device | None = None
    progress: bool = False
    advice: Mapping[str, str] = field(default_factory=dict)

    def require(self, name: str, strategy: str) -> Any:
        """The input ``name``, or a ValueError saying that ``strategy`` needs it."""
        value = getattr(self, name)
        if value is None:
            hint = self.advice.get(name, "")
            raise ValueError(f"prototype strategy {strategy!r} needs {_INPUT_DESCRIPTIONS[name]}, which this caller "
                             f"does not give{'; ' + hint if hint else ''}")
        return value


# --------------------------------------------------------------------------- the strategies
def _mixup(inputs: PrototypeInputs, target: str | None, *, mixup_lambda: float, num_images: int | None
           ) -> torch.Tensor:
    train = inputs.require("training", "mixup")()
    return mixup_features(
        inputs.require("network", "mixup"), train.images, train.logits, train.early_prototypes,
        mixup_lambda=float(mixup_lambda), num_images=num_images, train_labels=train.labels, seed=inputs.seed,
        batch_size=inputs.batch_size, num_workers=inputs.num_workers, device=inputs.device, progress=inputs.progress,
    )


def _uniform(inputs: PrototypeInputs, target: str | None, *, num_images: int, keep: int) -> torch.Tensor:
    mean, std = inputs.require("normalization", "uniform")()
    return uniform_noise_features(
        inputs.require("network", "uniform"), image_shape=tuple(inputs.require("image_shape", "uniform")()),
        mean=mean, std=std, num_images=int(num_images), keep=int(keep), seed=inputs.seed,
        batch_size=inputs.batch_size, device=inputs.device,
    )


def _val_ood(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    samples = inputs.require("val_ood", "val_ood")()
    if samples.count == 0:
        raise ValueError("prototype strategy 'val_ood': the OOD validation set holds no sample")
    rows = torch.randperm(samples.count, generator=torch.Generator().manual_seed(inputs.seed))
    return samples.take(rows[: int(num_images)].sort().values)


def _corrupted(inputs: PrototypeInputs, target: str | None, *, num_images: int, corruptions: Sequence[str],
               source: str) -> torch.Tensor:
    if source == "real":
        images, labels = inputs.require("corrupted_id", "corrupted")()
        rows = stratified_sample(labels, int(num_images), inputs.seed)
        return network_features(inputs.require("network", "corrupted"), Subset(images, rows.tolist()),
                                batch_size=inputs.batch_size, num_workers=inputs.num_workers, device=inputs.device,
                                progress=inputs.progress, description="corrupted ID images")
    images, labels = inputs.require("id_validation", "corrupted")()
    mean, std = inputs.require("normalization", "corrupted")()
    return corrupted_id_features(
        inputs.require("network", "corrupted"), images, labels, mean=mean, std=std, num_images=int(num_images),
        corruptions=tuple(corruptions), seed=inputs.seed, batch_size=inputs.batch_size, device=inputs.device,
    )


def _mean(inputs: PrototypeInputs, target: str | None) -> torch.Tensor:
    return inputs.class_prototypes  # eq. 8 over the class prototypes: their mean


def _oracle_rows(inputs: PrototypeInputs, strategy: str, name: str, num_images: int) -> torch.Tensor:
    samples = inputs.require("ood_test", strategy)(name)
    return samples.take(oracle_split(samples.count, int(num_images), inputs.seed)[0])


def _local_oracle(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    return _oracle_rows(inputs, "local_oracle", target, num_images)


def _global_oracle(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    others = [name for name in inputs.ood_names if name != target]
    if not others:
        raise ValueError(f"prototype strategy 'global_oracle' needs OOD test sets other than {target!r}; "
                         f"the OOD test sets are {list(inputs.ood_names)}")
    return torch.cat([_oracle_rows(inputs, "global_oracle", name, num_images) for name in others])


@dataclass(frozen=True)
class Strategy:
    """One way to build the OOD prototype: ``candidates(inputs, target, **params) -> [M, D]``.

    Attributes:
        parameters: the dataclass declaring its own parameters (besides the proximity filter's, which all
            take): each field's type and default, the one declaration the config schema is built from.
        uses_seed: its candidates depend on ``PrototypeInputs.seed``.
        per_ood_set: one prototype per OOD test set (the oracles; :func:`build_ood_prototype` needs ``target``).
        uses_network: its candidates need a pass of the network over images (a caller may cache the result).
    """

    name: str
    reference: str
    candidates: Callable[..., torch.Tensor]
    parameters: type  # a dataclass: its fields are the strategy's parameters, with their types and defaults
    uses_seed: bool
    per_ood_set: bool = False
    uses_network: bool = False

    @property
    def params(self) -> dict[str, Any]:
        """Its own parameters and their defaults (from :attr:`parameters`)."""
        return _defaults(self.parameters)


#: Where the "corrupted" strategy's images come from (its ``source``).
CORRUPTED_SOURCES = ("real", "synthetic")

def _defaults(parameters: type) -> dict[str, Any]:
    """A parameter dataclass's field -> default (list defaults as tuples)."""
    out = {}
    for item in fields(parameters):
        value = item.default_factory() if item.default is MISSING else item.default
        out[item.name] = tuple(value) if isinstance(value, list) else value
    return out


# Each strategy's parameters: name, type and default, declared once (the config schema, grood.config, is
# generated from these dataclasses; Optional: None = the value the strategy's docstring names).
@dataclass
class FilterParams:
    """The proximity filter (section 5.2), a parameter of every strategy."""

    filter_quantile: Optional[float] = None  # None = off
    min_keep: int = 1


@dataclass
class MixupParams:
    mixup_lambda: float = 0.5          # eq. 9's λ
    num_images: Optional[int] = None   # None = every training image


@dataclass
class UniformParams:
    num_images: int = 1000
    keep: int = 100


@dataclass
class NumImagesParams:
    num_images: int = 100


@dataclass
class CorruptedParams:
    num_images: int = 100
    corruptions: List[str] = field(default_factory=lambda: list(CORRUPTIONS))
    source: str = "real"               # real | synthetic (CORRUPTED_SOURCES)


@dataclass
class NoParams:
    pass


#: The proximity filter's parameters and their defaults (None = off).
FILTER_PARAMS: dict[str, Any] = _defaults(FilterParams)

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("mixup", "eq. 9, section 5.2", _mixup, MixupParams, uses_seed=True, uses_network=True),
    Strategy("uniform", "appendix A.2 'Uniform'", _uniform, UniformParams, uses_seed=True, uses_network=True),
    Strategy("val_ood", "appendix A.2 'OpenOOD Val'", _val_ood, NumImagesParams, uses_seed=True),
    Strategy("corrupted", "appendix A.2 'ID-Corrupted Val'", _corrupted, CorruptedParams, uses_seed=True,
             uses_network=True),
    Strategy("mean", "appendix A.2 'Mean of Prototypes'", _mean, NoParams, uses_seed=False),
    Strategy("local_oracle", "Table 1 'Local Oracle'", _local_oracle, NumImagesParams, uses_seed=True,
             per_ood_set=True),
    Strategy("global_oracle", "Table 1 'Global Oracle'", _global_oracle, NumImagesParams, uses_seed=True,
             per_ood_set=True),
)}
#: Every strategy parameter (of any strategy, and the filter's).
STRATEGY_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(
    [name for strategy in STRATEGIES.values() for name in strategy.params] + list(FILTER_PARAMS)))


def get_strategy(name: str) -> Strategy:
    """The strategy ``name``; ValueError listing the valid names."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown OOD-prototype strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def strategy_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters strategy ``name`` reads (its own and the filter's), from ``params`` where given and
    not None, else their defaults; checked.

    ``params`` may also hold parameters of other strategies (one config or postprocessor holds them
    all; ``name`` does not read them). A name that is no strategy's parameter raises ValueError.
    """
    strategy = get_strategy(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(STRATEGY_PARAMS))
    if unknown:
        raise ValueError(f"unknown OOD-prototype parameter(s) {unknown}; valid: {', '.join(STRATEGY_PARAMS)}")
    resolved = {key: default if params.get(key) is None else params[key]
                for key, default in {**strategy.params, **FILTER_PARAMS}.items()}

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"prototype strategy {name!r}: {key}={resolved[key]!r}; expected {expected}")

    if "mixup_lambda" in resolved:
        lam = resolved["mixup_lambda"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 < float(lam) < 1.0:
            raise bad("mixup_lambda", "a number in (0, 1) (eq. 9's λ; 0 or 1 mixes nothing)")
    if resolved.get("num_images") is not None and not (_is_int(resolved["num_images"]) and resolved["num_images"] >= 1):
        raise bad("num_images", "an integer >= 1" + (" or None (every training image)" if name == "mixup" else ""))
    if "keep" in resolved and not (_is_int(resolved["keep"]) and 1 <= resolved["keep"] <= resolved["num_images"]):
        raise bad("keep", f"an integer in 1..num_images ({resolved['num_images']})")
    if "corruptions" in resolved:
        corruptions = resolved["corruptions"]
        if isinstance(corruptions, str) or not corruptions or any(c not in CORRUPTIONS for c in corruptions):
            raise bad("corruptions", f"a non-empty list of {', '.join(CORRUPTIONS)}")
    if "source" in resolved and resolved["source"] not in CORRUPTED_SOURCES:
        raise bad("source", f"one of {', '.join(CORRUPTED_SOURCES)} (real: the benchmark's corrupted images, e.g. "
                            "CIFAR-10-C; synthetic: ID validation images corrupted in code)")
    quantile = resolved["filter_quantile"]
    if quantile is not None and (isinstance(quantile, bool) or not isinstance(quantile, (int, float))
                                 or not 0.0 <= float(quantile) <= 1.0):
        raise bad("filter_quantile", "None (no proximity filter) or a number in [0, 1]")
    if not (_is_int(resolved["min_keep"]) and resolved["min_keep"] >= 0):
        raise bad("min_keep", "an integer >= 0")
    return resolved


def build_ood_prototype(
    strategy: str, inputs: PrototypeInputs, params: Mapping[str, Any] | None = None, target: str | None = None
) -> torch.Tensor:
    """``[D]`` the OOD prototype ``p_ood`` (eq. 8) of ``strategy``, on ``inputs``.

    Args:
        strategy: a name of :data:`STRATEGIES`.
        inputs: what the caller has; the strategy reads what it needs (an error names what is missing).
        params: strategy parameters (see :func:`strategy_params`); None/missing: the defaults.
        target: the OOD test set the prototype is for (oracles only; None for the others).
    """
    spec = get_strategy(strategy)
    resolved = strategy_params(strategy, params)
    if spec.per_ood_set != (target is not None):
        raise ValueError(f"prototype strategy {strategy!r} " + (
            "builds one prototype per OOD test set: give target=<OOD test set name>" if spec.per_ood_set
            else f"builds one prototype for every OOD set; got target={target!r}"))
    filter_quantile, min_keep = resolved.pop("filter_quantile"), resolved.pop("min_keep")
    candidates = spec.candidates(inputs, target, **resolved)
    return finish_prototype(candidates, inputs.class_prototypes, filter_quantile=filter_quantile,
                            min_keep=int(min_keep))
