"""grood.backbones: the split interface (eq. 1), every network's shapes and forward, OpenOOD/akamaster key
layouts, checkpoint loading and its errors. Random weights and tiny inputs, except the shared ResNet-20."""

from __future__ import annotations

import hashlib
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from grood.backbones import (
    CheckpointMismatchError,
    ResNet18_224x224,
    ResNet50,
    SplitNetwork,
    SwinT,
    ViTB16,
    backbone_names,
    build_backbone,
    load_checkpoint,
    sha256_of_file,
)
from grood.featureset import LinearHead

ALL = ["resnet18_32x32", "resnet18_224x224", "resnet50", "vit_b_16", "swin_t",
       "resnet20", "resnet32", "resnet44", "resnet56"]
TORCHVISION_ARCH = {"resnet18_224x224": "resnet18", "resnet50": "resnet50", "vit_b_16": "vit_b_16",
                    "swin_t": "swin_t"}
WRAPPER_CLASS = {"resnet18_224x224": ResNet18_224x224, "resnet50": ResNet50, "vit_b_16": ViTB16, "swin_t": SwinT}
NUM_CLASSES = {"resnet18_32x32": 10, "resnet18_224x224": 200, "resnet50": 1000, "vit_b_16": 1000, "swin_t": 1000,
               "resnet20": 10, "resnet32": 10, "resnet44": 10, "resnet56": 10}
FEATURE_DIM = {"resnet18_32x32": 512, "resnet18_224x224": 512, "resnet50": 2048, "vit_b_16": 768, "swin_t": 768,
               "resnet20": 64, "resnet32": 64, "resnet44": 64, "resnet56": 64}
NUM_BLOCKS = {"resnet18_32x32": 4, "resnet18_224x224": 4, "resnet50": 4, "vit_b_16": 12, "swin_t": 4,
              "resnet20": 3, "resnet32": 3, "resnet44": 3, "resnet56": 3}
# h_early shape (without batch) at the default split, for the input side used in these tests
DEFAULT_EARLY_SHAPE = {"resnet18_32x32": (64, 32, 32), "resnet18_224x224": (64, 16, 16),
                       "resnet50": (256, 16, 16), "vit_b_16": (197, 768), "swin_t": (16, 16, 96),
                       "resnet20": (16, 32, 32), "resnet32": (16, 32, 32), "resnet44": (16, 32, 32),
                       "resnet56": (16, 32, 32)}
SIDE = {"resnet18_32x32": 32, "resnet20": 32, "resnet32": 32, "resnet44": 32, "resnet56": 32,
        "resnet18_224x224": 64, "resnet50": 64, "swin_t": 64, "vit_b_16": 224}


