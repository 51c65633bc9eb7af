"""Every input checked before compute (issue 23, "Trustworthy runs, part two": cases 1, 4, 6, 7 and 13).

Each test names its case. The runs use a 1/20 copy of the smoke data root (``tiny_root``); the end-to-end
test runs ``scripts/run.py experiment=smoke`` on a copy of the whole smoke root whose images are symlinks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grood import features as features_module
from grood.config import compose_run_config, config_hash, hydra_compose, to_plain
from grood.data import ImageListDataset, ImageListError, benchmark_from_dict, get_benchmark
from grood.data import imagelist as imagelist_module
from grood.pipeline import RunInputError, prepare_run, run_record

REPO = Path(__file__).resolve().parents[1]
LISTS = ("benchmark_imglist", "cifar10")


def _tiny(root: Path, cache: Path, checkpoint: Path, *overrides: str):
    return compose_run_config(["dataset=cifar10_smoke", "device=cpu", "progress=false", "num_workers=0",
                               "batch_size=256", "method=msp", f"paths.data_root={root}",
                               f"paths.cache_dir={cache}", f"dataset.checkpoint={checkpoint}", *overrides])


@pytest.fixture()
def no_forward_pass(monkeypatch):
    """Fails the test if the network runs on data."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran although the inputs are invalid")
    monkeypatch.setattr(features_module, "forward_pass", forbidden)


def _list(root: Path, name: str) -> Path:
    return root.joinpath(*LISTS, name)


def _append(root: Path, name: str, *lines: str) -> int:
    """Append ``lines`` to list ``name``; returns the line number of the first one."""
    path = _list(root, name)
    text = path.read_text()
    path.write_text(text + "".join(f"{line}\n" for line in lines))
    return len(text.splitlines()) + 1


def _entry(root: Path, name: str, line: int) -> tuple[str, Path]:
    """``(relative path, image file)`` of 1-based ``line`` of list ``name``."""
    relative = _list(root, name).read_text().splitlines()[line - 1].split()[0]
    return relative, root / "images_classic" / relative


# ------------------------------------------------------------------------ 1. paths that leave the data root
def test_case1_a_path_leaving_the_data_root_is_refused_in_every_list(tiny_root, tmp_path, resnet20_checkpoint,
                                                                      no_forward_pass):
    outside = tmp_path / "outside" / "secret.jpg"  # exists: today it would be read
    outside.parent.mkdir()
    _, image = _entry(tiny_root, "test_tin.txt", 1)
    outside.write_bytes(image.read_bytes())
    escape = "../../outside/secret.jpg"  # relative to <tiny_root>/images_classic
    assert (tiny_root / "images_classic" / escape).resolve() == outside.resolve()
    lines = {name: _append(tiny_root, name, f"{escape} {label}")
             for name, label in (("train_cifar10.txt", 0), ("val_cifar10.txt", 0), ("test_cifar10.txt", 0),
                                 ("test_tin.txt", -1), ("test_texture.txt", -1), ("val_tin.txt", -1))}
    with pytest.raises(RunInputError) as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint))
    message = str(info.value)
    for name, line in lines.items():  # every list, in one report
        assert re.search(rf"{name}, line {line}: path '{re.escape(escape)}' has a '\.\.' component, which leaves "
                         r"the images folder", message), name
    # the optional lists too (covariate-shifted ID, real corrupted images), and a '..' in the middle of a path
    definition = get_benchmark("cifar10_smoke").to_dict()
    definition.update(name="with_optional", csid={"shifted": "benchmark_imglist/cifar10/csid.txt"},
                      corrupted_val="benchmark_imglist/cifar10/corrupted.txt")
    benchmark = benchmark_from_dict(definition)
    for split, name in (("csid:shifted", "csid.txt"), ("corrupted_val", "corrupted.txt")):
        _list(tiny_root, name).write_text(f"{_entry(tiny_root, 'test_cifar10.txt', 1)[0]} 3\ncifar10/../{escape} 1\n")
        with pytest.raises(ImageListError, match=rf"{name}, line 2: path .* has a '\.\.' component"):
            benchmark.dataset(split, tiny_root, None)


