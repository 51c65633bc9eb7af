"""The network passes behind GROOD's OOD-prototype strategies, and the one function that hands them over.

:mod:`grood.method.strategies` (tensors only) holds the strategy registry; a strategy that needs the
network (mixup, eq. 9; uniform noise and corrupted ID images, appendix A.2; images of OOD validation
data) calls a source of :class:`~grood.method.strategies.PrototypeInputs`. :func:`prototype_inputs`
builds those sources from what a caller has (the network, its training pass, validation data, ...);
the pipeline (:func:`grood.pipeline.grood_prototype`), the OpenOOD postprocessor
(:class:`grood.openood_compat.GROODPostprocessor`) and the network-level GROOD (:mod:`grood.on_network`)
all build their inputs with it.

Data may be a map-style ``Dataset`` of ``(image, label)`` items (rows are read by index) or, for the
training pass only, any re-iterable of ``(images [B, 3, H, W], labels [B])`` batches (a DataLoader):
:func:`read_batch` also reads OpenOOD's dict batches ``{"data", "label"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision.transforms import Normalize
from torchvision.transforms.v2 import Normalize as NormalizeV2

from grood.data.transforms import ToNormalisedTensor
from grood.device import resolve_device
from grood.method.corruptions import CORRUPTIONS, corrupt_images
from grood.method.strategies import (
    FeatureRows,
    PrototypeInputs,
    lowest_energy_rows,
    second_predicted_class,
    stratified_sample,
)
from grood.progress import track
from grood.resources import loader_workers

__all__ = [
    "ImageItems", "TrainingPass", "corrupted_id_features", "find_normalization", "image_rows", "is_map_style", "mix_early", "mixup_features",
    "network_features", "noise_image_outputs", "prototype_inputs", "read_batch", "uniform_noise_features",
]


# --------------------------------------------------------------------------- batches and datasets
def read_batch(batch: Any, where: str) -> tuple[torch.Tensor, Any]:
    """``(images, labels)`` of a batch (or item): a ``(images, labels)`` tuple or list, or OpenOOD's dict
    ``{"data": images, "label": labels}``; a TypeError saying what was found otherwise."""
    if isinstance(batch, Mapping):
        if "data" in batch and "label" in batch:
            return batch["data"], batch["label"]
        found: Any = sorted(batch)
    elif isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        found = f"a {type(batch).__name__} of {len(batch)} elements"
    else:
        found = type(batch).__name__
    raise TypeError(f"{where}: expected (images [B, 3, H, W], labels [B]) pairs or OpenOOD's dicts with keys 'data' "
                    f"and 'label'; got {found}")


def is_map_style(dataset: Any) -> bool:
    """True for a dataset whose rows are read by index (``__getitem__`` and ``__len__``, not iterable-style)."""
    return (not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__")
            and hasattr(dataset, "__len__"))


class ImageItems(Dataset):
    """A map-style dataset whose items are ``(image, label)`` pairs or OpenOOD's dicts ``{"data", "label"}``, as
    ``(image [3, H, W], label)`` pairs: the item format the network passes here read."""

    def __init__(self, dataset: Any, name: str) -> None:
        if not is_map_style(dataset):
            raise TypeError(
                f"{name}: GROOD reads these images by index, so it needs a map-style dataset (with __getitem__ and "
                f"__len__), or a DataLoader over one; got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = read_batch(self.dataset[index], f"{self.name} item {index}")
        return data, int(label)

    def labels(self) -> torch.Tensor:
        """``[N]`` int64 labels, read item by item (which loads each image once)."""
        return torch.tensor([self[index][1] for index in range(len(self))], dtype=torch.long)


@dataclass
class TrainingPass:
    """The ID training set as the mixup (eq. 9) reads it.

    Attributes:
        images: a map-style dataset of ``(image [3, H, W], label)`` items in the row order of ``logits``,
            or a re-iterable of ``(images, labels)`` / ``{"data", "label"}`` batches (a DataLoader, any
            order: then ``c2`` comes from each batch's own logits, and a sample, ``num_images``, needs the
            batches in the order of ``labels``).
        logits: ``[N, C]`` the network's logits on them.
        labels: ``[N]`` their class labels.
        early_prototypes: ``[C, *S]`` early-layer class prototypes (eq. 7 at ``l = early``).
    """

    images: Dataset | Iterable
    logits: torch.Tensor
    labels: torch.Tensor
    early_prototypes: torch.Tensor


def _normalize_of(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if isinstance(transform, (Normalize, NormalizeV2, ToNormalisedTensor)):
        return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
    return None


def find_normalization(obj: Any, depth: int = 5) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the first torchvision ``Normalize`` (or grood's :class:`ToNormalisedTensor`) found in
    a dataset's transforms, or None.

    Follows ``dataset``, ``preprocessor``, ``transform``, ``transform_image`` and ``transforms`` (OpenOOD's
    ``ImglistDataset.preprocessor.transform.transforms[-1]``), and sequences, at most ``depth`` levels deep.
    """
    found = _normalize_of(obj)
    if found is not None or depth == 0 or obj is None:
        return found
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        names = ("dataset", "preprocessor", "transform_image", "transform", "transforms")
        children = [getattr(obj, name, None) for name in names]
    for child in children:
        if child is not None and child is not obj:
            found = find_normalization(child, depth - 1)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- eq. 9: mixup