def _images(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIDE[name], SIDE[name])


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """One intra-op thread while this module runs, restored after: on a shared 2-core machine, torch's
    spinning worker threads made these many small forward passes ~10x slower (140 s vs 14 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchvision_pairs() -> dict[str, tuple[torch.nn.Module, SplitNetwork]]:
    """(torchvision model, grood wrapper sharing its modules) per wrapped net, random weights, eval mode.

    Built once per module: ViT-B-16 alone takes ~1.5 s to initialise on a CPU.
    """
    torch.manual_seed(0)
    pairs = {}
    for name, arch in TORCHVISION_ARCH.items():
        reference = torchvision.models.get_model(arch, num_classes=NUM_CLASSES[name]).eval()
        pairs[name] = (reference, WRAPPER_CLASS[name](model=reference).eval())
    return pairs


@pytest.fixture(scope="module")
def networks(torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]]) -> dict[str, SplitNetwork]:
    """Each backbone once, random weights, eval mode."""
    torch.manual_seed(0)
    built = {name: build_backbone(name).eval() for name in ALL if name not in TORCHVISION_ARCH}
    built.update({name: wrapper for name, (_, wrapper) in torchvision_pairs.items()})
    return built


# ----------------------------------------------------------------------------- interface and shapes
def test_registry_lists_every_backbone() -> None:
    assert sorted(backbone_names()) == sorted([*ALL, "module"])  # module: any factory (tests/test_module_backbone.py)


@pytest.mark.parametrize("name", ALL)
def test_build_backbone_gives_the_registered_class_with_its_keys(
    torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]], name: str
) -> None:
    """``build_backbone`` (num_classes=7) builds the class the tests below exercise, with the same keys."""
    net = build_backbone(name, num_classes=7)
    assert net.num_classes == 7 and net.split_block == 1 and net.training
    if name in TORCHVISION_ARCH:
        reference, wrapper = torchvision_pairs[name]
        assert type(net) is type(wrapper)
        assert list(net.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_composition(networks: dict[str, SplitNetwork], name: str) -> None:
    batch = 1 if name == "vit_b_16" else 2  # one 224x224 image for ViT-B-16
    net, x = networks[name], _images(name, batch)
    c, d = NUM_CLASSES[name], FEATURE_DIM[name]
    with torch.no_grad():
        logits = net(x)
        logits_all, h_pen, h_early = net.forward_all(x)  # = early, then mid, then head
        logits_ff, h_pen_ff = net.forward_features(x)
    assert net.split_block == 1 and net.num_blocks == NUM_BLOCKS[name]
    assert (net.num_classes, net.feature_dim) == (c, d)
    assert tuple(logits.shape) == (batch, c) and tuple(h_pen.shape) == (batch, d)
    assert tuple(h_early.shape) == (batch, *DEFAULT_EARLY_SHAPE[name])
    assert tuple(net.fc_weight.shape) == (c, d) and tuple(net.fc_bias.shape) == (c,)
    torch.testing.assert_close(logits_all, logits)
    torch.testing.assert_close(net.head(h_pen), logits)
    torch.testing.assert_close(logits_ff, logits)
    torch.testing.assert_close(h_pen_ff, h_pen)
    head = net.linear_head()
    assert isinstance(head, LinearHead) and not head.weight.requires_grad
    torch.testing.assert_close(head(h_pen), logits, rtol=1e-4, atol=1e-4)
    assert len(net.input_mean) == 3 and len(net.input_std) == 3 and min(net.input_std) > 0


@pytest.mark.parametrize("name", [n for n in ALL if n not in TORCHVISION_ARCH])
def test_logits_depend_on_the_input(networks: dict[str, SplitNetwork], name: str) -> None:
    """Guards against a composition that ignores its input (e.g. a split that drops the early maps)."""
    net, x = networks[name], _images(name)
    with torch.no_grad():
        assert not torch.allclose(net(x[:1]), net(x[1:]))
        assert not torch.allclose(net.mid(net.early(x[:1])), net.mid(2 * net.early(x[:1])))


def _splits(name: str, num_blocks: int) -> list[int]:
    """Every split, except ViT's 13 (each a full 224x224 forward): first, default, last."""
    return [0, 1, 12] if name == "vit_b_16" else list(range(num_blocks + 1))


@pytest.mark.parametrize("name", [n for n in ALL if n not in TORCHVISION_ARCH])
def test_every_split_composes_to_the_same_forward(networks: dict[str, SplitNetwork], name: str) -> None:
    """grood's own nets; the torchvision ones are checked against torchvision's forward below."""
    net, x = networks[name], _images(name, batch=1)
    with torch.no_grad():
        reference = net(x)
        previous = None
        try:
            for k in _splits(name, net.num_blocks):
                net.split_block = k
                h_early = net.early(x)
                torch.testing.assert_close(net.head(net.mid(h_early)), reference, rtol=1e-4, atol=1e-5)
                # each split moves one block from mid into early
                assert previous is None or h_early.shape != previous.shape or not torch.equal(h_early, previous)
                previous = h_early
        finally:
            net.split_block = None
    assert net.split_block == 1


