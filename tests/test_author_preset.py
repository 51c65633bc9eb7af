"""The author's OpenOOD configuration as a preset (issue 11 part 3): ``index=faiss_ivf``, ``method=grood_openood``,
and the same settings in ``GROODPostprocessor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from grood import wrap
from grood.config import ConfigError, compose_run_config, config_hash, to_plain
from grood.method import GROOD
from grood.method.faiss_loader import import_faiss
from grood.method.neighbours import build_index, load_index
from grood.method.neighbours.faiss_ivf import author_nlist, author_train_batches
from grood.openood_compat import GROODPostprocessor


def _manual_ivf(train: np.ndarray, nlist: int) -> np.ndarray:
    """Centroids of FAISS's own IndexIVFFlat trained on ``train`` (what the port builds)."""
    faiss = import_faiss()
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(train.shape[1]), train.shape[1], nlist, faiss.METRIC_L2)
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index.quantizer.reconstruct_n(0, nlist)


def test_the_authors_rule():
    # CIFAR-10 smoke (5,000 rows / 200 = 25 batches), CIFAR-10 (250 batches), ImageNet-1K (6,406 batches)
    assert (author_train_batches(25), author_nlist(20)) == (20, 17)
    assert (author_train_batches(250), author_nlist(200)) == (200, 56)
    assert (author_train_batches(6406), author_nlist(600)) == (600, 97)
    index = build_index("faiss_ivf", 4)
    assert index.plan(5000) == (20, 17) and index.plan(4801) == (20, 17)
    with pytest.raises(ValueError, match=r"1 loader batch\(es\) of 200.*loader_batch_size"):
        index.plan(150)  # one batch: floor(0.8) = 0 training batches (the port would crash)


def test_cells_are_trained_on_the_first_batches_only_and_every_vector_is_added():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn((1000, 8), generator=generator)
    vectors[400:] += 50.0  # rows after the first 4 batches of 100 lie far away: cells from them would differ
    index = build_index("faiss_ivf", 8, loader_batch_size=100, train_batches=4)
    index.add(vectors)
    assert (index.nlist, index.train_batches, index.ntotal, index.index.nprobe) == (8, 4, 1000, 4)
    expected = _manual_ivf(vectors[:400].numpy(), 8)
    np.testing.assert_allclose(index.index.quantizer.reconstruct_n(0, 8), expected, rtol=1e-5, atol=1e-5)
    distances, rows = index.search(vectors[[3, 999]], 1)  # a vector of the last batch is found too
    assert rows.flatten().tolist() == [3, 999] and torch.all(distances == 0)


