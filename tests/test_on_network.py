"""GROOD on a network (grood/on_network.py, ``grood.GROOD``): the README's block, the data it fits from, the
prototype strategies, save/load with the network's identity, and pytorch-ood's interface and metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grood
from grood import metrics
from grood import prototype_inputs as passes
from grood.backbones import build_backbone
from grood.method.detector import NotFittedError
from grood.on_network import GROOD, NetworkMismatchError

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
ID_COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
OOD_COLOURS = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


def blobs(per_class: int, seed: int, ood: bool = False, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 3, size, size], labels [N])``: one colour per class plus noise; OOD labels are -1."""
    generator = torch.Generator().manual_seed(seed)
    colours = OOD_COLOURS if ood else ID_COLOURS
    labels = torch.arange(len(colours)).repeat_interleave(per_class)
    images = colours[labels].view(-1, 3, 1, 1) + 0.5 * torch.randn((len(labels), 3, size, size), generator=generator)
    return images, torch.full_like(labels, -1) if ood else labels


class SmallCNN(nn.Module):
    """A user's CNN whose forward uses functional ops (F.relu, F.adaptive_avg_pool2d, torch.flatten)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Conv2d(8, 8, 3, padding=1)
        self.layer2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.layer1(x))
        x = F.relu(self.layer2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def small_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


# --------------------------------------------------------------------------- the README's block
def readme_block() -> str:
    """The first ```python block under README.md's "GROOD on your model" heading."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^#+ GROOD on your model\n.*?^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert match, "README.md has no ```python block under a 'GROOD on your model' heading"
    return match.group(1)


def test_the_readme_block_is_at_most_5_lines() -> None:
    assert 1 <= len(readme_block().strip().splitlines()) <= 5


@pytest.mark.parametrize("make_model", [lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES).eval(),
                                        small_cnn], ids=["torchvision_resnet18", "user_cnn_functional_ops"])
def test_the_readme_block_runs_as_written(make_model) -> None:
    torch.manual_seed(0)
    images, labels = blobs(per_class=6, seed=1)
    namespace = {"model": make_model(), "images": blobs(per_class=2, seed=2)[0],
                 "train_loader": DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True)}
    exec(compile(readme_block(), "README.md: GROOD on your model", "exec"), namespace)
    detector, scores, classes = namespace["detector"], namespace["scores"], namespace["classes"]
    assert isinstance(detector, grood.GROOD) and detector.prototype == "mixup"  # the paper's default (eq. 9)
    assert scores.shape == (6,) and torch.isfinite(scores).all() and (scores <= 0).all()  # minus a distance
    assert classes.shape == (6,) and classes.dtype == torch.long and (classes < NUM_CLASSES).all()
    # a training image's own gradient is indexed: its score is the highest possible, 0 (higher = more ID)
    assert detector.score(images[:4]).abs().max() < 1e-3


def test_import_grood_stays_light_and_grood_GROOD_is_the_network_level_class() -> None:
    code = "import sys, grood; assert 'torch' not in sys.modules, 'import grood imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    import grood.method
    import grood.on_network

    assert grood.GROOD is grood.on_network.GROOD and grood.method.GROOD is not grood.GROOD


# --------------------------------------------------------------------------- data and the mixup prototype
def test_every_kind_of_training_data_gives_the_papers_mixup_prototype() -> None:
    model = small_cnn()
    images, labels = blobs(per_class=5, seed=1)
    pairs = TensorDataset(images, labels)
    loaders = {
        "shuffled DataLoader": DataLoader(pairs, batch_size=4, shuffle=True),
        "Dataset": pairs,
        "list of (x, y) batches": [(images[i:i + 6], labels[i:i + 6]) for i in range(0, len(labels), 6)],
        "OpenOOD dict batches": [{"data": images[i:i + 7], "label": labels[i:i + 7]} for i in range(0, 15, 7)],
    }
    fitted = {name: GROOD(model, early_layer="layer1", head_layer="fc").fit(data) for name, data in loaders.items()}
    # eq. 9 by hand: mid(0.5 early(x) + 0.5 p_early[c2(x)]), every training image, then eq. 8's mean
    network = fitted["Dataset"].network
    with torch.no_grad():
        early = network.early(images)
        p_early = torch.stack([early[labels == c].mean(0) for c in range(NUM_CLASSES)])
        second = network(images).topk(2, dim=1).indices[:, 1]
        expected = network.mid(0.5 * early + 0.5 * p_early[second]).mean(0)
    queries = blobs(per_class=2, seed=3, ood=True)[0]
    reference = fitted["Dataset"].score(queries)
    for name, detector in fitted.items():
        torch.testing.assert_close(detector.ood_prototype, expected, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(detector.score(queries), reference, rtol=1e-4, atol=1e-4, msg=name)


def test_a_mixup_sample_is_the_pipelines_and_needs_the_same_order_twice() -> None:
    model = small_cnn()
    images, labels = blobs(per_class=8, seed=1)
    pairs = TensorDataset(images, labels)
    detector = GROOD(model, early_layer="layer1", head_layer="fc", prototype_params={"num_images": 9}, seed=4)
    detector.fit(DataLoader(pairs, batch_size=5))
    network = detector.network
    with torch.no_grad():
        logits, early = network(images), network.early(images)
    p_early = torch.stack([early[labels == c].mean(0) for c in range(NUM_CLASSES)])
    sample = passes.mixup_features(network, pairs, logits, p_early, num_images=9, train_labels=labels, seed=4,
                                   progress=False)  # the pipeline's path: a map-style dataset, rows by index
    torch.testing.assert_close(detector.ood_prototype, sample.mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shuffle=False"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype_params={"num_images": 9}).fit(
            DataLoader(pairs, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)))