@pytest.mark.parametrize("name", sorted(TORCHVISION_ARCH))
def test_wrapped_nets_equal_torchvision(
    torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]], name: str
) -> None:
    """The split forward equals torchvision's own forward at every split; the keys are torchvision's."""
    reference, net = torchvision_pairs[name]
    assert list(net.state_dict()) == list(reference.state_dict())
    x = _images(name, batch=1)
    with torch.no_grad():
        expected = reference(x)
        try:
            for k in _splits(name, net.num_blocks):
                net.split_block = k
                torch.testing.assert_close(net.head(net.mid(net.early(x))), expected, rtol=1e-4, atol=1e-5)
        finally:
            net.split_block = None


@pytest.mark.slow
def test_vit_every_split_equals_torchvision(torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]]) -> None:
    reference, net = torchvision_pairs["vit_b_16"]
    x = _images("vit_b_16", batch=1)
    with torch.no_grad():
        expected = reference(x)
        try:
            for k in range(net.num_blocks + 1):
                net.split_block = k
                torch.testing.assert_close(net.head(net.mid(net.early(x))), expected, rtol=1e-4, atol=1e-5)
        finally:
            net.split_block = None


def test_state_dict_from_torchvision_loads_strictly_and_is_used() -> None:
    """A separately built torchvision net's state dict drives a separately built grood net."""
    reference = torchvision.models.resnet18(num_classes=200).eval()
    net = build_backbone("resnet18_224x224").eval()
    net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))


def test_vit_early_tokens_are_the_first_encoder_block_output(
    torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]]
) -> None:
    """Default split: tokens (class token first, positional embedding added) after encoder block 0."""
    reference, net = torchvision_pairs["vit_b_16"]
    x = _images("vit_b_16", batch=1)
    with torch.no_grad():
        tokens = torch.cat([reference.class_token.expand(1, -1, -1), reference._process_input(x)], dim=1)
        torch.testing.assert_close(net.early(x), reference.encoder.layers[0](tokens + reference.encoder.pos_embedding))
        torch.testing.assert_close(net.forward_features(x)[1], reference.encoder(tokens)[:, 0])  # adds pos itself


def test_swin_early_is_the_first_stage_output(
    torchvision_pairs: dict[str, tuple[torch.nn.Module, SplitNetwork]]
) -> None:
    reference, net = torchvision_pairs["swin_t"]
    x = _images("swin_t", batch=1)
    with torch.no_grad():
        torch.testing.assert_close(net.early(x), reference.features[1](reference.features[0](x)))


def test_mixing_early_maps_runs_through_mid(networks: dict[str, SplitNetwork]) -> None:
    """GROOD's eq. 9 input: ``f_mid(λ f_early(x) + (1-λ) p_early)`` with a prototype of the early shape."""
    net = networks["resnet20"]
    x = _images("resnet20", batch=4)
    with torch.no_grad():
        h_early = net.early(x)
        prototype = h_early.mean(0, keepdim=True)
        mixed = net.mid(0.5 * h_early + 0.5 * prototype)
    assert tuple(mixed.shape) == (4, 64) and torch.isfinite(mixed).all()


def test_split_block_constructor_argument(networks: dict[str, SplitNetwork]) -> None:
    net = build_backbone("resnet18_32x32", split_block=3).eval()
    with torch.no_grad():
        assert tuple(net.early(_images("resnet18_32x32")).shape) == (2, 256, 8, 8)
    assert net.split_block == 3