def mix_early(h_early: torch.Tensor, early_prototypes: torch.Tensor, second: torch.Tensor, mixup_lambda: float
              ) -> torch.Tensor:
    """Eq. 9's mixed early features ``λ f_early(x) + (1-λ) p_early[c2]``: ``[B, *S]``.

    Args:
        h_early: ``[B, *S]`` early features of the images; early_prototypes: ``[C, *S]``;
        second: ``[B]`` each image's 2nd-highest predicted class ``c2``.
    """
    return mixup_lambda * h_early + (1.0 - mixup_lambda) * early_prototypes[second].to(h_early.dtype)


@torch.no_grad()
def mixup_features(
    network: torch.nn.Module,
    train_dataset: Dataset | Iterable,
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
        train_dataset: the ID training images, in the order of ``train_logits``: a map-style dataset, or
            a re-iterable of batches (see :class:`TrainingPass`).
        train_logits: ``[N, C]`` the network's logits on ``train_dataset`` (from the cache).
        early_prototypes: ``[C, *S]`` early-layer class prototypes (eq. 7).
        num_images: how many training images to mix (default all); a smaller number is a seeded
            sample drawn evenly across classes (by ``train_labels``, else by predicted class).
    Returns:
        ``[M, D]`` penultimate features of the synthetic samples.
    """
    if not 0.0 <= mixup_lambda <= 1.0:
        raise ValueError(f"mixup_lambda must lie in [0, 1]; got {mixup_lambda}")
    device = resolve_device(device)
    network = network.to(device).eval()
    strata = train_labels if train_labels is not None else train_logits.argmax(1)
    rows = stratified_sample(strata, num_images, seed)
    prototypes = early_prototypes.to(device)
    if not is_map_style(train_dataset):
        return _mixup_over_batches(network, train_dataset, prototypes, mixup_lambda, strata,
                                   None if num_images is None else rows, device, progress)
    if len(train_dataset) != train_logits.shape[0]:
        raise ValueError(
            f"train_dataset has {len(train_dataset)} images but train_logits has {train_logits.shape[0]} rows"
        )
    second = second_predicted_class(train_logits)[rows]
    loader = DataLoader(Subset(train_dataset, rows.tolist()), batch_size=batch_size,
                        num_workers=loader_workers(num_workers))
    outputs, start = [], 0
    for images, _ in track(loader, "mixup prototype", progress):
        images = images.to(device)
        c2 = second[start : start + images.shape[0]].to(device)
        start += images.shape[0]
        outputs.append(network.mid(mix_early(network.early(images), prototypes, c2, mixup_lambda)).float().cpu())
    return torch.cat(outputs)


def _mixup_over_batches(network: torch.nn.Module, batches: Iterable, prototypes: torch.Tensor, mixup_lambda: float,
                        labels: torch.Tensor, rows: torch.Tensor | None, device: torch.device, progress: bool
                        ) -> torch.Tensor:
    """Eq. 9 over a second pass of the training batches: ``c2`` from each batch's own logits; ``rows``
    (a sample, positions in the first pass) needs the batches in the first pass's order, checked by label."""
    if isinstance(batches, Iterator):
        raise TypeError("the mixup prototype (eq. 9) iterates the training data a second time: give a DataLoader, "
                        "a list of batches or a Dataset, not a one-shot iterator")
    chosen = None if rows is None else torch.zeros(labels.shape[0], dtype=torch.bool).index_fill_(0, rows, True)
    outputs, start = [], 0
    for batch in track(batches, "mixup prototype", progress):
        images, batch_labels = read_batch(batch, "mixup prototype (2nd pass over the training data)")
        batch_labels = torch.as_tensor(batch_labels).long().cpu()
        stop = start + batch_labels.shape[0]
        if stop > labels.shape[0] or (chosen is not None and not torch.equal(batch_labels, labels[start:stop])):
            raise ValueError("the training data changed between the two passes (count or label order; a shuffled "
                             "DataLoader?): a mixup sample (num_images) needs the same order in both passes, "
                             "use shuffle=False")
        images = images.to(device)
        if chosen is not None:
            images = images[chosen[start:stop].to(device)]
        start = stop
        if images.shape[0] == 0:
            continue
        h_early = network.early(images)
        second = second_predicted_class(network.head(network.mid(h_early)))
        outputs.append(network.mid(mix_early(h_early, prototypes, second, mixup_lambda)).float().cpu())
    if start != labels.shape[0]:
        raise ValueError(f"the training data yielded {start} images on the mixup pass but {labels.shape[0]} on the "
                         "first pass; give data that yields the same images each time it is iterated")
    return torch.cat(outputs)


# --------------------------------------------------------------------------- appendix A.2: uniform noise
@torch.no_grad()
def noise_image_outputs(
    network: torch.nn.Module,
    *,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    num_images: int = 1000,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix A.2 "Uniform": ``num_images`` uniform-noise images through the network.

    Pixels are drawn uniformly in ``[0, 1]`` per channel, then normalised with ``mean``/``std`` like
    real images. Returns ``(features [num_images, D], logits [num_images, C])``.
    """
    device = resolve_device(device)
    network = network.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    logits, features = [], []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        noise = torch.rand((count, *image_shape), generator=generator)
        images = ((noise - mean_t) / std_t).to(device)
        h_pen = network.mid(network.early(images))
        logits.append(network.head(h_pen).float().cpu())
        features.append(h_pen.float().cpu())
    return torch.cat(features), torch.cat(logits)


def uniform_noise_features(network: torch.nn.Module, *, keep: int = 100, **noise: Any) -> torch.Tensor:
    """Appendix A.2 "Uniform": the ``[keep, D]`` features of the ``keep`` noise images with the lowest energy;
    ``noise``: the keyword arguments of :func:`noise_image_outputs`."""
    if keep > noise.get("num_images", 1000):
        raise ValueError(f"keep={keep} exceeds num_images={noise.get('num_images', 1000)}")
    return lowest_energy_rows(*noise_image_outputs(network, **noise), keep)


# --------------------------------------------------------------------------- appendix A.2: corrupted ID
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


# --------------------------------------------------------------------------- features of images
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


def image_rows(network: torch.nn.Module, images: Dataset, **run: Any) -> FeatureRows:
    """Rows of an ``(image, label)`` dataset: the network runs only over the rows asked for; ``run``: the
    keyword arguments of :func:`network_features`."""
    return FeatureRows(len(images), lambda rows: network_features(network, Subset(images, rows.tolist()), **run))


# --------------------------------------------------------------------------- the one builder
#: What a caller may give :func:`prototype_inputs`, and what each is (named in "needs ..." errors).
_GIVEN = {
    "network": "the network (early / mid / head)",
    "training": "the ID training pass (images, logits, labels, early-layer class prototypes)",
    "image_shape": "the image shape (3, H, W)",
    "normalization": "the images' normalisation (mean, std)",
    "id_validation": "ID validation images and their labels",
    "corrupted_id": "real corrupted ID images (CIFAR-10-C, ...) and their labels",
    "val_ood": "OOD validation samples",
    "ood_test": "the OOD test sets",
}


def prototype_inputs(
    class_prototypes: torch.Tensor,
    *,
    network: torch.nn.Module | None = None,
    training: Callable[[], TrainingPass] | None = None,
    image_shape: Callable[[], Sequence[int]] | None = None,
    normalization: Callable[[], tuple[Sequence[float], Sequence[float]]] | None = None,
    id_validation: Callable[[], tuple[Dataset, torch.Tensor]] | None = None,
    corrupted_id: Callable[[], tuple[Dataset, torch.Tensor]] | None = None,
    val_ood: Callable[[], torch.Tensor | Dataset] | None = None,
    ood_test: Callable[[str], torch.Tensor] | None = None,
    ood_names: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    advice: Mapping[str, str] | None = None,
) -> PrototypeInputs:
    """The :class:`~grood.method.strategies.PrototypeInputs` of what a caller has; each pass over data runs
    only when a strategy asks for it. A strategy that needs something missing raises a ValueError naming
    it (plus ``advice[name]``, what this caller's user should do).

    Args:
        class_prototypes: ``[C, D]`` eq. 7 class prototypes.
        network: the :class:`~grood.backbones.base.SplitNetwork` ("mixup", "uniform", "corrupted", and
            "val_ood" on images).
        training: ``() -> TrainingPass`` ("mixup").
        image_shape: ``() -> (3, H, W)`` ("uniform").
        normalization: ``() -> (mean, std)``, per channel ("uniform", "corrupted" synthetic).
        id_validation: ``() -> (images, labels [N])``, ``(image, label)`` items ("corrupted", source=synthetic).
        corrupted_id: ``() -> (images, labels [N])``, real corrupted ID images ("corrupted", source=real).
        val_ood: ``() -> [M, D]`` features of OOD validation samples, or a dataset of their ``(image, label)``
            items that the network runs over, only the sampled rows ("val_ood").
        ood_test: ``name -> [M, D]`` features of OOD test set ``name``; ``ood_names`` lists them (oracles).
        seed: seeds the strategies' samples; batch_size, num_workers, device, progress: how passes run.
    """
    hints = dict(advice or {})
    given = {"network": network, "training": training, "image_shape": image_shape, "normalization": normalization,
             "id_validation": id_validation, "corrupted_id": corrupted_id, "val_ood": val_ood, "ood_test": ood_test}
    run = dict(batch_size=batch_size, num_workers=num_workers, device=device, progress=progress)

    def need(name: str, strategy: str) -> Any:
        if given[name] is None:
            hint = hints.get(name, "")
            raise ValueError(f"prototype strategy {strategy!r} needs {_GIVEN[name]}, which this caller does not give"
                             f"{'; ' + hint if hint else ''}")
        return given[name]

    def mixup(mixup_lambda: float, num_images: int | None, seed: int) -> torch.Tensor:
        train = need("training", "mixup")()
        return mixup_features(need("network", "mixup"), train.images, train.logits, train.early_prototypes,
                              mixup_lambda=mixup_lambda, num_images=num_images, train_labels=train.labels, seed=seed,
                              **run)

    def noise(num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = need("normalization", "uniform")()
        return noise_image_outputs(need("network", "uniform"), image_shape=tuple(need("image_shape", "uniform")()),
                                   mean=mean, std=std, num_images=num_images, seed=seed, batch_size=batch_size,
                                   device=device)

    def corrupted(source: str, num_images: int, corruptions: Sequence[str], seed: int) -> torch.Tensor:
        if source == "real":
            images, labels = need("corrupted_id", "corrupted")()
            rows = stratified_sample(labels, num_images, seed)
            return network_features(need("network", "corrupted"), Subset(images, rows.tolist()),
                                    description="corrupted ID images", **run)
        images, labels = need("id_validation", "corrupted")()
        mean, std = need("normalization", "corrupted")()
        return corrupted_id_features(need("network", "corrupted"), images, labels, mean=mean, std=std,
                                     num_images=num_images, corruptions=tuple(corruptions), seed=seed,
                                     batch_size=batch_size, device=device)

    def ood_validation() -> FeatureRows:
        samples = need("val_ood", "val_ood")()
        if isinstance(samples, torch.Tensor):
            return FeatureRows.of_features(samples)
        return image_rows(need("network", "val_ood"), samples, description="val OOD prototype images", **run)

    def ood_test_rows(name: str) -> FeatureRows:
        return FeatureRows.of_features(ood_test(name))

    return PrototypeInputs(
        class_prototypes=class_prototypes, mixup=mixup, noise=noise, corrupted=corrupted, val_ood=ood_validation,
        ood_test=None if ood_test is None else ood_test_rows, ood_names=tuple(ood_names), seed=int(seed),
        advice={"ood_test": hints["ood_test"]} if "ood_test" in hints else {},
    )
