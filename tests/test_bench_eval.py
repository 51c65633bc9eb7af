"""scripts/bench_eval.py --against-openood: its install message, OpenOOD's network interface, the CPU patch.

The comparison itself needs ``openood`` (not on PyPI); its recorded run is in the project notes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from grood.backbones import build_backbone
from grood.backbones.openood_net import as_split_network

import grood.cli.bench_eval as bench_eval

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_eval.py"


def test_without_openood_it_says_how_to_install_it(tmp_path):
    if importlib.util.find_spec("openood") is not None:
        pytest.skip("openood is installed here; this checks the message shown without it")
    completed = subprocess.run([sys.executable, str(SCRIPT), "--against-openood", "--log", str(tmp_path / "log")],
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "openood is not importable" in completed.stderr
    assert "pip install --no-deps -e /tmp/openood_src" in completed.stderr
    assert "--no-build-isolation libmr" in completed.stderr and "--against-openood" in completed.stderr
    assert not (tmp_path / "log").exists()


@pytest.fixture(scope="module")
def wrapped():
    torch.manual_seed(0)
    net = build_backbone("resnet20", num_classes=10).eval()
    return net, bench_eval.OpenOODInterface(net).eval()


def test_openood_interface_answers_openood_calls_like_the_network(wrapped):
    net, openood_net = wrapped
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits, features = net.forward_features(images)
        assert torch.equal(openood_net(images), logits)
        got_logits, got_features = openood_net(images, return_feature=True)
        assert torch.equal(got_logits, logits) and torch.equal(got_features, features)
        _, feature_list = openood_net(images, return_feature_list=True)
        assert len(feature_list) == net.num_blocks + 1 and feature_list[-1].shape == (4, 64, 1, 1)
        assert torch.equal(feature_list[1], net._block(0, net._stem(images)))
        assert torch.equal(openood_net.forward_threshold(images, float("inf")), logits)
        clipped = net.head(features.clip(max=0.5))
        assert torch.allclose(openood_net.forward_threshold(images, 0.5), clipped)
    weight, bias = openood_net.get_fc()
    assert weight.shape == (10, 64) and bias.shape == (10,)
    assert openood_net.get_fc_layer() is net.classifier and openood_net.fc is net.classifier
    assert as_split_network(openood_net) is openood_net  # grood's postprocessor takes it as it is


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch is only active without CUDA")
def test_cuda_calls_stay_put_inside_the_block_only():
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    x, layer = torch.ones(2), nn.Linear(2, 2)
    with bench_eval.cuda_calls_stay_put() as patched:
        assert patched
        assert x.cuda() is x and layer.cuda() is layer
    assert torch.Tensor.cuda is tensor_cuda and nn.Module.cuda is module_cuda


def test_loading_seconds_reads_every_item_of_every_dataset():
    class Counted:
        def __init__(self, size: int) -> None:
            self.size, self.read = size, []

        def __len__(self) -> int:
            return self.size

        def __getitem__(self, item: int):
            self.read.append(item)
            return torch.zeros(3), 0

    datasets = [Counted(3), Counted(5)]
    assert bench_eval.loading_seconds(datasets) >= 0.0
    assert [d.read for d in datasets] == [[0, 1, 2], [0, 1, 2, 3, 4]]


def test_run_measured_reports_the_peak_rss_of_that_process_alone(tmp_path):
    script = tmp_path / "allocate.py"
    script.write_text("import sys\nblock = bytearray(int(sys.argv[1]) * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n")
    seconds, small = bench_eval.run_measured([str(script), "1"])
    _, large = bench_eval.run_measured([str(script), "300"])
    assert seconds > 0 and small > 0 and large - small > 250


def test_run_measured_names_a_failing_command(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"fail.py failed \(exit 3\):\n.*bad input"):
        bench_eval.run_measured([str(script)])
