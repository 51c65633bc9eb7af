"""GROOD as an OpenOOD v1.5 postprocessor (grood/openood_compat.py).

``openood`` is not on PyPI, so these tests run the fallback base class for real, on an OpenOOD-like
setting built here: DataLoaders of dict batches ``{'data', 'label'}`` over toy colour images, fake
OpenOOD network classes (same class names, ``openood.networks.*`` modules, OpenOOD's state-dict layout
and ``forward(x, return_feature=False)``), and OpenOOD's calling sequence (setup, then inference; the
evaluator's positional ``set_hyperparam`` lists). Only the test that drives OpenOOD's own ``Evaluator``
needs ``openood`` (and CUDA, which the Evaluator hard-codes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, Normalize

import grood.method.detector as detector_module
from grood import prototype_inputs as passes
from grood.method import strategies
from grood.backbones import CheckpointMismatchError, SplitNetwork
from grood.backbones.openood_net import as_split_network
from grood.features import forward_pass
from grood.metrics import auroc
from grood.method.detector import GROOD, NotFittedError
from grood.method.prototypes import class_prototypes
from grood.openood_compat import (
    OPENOOD_AVAILABLE,
    BasePostprocessor,
    FallbackBasePostprocessor,
    GROODPostprocessor,
    find_normalization,
)

NUM_CLASSES = 3
SIZE = 16
ID_COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
OOD_COLOURS = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- an OpenOOD-like setting
class Blobs(Dataset):
    """OpenOOD-style items ``{'data': [3, SIZE, SIZE], 'label': int}``: one colour per class plus noise.

    ``reads`` counts item reads (how many images a postprocessor pulled through the data pipeline).
    """

    def __init__(self, per_class: int, seed: int, ood: bool = False, size: int = SIZE) -> None:
        generator = torch.Generator().manual_seed(seed)
        colours = OOD_COLOURS if ood else ID_COLOURS
        labels = torch.arange(len(colours)).repeat_interleave(per_class)
        noise = 0.4 * torch.randn((len(labels), 3, size, size), generator=generator)
        self.images = colours[labels].view(-1, 3, 1, 1) + noise
        self.labels = torch.full_like(labels, -1) if ood else labels
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        self.reads += 1
        return {"data": self.images[index], "label": int(self.labels[index]), "index": index}


def loader(dataset: Dataset, batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def loader_dicts(per_class: int = 10, shuffle: bool = False, with_val_ood: bool = True):
    id_dict = {
        "train": loader(Blobs(per_class, seed=1), shuffle=shuffle),
        "val": loader(Blobs(4, seed=2)),
        "test": loader(Blobs(6, seed=3)),
    }
    ood_dict = {"near": {"blobs": loader(Blobs(6, seed=4, ood=True))}, "far": {}}
    if with_val_ood:
        ood_dict["val"] = loader(Blobs(4, seed=5, ood=True))
    return id_dict, ood_dict


class TinyNet(SplitNetwork):
    """A small SplitNetwork: stem conv, two conv blocks, average pooling, linear head (``D = 16``)."""

    block_names = ("stem", "block1", "block2")

    def __init__(self, num_classes: int = NUM_CLASSES, split_block: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = nn.Conv2d(8, 8, 3, padding=1)
        self.block2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)
        self.split_block = split_block

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.stem(x))

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return F.relu((self.block1, self.block2)[index](h))

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: torch's intra-op threads only add overhead (30x on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_net() -> TinyNet:
    """TinyNet trained for a few steps on the ID colour blobs (a real classifier, so OOD is detectable)."""
    torch.manual_seed(0)
    net = TinyNet()
    data = Blobs(20, seed=11)
    images, labels = data.images, data.labels
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimiser.step()
    return net.eval()


@pytest.fixture(scope="module")
def fitted(trained_net):
    """A postprocessor set up on ``trained_net`` with the mixup prototype (read-only for the tests)."""
    id_dict, ood_dict = loader_dicts()
    postprocessor = GROODPostprocessor(progress=False)
    postprocessor.setup(trained_net, id_dict, ood_dict)
    return postprocessor, id_dict, ood_dict


# --------------------------------------------------------------------------- fake OpenOOD networks
class _OpenOODBasicBlock(nn.Module):
    """OpenOOD's CIFAR BasicBlock layout: conv1/bn1/conv2/bn2 and a ``shortcut`` Sequential."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18_32x32(nn.Module):  # noqa: N801 - OpenOOD's class name is what the adapter recognises
    """OpenOOD v1.5's ``openood.networks.resnet18_32x32.ResNet18_32x32``: layout and forward signature."""

    __module__ = "openood.networks.resnet18_32x32"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            blocks = [_OpenOODBasicBlock(in_planes, planes, stride), _OpenOODBasicBlock(planes, planes, 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self.feature_size = 512

    def forward(self, x, return_feature=False, return_feature_list=False):
        feature1 = F.relu(self.bn1(self.conv1(x)))
        feature2 = self.layer1(feature1)
        feature3 = self.layer2(feature2)
        feature4 = self.layer3(feature3)
        feature5 = self.avgpool(self.layer4(feature4))
        feature = feature5.view(feature5.size(0), -1)
        logits = self.fc(feature)
        if return_feature:
            return logits, feature
        if return_feature_list:
            return logits, [feature1, feature2, feature3, feature4, feature5]
        return logits


class _OpenOODTorchvisionResNet(torchvision.models.ResNet):
    """OpenOOD's ``ResNet18_224x224`` / ``ResNet50``: torchvision's ResNet with ``forward(x, return_feature)``."""

    def forward(self, x, return_feature=False):
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        h = self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(h)))))
        feature = h.view(h.size(0), -1)
        logits = self.fc(feature)
        return (logits, feature) if return_feature else logits