def test_training_data_is_checked() -> None:
    model = small_cnn()
    images, labels = blobs(per_class=3, seed=1)
    detector = GROOD(model, early_layer="layer1", head_layer="fc")
    with pytest.raises(TypeError, match="reads the training data twice"):
        detector.fit(iter([(images, labels)]))
    with pytest.raises(ValueError, match=r"label\(s\) \[-1\] outside 0..2.*labels < 0"):
        detector.fit([(images, torch.where(labels == 0, -1, labels))])
    with pytest.raises(ValueError, match=r"label\(s\) \[7\] outside 0..2 \(the network has 3 classes\)"):
        detector.fit([(images, torch.where(labels == 0, 7, labels))])
    with pytest.raises(TypeError, match="not a tensor"):
        detector.fit(images)
    with pytest.raises(TypeError, match="a tuple of 3 elements"):
        detector.fit([(images, labels, labels)])

    class Items(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(images, labels))

    with pytest.raises(TypeError, match="iterable-style dataset of items: give a DataLoader"):
        detector.fit(Items())
    with pytest.raises(NotFittedError, match="fit"):
        detector.score(images)


# --------------------------------------------------------------------------- strategies by name
def test_any_strategy_by_name_with_its_parameters() -> None:
    model = small_cnn()
    images, labels = blobs(per_class=4, seed=1)
    data = [(images, labels)]
    mean = GROOD(model, early_layer="layer1", head_layer="fc", prototype="mean").fit(data)
    torch.testing.assert_close(mean.ood_prototype, mean.detector.class_prototypes.mean(0).cpu())
    val_ood = TensorDataset(*blobs(per_class=4, seed=5, ood=True))
    with pytest.raises(ValueError, match="needs OOD validation samples.*pass val_ood= .* to fit"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype="val_ood").fit(data)
    chosen = GROOD(model, early_layer="layer1", head_layer="fc", prototype="val_ood",
                   prototype_params={"num_images": 5}).fit(data, val_ood=val_ood)
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].sort().values
    with torch.no_grad():
        expected = chosen.network.mid(chosen.network.early(val_ood.tensors[0][rows])).mean(0)
    torch.testing.assert_close(chosen.ood_prototype, expected, rtol=1e-5, atol=1e-6)
    uniform = GROOD(model, early_layer="layer1", head_layer="fc", prototype="uniform",
                    prototype_params={"num_images": 20, "keep": 5}, normalization=((0.5,) * 3, (0.25,) * 3))
    assert torch.isfinite(uniform.fit(data).ood_prototype).all()

    with pytest.raises(ValueError, match="normalization=\\(mean, std\\)"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype="uniform")
    with pytest.raises(ValueError, match="mixup_lambda"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype_params={"mixup_lambda": 1.5})
    with pytest.raises(ValueError, match=r"\['keep'\] are not parameters of prototype='mixup'"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype_params={"keep": 3})
    with pytest.raises(ValueError, match="expected one of mixup, uniform, val_ood, corrupted, mean.*oracle"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype="local_oracle")


def test_a_grood_backbone_needs_no_layer_names() -> None:
    torch.manual_seed(0)
    network = build_backbone("resnet20", num_classes=NUM_CLASSES).eval()
    images, labels = blobs(per_class=3, seed=1)
    detector = GROOD(network, split_block=2).fit([(images, labels)])
    assert detector.network is network and network.split_block == 2
    assert detector.score(images).shape == (9,)