# ------------------------------------------------------------------------ 4. image modes Pillow would mangle
def _sixteen_bit_png(path: Path, values: np.ndarray) -> None:
    Image.frombytes("I;16", values.shape[::-1], values.astype("<u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16"


def test_case4_a_16_bit_png_is_scaled_by_value_not_clipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    values = np.linspace(0, 65535, 8 * 6).round().reshape(6, 8)
    _sixteen_bit_png(images / "deep.png", values)
    assert (np.asarray(Image.open(images / "deep.png").convert("RGB")) == 255).mean() > 0.9  # Pillow: clipped
    imglist = tmp_path / "list.txt"
    imglist.write_text("deep.png -1\n")
    rgb = np.asarray(ImageListDataset(images, imglist, None)[0][0])
    expected = np.round(values * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (6, 8, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))


def test_case4_image_modes_are_recorded_in_run_json_or_refused(tiny_root, tmp_path, resnet20_checkpoint,
                                                                no_forward_pass):
    relative, mnist = _entry(tiny_root, "test_mnist.txt", 2)
    grey = np.asarray(Image.open(mnist).convert("L")).astype(np.uint16) * 257  # the same digit in 16 bits
    _sixteen_bit_png(mnist, grey)
    palette = _entry(tiny_root, "test_fashionmnist.txt", 3)[1]
    Image.open(palette).convert("P").save(palette, transparency=0)
    run = prepare_run(_tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint))
    modes = json.loads(json.dumps(run_record(run, "msp", {})))["input_images"]["modes"]  # what run.json holds
    assert set(modes) == {"I;16", "P+transparency"}
    assert modes["I;16"]["images"] == 1 and "scaled to 8 bits by value" in modes["I;16"]["treatment"]
    assert modes["I;16"]["first"] == [f"{_list(tiny_root, 'test_mnist.txt')}:2 {mnist}"]
    assert modes["P+transparency"]["images"] == 1 and "transparency dropped" in modes["P+transparency"]["treatment"]
    # a float image has no agreed range: refused, naming it, before compute
    texture = _entry(tiny_root, "test_texture.txt", 4)[1]
    Image.fromarray(np.asarray(Image.open(texture).convert("L")).astype(np.float32) / 255).save(
        texture, format="TIFF")
    with pytest.raises(RunInputError, match=rf"test_texture\.txt, line 4: {re.escape(str(texture))}: image mode 'F' "
                                            r"is refused: 32-bit float pixels have no agreed range"):
        prepare_run(_tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint))


# ------------------------------------------------------------------------ 6. every listed image decoded first
def test_case6_unreadable_files_stop_the_run_before_any_forward_pass(tiny_root, tmp_path, resnet20_checkpoint,
                                                                     no_forward_pass):
    _, corrupt = _entry(tiny_root, "train_cifar10.txt", 3)
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # a cut JPEG: it exists, its pixels do not
    _, empty = _entry(tiny_root, "test_tin.txt", 2)
    empty.write_bytes(b"")
    folder_line = _append(tiny_root, "val_tin.txt", "tin/a_folder -1")
    (tiny_root / "images_classic" / "tin" / "a_folder").mkdir()
    with pytest.raises(RunInputError) as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint))
    message = str(info.value)
    assert message.startswith("3 listed image(s) cannot be used")
    assert re.search(rf"train_cifar10\.txt, line 3: cannot decode image {re.escape(str(corrupt))} \(OSError: "
                     r".*\); replace the file \(re-download it\) or delete the line", message)
    assert f"test_tin.txt, line 2: {empty} is empty (0 bytes); replace the file" in message
    assert f"val_tin.txt, line {folder_line}: {tiny_root / 'images_classic' / 'tin' / 'a_folder'} is a folder, " \
           "not an image file" in message


def test_case6_a_warm_rerun_verifies_without_decoding_again(tiny_root, tmp_path, resnet20_checkpoint, monkeypatch):
    from grood.data import verify as verify_module

    decoded: list[str] = []
    real_decode = verify_module.decode_image

    def counting(path: str) -> str:
        decoded.append(path)
        return real_decode(path)

    monkeypatch.setattr(verify_module, "decode_image", counting)
    cache = tmp_path / "cache"
    config = _tiny(tiny_root, cache, resnet20_checkpoint, "num_workers=2")
    cold = prepare_run(config)
    listed = sum(len(dataset) for dataset in cold.datasets.values())
    assert len(decoded) == listed and cold.input_images["decoded"] == listed
    assert len(set(decoded)) == len(decoded)  # each file decoded once
    assert (cache / verify_module.VERIFIED_DIR).is_dir()
    decoded.clear()
    warm = prepare_run(config)
    assert decoded == [] and warm.input_images == {**warm.input_images, "decoded": 0, "reused": listed}
    # a replaced image (new modification time) is decoded again, alone
    _, image = _entry(tiny_root, "test_cifar10.txt", 5)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    prepare_run(config)
    assert decoded == [str(image)]
    # so is a file found unreadable: the others stay verified
    decoded.clear()
    image.write_bytes(b"not an image")
    with pytest.raises(RunInputError, match=r"test_cifar10\.txt, line 5: cannot decode image"):
        prepare_run(config)
    assert decoded == [str(image)]


def _smoke_copy(smoke_data_root: Path, target: Path) -> Path:
    """The smoke root's lists, copied, and every listed image as a symlink to the shared file."""
    (target / Path(*LISTS)).mkdir(parents=True)
    for path in sorted(smoke_data_root.joinpath(*LISTS).glob("*.txt")):
        text = path.read_text()
        _list(target, path.name).write_text(text)
        for line in text.splitlines():
            relative = line.split()[0]
            link = target / "images_classic" / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(smoke_data_root / "images_classic" / relative)
    return target


