"""grood.wrap: any classifier split by layer name (grood/backbones/wrap.py), random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import grood
from grood.backbones import SplitNetwork
from grood.backbones.wrap import SplitError, WrappedNetwork


class UserCNN(nn.Module):
    """A user's own classifier: no grood base class, a functional pooling and flatten in its forward."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor, return_feature: bool = False) -> torch.Tensor:
        h = self.pool(self.block2(self.block1(self.stem(x))))
        h = self.dropout(h.view(h.size(0), -1))
        logits = self.classifier(h)
        return (logits, h) if return_feature else logits


class SkipCNN(UserCNN):
    """A skip connection from the stem's output around block1: no split at block1 is possible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = self.block1(s) + F.avg_pool2d(s, 2).repeat(1, 2, 1, 1)
        return self.classifier(self.pool(self.block2(h)).flatten(1))


#: (model factory, early_layer, feature_layer, head_layer, image side, expected D)
FAMILIES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), "layer1", "avgpool", "fc", 32, 512),
    "vit_b_16": (lambda: torchvision.models.vit_b_16(num_classes=5), "encoder.layers.encoder_layer_0", None,
                 "heads", 224, 768),
    "swin_t": (lambda: torchvision.models.swin_t(num_classes=5), "features.1", "avgpool", "head", 32, 768),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=5), "features.1", None, "classifier.2",
                      32, 768),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=5), "features.1", "avgpool",
                        "classifier", 32, 1280),
    "user_cnn": (lambda: UserCNN(num_classes=5), "block1", "pool", "classifier", 32, 32),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny batches: torch's intra-op threads only add overhead on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, model in eval mode with random weights, wrapped network, images [2, 3, S, S])."""
    factory, early, feature, head, side, dim = FAMILIES[request.param]
    torch.manual_seed(0)
    model = factory().eval()
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    return request.param, model, grood.wrap(model, early, feature, head), images, dim


@torch.no_grad()
def test_split_equals_the_model(family):
    name, model, network, images, dim = family
    assert isinstance(network, SplitNetwork) and isinstance(network, WrappedNetwork)
    h_early = network.early(images)
    h_pen = network.mid(h_early)
    logits = network.head(h_pen)
    assert h_pen.shape == (2, dim)
    assert torch.allclose(logits, model(images)), name
    assert torch.equal(network(images), logits)
    all_logits, all_pen, all_early = network.forward_all(images)
    assert torch.equal(all_logits, logits) and torch.equal(all_pen, h_pen) and torch.equal(all_early, h_early)
    head = network.linear_head()  # the final Linear: its affine map is the head
    assert torch.allclose(h_pen @ head.weight.T + head.bias, logits, atol=1e-5)
    assert (network.num_classes, network.feature_dim) == (5, dim)


def test_wrap_shares_the_parameters_and_follows_the_mode():
    model = UserCNN().train()
    network = grood.wrap(model, "block1", "pool", "classifier")
    assert network.training and model.training
    network.eval()
    assert not model.training
    assert {id(p) for p in network.parameters()} == {id(p) for p in model.parameters()}
    assert set(network.state_dict()) == {f"model.{key}" for key in model.state_dict()}
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)  # a change to the model is a change to the split network
        assert torch.allclose(network(images), model(images))
    # gradients flow through the split network (ODIN's input perturbation needs them)
    images.requires_grad_(True)
    network.head(network.mid(network.early(images))).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # split_block is fixed at the early layer
    assert network.split_block == 0 and network.block_names == ("block1",)
    with pytest.raises(ValueError, match="after block1"):
        network.split_block = 1


def test_the_feature_may_be_the_head_layers_input():
    model = UserCNN().eval()
    images = torch.randn(2, 3, 16, 16)
    by_input = grood.wrap(model, "block1", None, "classifier")
    by_layer = grood.wrap(model, "block1", "pool", "classifier")
    with torch.no_grad():
        assert torch.equal(by_input.mid(by_input.early(images)), by_layer.mid(by_layer.early(images)))
        assert torch.equal(by_input.mid(by_input.early(images)), model(images, return_feature=True)[1])


def test_unknown_or_unsplittable_names_list_the_valid_ones():
    model = torchvision.models.resnet18()
    with pytest.raises(SplitError, match=r"'layerX' is not a submodule of ResNet; valid names: conv1, .*layer1, "
                                         r"layer1\.0, .*avgpool, fc"):
        grood.wrap(model, early_layer="layerX")
    with pytest.raises(SplitError, match=r"feature_layer='layer1' must lie between.*valid names: conv1"):
        grood.wrap(model, early_layer="layer2", feature_layer="layer1")
    model.unused = nn.Linear(2, 2)
    with pytest.raises(SplitError, match="does not call"):
        grood.wrap(model, head_layer="unused")
    with pytest.raises(SplitError, match="head_layer='classifier.2'.*layer_norm.*feature_layer=None"):
        grood.wrap(torchvision.models.convnext_tiny(), "features.1", "avgpool", "classifier.2")
    with pytest.raises(SplitError, match="skip connection"):
        grood.wrap(SkipCNN(), "block1", "pool", "classifier")
    assert grood.wrap(SkipCNN(), "block2", "pool", "classifier").split_block == 0  # after the skip: fine