# --------------------------------------------------------------------------- save and load
def test_save_load_gives_the_same_scores_and_refuses_another_network(tmp_path: Path) -> None:
    model = small_cnn(seed=0)
    images, labels = blobs(per_class=4, seed=1)
    detector = GROOD(model, early_layer="layer1", head_layer="fc", prototype_params={"mixup_lambda": 0.3})
    detector.fit([(images, labels)])
    detector.save(tmp_path / "grood")
    assert sorted(path.name for path in (tmp_path / "grood").iterdir()) == ["detector", "network.json"]
    loaded = GROOD.load(tmp_path / "grood", model)
    assert loaded.prototype_params["mixup_lambda"] == 0.3
    torch.testing.assert_close(loaded.score(images), detector.score(images), rtol=0, atol=0)
    torch.testing.assert_close(loaded.to("cpu").score(images), detector.score(images), rtol=0, atol=0)

    with pytest.raises(NetworkMismatchError, match="weights .sha256 of the state_dict"):
        GROOD.load(tmp_path / "grood", small_cnn(seed=1))  # same class, other weights
    resnet = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    with pytest.raises(NetworkMismatchError, match="its class 'tests.test_on_network.SmallCNN'|its class .*SmallCNN"):
        GROOD.load(tmp_path / "grood", resnet)
    with pytest.raises(NetworkMismatchError, match="layer2"):
        GROOD.load(tmp_path / "grood", model, early_layer="layer2")
    with pytest.raises(FileNotFoundError, match="not a directory written by grood.GROOD.save"):
        GROOD.load(tmp_path, model)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a grood.GROOD save"):
        detector.save(tmp_path / "other")


# --------------------------------------------------------------------------- pytorch-ood
def test_pytorch_ood_metrics_evaluate_grood_beside_its_own_knn() -> None:
    """pytorch-ood's API and OODMetrics (OOD: target < 0, higher score = more OOD) run GROOD unchanged; the
    AUROC and FPR@95 it reports are grood.metrics' on the same scores (grood's sign: higher = more ID)."""
    from pytorch_ood.api import Detector
    from pytorch_ood.detector import KNN
    from pytorch_ood.metrics import OODMetrics

    model = small_cnn()
    train_loader = DataLoader(TensorDataset(*blobs(per_class=20, seed=1)), batch_size=16, shuffle=True)
    id_images, id_labels = blobs(per_class=10, seed=2)
    ood_images, ood_labels = blobs(per_class=10, seed=3, ood=True)
    test_loader = DataLoader(TensorDataset(torch.cat([id_images, ood_images]), torch.cat([id_labels, ood_labels])),
                             batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))

    detector = GROOD(model, early_layer="layer1", head_layer="fc").fit(train_loader)
    assert isinstance(detector, Detector)
    knn = KNN(encoder=lambda x: detector.network.mid(detector.network.early(x)), k=5).to("cpu").fit(train_loader)
    results = {}
    for name, ood_detector in (("grood", detector), ("knn", knn)):
        ood_metrics = OODMetrics()
        with torch.no_grad():
            for x, y in test_loader:
                ood_metrics.update(ood_detector(x), y)
        results[name] = ood_metrics.compute()
    assert 0.0 <= results["knn"]["AUROC"] <= 1.0

    grood_id, grood_ood = detector.score(id_images), detector.score(ood_images)
    assert results["grood"]["AUROC"] == pytest.approx(metrics.auroc(grood_id, grood_ood), abs=1e-6)
    assert results["grood"]["FPR95TPR"] == pytest.approx(metrics.fpr_at_recall(grood_id, grood_ood), abs=1e-6)
    assert results["grood"]["AUROC"] > 0.9  # colours unlike the training classes
    torch.testing.assert_close(detector.predict(ood_images), -grood_ood)  # pytorch-ood's sign: higher = more OOD
    features = detector.features(ood_images)
    torch.testing.assert_close(detector.predict_features(features), -grood_ood)
    torch.testing.assert_close(detector.score_features(features), grood_ood)


def test_fit_features_needs_a_prototype_features_alone_can_give() -> None:
    model = small_cnn()
    images, labels = blobs(per_class=4, seed=1)
    fitted = GROOD(model, early_layer="layer1", head_layer="fc", prototype="mean").fit([(images, labels)])
    features = fitted.features(images)
    by_features = GROOD(model, early_layer="layer1", head_layer="fc", prototype="mean").fit_features(features, labels)
    torch.testing.assert_close(by_features.score(images), fitted.score(images))
    with pytest.raises(ValueError, match="'mixup' needs .*call fit\\(loader\\)"):
        GROOD(model, early_layer="layer1", head_layer="fc").fit_features(features, labels)
    with pytest.raises(ValueError, match="labels < 0"):
        GROOD(model, early_layer="layer1", head_layer="fc", prototype="mean").fit_features(features, labels - 1)
    mixup = GROOD(model, early_layer="layer1", head_layer="fc").fit([(images, labels)])
    given = GROOD(model, early_layer="layer1", head_layer="fc").fit_features(features, labels, mixup.ood_prototype)
    np.testing.assert_allclose(given.score(images).numpy(), mixup.score(images).numpy(), rtol=1e-5, atol=1e-5)