def test_case6_a_corrupt_last_image_of_the_last_ood_list_stops_the_smoke_run_before_extraction(
        smoke_data_root, resnet20_checkpoint, shared_dir, tmp_path):
    root = _smoke_copy(smoke_data_root, tmp_path / "smoke_root")
    last_list = list(get_benchmark("cifar10_smoke").far.values())[-1]
    assert last_list.endswith("test_texture.txt")
    line = len((root / last_list).read_text().splitlines())
    relative = (root / last_list).read_text().splitlines()[-1].split()[0]
    image = root / "images_classic" / relative
    data = image.read_bytes()
    image.unlink()  # the link: the shared file is left alone
    image.write_bytes(data[: len(data) // 3])
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "scripts/run.py", "experiment=smoke", "method=msp", "device=cpu", "progress=false",
         f"paths.data_root={root}", f"dataset.checkpoint={resnet20_checkpoint}", f"paths.cache_dir={cache}",
         f"paths.results_dir={tmp_path / 'results'}"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "GROOD_SHARED_DIR": str(shared_dir)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"test_texture.txt, line {line}: cannot decode image {image}" in output
    assert "1 listed image(s) cannot be used" in output
    assert not list(cache.rglob("*.pt")) and "started" not in output  # no feature extracted, no pass begun


# ------------------------------------------------------------------------ 7. every problem at once
def test_case7_every_bad_line_of_a_list_is_counted_and_all_are_written_to_a_file(tiny_root, tmp_path):
    lines = _list(tiny_root, "test_tin.txt").read_text().splitlines()
    repeated = (lines * 10)[:500]
    _list(tiny_root, "test_tin.txt").write_text("\n".join([*lines, *repeated, "only_a_path.jpg",
                                                            "tin/x.jpg minus_one"]) + "\n")
    with pytest.raises(ImageListError) as info:
        get_benchmark("cifar10_smoke").dataset("tin", tiny_root, None)
    message = str(info.value)
    assert message.splitlines()[0] == (f"image list {_list(tiny_root, 'test_tin.txt')}: 502 bad line(s) "
                                       "(500 listed again, 1 malformed, 1 label not an integer)")
    shown = [line for line in message.splitlines() if ", line " in line]
    assert len(shown) == imagelist_module.SHOWN_PROBLEMS
    assert f"line {len(lines) + 1}: image '{lines[0].split()[0]}' is listed again (first at line 1)" in shown[0]
    report = Path(re.search(r"all 502 in (\S+)", message).group(1))
    written = report.read_text().splitlines()
    assert len(written) == 503 and written[1:] == info.value.problems
    assert f"line {len(lines) + 500}: image" in written[500] and "malformed line 'only_a_path.jpg'" in written[501]


def test_case7_a_byte_order_mark_is_named_not_reported_as_a_missing_image(tiny_root, tmp_path, resnet20_checkpoint):
    path = _list(tiny_root, "val_cifar10.txt")
    first = path.read_text().split()[0]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(RunInputError) as info:
        prepare_run(_tiny(tiny_root, tmp_path / "cache", resnet20_checkpoint))
    message = str(info.value)
    assert f"val_cifar10.txt, line 1: the list starts with a UTF-8 byte-order mark (bytes EF BB BF), which would " \
           f"be read as part of the first path ('{first}" in message
    assert "missing" not in message
    # an invisible character elsewhere is named too, by its code point
    path.write_text(path.read_text(encoding="utf-8-sig").replace(first, f"{first}\u200b", 1))
    with pytest.raises(ImageListError, match=r"val_cifar10\.txt, line 1: path '.*' holds invisible character\(s\) "
                                             r"U\+200B; delete them"):
        get_benchmark("cifar10_smoke").dataset("val", tiny_root, None)


# ------------------------------------------------------------------------ 13. what the README says
def test_case13_the_readme_gives_the_multirun_layout_hydra_writes_and_what_is_checked():
    readme = (REPO / "README.md").read_text()
    config = hydra_compose(["dataset=cifar10"], return_hydra_config=True)
    from omegaconf import OmegaConf

    sweep = OmegaConf.to_container(config.hydra.sweep, resolve=True)
    run_hash = config_hash(to_plain(compose_run_config(["dataset=cifar10"])))
    assert f"{sweep['dir']}/{sweep['subdir']}" == f"results/runs/default/multirun/cifar10/grood/seed0-{run_hash}"
    assert "`results/runs/<experiment>/multirun/<dataset>/<method>/seed<N>-<hash>/`" in readme
    assert "every listed image, the" not in readme  # the old claim: only existence was checked
    assert "every listed image is opened and decoded" in readme
