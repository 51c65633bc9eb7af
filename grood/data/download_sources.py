"""Which files each OpenOOD v1.5 benchmark needs, and where they come from: OpenOOD's own tables (Google
Drive ids, archives per benchmark, csid sets, checkpoints) and torchvision's (CIFAR archives, ImageNet weights).

Sources are those of OpenOOD's ``scripts/download/download.py`` (Google Drive file ids) and
``openood/evaluation_api/datasets.py`` (which archives each benchmark needs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from grood.data.benchmarks import get_benchmark
from grood.data.download_resources import Resource, gdrive_page, gdrive_url

# ---------------------------------------------------------------------------- OpenOOD's sources
#: Google Drive file ids from OpenOOD's ``scripts/download/download.py`` (``download_id_dict``).
GDRIVE_IDS: dict[str, str] = {
    "benchmark_imglist": "1lI1j0_fDDvjIt9JlWAw09X8ks-yrR_H1",
    "cifar10": "1Co32RiiWe16lTaiOU6JMMnyUYS41IlO1",
    "cifar100": "1PGKheHUsf29leJPPGuXqzLBMwl8qMF8_",
    "tin": "1PZ-ixyx52U989IKsMA2OT-24fToTrelC",
    "mnist": "1CCHAGWqA1KJTFFswuF9cbhmB-j98Y1Sb",
    "svhn": "1DQfc11HOtB1nEwqS4pWUFp8vtQ3DczvI",
    "texture": "1OSz1m3hHfVWbRdmMwKbUzoU8Hg9UKcam",
    "places365": "1Ec-LRSTf6u5vEctKX9vRp9OA6tqnJ0Ay",
    "imagenet_1k": "1i1ipLDFARR-JZ9argXd2-0a6DXwVhXEj",
    "ssb_hard": "1PzkA-WGG8Z18h0ooL_pDdz9cO-DCIouE",
    "ninco": "1Z82cmvIB0eghTehxOGP5VTdLt7OD3nk6",
    "inaturalist": "1zfLfMvoUD0CUlKNnkk7LgxZZBnTBipdj",
    "openimage_o": "1VUFXnB_z70uHfdgJG2E_pjYOcEgqM7tE",
    "cifar10_res18_v1.5": "1byGeYxM_PlLjT72wZsMQvP6popJeWBgt",
    "cifar100_res18_v1.5": "1s-1oNrRtmA0pGefxXJOUVRYpaoAML0C-",
    "imagenet200_res18_v1.5": "1ddVmwc8zmzSjdLUO84EuV4Gz1c7vhIAs",
    # covariate-shifted ID (csid) sets: cifar10c and cifar100c from scripts/download/download.py, the
    # ImageNet ones from openood/evaluation_api/datasets.py (imagenet_es is only there)
    "cifar10c": "170DU_ficWWmbh6O2wqELxK9jxRiGhlJH",
    "cifar100c": "1MnETiQh9RTxJin2EHeSoIAJA28FRonHx",
    "imagenet_v2": "1akg2IiE22HcbvTBpwXQoD7tgfPCdkoho",
    "imagenet_c": "1JeXL9YH4BO8gCJ631c5BHbaSsl-lekHt",
    "imagenet_r": "1EzjMN2gq-bVV7lg-MEAdeuBuz-7jbGYU",
    "imagenet_es": "1ATz11vKmPqyzfEaEDRaPTF9TXiC244sw",
}

#: Image archives per benchmark: OpenOOD's ``benchmarks_dict`` (``openood/evaluation_api/datasets.py``)
#: without the covariate-shift sets (imagenet_v2/_c/_r/_es), with each archive's images folder (``dir_dict``).
IMAGE_ARCHIVES: dict[str, list[tuple[str, str]]] = {
    "cifar10": [(name, "images_classic") for name in
                ("cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365")],
    "cifar100": [(name, "images_classic") for name in
                 ("cifar100", "cifar10", "tin", "mnist", "svhn", "texture", "places365")],
    "imagenet200": [("imagenet_1k", "images_largescale"), ("ssb_hard", "images_largescale"),
                    ("ninco", "images_largescale"), ("inaturalist", "images_largescale"),
                    ("texture", "images_classic"), ("openimage_o", "images_largescale")],
}
IMAGE_ARCHIVES["imagenet"] = list(IMAGE_ARCHIVES["imagenet200"])

#: Covariate-shifted ID archives per benchmark (``scripts/download.py data --csid``), each with its images
#: folder (``dir_dict``) and the csid image lists OpenOOD's ``DATA_INFO[<benchmark>]["csid"]`` reads from it.
#: OpenOOD's Evaluator defines no csid list for CIFAR-100 (its ``csid.datasets`` is empty); its CIFAR-100-C
#: archive is the paper's Table 6 "ID-Corrupted Val" data.
CSID_ARCHIVES: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "cifar10": [("cifar10c", "images_classic", ("benchmark_imglist/cifar10/test_cifar10c.txt",))],
    "cifar100": [("cifar100c", "images_classic", ())],
    "imagenet200": [(f"imagenet_{s}", "images_largescale", (f"benchmark_imglist/imagenet200/test_imagenet200_{s}.txt",))
                    for s in ("v2", "c", "r")],
    "imagenet": [(f"imagenet_{s}", "images_largescale", (f"benchmark_imglist/imagenet/test_imagenet_{s}.txt",))
                 for s in ("v2", "c", "r", "es")],
}

#: OpenOOD v1.5 checkpoint archives and the run folder each holds (``s0/ s1/ s2/`` with ``best.ckpt``).
CHECKPOINT_ARCHIVES: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10_res18_v1.5", "cifar10_resnet18_32x32_base_e100_lr0.1_default"),
    "cifar100": ("cifar100_res18_v1.5", "cifar100_resnet18_32x32_base_e100_lr0.1_default"),
    "imagenet200": ("imagenet200_res18_v1.5", "imagenet200_resnet18_224x224_base_e90_lr0.1_default"),
}

#: torchvision ImageNet weights for the ImageNet benchmark (OpenOOD's ``scripts/eval_ood_imagenet.py``
#: ``--tvs-pretrained``, version 1).
TORCHVISION_WEIGHTS: dict[str, list[str]] = {
    "imagenet": ["ResNet50_Weights.IMAGENET1K_V1", "ViT_B_16_Weights.IMAGENET1K_V1", "Swin_T_Weights.IMAGENET1K_V1"],
}

DOWNLOADABLE = ("cifar10", "cifar100", "imagenet200", "imagenet")


# ---------------------------------------------------------------------------- what each benchmark needs
def _gdrive_archive(name: str, downloads: Path, install_dir: Path, member: str, wrap: bool,
                    markers: Sequence[Path] = ()) -> Resource:
    file_id = GDRIVE_IDS[name]
    return Resource(
        name=name, url=gdrive_url(file_id), archive=downloads / f"{name}.zip", kind="zip",
        install_dir=install_dir, members=(member,), wrap=wrap, markers=tuple(markers), page=gdrive_page(file_id),
        gdrive_id=file_id,
    )


def data_resources(benchmark: str, data_root: str | os.PathLike, torchvision_cifar: bool = False,
                   csid: bool = False) -> list[Resource]:
    """The image lists and image archives of an OpenOOD v1.5 benchmark, under ``data_root``.

    ``torchvision_cifar``: also fetch torchvision's CIFAR archive for ``cifar10``/``cifar100`` (extracted to
    ``<data_root>/cifar-10-batches-py`` etc., readable with ``torchvision.datasets.CIFAR10(data_root)``).
    ``csid``: also fetch the benchmark's covariate-shifted ID archives (:data:`CSID_ARCHIVES`) and require
    their image lists from ``benchmark_imglist.zip``.
    """
    if benchmark not in DOWNLOADABLE:
        raise ValueError(f"no download for benchmark {benchmark!r}; downloadable: {list(DOWNLOADABLE)}")
    root = Path(data_root)
    downloads = root / ".downloads"
    bench = get_benchmark(benchmark)
    list_files = [root / path for path in dict.fromkeys(bench.lists().values())]
    image_archives = list(IMAGE_ARCHIVES[benchmark])
    if csid:
        for name, folder, lists in CSID_ARCHIVES[benchmark]:
            image_archives.append((name, folder))
            list_files += [root / path for path in lists]
    resources = [_gdrive_archive("benchmark_imglist", downloads, root, "benchmark_imglist", wrap=False,
                                 markers=list_files)]
    for name, folder in image_archives:
        resources.append(_gdrive_archive(name, downloads, root / folder, name, wrap=True))
    if torchvision_cifar and benchmark in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if benchmark == "cifar10" else CIFAR100
        resources.append(Resource(
            name=f"{benchmark}_torchvision", url=cls.url, archive=downloads / cls.filename, kind="tar",
            install_dir=root, members=(cls.base_folder,), md5=cls.tgz_md5, page=cls.url,
        ))
    return resources


def torchvision_weight_resource(weight_name: str, hub_dir: str | os.PathLike) -> Resource:
    """A torchvision weight file, placed where ``torchvision`` looks for it (``<hub_dir>/checkpoints/``)."""
    from torchvision.models import get_weight

    url = get_weight(weight_name).url
    filename = url.rsplit("/", 1)[-1]
    match = re.search(r"-([a-f0-9]+)\.", filename)  # torchvision names files <arch>-<sha256 prefix>.pth
    return Resource(
        name=weight_name, url=url, archive=Path(hub_dir) / "checkpoints" / filename, kind="file",
        sha256_prefix=match.group(1) if match else None, page=url,
    )


def checkpoint_resources(benchmark: str, dest: str | os.PathLike, hub_dir: str | os.PathLike | None = None) -> list[Resource]:
    """OpenOOD v1.5's checkpoints of ``benchmark`` under ``dest`` (ImageNet: torchvision weights in ``hub_dir``)."""
    if benchmark not in DOWNLOADABLE:
        raise ValueError(f"no checkpoints to download for {benchmark!r}; downloadable: {list(DOWNLOADABLE)}")
    dest = Path(dest)
    resources = []
    if benchmark in CHECKPOINT_ARCHIVES:
        name, run_folder = CHECKPOINT_ARCHIVES[benchmark]
        resources.append(_gdrive_archive(name, dest / ".downloads", dest, run_folder, wrap=False))
    if benchmark in TORCHVISION_WEIGHTS:
        if hub_dir is None:
            import torch

            hub_dir = torch.hub.get_dir()
        resources.extend(torchvision_weight_resource(w, hub_dir) for w in TORCHVISION_WEIGHTS[benchmark])
    return resources


def manual_notes(benchmark: str, data_root: str | os.PathLike) -> list[str]:
    """What no script can fetch: ImageNet-1K training images (OpenOOD does not redistribute them)."""
    if benchmark not in ("imagenet", "imagenet200"):
        return []
    root = Path(data_root)
    bench = get_benchmark(benchmark)
    train_list = root / bench.train
    example = None
    if train_list.is_file():
        with open(train_list, encoding="utf-8") as handle:
            first = handle.readline().split()
        if first:
            example = root / bench.images_dir_for("train") / first[0]
            if example.exists():
                return []
    where = f" (its first line expects {example})" if example else ""
    return [
        f"{bench.train} names ImageNet-1K (ILSVRC2012) training images{where}; OpenOOD does not "
        "redistribute them: download ILSVRC2012_img_train.tar from https://image-net.org and extract it under "
        f"{root / bench.images_dir_for('train')} so that the list's paths resolve"
    ]