def test_gradients_flow_through_the_split() -> None:
    net = build_backbone("resnet20")
    net(_images("resnet20")).sum().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(networks: dict[str, SplitNetwork], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32, comparable to the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for name in ALL:
        net, x = networks[name], _images(name)
        with torch.no_grad():
            expected = net(x)
            logits, h_pen, h_early = net.to("cuda").forward_all(x.to("cuda"))
        net.to("cpu")
        assert logits.device.type == "cuda" and h_early.device.type == "cuda"
        torch.testing.assert_close(logits.cpu(), expected, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- OpenOOD key layouts
def _bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def openood_resnet18_32x32_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of OpenOOD v1.5 ``openood/networks/resnet18_32x32.py``, typed from its source: 3x3 stride-1
    conv1, layer1..4 of 2 BasicBlocks (conv1/bn1/conv2/bn2, projection ``shortcut.0``/``shortcut.1`` where the
    shape changes), fc."""
    keys = {"conv1.weight": (64, 3, 3, 3), **_bn_keys("bn1", 64)}
    in_planes = 64
    for layer, planes in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys[f"{p}.conv1.weight"] = (planes, in_planes, 3, 3)
            keys.update(_bn_keys(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn_keys(f"{p}.bn2", planes))
            if in_planes != planes:
                keys[f"{p}.shortcut.0.weight"] = (planes, in_planes, 1, 1)
                keys.update(_bn_keys(f"{p}.shortcut.1", planes))
            in_planes = planes
    keys.update({"fc.weight": (num_classes, 512), "fc.bias": (num_classes,)})
    return keys


def openood_resnet18_224x224_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """OpenOOD v1.5 ``openood/networks/resnet18_224x224.py`` = torchvision ResNet-18: 7x7 conv1, projection
    shortcuts named ``downsample.0``/``downsample.1``, fc."""
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64)}
    in_planes = 64
    for layer, planes in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys[f"{p}.conv1.weight"] = (planes, in_planes, 3, 3)
            keys.update(_bn_keys(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn_keys(f"{p}.bn2", planes))
            if in_planes != planes:
                keys[f"{p}.downsample.0.weight"] = (planes, in_planes, 1, 1)
                keys.update(_bn_keys(f"{p}.downsample.1", planes))
            in_planes = planes
    keys.update({"fc.weight": (num_classes, 512), "fc.bias": (num_classes,)})
    return keys


def random_state_dict(spec: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Well-scaled random tensors for a key -> shape spec (BN variances positive, He-scaled convs)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn1.weight") or key.endswith("bn2.weight") or key.endswith(".1.weight"):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = 0.1 * torch.randn(shape, generator=g)
    return out


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def openood_resnet18_32x32_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """OpenOOD's ResNet18_32x32.forward written functionally from its source (independent of grood)."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=1, padding=1), sd, "bn1"))
    for layer, stride in zip((1, 2, 3, 4), (1, 2, 2, 2)):
        for block in (0, 1):
            p, s = f"layer{layer}.{block}", stride if block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn1"))
            y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                out = _bn(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=s), sd, f"{p}.shortcut.1")
            out = F.relu(y + out)
    return F.linear(out.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def akamaster_resnet_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """akamaster's CIFAR ResNet-(6n+2) forward with option-A shortcuts, written functionally."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for layer, (planes, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
        for block in range(n):
            p, s = f"layer{layer}.{block}", stride if block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn1"))
            y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if s != 1:
                out = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            out = F.relu(y + out)
    return F.linear(out.mean(dim=(2, 3)), sd["linear.weight"], sd["linear.bias"])


def test_openood_resnet18_32x32_checkpoint_loads_strictly_and_matches_its_forward(tmp_path: Path) -> None:
    spec = openood_resnet18_32x32_keys(num_classes=10)
    state = random_state_dict(spec)
    path = tmp_path / "cifar10_resnet18_32x32_base_e100_lr0.1_default" / "s0" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)  # OpenOOD saves a plain state dict
    net = build_backbone("resnet18_32x32", num_classes=10, checkpoint=path).eval()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), openood_resnet18_32x32_reference(state, x), rtol=1e-4, atol=1e-4)
    assert int(net.layer2[0].shortcut[1].num_batches_tracked) == 7


def test_openood_resnet18_224x224_checkpoint_loads_strictly(tmp_path: Path) -> None:
    spec = openood_resnet18_224x224_keys(num_classes=200)
    state = random_state_dict(spec, seed=1)
    path = tmp_path / "best.ckpt"
    torch.save(state, path)
    net = build_backbone("resnet18_224x224", num_classes=200, checkpoint=path).eval()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == spec
    torch.testing.assert_close(net.fc_weight.detach(), state["fc.weight"])
    reference = torchvision.models.resnet18(num_classes=200).eval()
    reference.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the shared ResNet-20
def test_shared_resnet20_loads_strictly(resnet20_checkpoint: Path) -> None:
    net = build_backbone("resnet20", num_classes=10, checkpoint=resnet20_checkpoint).eval()
    assert sum(p.numel() for p in net.parameters()) == 269_722
    raw = torch.load(resnet20_checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "best_prec1"}
    state = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    torch.testing.assert_close(net.linear.weight.detach(), state["linear.weight"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), akamaster_resnet_reference(state, x, n=3), rtol=1e-4, atol=1e-4)


def test_shared_resnet20_classifies_real_cifar10_images(resnet20_checkpoint: Path, smoke_data_root: Path) -> None:
    """200 test images (every 10th line, 20 per class), ImageNet mean/std as the checkpoint expects."""
    lines = (smoke_data_root / "benchmark_imglist" / "cifar10" / "test_cifar10.txt").read_text().split("\n")
    lines = [line for line in lines if line.strip()][::10]
    net = build_backbone("resnet20", checkpoint=resnet20_checkpoint).eval()
    mean = torch.tensor(net.input_mean).view(3, 1, 1)
    std = torch.tensor(net.input_std).view(3, 1, 1)
    images, labels = [], []
    for line in lines:
        relative, label = line.split()
        rgb = np.array(Image.open(smoke_data_root / "images_classic" / relative).convert("RGB"))
        images.append((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - mean) / std)
        labels.append(int(label))
    assert len(labels) == 200 and len(set(labels)) == 10
    with torch.no_grad():
        predictions = net(torch.stack(images)).argmax(1)
    accuracy = (predictions == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.70, f"ResNet-20 accuracy {accuracy:.3f} on 200 JPEG test images (expected ~0.8)"


# ----------------------------------------------------------------------------- checkpoint layouts
@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "net", "module", "compiled", "nested"])
def test_load_checkpoint_accepts_common_layouts(tmp_path: Path, layout: str) -> None:
    source = build_backbone("resnet20", num_classes=5)
    state = source.state_dict()
    wrapped = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "net": {"net": state},
        "module": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 90.0},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "nested": {"model": {"state_dict": {f"module.{k}": v for k, v in state.items()}}},
    }[layout]
    path = tmp_path / "weights.pth"
    torch.save(wrapped, path)
    target = build_backbone("resnet20", num_classes=5)
    assert target is load_checkpoint(target, path)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_missing_num_batches_tracked_is_accepted(tmp_path: Path) -> None:
    state = {k: v for k, v in build_backbone("resnet20").state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    load_checkpoint(build_backbone("resnet20"), tmp_path / "old.pth")


def test_sha256_of_file_streams(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    (tmp_path / "blob").write_bytes(payload)
    assert sha256_of_file(tmp_path / "blob", chunk_bytes=1000) == hashlib.sha256(payload).hexdigest()


# ----------------------------------------------------------------------------- bad inputs
def test_mismatched_architecture_lists_missing_and_unexpected_keys(resnet20_checkpoint: Path) -> None:
    with pytest.raises(CheckpointMismatchError) as error:
        build_backbone("resnet32", checkpoint=resnet20_checkpoint)
    message = str(error.value)
    assert str(resnet20_checkpoint) in message and "ResNet32" in message
    assert "missing keys" in message and "layer1.3.conv1.weight" in message
    with pytest.raises(CheckpointMismatchError) as error:
        build_backbone("resnet18_32x32", checkpoint=resnet20_checkpoint)
    message = str(error.value)
    assert "32 unexpected keys" in message and "layer1.2.conv1.weight" in message  # blocks 2 + linear
    assert "missing keys" in message and "layer4.0.conv1.weight" in message
    assert "shape mismatches" in message and "conv1.weight: given (16, 3, 3, 3) vs network (64, 3, 3, 3)" in message


def test_wrong_num_classes_lists_shape_mismatches(resnet20_checkpoint: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match=r"linear\.weight: given \(10, 64\) vs network \(100, 64\)"):
        build_backbone("resnet20", num_classes=100, checkpoint=resnet20_checkpoint)


def test_non_strict_load_warns_but_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = build_backbone("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match="extra.weight"):
        load_checkpoint(build_backbone("resnet20"), tmp_path / "extra.pth")
    target = build_backbone("resnet20")
    with caplog.at_level("WARNING"):
        load_checkpoint(target, tmp_path / "extra.pth", strict=False)
    assert "extra.weight" in caplog.text
    torch.testing.assert_close(target.linear.weight.detach(), state["linear.weight"])


def test_missing_checkpoint_says_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "cifar10_resnet18_32x32_base_e100_lr0.1_default" / "s0" / "best.ckpt"
    with pytest.raises(FileNotFoundError) as error:
        build_backbone("resnet18_32x32", checkpoint=missing)
    assert str(missing) in str(error.value) and "make checkpoints" in str(error.value)


def test_file_without_a_state_dict_is_rejected(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth holds no state dict.*'epoch'"):
        load_checkpoint(build_backbone("resnet20"), tmp_path / "bad.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_checkpoint(build_backbone("resnet20"), tmp_path / "garbage.pth")


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'.*resnet18_32x32.*swin_t.*resnet56"):
        build_backbone("resnet19")


@pytest.mark.parametrize("bad", [-1, 4, 1.0, True, "1"])
def test_bad_split_index_lists_the_valid_range(bad: object) -> None:
    with pytest.raises(ValueError, match=r"split_block=.*0\.\.3.*1 = after layer1"):
        build_backbone("resnet20", split_block=bad)  # type: ignore[arg-type]
    net = build_backbone("resnet20", split_block=3)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        net.split_block = bad  # type: ignore[assignment]
    assert net.split_block == 3


def test_bad_split_index_for_vit_and_swin(networks: dict[str, SplitNetwork]) -> None:
    with pytest.raises(ValueError, match=r"0\.\.12"):
        networks["vit_b_16"].split_block = 13
    with pytest.raises(ValueError, match=r"0\.\.4.*stage1"):
        networks["swin_t"].split_block = 5


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_backbone("resnet20", num_classes=0)


def test_vit_rejects_other_input_sizes(networks: dict[str, SplitNetwork]) -> None:
    with pytest.raises(ValueError, match="224x224"):
        networks["vit_b_16"](torch.randn(1, 3, 64, 64))


def test_weights_for_a_cifar_net_are_refused() -> None:
    with pytest.raises(ValueError, match="no torchvision weights.*checkpoint"):
        build_backbone("resnet20", weights="IMAGENET1K_V1")


def test_unknown_weight_name_lists_the_enum() -> None:
    with pytest.raises(ValueError, match=r"IMAGENET1K_V7.*ResNet50_Weights.*IMAGENET1K_V2"):
        build_backbone("resnet50", weights="IMAGENET1K_V7")


def test_enum_weights_need_their_class_count() -> None:
    with pytest.raises(ValueError, match="1000 classes but num_classes=200"):
        build_backbone("resnet18_224x224", num_classes=200, weights="IMAGENET1K_V1")


def test_offline_download_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        build_backbone("resnet18_224x224", num_classes=1000, weights="IMAGENET1K_V1")
    message = str(error.value)
    expected_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert str(expected_file) in message and "no network" in message and "local copy" in message


def test_weights_from_a_local_file(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18().eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18-local.pth")
    net = build_backbone("resnet18_224x224", num_classes=1000, weights=str(tmp_path / "resnet18-local.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x))


def test_checkpoint_takes_precedence_over_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = build_backbone("resnet18_224x224", num_classes=200).state_dict()
    torch.save(state, tmp_path / "best.ckpt")
    with caplog.at_level("WARNING"):
        net = build_backbone("resnet18_224x224", num_classes=200, checkpoint=tmp_path / "best.ckpt",
                             weights="IMAGENET1K_V1")  # would need a download (and 1000 classes) if used
    assert "not loaded" in caplog.text
    torch.testing.assert_close(net.fc_weight.detach(), state["fc.weight"])


def test_wrapping_an_existing_model_refuses_weights() -> None:
    with pytest.raises(ValueError, match="not both"):
        ResNet18_224x224(model=torchvision.models.resnet18(), weights="DEFAULT")
