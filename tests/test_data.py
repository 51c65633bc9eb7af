"""grood.data: image lists, transforms, the benchmark registry, and the real smoke data root."""

from __future__ import annotations

import shutil

import re
from collections import Counter
from pathlib import Path

import pytest
import numpy as np
import torch
from PIL import Image

from grood.data import (
    BENCHMARK_DEFINITIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Benchmark,
    DataLayoutError,
    ImageListDataset,
    ImageListError,
    ImageLoadError,
    available_benchmarks,
    benchmark_from_dict,
    build_loader,
    get_benchmark,
    resolve_spec,
)
from grood.data import test_transform as make_transform
from torchvision import transforms as T


# ---------------------------------------------------------------------------- tiny data in tmp_path
def _image(path: Path, size=(8, 6), color=(10, 20, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def _write_list(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images_classic"
    _image(images / "a" / "0.png", color=(255, 0, 0))
    _image(images / "a" / "1.jpg", color=(0, 255, 0))
    _image(images / "b" / "grey.png", size=(5, 7), color=(128,), mode="L")
    imglist = _write_list(tmp_path / "lists" / "id.txt", ["a/0.png 0", "a/1.jpg 2", "", "b/grey.png 1"])
    return images, imglist


def test_dataset_returns_tensors_labels_and_paths(tiny):
    images, imglist = tiny
    dataset = ImageListDataset(images, imglist, T.ToTensor(), num_classes=3)
    assert len(dataset) == 3  # the blank line is not an entry
    assert dataset.labels.tolist() == [0, 2, 1]
    assert dataset.labels.dtype == torch.int64
    assert dataset.paths == [str(images / "a" / "0.png"), str(images / "a" / "1.jpg"), str(images / "b" / "grey.png")]
    assert [dataset.line_number(i) for i in range(3)] == [1, 2, 4]
    red, label = dataset[0]
    assert label == 0 and red.shape == (3, 6, 8) and red.dtype == torch.float32
    assert torch.allclose(red[0], torch.ones(6, 8)) and red[1:].abs().max() == 0
    grey, label = dataset[2]
    assert label == 1 and grey.shape == (3, 7, 5)  # a grey image becomes 3 equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    pil, _ = ImageListDataset(images, imglist, None, num_classes=3)[2]
    assert pil.mode == "RGB"


def test_list_hash_is_stable_and_content_sensitive(tiny, tmp_path):
    images, imglist = tiny
    reference = ImageListDataset(images, imglist, None).list_sha256
    assert re.fullmatch(r"[0-9a-f]{64}", reference)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a/0.png 0\r\n\r\na/1.jpg 2\r\nb/grey.png 1")
    assert ImageListDataset(images, crlf, None).list_sha256 == reference
    changed = _write_list(tmp_path / "changed.txt", ["a/0.png 0", "a/1.jpg 1", "b/grey.png 1"])
    assert ImageListDataset(images, changed, None).list_sha256 != reference


@pytest.mark.parametrize(
    "line, message",
    [
        ("a/0.png", r"malformed line 'a/0\.png'"),
        ("a/0.png zero", r"label 'zero' of 'a/0\.png' is not an integer"),
        ("/abs/a/0.png 0", r"path '/abs/a/0\.png' is absolute"),
        ("a/0.png 3", r"label 3 of 'a/0\.png' is outside 0\.\.2"),
        ("a/0.png -1", r"label -1 of 'a/0\.png' is outside 0\.\.2"),
    ],
)
def test_bad_lines_name_list_line_and_value(tiny, tmp_path, line, message):
    images, _ = tiny
    bad = _write_list(tmp_path / "bad_list.txt", ["a/1.jpg 0", line])
    with pytest.raises(ImageListError, match=rf"bad_list\.txt, line 2: {message}"):
        ImageListDataset(images, bad, None, num_classes=3)


def test_ood_list_keeps_minus_one(tiny, tmp_path):
    images, _ = tiny
    ood = _write_list(tmp_path / "ood.txt", ["a/0.png -1", "b/grey.png -1"])
    assert ImageListDataset(images, ood, None).labels.tolist() == [-1, -1]


def test_missing_image_names_list_line_and_path(tiny, tmp_path):
    images, _ = tiny
    imglist = _write_list(tmp_path / "gaps.txt", ["a/0.png 0", "a/1.jpg 0", "a/nope.png 1", "c/gone.png 1"])
    with pytest.raises(ImageListError, match=r"gaps\.txt: 2 of 4 image file\(s\) missing.*first at line 3: .*a/nope\.png"
                       r"(.|\n)*line 4: .*c/gone\.png(.|\n)*grood download data"):
        ImageListDataset(images, imglist, None, num_classes=2)
    unchecked = ImageListDataset(images, imglist, None, num_classes=2, check_files=False)
    assert len(unchecked) == 4
    with pytest.raises(ImageLoadError, match=r"gaps\.txt, line 3: cannot read image .*a/nope\.png"):
        unchecked[2]


def test_corrupt_image_at_load_names_list_line_and_path(tiny, tmp_path):
    images, _ = tiny
    (images / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    imglist = _write_list(tmp_path / "corrupt.txt", ["a/0.png 0", "a/broken.jpg 1"])
    dataset = ImageListDataset(images, imglist, None, num_classes=2)  # exists, so construction passes
    dataset[0]
    with pytest.raises(ImageLoadError, match=r"corrupt\.txt, line 2: cannot read image .*a/broken\.jpg.*re-download"):
        dataset[1]


def test_truncated_image_fails_unless_allowed(tiny, tmp_path):
    images, _ = tiny
    noise = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(noise).save(images / "a" / "full.jpg", quality=95)
    data = (images / "a" / "full.jpg").read_bytes()
    (images / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    imglist = _write_list(tmp_path / "cut.txt", ["a/cut.jpg 0"])
    with pytest.raises(ImageLoadError, match=r"cut\.txt, line 1"):
        ImageListDataset(images, imglist, None)[0]
    image, _ = ImageListDataset(images, imglist, None, allow_truncated=True)[0]
    assert image.size == (64, 64)


def test_empty_list_missing_list_and_missing_images_dir(tiny, tmp_path):
    images, imglist = tiny
    empty = _write_list(tmp_path / "empty.txt", [""])
    with pytest.raises(ImageListError, match=r"empty\.txt holds no entries"):
        ImageListDataset(images, empty, None)
    with pytest.raises(ImageListError, match=r"absent\.txt does not exist"):
        ImageListDataset(images, tmp_path / "absent.txt", None)
    with pytest.raises(ImageListError, match=r"images folder .*no_such_dir .*id\.txt"):
        ImageListDataset(tmp_path / "no_such_dir", imglist, None)


def test_build_loader_order_is_deterministic(tiny, tmp_path):
    images, _ = tiny
    copies = tmp_path / "copies"
    (copies / "a").mkdir(parents=True)
    for i in range(10):  # ten distinct files (a list naming one file twice is an error)
        suffix = "png" if i % 2 == 0 else "jpg"
        shutil.copy(images / "a" / f"{i % 2}.{suffix}", copies / "a" / f"{i}.{suffix}")
    lines = [f"a/{i}.{'png' if i % 2 == 0 else 'jpg'} {i % 3}" for i in range(10)]
    dataset = ImageListDataset(copies, _write_list(tmp_path / "ten.txt", lines), T.ToTensor(), num_classes=3)
    sequential = torch.cat([y for _, y in build_loader(dataset, batch_size=4, num_workers=0)])
    assert sequential.tolist() == dataset.labels.tolist()
    first = [y.tolist() for _, y in build_loader(dataset, 3, 0, shuffle=True, seed=1)]
    second = [y.tolist() for _, y in build_loader(dataset, 3, 0, shuffle=True, seed=1)]
    assert first == second and sorted(sum(first, [])) == sorted(dataset.labels.tolist())


# ---------------------------------------------------------------------------- transforms
OPENOOD_PREPROCESSING = {  # openood/evaluation_api/preprocessor.py, default_preprocessing_dict (bilinear)
    "cifar10": (32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (32, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet200": (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@pytest.mark.parametrize("preset", sorted(OPENOOD_PREPROCESSING))
def test_presets_match_openood(preset):
    size, crop, mean, std = OPENOOD_PREPROCESSING[preset]
    assert resolve_spec(preset) == {"size": size, "crop_size": crop, "mean": mean, "std": std,
                                    "interpolation": "bilinear"}
    steps = make_transform(preset).transforms
    assert [type(s).__name__ for s in steps] == ["ToRGB", "Resize", "CenterCrop", "ToNormalisedTensor"]
    assert steps[1].size == size and steps[1].interpolation == T.InterpolationMode.BILINEAR
    assert tuple(steps[2].size) == (crop, crop)
    assert steps[3].mean == mean and steps[3].std == std
    assert get_benchmark(preset).transform == resolve_spec(preset)


def test_transform_output_and_normalisation():
    image = Image.new("RGB", (400, 300), (51, 102, 153))
    out = make_transform("imagenet")(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip((51, 102, 153), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    grey = make_transform("cifar10")(Image.new("L", (28, 28), 200))
    assert grey.shape == (3, 32, 32)


def test_normalised_tensor_equals_torchvision_to_the_bit():
    """grood's one-step ToNormalisedTensor gives what ToTensor() + Normalize() give (OpenOOD's two steps),
    bit for bit, on every pixel value and odd sizes; non-RGB input is refused, not converted silently."""
    from grood.data.transforms import ToNormalisedTensor

    generator = np.random.default_rng(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    fused = ToNormalisedTensor(mean, std)
    reference = T.Compose([T.ToTensor(), T.Normalize(list(mean), list(std))])
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    images = [Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=2)),
              Image.fromarray(generator.integers(0, 256, (37, 53, 3), dtype=np.uint8))]
    for image in images:
        assert torch.equal(fused(image), reference(image))
    with pytest.raises(ValueError, match="RGB images.*mode 'L'"):
        fused(Image.new("L", (4, 4)))
    assert repr(fused) == repr(ToNormalisedTensor(list(mean), list(std)))


def test_transform_spec_overrides_and_errors():
    spec = resolve_spec({"preset": "cifar10", "mean": IMAGENET_MEAN, "std": list(IMAGENET_STD)})
    assert spec["size"] == 32 and spec["mean"] == IMAGENET_MEAN and spec["std"] == IMAGENET_STD
    full = {"size": 40, "crop_size": 36, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    transform = make_transform(full)
    assert transform.spec["crop_size"] == 36 and transform.transforms[1].interpolation == T.InterpolationMode.BICUBIC
    assert repr(make_transform("cifar10")) == repr(make_transform("cifar10"))  # stable: a cache-key part
    with pytest.raises(ValueError, match=r"unknown transform key\(s\) \['resize'\]"):
        resolve_spec({"preset": "cifar10", "resize": 3})
    with pytest.raises(ValueError, match=r"unknown transform preset 'cifar11'"):
        resolve_spec("cifar11")
    with pytest.raises(ValueError, match=r"lacks \['crop_size', 'interpolation'\]"):
        resolve_spec({"size": 32, "mean": [0] * 3, "std": [1] * 3})
    with pytest.raises(ValueError, match=r"crop_size=64 exceeds size=32"):
        resolve_spec({"preset": "cifar10", "crop_size": 64})
    with pytest.raises(ValueError, match=r"'mean' must hold 3 numbers"):
        resolve_spec({"preset": "cifar10", "mean": [0.5]})


# ---------------------------------------------------------------------------- registry
# openood/evaluation_api/datasets.py, DATA_INFO
OPENOOD_V15 = {
    "cifar10": (10, "images_classic", ["cifar100", "tin"], ["mnist", "svhn", "texture", "places365"], "tin"),
    "cifar100": (100, "images_classic", ["cifar10", "tin"], ["mnist", "svhn", "texture", "places365"], "tin"),
    "imagenet200": (200, "images_largescale", ["ssb_hard", "ninco"], ["inaturalist", "textures", "openimage_o"],
                    "openimage_o"),
    "imagenet": (1000, "images_largescale", ["ssb_hard", "ninco"], ["inaturalist", "textures", "openimage_o"],
                 "openimage_o"),
}


@pytest.mark.parametrize("name", sorted(OPENOOD_V15))
def test_registry_matches_openood_data_info(name):
    num_classes, images_dir, near, far, val_ood = OPENOOD_V15[name]
    bench = get_benchmark(name)
    lists = f"benchmark_imglist/{name}"
    assert bench.num_classes == num_classes and bench.images_dir == images_dir and bench.downloadable
    assert (bench.train, bench.val, bench.test) == (f"{lists}/train_{name}.txt", f"{lists}/val_{name}.txt",
                                                    f"{lists}/test_{name}.txt")
    assert list(bench.near) == near and list(bench.far) == far
    for ood in near + far:
        assert bench.list_for(ood) == (f"{lists}/test_{ood}.txt", False)
    assert bench.val_ood == {val_ood: f"{lists}/val_{val_ood}.txt"}
    assert bench.list_for(f"val_ood:{val_ood}") == (f"{lists}/val_{val_ood}.txt", False)
    assert bench.list_for("train") == (bench.train, True)
    textures_dir = "images_classic" if "imagenet" in name else images_dir
    assert bench.images_dir_for(far[1]) == textures_dir  # DATA_INFO: imagenet textures live in images_classic
    assert bench.images_dir_for("test") == images_dir


def test_registry_lookup_errors_and_copies():
    assert set(available_benchmarks()) >= {"cifar10", "cifar100", "imagenet200", "imagenet", "cifar10_smoke"}
    with pytest.raises(ValueError, match=r"unknown benchmark 'cifar11'; valid names: \[.*'cifar10'.*\]"):
        get_benchmark("cifar11")
    with pytest.raises(KeyError, match=r"no split 'svhn'.*valid splits"):
        get_benchmark("cifar10_smoke").list_for("svhn")
    copy = get_benchmark("cifar10")
    copy.near.clear()
    assert list(get_benchmark("cifar10").near) == ["cifar100", "tin"]


def test_benchmark_from_dict_round_trip_and_key_errors():
    for name, definition in BENCHMARK_DEFINITIONS.items():
        bench = benchmark_from_dict(definition)
        assert isinstance(bench, Benchmark) and benchmark_from_dict(bench.to_dict()) == bench
    base = dict(BENCHMARK_DEFINITIONS["cifar10_smoke"], name="mine")
    with pytest.raises(ValueError, match=r"'mine': unknown key\(s\) \['near_ood'\]"):
        benchmark_from_dict({**base, "near_ood": {}})
    for key in ("num_classes", "train", "far"):
        with pytest.raises(ValueError, match=rf"missing required key\(s\) \['{key}'\]"):
            benchmark_from_dict({k: v for k, v in base.items() if k != key})
    with pytest.raises(ValueError, match=r"'num_classes' must be an int >= 2"):
        benchmark_from_dict({**base, "num_classes": "10"})
    with pytest.raises(ValueError, match=r"'train' must be relative"):
        benchmark_from_dict({**base, "train": "/etc/train.txt"})
    with pytest.raises(ValueError, match=r"\['tin'\] appear in both 'near' and 'far'"):
        benchmark_from_dict({**base, "far": {"tin": "x.txt"}})
    with pytest.raises(ValueError, match=r"key 'transform': unknown transform preset"):
        benchmark_from_dict({**base, "transform": "nope"})
    minimal = benchmark_from_dict({"name": "m", "num_classes": 3, "train": "l/tr.txt", "test": "l/te.txt",
                                   "near": {}, "far": {"x": "l/x.txt"}, "transform": "cifar10"})
    assert minimal.images_dir == "images_classic" and minimal.val is None and not minimal.downloadable
    assert minimal.splits() == ["train", "test", "x"]


def test_validate_reports_missing_lists_layout_and_command(tmp_path):
    bench = get_benchmark("cifar10")
    (tmp_path / "benchmark_imglist" / "cifar10").mkdir(parents=True)
    (tmp_path / "benchmark_imglist" / "cifar10" / "train_cifar10.txt").write_text("x 0\n")
    with pytest.raises(DataLayoutError) as info:
        bench.validate(tmp_path)
    message = str(info.value)
    assert "missing: benchmark_imglist/cifar10/test_svhn.txt" in message
    assert "missing: images_classic/" in message
    assert "missing: benchmark_imglist/cifar10/train_cifar10.txt" not in message
    assert "    test_places365.txt" in message and "  benchmark_imglist/cifar10/" in message  # the expected tree
    assert f"grood download data --benchmark cifar10 --data-root {tmp_path}" in message
    assert "make data DATASET=cifar10" in message
    with pytest.raises(DataLayoutError, match=r"no script downloads benchmark .cifar10_smoke.: point the data root \(paths.data_root"):
        get_benchmark("cifar10_smoke").validate(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- the real smoke data root
SMOKE_LENGTHS = {"train": 5000, "val": 1000, "test": 2000, "tin": 1000, "mnist": 1000, "fashionmnist": 1000,
                 "texture": 1000, "val_ood:tin": 200}


def test_smoke_benchmark_definition():
    bench = get_benchmark("cifar10_smoke")
    assert list(bench.near) == ["tin"] and list(bench.far) == ["mnist", "fashionmnist", "texture"]
    assert list(bench.val_ood) == ["tin"]
    # CIFAR-10's preset: the ResNet-20's ImageNet statistics come from its backbone config, not the benchmark
    assert bench.transform == resolve_spec("cifar10")
    assert all(path.startswith("benchmark_imglist/cifar10/") for path in bench.lists().values())


def test_smoke_root_validates_and_every_list_loads(smoke_data_root):
    bench = get_benchmark("cifar10_smoke")
    bench.validate(smoke_data_root)
    transform = make_transform(bench.transform)
    assert set(bench.splits()) == set(SMOKE_LENGTHS)
    for split, expected in SMOKE_LENGTHS.items():
        dataset = bench.dataset(split, smoke_data_root, transform)  # checks every file exists
        assert len(dataset) == expected, split
        _, is_id = bench.list_for(split)
        if is_id:
            per_class = Counter(dataset.labels.tolist())
            assert sorted(per_class) == list(range(10)) and len(set(per_class.values())) == 1, split
        else:
            assert (dataset.labels == -1).all(), split
        for index in (0, expected - 1):
            image, label = dataset[index]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32, split
            assert torch.isfinite(image).all() and label == int(dataset.labels[index])


def test_smoke_grey_mnist_becomes_three_channels(smoke_data_root):
    dataset = get_benchmark("cifar10_smoke").dataset("mnist", smoke_data_root, None)
    with Image.open(dataset.path(0)) as raw:
        assert raw.mode == "L" and raw.size == (28, 28)
    rgb = T.ToTensor()(dataset.load_image(0))
    assert rgb.shape == (3, 28, 28) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    batch, labels = next(iter(build_loader(
        get_benchmark("cifar10_smoke").dataset("mnist", smoke_data_root, make_transform("cifar10")), 16)))
    assert batch.shape == (16, 3, 32, 32) and labels.tolist() == [-1] * 16
