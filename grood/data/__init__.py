"""OpenOOD v1.5 data roots: image lists, the benchmark registry, test transforms, downloads.

    from grood.data import get_benchmark, test_transform
    bench = get_benchmark("cifar10")
    bench.validate(data_root)                      # DataLayoutError naming what is missing
    test_set = bench.dataset("test", data_root, test_transform(bench.transform))
"""

from grood.data.benchmarks import (
    BENCHMARK_DEFINITIONS,
    Benchmark,
    DataLayoutError,
    available_benchmarks,
    benchmark_from_dict,
    get_benchmark,
    register_benchmark,
)
from grood.data.imagelist import ImageListDataset, ImageListError, ImageLoadError, build_loader, parse_image_list
from grood.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, resolve_spec, test_transform

__all__ = [
    "BENCHMARK_DEFINITIONS",
    "Benchmark",
    "DataLayoutError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageListDataset",
    "ImageListError",
    "ImageLoadError",
    "PRESETS",
    "available_benchmarks",
    "benchmark_from_dict",
    "build_loader",
    "get_benchmark",
    "parse_image_list",
    "register_benchmark",
    "resolve_spec",
    "test_transform",
]