def test_models_that_cannot_be_traced_or_split_say_why():
    class DataDependent(UserCNN):
        def forward(self, x):
            h = self.pool(self.block2(self.block1(self.stem(x)))).flatten(1)
            if h.sum() > 0:  # control flow on a tensor value: not traceable
                h = -h
            return self.classifier(h)

    with pytest.raises(SplitError, match="cannot trace DataDependent.forward"):
        grood.wrap(DataDependent(), "block1", "pool", "classifier")

    class TwoOutputs(UserCNN):
        def forward(self, x):
            h = self.pool(self.block2(self.block1(self.stem(x)))).flatten(1)
            return self.classifier(h), h

    with pytest.raises(SplitError, match="returns tuple"):
        grood.wrap(TwoOutputs(), "block1", "pool", "classifier")

    class Twice(UserCNN):
        def forward(self, x):
            return self.classifier(self.pool(self.block2(self.block1(self.stem(self.stem[0](x)[:, :3])))).flatten(1))

    with pytest.raises(SplitError, match="called 2 times"):
        grood.wrap(Twice(), "stem.0", None, "classifier")

    class Scaled(UserCNN):  # something after the head layer: head() runs it, but there is no linear head
        def forward(self, x):
            return self.classifier(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1)) / 2.0

    scaled = grood.wrap(Scaled().eval(), "block1", "pool", "classifier")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(scaled.head(scaled.mid(scaled.early(images))), scaled.model(images))
    with pytest.raises(TypeError, match="computes more after it"):
        scaled.linear_head()
    with pytest.raises(TypeError, match="nn.Module"):
        grood.wrap(lambda x: x)


def test_a_head_layer_without_flat_input_is_refused_at_run_time():
    network = grood.wrap(UserCNN().eval(), "stem", None, "block2")  # block2 receives [N, 16, H, W]
    with pytest.raises(SplitError, match=r"input of head_layer='block2' has shape \(1, 16, 8, 8\), not \[N, D\]"):
        network.mid(network.early(torch.randn(1, 3, 16, 16)))


@torch.no_grad()
def test_grood_end_to_end_on_the_wrapped_network(family):
    """Fit, mixup OOD prototype (eq. 9) and score with the one GROOD on each wrapped network."""
    from torch.utils.data import DataLoader

    from grood.features import forward_pass
    from grood.method import GROOD
    from grood.method.prototypes import class_prototypes
    from grood.method.strategies import build_ood_prototype
    from grood.prototype_inputs import TrainingPass, prototype_inputs

    name, model, network, images, dim = family
    generator = torch.Generator().manual_seed(2)
    count = 5 if name == "vit_b_16" else 10  # every one of the 5 classes needs a training image (eq. 7)
    train_images = torch.randn(count, 3, *images.shape[2:], generator=generator)
    labels = torch.arange(count) % 5
    dataset = list(zip(train_images, labels.tolist()))
    outputs = forward_pass(network, DataLoader(dataset, batch_size=5), num_classes=5, accumulate_early=True,
                           device="cpu", progress=False)
    train = outputs.features
    protos = class_prototypes(train.features, train.labels, 5)
    inputs = prototype_inputs(protos, network=network, device="cpu", batch_size=5,
                              training=lambda: TrainingPass(dataset, train.logits, train.labels,
                                                            outputs.early_prototypes()))
    p_ood = build_ood_prototype("mixup", inputs)
    # eq. 9 by hand on the split network: mid(0.5 early(x) + 0.5 p_early[c2])
    second = train.logits.topk(2, dim=1).indices[:, 1]
    mixed = 0.5 * network.early(train_images) + 0.5 * outputs.early_prototypes()[second].float()
    torch.testing.assert_close(p_ood, network.mid(mixed).mean(0), rtol=1e-4, atol=1e-5)

    detector = GROOD(device="cpu").fit(train, ood_prototype=p_ood, class_prototypes=protos)
    assert detector.score(train).abs().max() < 1e-3  # a training sample's own gradient is indexed
    test_scores = detector.score(network.mid(network.early(images)))
    assert test_scores.shape == (2,) and torch.isfinite(test_scores).all() and (test_scores < 0).all()