class ResNet18_224x224(_OpenOODTorchvisionResNet):  # noqa: N801
    __module__ = "openood.networks.resnet18_224x224"

    def __init__(self, num_classes: int = 200) -> None:
        super().__init__(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


class ResNet50(_OpenOODTorchvisionResNet):
    __module__ = "openood.networks.resnet50"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


class ViT_B_16(torchvision.models.VisionTransformer):  # noqa: N801
    __module__ = "openood.networks.vit_b_16"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072,
                         num_classes=num_classes)

    def forward(self, x, return_feature=False):
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        feature = self.encoder(x)[:, 0]
        return (self.heads(feature), feature) if return_feature else self.heads(feature)


class Swin_T(torchvision.models.SwinTransformer):  # noqa: N801
    __module__ = "openood.networks.swin_t"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                         window_size=[7, 7], stochastic_depth_prob=0.2, num_classes=num_classes)

    def forward(self, x, return_feature=False):
        feature = self.flatten(self.avgpool(self.permute(self.norm(self.features(x)))))
        return (self.head(feature), feature) if return_feature else self.head(feature)


def randomise_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a weight that is not copied shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(1.0 + 0.1 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return net.eval()


# --------------------------------------------------------------------------- base class and contract
def test_base_class_is_openood_or_the_fallback():
    assert issubclass(GROODPostprocessor, BasePostprocessor)
    if not OPENOOD_AVAILABLE:
        assert BasePostprocessor is FallbackBasePostprocessor
    postprocessor = GROODPostprocessor()
    assert postprocessor.config is None
    assert postprocessor.APS_mode is False and postprocessor.hyperparam_search_done is False
    assert postprocessor.args_dict == {}


def test_fallback_base_is_msp_on_the_networks_device(trained_net):
    id_dict, _ = loader_dicts()
    pred, conf, label = FallbackBasePostprocessor(None).inference(trained_net, id_dict["test"], progress=False)
    data = id_dict["test"].dataset
    with torch.no_grad():
        probabilities = torch.softmax(trained_net(data.images), dim=1)
    np.testing.assert_array_equal(pred, probabilities.argmax(1).numpy())
    np.testing.assert_allclose(conf, probabilities.max(1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(label, data.labels.numpy())


# --------------------------------------------------------------------------- setup + inference
def test_setup_and_inference_on_an_openood_network():
    """The whole OpenOOD sequence on a fake OpenOOD ResNet18_32x32: arrays of OpenOOD's shapes and dtypes."""
    net = randomise_batchnorm(ResNet18_32x32(num_classes=NUM_CLASSES))
    id_dict, ood_dict = loader_dicts(per_class=4)
    postprocessor = GROODPostprocessor(progress=False, num_images=6)
    postprocessor.setup(net, id_dict, ood_dict)
    assert type(postprocessor.network).__module__ == "grood.backbones.resnet18_32x32"
    pred, conf, label = postprocessor.inference(net, id_dict["test"], False)
    count = len(id_dict["test"].dataset)
    assert pred.shape == conf.shape == label.shape == (count,)
    assert pred.dtype == np.dtype(int) and label.dtype == np.dtype(int) and conf.dtype == np.float64
    assert np.isfinite(conf).all() and (conf <= 0).all()  # minus a distance
    with torch.no_grad():
        np.testing.assert_array_equal(pred, net(id_dict["test"].dataset.images).argmax(1).numpy())
    np.testing.assert_array_equal(label, id_dict["test"].dataset.labels.numpy())
    assert postprocessor.ood_prototype.shape == (512,)


def test_scores_rank_id_above_ood(fitted):
    postprocessor, id_dict, ood_dict = fitted
    _, id_conf, _ = postprocessor.inference(postprocessor.network, id_dict["test"], progress=False)
    _, ood_conf, ood_label = postprocessor.inference(postprocessor.network, ood_dict["near"]["blobs"], False)
    assert (ood_label == -1).all()
    value = auroc(torch.from_numpy(id_conf), torch.from_numpy(ood_conf))
    assert value > 0.9, f"AUROC {value:.3f}: higher conf must mean in-distribution"


def _library_scores(net: SplitNetwork, id_dict, prototype: str = "mixup", **grood_args) -> tuple[torch.Tensor, ...]:
    """GROOD computed directly with the library (features, eq. 9 prototype, GROOD.fit/score)."""
    train_data, test_data = id_dict["train"].dataset, id_dict["test"].dataset
    pairs = [(train_data.images[i], int(train_data.labels[i])) for i in range(len(train_data))]
    train = forward_pass(net, DataLoader(pairs, batch_size=7), num_classes=NUM_CLASSES, accumulate_early=True,
                         device="cpu", progress=False)
    protos = torch.stack([train.features.features[train.features.labels == c].mean(0) for c in range(NUM_CLASSES)])
    if prototype == "mixup":
        candidates = passes.mixup_features(
            net, pairs, train.features.logits, train.early_prototypes(), mixup_lambda=0.5,
            train_labels=train.features.labels, device="cpu", progress=False)
        p_ood = strategies.finish_prototype(candidates, protos)
    else:
        p_ood = strategies.mean_prototype(protos)
    detector = GROOD(device="cpu", **grood_args).fit(train.features.features, train.features.labels, p_ood,
                                                     num_classes=NUM_CLASSES,
                                                     train_predictions=train.features.logits.argmax(1))
    with torch.no_grad():
        logits, test_features = net.forward_features(test_data.images)
    return detector.score(test_features), logits.argmax(1), p_ood


def test_conf_equals_the_library_score_on_the_same_features(fitted, trained_net):
    postprocessor, id_dict, _ = fitted
    expected_conf, expected_pred, expected_prototype = _library_scores(trained_net, id_dict)
    pred, conf, _ = postprocessor.inference(trained_net, id_dict["test"], progress=False)
    torch.testing.assert_close(postprocessor.ood_prototype, expected_prototype, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conf, expected_conf.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred, expected_pred.numpy())


def test_a_shuffled_train_loader_gives_the_same_fit(fitted, trained_net):
    """The training pass reads the dataset in index order, so OpenOOD's shuffle=True changes nothing."""
    reference, _, _ = fitted
    id_dict, ood_dict = loader_dicts(shuffle=True)
    postprocessor = GROODPostprocessor(progress=False)
    postprocessor.setup(trained_net, id_dict, ood_dict)
    torch.testing.assert_close(postprocessor.ood_prototype, reference.ood_prototype)
    torch.testing.assert_close(postprocessor.train_outputs.features.features,
                               reference.train_outputs.features.features)


def test_setup_rejects_an_index_the_device_cannot_run_before_any_forward_pass(trained_net, monkeypatch):
    import grood.openood_compat as compat

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("a forward pass ran before the index settings were checked")

    monkeypatch.setattr(compat, "forward_pass", no_forward_pass)
    id_dict, ood_dict = loader_dicts(per_class=3)
    postprocessor = GROODPostprocessor(index="ivf", index_params={"scan": "int8"}, device="cuda", progress=False)
    with pytest.raises(ValueError, match="scan='int8' runs on the CPU only"):
        postprocessor.setup(trained_net, id_dict, ood_dict)


def test_postprocess_checks_setup_and_network(trained_net):
    postprocessor = GROODPostprocessor(progress=False)
    images = torch.zeros(2, 3, SIZE, SIZE)
    with pytest.raises(NotFittedError, match="setup"):
        postprocessor.postprocess(trained_net, images)
    id_dict, ood_dict = loader_dicts(per_class=3)
    postprocessor.setup(trained_net, id_dict, ood_dict)
    pred, conf = postprocessor.postprocess(trained_net, images)
    assert pred.shape == conf.shape == (2,) and pred.dtype == torch.long
    with pytest.raises(ValueError, match="another network"):
        postprocessor.postprocess(TinyNet(), images)


def _as_pairs(loader: DataLoader) -> DataLoader:
    """A plain ``(image, label)`` DataLoader over the same images as an OpenOOD-style dict loader."""
    data = loader.dataset
    return DataLoader([(data.images[i], int(data.labels[i])) for i in range(len(data))], batch_size=loader.batch_size)


def test_plain_xy_loaders_give_the_scores_of_openood_dict_loaders(trained_net):
    id_dict, ood_dict = loader_dicts(per_class=4)
    with_dicts = GROODPostprocessor(progress=False, prototype="val_ood", num_images=5)
    with_dicts.setup(trained_net, id_dict, ood_dict)
    plain_id = {key: _as_pairs(loader) for key, loader in id_dict.items()}
    plain_ood = {"val": _as_pairs(ood_dict["val"]), "near": {"blobs": _as_pairs(ood_dict["near"]["blobs"])}}
    plain = GROODPostprocessor(progress=False, prototype="val_ood", num_images=5)
    plain.setup(trained_net, plain_id, plain_ood)  # on main: TypeError, OpenOOD dicts only
    torch.testing.assert_close(plain.ood_prototype, with_dicts.ood_prototype)
    for mine, theirs in zip(plain.inference(trained_net, plain_ood["near"]["blobs"], progress=False),
                            with_dicts.inference(trained_net, ood_dict["near"]["blobs"], progress=False)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)
    mixup = GROODPostprocessor(progress=False)  # the default mixup prototype reads the (x, y) training items too
    mixup.setup(trained_net, plain_id, plain_ood)
    assert torch.isfinite(mixup.ood_prototype).all()


def test_batches_must_be_pairs_or_openood_dicts(trained_net):
    triples = [(torch.zeros(3, SIZE, SIZE), 0, "extra")] * 4
    with pytest.raises(TypeError, match="a tuple of 3 elements"):
        GROODPostprocessor(progress=False).setup(trained_net, {"train": DataLoader(triples)}, {})
    with pytest.raises(TypeError, match=r"keys 'data' and 'label'; got \['image', 'label'\]"):
        GROODPostprocessor(progress=False).setup(
            trained_net, {"train": DataLoader([{"image": torch.zeros(3, SIZE, SIZE), "label": 0}] * 4)}, {})
    with pytest.raises(ValueError, match=r"id_loader_dict\['train'\] is missing"):
        GROODPostprocessor(progress=False).setup(trained_net, {"test": DataLoader(triples)}, {})


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_runs_on_the_device_of_the_network(device, trained_net, fitted):
    """No .cuda(): the network's device decides; a CUDA run scores like the CPU run."""
    reference, id_dict, ood_dict = fitted
    net = TinyNet()
    net.load_state_dict(trained_net.state_dict())
    net = net.to(device).eval()
    postprocessor = GROODPostprocessor(progress=False)
    postprocessor.setup(net, id_dict, ood_dict)
    assert postprocessor.device.type == device
    assert postprocessor.ood_prototype.device.type == device
    _, conf, _ = postprocessor.inference(net, id_dict["test"], progress=False)
    _, expected, _ = reference.inference(reference.network, id_dict["test"], progress=False)
    np.testing.assert_allclose(conf, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- prototypes
def test_mean_and_val_ood_prototypes(trained_net):
    id_dict, ood_dict = loader_dicts()
    mean_pp = GROODPostprocessor(prototype="mean", progress=False)
    mean_pp.setup(trained_net, id_dict, ood_dict)
    features = mean_pp.train_outputs.features
    protos = torch.stack([features.features[features.labels == c].mean(0) for c in range(NUM_CLASSES)])
    torch.testing.assert_close(mean_pp.ood_prototype, protos.mean(0))
    assert mean_pp.train_outputs.early_sums is None  # no early-layer sums without the mixup

    val_pp = GROODPostprocessor(prototype="val_ood", progress=False)
    val_pp.setup(trained_net, id_dict, ood_dict)
    val_images = ood_dict["val"].dataset.images  # 12 < 100 images: all of them
    with torch.no_grad():
        expected = trained_net.forward_features(val_images)[1].mean(0)
    torch.testing.assert_close(val_pp.ood_prototype, expected, rtol=1e-5, atol=1e-6)

    id_dict, ood_dict = loader_dicts(with_val_ood=False)
    with pytest.raises(ValueError, match=r"ood_loader_dict\['val'\]"):
        GROODPostprocessor(prototype="val_ood", progress=False).setup(trained_net, id_dict, ood_dict)


class _Preprocessor:
    """OpenOOD's preprocessor layout: ``dataset.preprocessor.transform`` is a Compose ending in Normalize."""

    def __init__(self, mean, std) -> None:
        self.transform = Compose([torchvision.transforms.ToTensor(), Normalize(mean, std)])


def test_uniform_prototype_uses_the_datasets_normalisation(trained_net):
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    id_dict, ood_dict = loader_dicts()
    id_dict["train"].dataset.preprocessor = _Preprocessor(mean, std)
    assert find_normalization(id_dict["train"].dataset) == (mean, std)
    assert find_normalization(Blobs(1, seed=0)) is None
    from grood.data import test_transform
    grood_transform = test_transform({"preset": "cifar10", "mean": mean, "std": std})
    assert find_normalization(grood_transform) == (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    postprocessor = GROODPostprocessor(prototype="uniform", seed=3, progress=False)
    postprocessor.setup(trained_net, id_dict, ood_dict)
    candidates = passes.uniform_noise_features(trained_net, image_shape=(3, SIZE, SIZE), mean=mean,
                                                       std=std, seed=3, device="cpu")
    torch.testing.assert_close(postprocessor.ood_prototype, candidates.mean(0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- parameters and sweeps
def test_config_named_parameters_and_sweep():
    config = {"postprocessor": {"name": "grood", "APS_mode": True,
                                "postprocessor_args": {"k": 3, "prototype": "mean"},
                                "postprocessor_sweep": {"k_list": [1, 3], "mixup_lambda": [0.4, 0.6]}}}
    postprocessor = GROODPostprocessor(config, k=2)
    assert postprocessor.params["k"] == 2  # the named parameter wins
    assert postprocessor.params["prototype"] == "mean"  # the config fills what was not named
    assert postprocessor.params["index"] == "exact"  # the default fills the rest
    assert postprocessor.args_dict == {"k": [1, 3], "mixup_lambda": [0.4, 0.6]}
    assert postprocessor.APS_mode is True

    swept = GROODPostprocessor(sweep={"k": [1, 2, 5], "mixup_lambda": [0.3, 0.5, 0.7]})
    assert swept.APS_mode is True and list(swept.args_dict) == ["k", "mixup_lambda"]
    with pytest.raises(ValueError, match="postprocessor_args"):
        GROODPostprocessor({"postprocessor": {"postprocessor_args": {"K": 50}}})
    with pytest.raises(ValueError, match="cannot be swept"):
        GROODPostprocessor(sweep={"batch_size": [1, 2]})
    with pytest.raises(ValueError, match="mixup_lambda"):
        GROODPostprocessor(sweep={"mixup_lambda": [0.5, 1.5]})
    with pytest.raises(ValueError, match="prototype"):
        GROODPostprocessor(prototype="oracle")
    with pytest.raises(ValueError, match="APS mode is on"):
        GROODPostprocessor({"postprocessor": {"APS_mode": True}})


def test_set_hyperparam_list_follows_args_dict_key_order():
    """OpenOOD's evaluator passes [v_key0, v_key1, ...] in args_dict's key order, whatever that order is."""
    first = GROODPostprocessor(sweep={"k": [1, 2], "mixup_lambda": [0.3, 0.5]})
    first.set_hyperparam([2, 0.3])
    assert (first.params["k"], first.params["mixup_lambda"]) == (2, 0.3)
    assert first.get_hyperparam() == {"k": 2, "mixup_lambda": 0.3}

    second = GROODPostprocessor(sweep={"mixup_lambda": [0.3, 0.5], "k": [1, 2]})
    second.set_hyperparam([0.3, 2])
    assert (second.params["k"], second.params["mixup_lambda"]) == (2, 0.3)

    second.set_hyperparam({"k": 1, "fit_on": "correct"})  # the named form may set any sweepable parameter
    assert (second.params["k"], second.params["fit_on"]) == (1, "correct")
    with pytest.raises(ValueError, match="one value per key"):
        second.set_hyperparam([0.3])
    with pytest.raises(ValueError, match="unknown parameter"):
        second.set_hyperparam({"lam": 0.3})
    with pytest.raises(ValueError, match="args_dict is empty"):
        GROODPostprocessor().set_hyperparam([1])


def test_set_hyperparam_refits_only_what_it_needs(monkeypatch):
    index_builds, mixups = [], []
    build_index, mixup_features = detector_module.build_index, passes.mixup_features
    monkeypatch.setattr(detector_module, "build_index",
                        lambda *a, **kw: index_builds.append(a) or build_index(*a, **kw))
    monkeypatch.setattr(passes, "mixup_features",
                        lambda *a, **kw: mixups.append(kw) or mixup_features(*a, **kw))

    net = TinyNet().eval()  # random weights: unsaturated NCP probabilities, so the training gradients differ
    id_dict, ood_dict = loader_dicts()
    train_data, ood_loader = id_dict["train"].dataset, ood_dict["near"]["blobs"]
    n = len(train_data)
    postprocessor = GROODPostprocessor(progress=False, sweep={"k": [1, 2], "mixup_lambda": [0.3, 0.5]})
    postprocessor.setup(net, id_dict, ood_dict)
    assert (len(index_builds), len(mixups), train_data.reads) == (1, 1, 2 * n)  # training pass + mixup pass

    def conf() -> np.ndarray:
        return postprocessor.inference(net, ood_loader, progress=False)[1]

    conf_k1, index, prototype = conf(), postprocessor.detector.index, postprocessor.ood_prototype
    postprocessor.set_hyperparam([2, 0.5])  # k only: the same index, searched for the 2nd neighbour
    assert (len(index_builds), len(mixups), train_data.reads) == (1, 1, 2 * n)
    assert postprocessor.detector.index is index
    conf_k2 = conf()
    assert (conf_k2 <= conf_k1 + 1e-6).all() and (conf_k2 < conf_k1 - 1e-6).any()

    postprocessor.set_hyperparam({"mixup_lambda": 0.3})  # new prototype: a mixup pass, gradients, index
    assert (len(index_builds), len(mixups), train_data.reads) == (2, 2, 3 * n)
    assert mixups[-1]["mixup_lambda"] == 0.3
    assert not torch.equal(postprocessor.ood_prototype, prototype)
    assert postprocessor.detector.k == 2

    prototype = postprocessor.ood_prototype
    conf_exact = conf()
    postprocessor.set_hyperparam({"index": "torch"})  # index only: same prototype, a new index
    assert (len(index_builds), len(mixups), train_data.reads) == (3, 2, 3 * n)
    assert postprocessor.ood_prototype is prototype
    assert type(postprocessor.detector.index).__name__ == "TorchIndex"
    np.testing.assert_allclose(conf(), conf_exact, rtol=1e-4, atol=1e-4)  # both exact searches

    postprocessor.set_hyperparam({"fit_on": "correct"})
    assert (len(index_builds), len(mixups)) == (4, 2)
    assert postprocessor.detector.num_indexed <= n

    postprocessor.set_hyperparam({"k": 2, "index": "torch"})  # nothing changed: nothing re-fitted
    assert (len(index_builds), len(mixups), train_data.reads) == (4, 2, 3 * n)

    postprocessor.set_hyperparam({"split_block": 2})  # new early layer: a pass for its sums, then the mixup
    assert (len(index_builds), len(mixups), train_data.reads) == (5, 3, 5 * n)
    assert postprocessor.network.split_block == 2
    assert postprocessor.train_outputs.early_sums.shape[1:] == (16, SIZE // 2, SIZE // 2)

    postprocessor.set_hyperparam({"prototype": "mean"})
    assert (len(index_builds), len(mixups), train_data.reads) == (6, 3, 5 * n)
    postprocessor.set_hyperparam({"mixup_lambda": 0.5, "seed": 1})  # unused by "mean": nothing to do
    assert (len(index_builds), len(mixups), train_data.reads) == (6, 3, 5 * n)

    with pytest.raises(ValueError, match="exceeds"):
        postprocessor.set_hyperparam({"k": 10_000})
    with pytest.raises(ValueError, match="split_block"):
        postprocessor.set_hyperparam({"split_block": 7})


# --------------------------------------------------------------------------- the network adapter
def test_split_network_passes_through(trained_net):
    net = TinyNet()
    assert as_split_network(net) is net
    assert as_split_network(net, split_block=2) is net and net.split_block == 2
    assert as_split_network(nn.DataParallel(net)) is net


def test_adapter_loads_an_openood_resnet18_32x32_strictly():
    net = randomise_batchnorm(ResNet18_32x32(num_classes=7))
    adapted = as_split_network(net, split_block=2)
    assert adapted is not net and not adapted.training
    assert (adapted.num_classes, adapted.feature_dim, adapted.split_block) == (7, 512, 2)
    for key, value in net.state_dict().items():
        assert torch.equal(adapted.state_dict()[key], value), key
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        logits, features = net(images, return_feature=True)
        ours_logits, ours_features = adapted.forward_features(images)
    torch.testing.assert_close(ours_logits, logits)
    torch.testing.assert_close(ours_features, features)

    class WithExtra(ResNet18_32x32):
        def __init__(self) -> None:
            super().__init__(num_classes=7)
            self.projection = nn.Linear(512, 4)  # a key grood's ResNet18_32x32 does not have

    with pytest.raises(CheckpointMismatchError, match="projection"):
        as_split_network(WithExtra())


@pytest.mark.parametrize("cls", [ResNet18_224x224, ResNet50])
def test_adapter_loads_openood_torchvision_resnets(cls):
    net = randomise_batchnorm(cls(num_classes=5))
    adapted = as_split_network(net)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = net(images, return_feature=True)
        ours_logits, ours_features = adapted.forward_features(images)
    assert adapted.num_classes == 5
    torch.testing.assert_close(ours_logits, logits)
    torch.testing.assert_close(ours_features, features)


@pytest.mark.parametrize("cls", [ViT_B_16, Swin_T])
def test_adapter_loads_openood_transformers(cls):
    net = cls(num_classes=4).eval()
    adapted = as_split_network(net)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits, features = net(images, return_feature=True)
        ours_logits, ours_features = adapted.forward_features(images)
    torch.testing.assert_close(ours_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_features, features, rtol=1e-4, atol=1e-4)


def test_unsupported_networks_raise_type_error():
    with pytest.raises(TypeError, match="SplitNetwork") as error:
        as_split_network(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    assert "ResNet18_32x32" in str(error.value) and "Swin_T" in str(error.value)

    class ResNet18_32x32(nn.Module):  # noqa: N801 - the right name, but not OpenOOD's module
        pass

    with pytest.raises(TypeError, match="cannot split"):
        as_split_network(ResNet18_32x32())


# --------------------------------------------------------------------------- OpenOOD's own Evaluator
def _write_openood_data_root(root, data_info: dict, image_dirs) -> None:
    """A tiny data root in OpenOOD v1.5's layout holding every list ``data_info`` names (PNG images)."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for folder in image_dirs:  # a non-empty folder per dataset, else OpenOOD's data_setup downloads it
        (root / "images_classic" / folder).mkdir(parents=True, exist_ok=True)
        (root / "images_classic" / folder / "placeholder.txt").write_text("test data root\n")

    def write_list(spec: dict, name: str, labels: list[int]) -> None:
        lines = []
        for position, label in enumerate(labels):
            relative = f"{name}/{position}.png"
            path = root / spec["data_dir"] / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(generator.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            lines.append(f"{relative} {label}\n")
        list_path = root / spec["imglist_path"]
        list_path.parent.mkdir(parents=True, exist_ok=True)
        list_path.write_text("".join(lines))

    num_classes = data_info["num_classes"]
    for split, spec in data_info["id"].items():
        write_list(spec, f"id_{split}", [c for c in range(num_classes) for _ in range(2)])
    for name in data_info["csid"]["datasets"]:
        write_list(data_info["csid"][name], f"csid_{name}", list(range(num_classes)))
    write_list(data_info["ood"]["val"], "ood_val", [-1] * 6)
    for group in ("near", "far"):
        for name in data_info["ood"][group]["datasets"]:
            write_list(data_info["ood"][group][name], f"ood_{name}", [-1] * 6)


def test_openood_evaluator_runs_grood(tmp_path):
    """OpenOOD's own Evaluator drives GROODPostprocessor (needs openood, and CUDA: the Evaluator calls .cuda())."""
    pytest.importorskip("openood")
    if not torch.cuda.is_available():
        pytest.skip("OpenOOD's Evaluator moves batches with .cuda(); no CUDA device here")
    from openood.evaluation_api import Evaluator
    from openood.evaluation_api import datasets as openood_datasets
    from openood.evaluation_api.preprocessor import get_default_preprocessor

    benchmarks = getattr(openood_datasets, "benchmarks_dict", {}).get("cifar10", [])
    _write_openood_data_root(tmp_path, openood_datasets.DATA_INFO["cifar10"],
                             ["cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365", *benchmarks])
    net = as_split_network(ResNet18_32x32(num_classes=10)).cuda().eval()
    postprocessor = GROODPostprocessor(prototype="mean", progress=False, sweep={"k": [1, 2]})
    evaluator = Evaluator(net, id_name="cifar10", data_root=str(tmp_path), config_root=str(tmp_path / "configs"),
                          preprocessor=get_default_preprocessor("cifar10"), postprocessor=postprocessor,
                          batch_size=8, shuffle=False, num_workers=0)
    assert postprocessor.hyperparam_search_done
    metrics = evaluator.eval_ood(fsood=False)
    assert {"FPR@95", "AUROC"} <= set(metrics.columns) and np.isfinite(metrics["AUROC"].to_numpy()).all()


# --------------------------------------------------------------------------- any network, by layer name
def _evaluator_calls(postprocessor: GROODPostprocessor, net: nn.Module, id_dict, ood_dict) -> dict:
    """The calls OpenOOD v1.5's Evaluator makes (evaluation_api/evaluator.py): setup; in APS mode one
    positional set_hyperparam per combination of args_dict's lists (in its key order), inference on ID val
    and OOD val, the best AUROC set again; then inference on every test loader."""
    postprocessor.setup(net, id_dict, ood_dict)
    if postprocessor.APS_mode and not postprocessor.hyperparam_search_done:
        names = list(postprocessor.args_dict)
        combinations = [[]]
        for name in names:
            combinations = [c + [value] for c in combinations for value in postprocessor.args_dict[name]]
        aurocs = []
        for combination in combinations:
            postprocessor.set_hyperparam(combination)
            _, id_conf, _ = postprocessor.inference(net, id_dict["val"], False)
            _, ood_conf, _ = postprocessor.inference(net, ood_dict["val"], False)
            aurocs.append(auroc(torch.from_numpy(id_conf), torch.from_numpy(ood_conf)))
        postprocessor.set_hyperparam(combinations[int(np.argmax(aurocs))])
        postprocessor.hyperparam_search_done = True
    loaders = {"id": id_dict["test"], **{name: dl for group in ("near", "far") for name, dl in ood_dict[group].items()}}
    return {name: postprocessor.inference(net, dl, False) for name, dl in loaders.items()}


def test_a_wrapped_torchvision_network_runs_through_the_evaluators_calls():
    """A torchvision ResNet-18 (no grood or OpenOOD class) split by layer name, on CPU, as the Evaluator drives it."""
    from grood.backbones import WrappedNetwork, wrap

    torch.manual_seed(0)
    net = randomise_batchnorm(torchvision.models.resnet18(num_classes=NUM_CLASSES))
    id_dict, ood_dict = loader_dicts(per_class=4)
    with pytest.raises(TypeError, match="early_layer, feature_layer and head_layer"):
        GROODPostprocessor(progress=False).setup(net, id_dict, ood_dict)
    postprocessor = GROODPostprocessor(early_layer="layer1", feature_layer="avgpool", head_layer="fc",
                                       progress=False, sweep={"k": [1, 2], "prototype": ["mixup", "val_ood"]})
    results = _evaluator_calls(postprocessor, net, id_dict, ood_dict)
    assert isinstance(postprocessor.network, WrappedNetwork) and postprocessor.network.model is net
    assert postprocessor.hyperparam_search_done
    chosen = postprocessor.get_hyperparam()
    assert chosen["k"] in (1, 2) and chosen["prototype"] in ("mixup", "val_ood")

    pred, conf, label = results["id"]
    count = len(id_dict["test"].dataset)
    assert pred.shape == conf.shape == label.shape == (count,) and conf.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_array_equal(pred, net(id_dict["test"].dataset.images).argmax(1).numpy())
    assert set(results) == {"id", "blobs"} and (results["blobs"][2] == -1).all()

    # the same numbers as the library on the same split network: the one GROOD and the strategy registry
    network = wrap(net, "layer1", "avgpool", "fc")
    train_data = id_dict["train"].dataset
    pairs = [(train_data.images[i], int(train_data.labels[i])) for i in range(len(train_data))]
    outputs = forward_pass(network, DataLoader(pairs, batch_size=5), num_classes=NUM_CLASSES, accumulate_early=True,
                           device="cpu", progress=False)
    protos = class_prototypes(outputs.features.features, outputs.features.labels, NUM_CLASSES)
    inputs = passes.prototype_inputs(
        protos, network=network, device="cpu",
        training=lambda: passes.TrainingPass(pairs, outputs.features.logits, outputs.features.labels,
                                             outputs.early_prototypes()),
        val_ood=lambda: passes.ImageItems(ood_dict["val"].dataset, "val"))
    p_ood = strategies.build_ood_prototype(chosen["prototype"], inputs)
    torch.testing.assert_close(postprocessor.ood_prototype, p_ood, rtol=1e-5, atol=1e-6)
    detector = GROOD(device="cpu", k=chosen["k"]).fit(outputs.features, ood_prototype=p_ood)
    with torch.no_grad():
        expected = detector.score(network.mid(network.early(id_dict["test"].dataset.images)))
    # float32: other batch sizes, FAISS's squared distances (|a|^2 + |b|^2 - 2ab) near 0
    np.testing.assert_allclose(conf, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_names_are_checked():
    with pytest.raises(ValueError, match="early_layer=3"):
        GROODPostprocessor(early_layer=3)
    with pytest.raises(TypeError, match="unexpected keyword argument .num_mixup_image."):
        GROODPostprocessor(num_mixup_image=4)
    id_dict, ood_dict = loader_dicts(per_class=2)
    with pytest.raises(ValueError, match="needs early_layer and head_layer"):
        GROODPostprocessor(early_layer="layer1", progress=False).setup(torchvision.models.resnet18(), id_dict, ood_dict)
    with pytest.raises(ValueError, match="already a grood SplitNetwork"):
        GROODPostprocessor(early_layer="stem", head_layer="fc", progress=False).setup(TinyNet(), id_dict, ood_dict)
    with pytest.raises(ValueError, match=r"valid names: conv1"):
        GROODPostprocessor(early_layer="layer9", head_layer="fc", progress=False).setup(
            torchvision.models.resnet18(), id_dict, ood_dict)
    with pytest.raises(ValueError, match="oracle prototype needs its images held out"):
        GROODPostprocessor(prototype="local_oracle")


def test_corrupted_prototype_reads_the_id_validation_images(trained_net):
    """'corrupted' (appendix A.2), from id_loader_dict['val'], as the registry computes it."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    id_dict, ood_dict = loader_dicts()
    id_dict["train"].dataset.preprocessor = _Preprocessor(mean, std)
    with pytest.raises(ValueError, match=r"passes no real corrupted ID images.*source='synthetic'"):
        GROODPostprocessor(prototype="corrupted", progress=False).setup(trained_net, id_dict, ood_dict)
    postprocessor = GROODPostprocessor(prototype="corrupted", source="synthetic", num_images=6, seed=2,
                                       progress=False)
    postprocessor.setup(trained_net, id_dict, ood_dict)
    val = id_dict["val"].dataset
    candidates = passes.corrupted_id_features(
        trained_net, [(val.images[i], int(val.labels[i])) for i in range(len(val))], val.labels, mean=mean,
        std=std, num_images=6, seed=2, device="cpu")
    torch.testing.assert_close(postprocessor.ood_prototype, candidates.mean(0), rtol=1e-5, atol=1e-6)
    del id_dict["val"]
    with pytest.raises(ValueError, match=r"id_loader_dict\['val'\]"):
        GROODPostprocessor(prototype="corrupted", source="synthetic", progress=False).setup(trained_net, id_dict,
                                                                                           ood_dict)
