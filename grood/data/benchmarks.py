"""Benchmark registry: which image lists make up an OOD benchmark, in OpenOOD v1.5's data-root layout.

A data root holds::

    <data_root>/benchmark_imglist/<id>/*.txt   image lists (``relative/path label``)
    <data_root>/images_classic/                CIFAR-scale images (the lists' paths are relative to it)
    <data_root>/images_largescale/             ImageNet-scale images

A :class:`Benchmark` names the ID lists (train / val / test), the near- and far-OOD test lists (ordered:
the order of OpenOOD's tables), the validation OOD lists, and the test transform. The four OpenOOD v1.5
benchmarks are transcribed from ``DATA_INFO`` in OpenOOD's ``openood/evaluation_api/datasets.py``; every
benchmark is a plain dict in :data:`BENCHMARK_DEFINITIONS`, built by :func:`benchmark_from_dict` (the same
function that reads user-defined benchmarks from a config).

Split names used by :meth:`Benchmark.list_for`: ``"train"``, ``"val"``, ``"test"`` (ID), an OOD name of
``near``/``far`` (e.g. ``"tin"``), or ``"val_ood:<name>"`` (e.g. ``"val_ood:tin"``). Optional splits, read
only by the runs that ask for them (:meth:`Benchmark.optional_splits`): ``"csid:<name>"``, the
covariate-shifted ID test sets of OpenOOD's full-spectrum evaluation (``DATA_INFO[<id>]["csid"]``, e.g.
``"csid:cifar10c"``), and ``"corrupted_val"``, the real corrupted ID images of the "ID-Corrupted Val" OOD
prototype (Table 6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

from grood.data.imagelist import ImageListDataset
from grood.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resolve_spec

ID_SPLITS = ("train", "val", "test")
VAL_OOD_PREFIX = "val_ood:"
CSID_PREFIX = "csid:"
#: The split of :attr:`Benchmark.corrupted_val` (real corrupted ID images; ID labels).
CORRUPTED_SPLIT = "corrupted_val"
#: Names an OOD or csid list may not take.
RESERVED_NAMES = (*ID_SPLITS, CORRUPTED_SPLIT)


class DataLayoutError(FileNotFoundError):
    """A data root that lacks files a benchmark needs; the message lists them and how to get them."""


def _check_relative(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"benchmark key {key!r} must be a non-empty relative path string; got {value!r}")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or os.path.isabs(value) or ".." in path.parts:
        raise ValueError(f"benchmark key {key!r} must be relative to the data root, without '..'; got {value!r}")
    return value


def _check_lists(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"benchmark key {key!r} must map OOD names to list paths; got {type(value).__name__}")
    out: dict[str, str] = {}
    for name, path in value.items():
        if not isinstance(name, str) or not name or ":" in name or name in RESERVED_NAMES:
            raise ValueError(
                f"benchmark key {key!r}: name {name!r} must be a non-empty string without ':' and not one of "
                f"{list(RESERVED_NAMES)}"
            )
        out[name] = _check_relative(f"{key}.{name}", path)
    return out


@dataclass
class Benchmark:
    """One OOD benchmark: lists (paths relative to the data root) and the test transform.

    Attributes:
        name: registry name.
        num_classes: ``C``; ID labels lie in ``0..C-1``.
        images_dir: folder under the data root the lists' image paths are relative to.
        train, test: ID list paths; ``val``: ID validation list or None.
        near, far: OOD name -> test list path, in table order.
        val_ood: OOD name -> validation OOD list path (e.g. ``tin -> .../val_tin.txt``).
        csid: covariate-shifted ID set name -> test list path (OpenOOD's ``DATA_INFO[<id>]["csid"]``, in its
            order; ``{}`` = none). Their samples count as ID in the full-spectrum evaluation (``fsood=true``);
            split ``"csid:<name>"``.
        corrupted_val: list of real corrupted ID images (CIFAR-10-C, ...) the "ID-Corrupted Val" OOD
            prototype samples (``prototype=corrupted prototype.source=real``), split ``"corrupted_val"``;
            None = none.
        transform: the complete test-transform spec (see :func:`grood.data.transforms.resolve_spec`).
        split_transforms: split name -> spec keys that differ for that split (OpenOOD reads ImageNet-C's
            224-pixel images without resizing: ``{"size": 224, "crop_size": 224}``).
        images_dirs: split name -> images folder, where a list's images live elsewhere (OpenOOD's ImageNet
            ``textures`` list is relative to ``images_classic``).
        downloadable: whether ``grood download data --benchmark <name>`` can fetch it.
    """

    name: str
    num_classes: int
    images_dir: str
    train: str
    test: str
    near: dict[str, str]
    far: dict[str, str]
    transform: dict[str, Any]
    val: str | None = None
    val_ood: dict[str, str] = field(default_factory=dict)
    csid: dict[str, str] = field(default_factory=dict)
    corrupted_val: str | None = None
    split_transforms: dict[str, dict[str, Any]] = field(default_factory=dict)
    images_dirs: dict[str, str] = field(default_factory=dict)
    downloadable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"benchmark key 'name' must be a non-empty string; got {self.name!r}")
        where = f"benchmark {self.name!r}"
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"{where}: key 'num_classes' must be an int >= 2; got {self.num_classes!r}")
        self.images_dir = _check_relative("images_dir", self.images_dir)
        self.train = _check_relative("train", self.train)
        self.test = _check_relative("test", self.test)
        if self.val is not None:
            self.val = _check_relative("val", self.val)
        self.near = _check_lists("near", self.near)
        self.far = _check_lists("far", self.far)
        self.val_ood = _check_lists("val_ood", self.val_ood)
        self.csid = _check_lists("csid", self.csid)
        if self.corrupted_val is not None:
            self.corrupted_val = _check_relative("corrupted_val", self.corrupted_val)
        if not self.near and not self.far:
            raise ValueError(f"{where}: keys 'near' and 'far' are both empty; give at least one OOD test list")
        both = sorted(set(self.near) & set(self.far))
        if both:
            raise ValueError(f"{where}: OOD name(s) {both} appear in both 'near' and 'far'; use each name once")
        if not isinstance(self.images_dirs, Mapping):
            raise ValueError(f"{where}: key 'images_dirs' must map split names to folders")
        self.images_dirs = {str(k): _check_relative(f"images_dirs.{k}", v) for k, v in self.images_dirs.items()}
        every = self.splits() + self.optional_splits()
        unknown = sorted(set(self.images_dirs) - set(every))
        if unknown:
            raise ValueError(f"{where}: key 'images_dirs' names unknown split(s) {unknown}; valid: {every}")
        try:
            self.transform = resolve_spec(self.transform)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: key 'transform': {error}") from None
        if not isinstance(self.split_transforms, Mapping):
            raise ValueError(f"{where}: key 'split_transforms' must map split names to transform keys")
        self.split_transforms = {str(k): dict(v) for k, v in self.split_transforms.items()}
        unknown = sorted(set(self.split_transforms) - set(every))
        if unknown:
            raise ValueError(f"{where}: key 'split_transforms' names unknown split(s) {unknown}; valid: {every}")
        for split in self.split_transforms:
            try:
                self.transform_for(split)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: key 'split_transforms.{split}': {error}") from None
        self.downloadable = bool(self.downloadable)

    # ------------------------------------------------------------------ splits
    @property
    def ood_names(self) -> list[str]:
        """Near then far OOD names, in table order."""
        return [*self.near, *self.far]

    def splits(self) -> list[str]:
        """Every split a run reads: ID splits, OOD test sets, ``val_ood:<name>`` (not the optional ones)."""
        ids = ["train"] + (["val"] if self.val is not None else []) + ["test"]
        return ids + self.ood_names + [VAL_OOD_PREFIX + name for name in self.val_ood]

    def csid_splits(self) -> list[str]:
        """``csid:<name>`` for each covariate-shifted ID set, in :attr:`csid` order (``fsood=true`` reads them)."""
        return [CSID_PREFIX + name for name in self.csid]

    def optional_splits(self) -> list[str]:
        """The splits only some runs read: :meth:`csid_splits`, then ``corrupted_val`` when defined."""
        return self.csid_splits() + ([CORRUPTED_SPLIT] if self.corrupted_val is not None else [])

    def has_split(self, split: str) -> bool:
        return split in self.splits() or split in self.optional_splits()

    def transform_for(self, split: str) -> dict[str, Any]:
        """The complete test-transform spec of ``split``: :attr:`transform` with its :attr:`split_transforms`."""
        return resolve_spec({**self.transform, **self.split_transforms.get(split, {})})

    def list_for(self, split: str) -> tuple[str, bool]:
        """``(list path relative to the data root, is_id)`` of ``split``."""
        if split in ("train", "test") or (split == "val" and self.val is not None):
            return getattr(self, split), True
        if split in self.near:
            return self.near[split], False
        if split in self.far:
            return self.far[split], False
        if split.startswith(VAL_OOD_PREFIX) and split[len(VAL_OOD_PREFIX):] in self.val_ood:
            return self.val_ood[split[len(VAL_OOD_PREFIX):]], False
        if split.startswith(CSID_PREFIX) and split[len(CSID_PREFIX):] in self.csid:
            return self.csid[split[len(CSID_PREFIX):]], True
        if split == CORRUPTED_SPLIT and self.corrupted_val is not None:
            return self.corrupted_val, True
        raise KeyError(f"benchmark {self.name!r} has no split {split!r}; valid splits: "
                       f"{self.splits() + self.optional_splits()}")

    def images_dir_for(self, split: str) -> str:
        """Images folder (relative to the data root) that ``split``'s list paths are relative to."""
        self.list_for(split)  # raises on an unknown split
        return self.images_dirs.get(split, self.images_dir)

    def lists(self, splits: Sequence[str] | None = None) -> dict[str, str]:
        """Split name -> list path, for ``splits`` (None: :meth:`splits`)."""
        return {split: self.list_for(split)[0] for split in (self.splits() if splits is None else splits)}

    def dataset(
        self,
        split: str,
        data_root: str | os.PathLike,
        transform: Callable | None,
        check_files: bool = True,
    ) -> ImageListDataset:
        """The :class:`ImageListDataset` of ``split`` under ``data_root`` (ID lists get their labels checked)."""
        list_path, is_id = self.list_for(split)
        root = Path(data_root)
        return ImageListDataset(
            root / self.images_dir_for(split),
            root / list_path,
            transform,
            num_classes=self.num_classes if is_id else None,
            check_files=check_files,
        )

    # ------------------------------------------------------------------ data root
    def _folders(self, splits: Sequence[str]) -> list[str]:
        return list(dict.fromkeys([self.images_dir_for(split) for split in splits]))

    def missing(self, data_root: str | os.PathLike, splits: Sequence[str] | None = None) -> list[str]:
        """Lists and images folders of ``splits`` (None: :meth:`splits`) absent under ``data_root`` (relative
        paths)."""
        splits = self.splits() if splits is None else list(splits)
        root = Path(data_root)
        absent = [path for path in dict.fromkeys(self.lists(splits).values()) if not (root / path).is_file()]
        return absent + [f"{folder}/" for folder in self._folders(splits) if not (root / folder).is_dir()]

    def expected_tree(self, data_root: str | os.PathLike, splits: Sequence[str] | None = None) -> str:
        """The layout ``splits`` (None: :meth:`splits`) expect under ``data_root``, as an indented tree."""
        splits = self.splits() if splits is None else list(splits)
        lines = [f"{data_root}/"]
        by_folder: dict[str, list[str]] = {}
        for path in dict.fromkeys(self.lists(splits).values()):
            folder, _, filename = path.replace("\\", "/").rpartition("/")
            by_folder.setdefault(folder, []).append(filename)
        for folder, files in by_folder.items():
            lines.append(f"  {folder}/")
            lines.extend(f"    {filename}" for filename in files)
        for folder in self._folders(splits):
            lines.append(f"  {folder}/   (the images, at the paths the lists name)")
        return "\n".join(lines)

    def fetch_hint(self, data_root: str | os.PathLike, csid: bool = False) -> str:
        """How to obtain this benchmark's data (``csid``: with the covariate-shifted ID sets)."""
        if self.downloadable:
            return (
                f"fetch them with `make data DATASET={self.name} DATA_ROOT={data_root}{' CSID=1' if csid else ''}` "
                f"or `grood download data --benchmark {self.name} --data-root {data_root}"
                f"{' --csid' if csid else ''}`"
            )
        return (
            f"no script downloads benchmark {self.name!r}: point the data root (paths.data_root or "
            "$GROOD_DATA_ROOT) at a folder holding the layout above"
        )

    def validate(self, data_root: str | os.PathLike, splits: Sequence[str] | None = None) -> None:
        """Check that ``data_root`` holds every list and images folder of ``splits`` (None: :meth:`splits`);
        raise :class:`DataLayoutError` if not.

        Each list's lines and files are checked when its dataset is built (``check_files``: the files exist);
        :func:`grood.data.verify.verify_images` decodes them.
        """
        absent = self.missing(data_root, splits)
        if absent:
            if not Path(data_root).is_dir():
                head = f"data root {data_root} does not exist (benchmark {self.name!r})"
            else:
                head = f"data root {data_root} lacks {len(absent)} path(s) of benchmark {self.name!r}"
            raise DataLayoutError(
                f"{head}:\n" + "\n".join(f"  missing: {path}" for path in absent)
                + f"\nexpected layout (OpenOOD v1.5):\n{self.expected_tree(data_root, splits)}\n"
                + self.fetch_hint(data_root, csid=any(s not in self.splits() for s in (splits or ())))
            )

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :func:`benchmark_from_dict` turns back into this benchmark."""
        spec = dict(self.transform)
        spec["mean"], spec["std"] = list(spec["mean"]), list(spec["std"])
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "images_dir": self.images_dir,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "near": dict(self.near),
            "far": dict(self.far),
            "val_ood": dict(self.val_ood),
            "csid": dict(self.csid),
            "corrupted_val": self.corrupted_val,
            "split_transforms": {k: dict(v) for k, v in self.split_transforms.items()},
            "images_dirs": dict(self.images_dirs),
            "transform": spec,
            "downloadable": self.downloadable,
        }


REQUIRED_KEYS = ("name", "num_classes", "train", "test", "near", "far", "transform")
OPTIONAL_KEYS = ("images_dir", "val", "val_ood", "csid", "corrupted_val", "split_transforms", "images_dirs",
                 "downloadable")


def benchmark_from_dict(cfg: Mapping[str, Any]) -> Benchmark:
    """Build a :class:`Benchmark` from a plain mapping (a config's user-defined benchmark).

    Required keys: ``name, num_classes, train, test, near, far, transform`` (a preset name or a spec).
    Optional: ``images_dir`` (default ``images_classic``), ``val``, ``val_ood``, ``csid``, ``corrupted_val``,
    ``split_transforms``, ``images_dirs``, ``downloadable`` (default False). An unknown or missing key raises
    ``ValueError`` naming it.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a benchmark definition must be a mapping; got {type(cfg).__name__}")
    label = f"benchmark definition {cfg.get('name', '<unnamed>')!r}"
    unknown = sorted(set(cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(
            f"{label}: unknown key(s) {unknown}; valid keys: required {list(REQUIRED_KEYS)}, "
            f"optional {list(OPTIONAL_KEYS)}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in cfg or cfg[key] is None]
    if missing:
        raise ValueError(f"{label}: missing required key(s) {missing}")
    defaults = {"images_dir": "images_classic", "val": None, "val_ood": {}, "csid": {}, "corrupted_val": None,
                "split_transforms": {}, "images_dirs": {}, "downloadable": False}
    values = dict(cfg)
    for key, default in defaults.items():
        if values.get(key) is None:
            values[key] = default
    return Benchmark(**values)


# ---------------------------------------------------------------------------- the registry
def _openood_cifar(id_name: str, num_classes: int, near_first: str) -> dict[str, Any]:
    lists = f"benchmark_imglist/{id_name}"
    return {
        "name": id_name,
        "num_classes": num_classes,
        "images_dir": "images_classic",
        "train": f"{lists}/train_{id_name}.txt",
        "val": f"{lists}/val_{id_name}.txt",
        "test": f"{lists}/test_{id_name}.txt",
        "near": {near_first: f"{lists}/test_{near_first}.txt", "tin": f"{lists}/test_tin.txt"},
        "far": {name: f"{lists}/test_{name}.txt" for name in ("mnist", "svhn", "texture", "places365")},
        "val_ood": {"tin": f"{lists}/val_tin.txt"},
        # DATA_INFO["cifar10"]["csid"]: cifar10c; DATA_INFO["cifar100"]["csid"]["datasets"] is empty. The real
        # corrupted images of Table 6: CIFAR-10-C / CIFAR-100-C (cifar100's list as in OpenOOD's
        # configs/datasets/cifar100/cifar100_fsood.yml)
        "csid": {"cifar10c": f"{lists}/test_cifar10c.txt"} if id_name == "cifar10" else {},
        "corrupted_val": f"{lists}/test_{id_name}c.txt",
        "transform": id_name,
        "downloadable": True,
    }


def _openood_imagenet(id_name: str, num_classes: int) -> dict[str, Any]:
    lists = f"benchmark_imglist/{id_name}"
    return {
        "name": id_name,
        "num_classes": num_classes,
        "images_dir": "images_largescale",
        "train": f"{lists}/train_{id_name}.txt",
        "val": f"{lists}/val_{id_name}.txt",
        "test": f"{lists}/test_{id_name}.txt",
        "near": {name: f"{lists}/test_{name}.txt" for name in ("ssb_hard", "ninco")},
        "far": {name: f"{lists}/test_{name}.txt" for name in ("inaturalist", "textures", "openimage_o")},
        "val_ood": {"openimage_o": f"{lists}/val_openimage_o.txt"},
        # DATA_INFO[<id>]["csid"]: ImageNet-V2/-C/-R, and ImageNet-ES for ImageNet-1k
        "csid": {f"imagenet_{s}": f"{lists}/test_{id_name}_{s}.txt"
                 for s in (("v2", "c", "r", "es") if id_name == "imagenet" else ("v2", "c", "r"))},
        "corrupted_val": f"{lists}/test_{id_name}_c.txt",  # Table 6 on ImageNet: ImageNet-C (grood's choice)
        # OpenOOD reads ImageNet-C's 224-pixel images with ToTensor + Normalize only (ImageNetCPreProcessor)
        "split_transforms": {split: {"size": 224, "crop_size": 224} for split in ("csid:imagenet_c", "corrupted_val")},
        "images_dirs": {"textures": "images_classic"},  # DATA_INFO: textures' data_dir is images_classic/
        "transform": id_name,
        "downloadable": True,
    }


#: Every registered benchmark as plain data (what ``configs/dataset/*.yaml`` mirror).
BENCHMARK_DEFINITIONS: dict[str, dict[str, Any]] = {
    "cifar10": _openood_cifar("cifar10", 10, near_first="cifar100"),
    "cifar100": _openood_cifar("cifar100", 100, near_first="cifar10"),
    "imagenet200": _openood_imagenet("imagenet200", 200),
    "imagenet": _openood_imagenet("imagenet", 1000),
    # The shared smoke benchmark (real images in OpenOOD's layout; its data root is configured, never
    # hard-coded). CIFAR-100, SVHN and Places365 are absent there, so far-OOD uses Fashion-MNIST. Its
    # transform is CIFAR-10's preset; a network trained with other statistics declares them in its
    # backbone config (the CIFAR ResNets of configs/backbone/resnet20.yaml: ImageNet's mean/std).
    "cifar10_smoke": {
        "name": "cifar10_smoke",
        "num_classes": 10,
        "images_dir": "images_classic",
        "train": "benchmark_imglist/cifar10/train_cifar10.txt",
        "val": "benchmark_imglist/cifar10/val_cifar10.txt",
        "test": "benchmark_imglist/cifar10/test_cifar10.txt",
        "near": {"tin": "benchmark_imglist/cifar10/test_tin.txt"},
        "far": {
            "mnist": "benchmark_imglist/cifar10/test_mnist.txt",
            "fashionmnist": "benchmark_imglist/cifar10/test_fashionmnist.txt",
            "texture": "benchmark_imglist/cifar10/test_texture.txt",
        },
        "val_ood": {"tin": "benchmark_imglist/cifar10/val_tin.txt"},
        "transform": "cifar10",
        "downloadable": False,
    },
}

_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark | Mapping[str, Any], overwrite: bool = False) -> Benchmark:
    """Add a benchmark (or its dict definition) to the registry; an existing name needs ``overwrite=True``."""
    if not isinstance(benchmark, Benchmark):
        benchmark = benchmark_from_dict(benchmark)
    if benchmark.name in _REGISTRY and not overwrite:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def available_benchmarks() -> list[str]:
    return sorted(_REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (a fresh copy: changing it leaves the registry intact)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; valid names: {available_benchmarks()}")
    return benchmark_from_dict(_REGISTRY[name].to_dict())


for _definition in BENCHMARK_DEFINITIONS.values():
    register_benchmark(_definition)