def test_rows_count_batches_before_the_correct_filter(tmp_path):
    """With fit_on='correct' the batches are the training rows' (as the port's loader batches), not the kept ones."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(200)[torch.randperm(600, generator=generator)]
    features = torch.randn((600, 6), generator=generator) + 3.0 * torch.nn.functional.one_hot(labels, 6)[:, :6].float()
    predictions = labels.clone()
    predictions[::3] = (labels[::3] + 1) % 3  # a third of the rows misclassified
    detector = GROOD(index="faiss_ivf", fit_on="correct", index_params={"loader_batch_size": 50}, device="cpu")
    detector.fit(features, labels, num_classes=3, train_predictions=predictions, ood_prototype="mean")
    keep = predictions == labels
    # 600 rows = 12 batches of 50 -> T = floor(9.6) = 9 batches (rows 0..449), nlist = int(4 * 3) = 12
    assert (detector.index.train_batches, detector.index.nlist) == (9, 12)
    assert detector.num_indexed == detector.index.ntotal == int(keep.sum())
    train_rows = keep & (torch.arange(600) < 450)
    expected = _manual_ivf(detector.gradients(features[train_rows]).numpy(), 12)
    np.testing.assert_allclose(detector.index.index.quantizer.reconstruct_n(0, 12), expected, rtol=1e-4, atol=1e-6)
    # k is honoured (the port searches k=1 whatever k says)
    second = GROOD(index="faiss_ivf", fit_on="correct", k=2, index_params={"loader_batch_size": 50}, device="cpu")
    second.fit(features, labels, num_classes=3, train_predictions=predictions, ood_prototype="mean")
    queries = features[:20]
    expected_k2 = -detector.index.search(detector.gradients(queries), 2)[0][:, 1]
    torch.testing.assert_close(second.score(queries), expected_k2)
    # save / load gives the same scores
    detector.save(tmp_path / "saved")
    torch.testing.assert_close(GROOD.load(tmp_path / "saved", device="cpu").score(queries), detector.score(queries))
    assert load_index(tmp_path / "saved" / "index.faiss", "faiss_ivf").nlist == 12


def test_method_grood_openood_selects_the_authors_settings():
    config = compose_run_config(["experiment=smoke", "method=grood_openood"])
    assert (config.method.name, config.method.preset, config.method.params.fit_on) == ("grood", "grood_openood",
                                                                                          "correct")
    assert (config.prototype.strategy, config.prototype.num_images) == ("val_ood", 200)
    assert config.index.kind == "faiss_ivf"
    assert (config.index.params.nprobe, config.index.params.loader_batch_size) == (4, 200)
    assert config.experiment_name == "smoke" and config.dataset.name == "cifar10_smoke"
    # a preset parameter may change (the preset is still the author's configuration with that value) ...
    assert compose_run_config(["method=grood_openood", "prototype.num_images=100"]).prototype.num_images == 100
    # ... a setting that defines it may not: that is another configuration, which method=grood runs
    with pytest.raises(ConfigError, match=r"index.kind='exact': method=grood_openood sets index.kind='faiss_ivf'"):
        compose_run_config(["method=grood_openood", "index=exact"])
    with pytest.raises(ConfigError, match=r"method.params.fit_on='all'"):
        compose_run_config(["method=grood_openood", "method.params.fit_on=all"])
    same = compose_run_config(["method=grood", "prototype=val_ood", "prototype.num_images=200", "index=faiss_ivf",
                               "method.params.fit_on=correct"])
    assert same.method.preset is None  # the same settings without the preset: recorded as such
    assert config_hash(to_plain(same)) != config_hash(to_plain(compose_run_config(["method=grood_openood"])))


class _Images(Dataset):
    """OpenOOD-style items: ``{'data': [3, 32, 32], 'label': int}``; class = the brightest channel."""

    def __init__(self, count: int, seed: int, ood: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 3
        self.images = 0.3 * torch.randn((count, 3, 32, 32), generator=generator)
        if not ood:
            self.images[torch.arange(count), self.labels] += 1.0
        else:
            self.labels = torch.full((count,), -1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"data": self.images[index], "label": int(self.labels[index])}


def test_postprocessor_takes_the_authors_settings_on_a_wrapped_torchvision_network():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    net = wrap(model, early_layer="layer1", feature_layer="avgpool", head_layer="fc")
    id_dict = {"train": DataLoader(_Images(300, 1), batch_size=64), "val": DataLoader(_Images(30, 2), batch_size=64)}
    ood_dict = {"val": DataLoader(_Images(40, 3, ood=True), batch_size=64), "near": {}, "far": {}}
    postprocessor = GROODPostprocessor(prototype="val_ood", num_images=200, fit_on="correct", index="faiss_ivf",
                                       index_params={"loader_batch_size": 50}, progress=False, device="cpu")
    postprocessor.setup(net, id_dict, ood_dict)
    train = postprocessor.train_outputs.features
    keep = train.logits.argmax(1) == train.labels
    index = postprocessor.detector.index
    assert index.kind == "faiss_ivf" and (index.train_batches, index.nlist) == (4, 8)  # 6 batches of 50
    assert index.ntotal == int(keep.sum())
    with torch.no_grad():  # 40 < 200 val-OOD images: all of them
        expected = net.mid(net.early(ood_dict["val"].dataset.images)).mean(0)
    torch.testing.assert_close(postprocessor.ood_prototype, expected, rtol=1e-4, atol=1e-5)
    batch = next(iter(id_dict["val"]))
    pred, conf = postprocessor.postprocess(net, batch["data"])
    library = GROOD(index="faiss_ivf", fit_on="correct", index_params={"loader_batch_size": 50}, device="cpu")
    library.fit(train, ood_prototype=postprocessor.ood_prototype)
    with torch.no_grad():
        features = net.mid(net.early(batch["data"]))
    torch.testing.assert_close(conf, library.score(features), rtol=1e-5, atol=1e-5)
    assert pred.shape == conf.shape == (30,)
