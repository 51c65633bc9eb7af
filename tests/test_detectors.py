"""Baseline detectors on a toy feature set: AUROC bounds, formulas, pytorch-ood cross-checks, errors.

The toy set imitates what OpenOOD's baselines assume about a ReLU network's penultimate features:

- ``D = 32`` non-negative features; ``C = 5`` classes. ID class ``c``: every unit at about 1 plus a
  block of 6 units at about 5 (class-specific), Gaussian noise 0.7, clamped at 0.
- The head is the nearest-class-mean classifier (``W = mu / 8``, ``b = (-||mu||^2 / 2 + 60) / 8``), so it
  classifies the ID classes and its logits have realistic margins (no softmax saturation).
- OOD: weak activation everywhere (about 0.3) with 2 abnormally large units (about 5) at random places:
  low feature norm (feature-norm, energy and softmax methods), large activations on few units
  (ReAct/ASH/SCALE/DICE), far from every class mean and outside the principal subspace (MDS, KNN,
  ViM), logits near the decision boundaries (fDBD, OpenMax).

Every detector must reach AUROC > 0.9 there (DICE > 0.85: with 90% of the 160 weights dropped, the
kept weights cover the class blocks unevenly, so some ID classes get low energies; measured 0.915).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from pytorch_ood.detector import ASH as PodASH
from pytorch_ood.detector import DICE as PodDICE
from pytorch_ood.detector import KNN as PodKNN
from pytorch_ood.detector import NCI as PodNCI
from pytorch_ood.detector import RMD as PodRMD
from pytorch_ood.detector import SCALE as PodSCALE
from pytorch_ood.detector import SHE as PodSHE
from pytorch_ood.detector import EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax, ReAct, ViM, fDBD
from torch import nn

from grood.detectors.base import NotFittedError
from grood.detectors.gradnorm import gradnorm_score
from grood.detectors.odin import ODIN
from grood.detectors.openmax import OpenMax, weibull_cdf, weibull_mle
from grood.detectors.pytorch_ood_adapter import linear_module, to_id_score
from grood.detectors.registry import DETECTORS, TABLE2_BASELINES, build_detector, detector_parameters, fit_split
from grood.featureset import FeatureSet, LinearHead
from grood.metrics import auroc

CLASSES, BLOCK, EXTRA = 5, 6, 2
DIM = CLASSES * BLOCK + EXTRA
HEAD_SCALE = 0.125
FEATURE_METHODS = [name for name in TABLE2_BASELINES if name != "odin"] + ["rmds", "scale"]
#: ViM's principal dimension on the toy set: its covariance about u has 5 large eigenvalues (~20-50)
#: then a gap to ~0.6, so the residual subspace is well defined.
TOY_PARAMS = {"vim": {"dim": 5}}
AUROC_BOUND = {"dice": 0.85}


@pytest.fixture(scope="module")
def toy() -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    means = torch.ones(CLASSES, DIM)
    for c in range(CLASSES):
        means[c, c * BLOCK : (c + 1) * BLOCK] = 5.0
    head = LinearHead(HEAD_SCALE * means, HEAD_SCALE * (-(means**2).sum(dim=1) / 2 + 60.0))

    def id_set(n: int) -> FeatureSet:
        labels = torch.arange(n) % CLASSES
        x = (means[labels] + 0.7 * torch.randn(n, DIM, generator=generator)).clamp_min(0)
        return FeatureSet(head(x), x, labels)

    def ood_set(n: int) -> FeatureSet:
        x = (0.3 + 0.3 * torch.randn(n, DIM, generator=generator)).clamp_min(0)
        spikes = torch.stack([torch.randperm(DIM, generator=generator)[:2] for _ in range(n)])
        x.scatter_(1, spikes, 5.0 + torch.rand(n, 2, generator=generator))
        return FeatureSet(head(x), x, torch.full((n,), -1))

    return {"head": head, "train": id_set(1000), "val": id_set(300), "test": id_set(300), "ood": ood_set(300)}


def _fitted(name: str, toy: dict, **params: object):
    detector = build_detector(name, **{**TOY_PARAMS.get(name, {}), **params})
    return detector.fit(toy[fit_split(detector)], toy["head"])


# -- every detector --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_fits_scores_and_separates_toy_ood(name: str, toy: dict) -> None:
    detector = _fitted(name, toy)
    id_scores, ood_scores = detector.score(toy["test"]), detector.score(toy["ood"])
    assert id_scores.shape == (len(toy["test"]),) and ood_scores.shape == (len(toy["ood"]),)
    assert id_scores.device.type == "cpu" and id_scores.is_floating_point()
    assert bool(torch.isfinite(id_scores).all() and torch.isfinite(ood_scores).all())
    assert auroc(id_scores, ood_scores) > AUROC_BOUND.get(name, 0.9)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_scores_do_not_depend_on_the_chunk_size(name: str, toy: dict) -> None:
    whole = _fitted(name, toy).score(toy["test"])
    chunked = _fitted(name, toy, chunk_rows=7).score(toy["test"])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FEATURE_METHODS + ["odin"])
def test_score_before_fit_raises(name: str, toy: dict) -> None:
    detector = build_detector(name, **TOY_PARAMS.get(name, {}))
    with pytest.raises(NotFittedError):
        if name == "odin":
            detector.score_images(nn.Linear(3, 2), [])
        else:
            detector.score(toy["test"])


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_score_rejects_data_that_does_not_match_the_head(name: str, toy: dict) -> None:
    detector = _fitted(name, toy)
    test = toy["test"]
    with pytest.raises(ValueError, match="dimension"):
        detector.score(FeatureSet(test.logits, test.features[:, :-1], test.labels))
    broken = test.features.clone()
    broken[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        detector.score(FeatureSet(test.logits, broken, test.labels))


@pytest.mark.parametrize("name", [n for n in FEATURE_METHODS if DETECTORS[n].uses_labels])
def test_label_using_detectors_refuse_ood_labels_in_fit(name: str, toy: dict) -> None:
    train = toy["train"]
    labels = train.labels.clone()
    labels[:5] = -1
    with pytest.raises(ValueError, match="outside 0..4"):
        build_detector(name).fit(FeatureSet(train.logits, train.features, labels), toy["head"])


# -- registry ----------------------------------------------------------------------------------------


def test_registry_names_and_openood_defaults() -> None:
    assert all(cls.name == key for key, cls in DETECTORS.items())
    assert all(DETECTORS[name].reference for name in FEATURE_METHODS + ["odin"])
    assert set(TABLE2_BASELINES) <= set(DETECTORS)
    defaults = {name: detector_parameters(name) for name in DETECTORS}
    # OpenOOD v1.5 configs/postprocessors/*.yml postprocessor_args (and openmax_postprocessor.py constants)
    assert defaults["odin"]["temperature"] == 1000 and defaults["odin"]["noise"] == 0.0014
    assert defaults["ebo"]["temperature"] == 1
    assert defaults["react"]["percentile"] == 90
    assert defaults["vim"]["dim"] == 256
    assert defaults["knn"]["k"] == 50
    assert defaults["dice"]["p"] == 90
    assert defaults["ash"]["percentile"] == 90 and defaults["ash"]["variant"] == "ash-b"
    assert defaults["scale"]["percentile"] == 85
    assert defaults["gen"]["gamma"] == 0.1 and defaults["gen"]["m"] == 100
    assert defaults["fdbd"]["distance_as_normalizer"] is True
    assert defaults["nci"]["alpha"] == 0.0001
    assert defaults["openmax"]["tail_size"] == 20 and defaults["openmax"]["alpha"] == 3
    assert fit_split(DETECTORS["react"]) == "val"
    assert {fit_split(DETECTORS[n]) for n in DETECTORS if n != "react"} == {"train"}


def test_build_detector_errors_name_the_fault() -> None:
    with pytest.raises(ValueError, match=r"unknown detector 'nope'; valid names: .*knn.*msp"):
        build_detector("nope")
    message = r"unknown parameter\(s\) \['K'\] for detector 'knn'; valid parameters: k, index"
    with pytest.raises(ValueError, match=message):
        build_detector("knn", K=10)
    assert build_detector("knn", k=7).k == 7


# -- adapter-backed detectors: minus pytorch-ood's outlier score ------------------------------------


def test_to_id_score_is_the_negation() -> None:
    outlier = torch.tensor([3.0, -1.0, 0.5])
    torch.testing.assert_close(to_id_score(outlier), -outlier)


def test_msp_ebo_mls_sign_and_formulas(toy: dict) -> None:
    test = toy["test"]
    logits = test.logits
    msp = _fitted("msp", toy).score(test)
    torch.testing.assert_close(msp, -MaxSoftmax(None).predict_logits(logits))
    torch.testing.assert_close(msp, torch.softmax(logits, dim=1).max(dim=1).values)
    ebo = build_detector("ebo", temperature=2.0).fit(toy["train"], toy["head"]).score(test)
    torch.testing.assert_close(ebo, -EnergyBased(None, t=2.0).predict_logits(logits))
    torch.testing.assert_close(ebo, 2.0 * torch.logsumexp(logits / 2.0, dim=1))
    mls = _fitted("mls", toy).score(test)
    torch.testing.assert_close(mls, -MaxLogit(None).predict_logits(logits))
    torch.testing.assert_close(mls, logits.max(dim=1).values)


def test_react_threshold_sign_and_formula(toy: dict) -> None:
    val, test, head = toy["val"], toy["test"], toy["head"]
    detector = _fitted("react", toy)
    assert detector.threshold == pytest.approx(float(np.percentile(val.features.numpy(), 90)))
    expected = torch.logsumexp(head(test.features.clamp(max=detector.threshold)), dim=1)
    torch.testing.assert_close(detector.score(test), expected)
    theirs = ReAct(backbone=None, head=lambda fm: head(fm.flatten(1)), percentile=0.9)
    theirs.fit_feature_maps(val.features[:, :, None, None], val.labels)
    torch.testing.assert_close(detector.score(test), -theirs.predict_feature_maps(test.features[:, :, None, None]))


def test_she_sign_and_patterns(toy: dict) -> None:
    train, test, head = toy["train"], toy["test"], toy["head"]
    theirs = PodSHE(encoder=None, head=linear_module(head, torch.device("cpu")))
    theirs.fit_features(train.features, train.labels)
    ours = _fitted("she", toy).score(test)
    torch.testing.assert_close(ours, -theirs.predict_features(test.features))
    correct = train.logits.argmax(dim=1) == train.labels
    pattern = train.features[correct & (train.labels == 2)].mean(dim=0)
    row = int((test.logits.argmax(dim=1) == 2).nonzero()[0, 0])
    assert ours[row].item() == pytest.approx(float(test.features[row] @ pattern), rel=1e-5)


def test_nci_sign_and_formula(toy: dict) -> None:
    train, test, head = toy["train"], toy["test"], toy["head"]
    theirs = PodNCI(encoder=None, head=linear_module(head, torch.device("cpu")), alpha=0.0001)
    theirs.fit_features(train.features)
    ours = _fitted("nci", toy).score(test)
    torch.testing.assert_close(ours, -theirs.predict_features(test.features))
    centred = test.features - train.features.mean(dim=0)
    w = head.weight[head(test.features).argmax(dim=1)]
    expected = (w * centred).sum(dim=1) / centred.norm(dim=1) + 0.0001 * test.features.abs().sum(dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


# -- own implementations: formulas and cross-checks -----------------------------------------------------


def test_gen_formula(toy: dict) -> None:
    test = toy["test"]
    ours = build_detector("gen", gamma=0.5, m=3).fit(toy["train"], toy["head"]).score(test)
    p = torch.softmax(test.logits, dim=1)
    top3 = p.sort(dim=1, descending=True).values[:, :3]
    torch.testing.assert_close(ours, -(top3.sqrt() * (1 - top3).sqrt()).sum(dim=1))
    default = _fitted("gen", toy).score(test)  # M = 100 > C: every class
    torch.testing.assert_close(default, -(p.pow(0.1) * (1 - p).pow(0.1)).sum(dim=1))


def test_gradnorm_closed_form_equals_autograd(toy: dict) -> None:
    test, head = toy["ood"], toy["head"]
    layer = linear_module(head, torch.device("cpu")).double().requires_grad_(True)
    expected = []
    for x in test.features[:40].double():
        layer.zero_grad()
        loss = -torch.log_softmax(layer(x[None]), dim=1).sum()  # OpenOOD: all-ones target
        loss.backward()
        expected.append(layer.weight.grad.abs().sum())
    closed = gradnorm_score(test.features[:40], head(test.features[:40]))
    torch.testing.assert_close(closed, torch.stack(expected), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(_fitted("gradnorm", toy).score(test)[:40], closed)


def test_mds_matches_pytorch_ood_up_to_its_scaling(toy: dict) -> None:
    """pytorch-ood's Mahalanobis: 0.5 * min_c md with an undivided scatter (precision N times ours)."""
    train, test = toy["train"], toy["test"]
    theirs = Mahalanobis(None).fit_features(train.features, train.labels).predict_features(test.features)
    ours = _fitted("mds", toy).score(test)
    torch.testing.assert_close(ours, -2.0 * len(train) * theirs.double(), rtol=1e-3, atol=1e-3)


def test_rmds_matches_pytorch_ood_up_to_its_scaling(toy: dict) -> None:
    train, test = toy["train"], toy["test"]
    theirs = PodRMD(None).fit_features(train.features, train.labels).predict_features(test.features)
    ours = _fitted("rmds", toy).score(test)
    torch.testing.assert_close(ours, -len(train) * theirs.double(), rtol=1e-3, atol=1e-3)


def test_mds_pseudo_inverse_handles_a_dead_unit(toy: dict) -> None:
    """A unit that is 0 on every sample makes the covariance singular; OpenOOD's pinvh copes, so must we."""
    head = toy["head"]

    def without_unit_0(data: FeatureSet) -> FeatureSet:
        features = data.features.clone()
        features[:, 0] = 0.0
        return FeatureSet(head(features), features, data.labels)

    train, test, ood = (without_unit_0(toy[key]) for key in ("train", "test", "ood"))
    for name in ("mds", "rmds"):
        detector = build_detector(name).fit(train, head)
        id_scores, ood_scores = detector.score(test), detector.score(ood)
        assert bool(torch.isfinite(id_scores).all() and torch.isfinite(ood_scores).all())
        assert auroc(id_scores, ood_scores) > 0.9


def test_knn_is_minus_the_kth_normalised_distance(toy: dict) -> None:
    train, test = toy["train"], toy["test"]
    theirs = PodKNN(None, k=50).fit_features(train.features, train.labels).predict_features(test.features)
    torch.testing.assert_close(_fitted("knn", toy).score(test), -theirs.float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the 1000 training samples"):
        build_detector("knn", k=1001).fit(train, toy["head"])


def test_vim_matches_pytorch_ood(toy: dict) -> None:
    train, test, head = toy["train"], toy["test"], toy["head"]
    theirs = ViM(None, d=5, w=head.weight, b=head.bias).fit_features(train.features, train.labels)
    ours = _fitted("vim", toy)
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-4)
    torch.testing.assert_close(ours.score(test), -theirs.predict_features(test.features).double(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="dim=256 must be smaller than the feature dimension D=32"):
        build_detector("vim").fit(train, head)


def test_dice_matches_pytorch_ood(toy: dict) -> None:
    train, test, head = toy["train"], toy["test"], toy["head"]
    theirs = PodDICE(None, w=head.weight, b=head.bias, p=0.9).fit_features(train.features, train.labels)
    ours = _fitted("dice", toy)
    assert int(ours.mask.sum()) == int((theirs.masked_w != 0).sum()) == 16  # 10% of the 5 x 32 weights
    torch.testing.assert_close(ours.score(test), -theirs.predict_features(test.features), rtol=1e-5, atol=1e-5)


def test_fdbd_matches_pytorch_ood_and_formula(toy: dict) -> None:
    train, test, head = toy["train"], toy["test"], toy["head"]
    theirs = fDBD(encoder=None, head=linear_module(head, torch.device("cpu"))).fit_features(train.features)
    ours = _fitted("fdbd", toy).score(test)
    expected = -(CLASSES - 1) * theirs.predict_features(test.features).double()  # pytorch-ood averages
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    # distance_as_normalizer=False: divide by ||x|| instead of ||x - mean||
    by_norm = build_detector("fdbd", distance_as_normalizer=False).fit(train, head).score(test)
    ratio = test.features.norm(dim=1).double() / (test.features - train.features.mean(dim=0)).norm(dim=1).double()
    torch.testing.assert_close(by_norm * ratio, ours, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,pod_class,percentile", [("ash", PodASH, 90), ("scale", PodSCALE, 85)])
def test_ash_and_scale_match_pytorch_ood(name: str, pod_class: type, percentile: int, toy: dict) -> None:
    """On the pooled features as [N, D, 1, 1] (OpenOOD's way); D = 32 gives the same k in both."""
    test, head = toy["test"], toy["head"]
    extra = {"variant": "ash-b"} if name == "ash" else {}
    theirs = pod_class(backbone=None, head=lambda fm: head(fm.flatten(1)), percentile=percentile / 100, **extra)
    ours = _fitted(name, toy).score(test)
    expected = -theirs.predict_feature_maps(test.features[:, :, None, None])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def test_ash_b_by_hand() -> None:
    from grood.detectors.activation_shaping import ash_b, kept_activations

    x = torch.tensor([[1.0, 4.0, 0.0, 2.0, 3.0, 0.5, 0.0, 1.5, 0.25, 0.75]])  # D = 10, sum 13
    assert kept_activations(10, 65) == 4  # 10 - round(6.5) = 10 - 6 (round half to even, as np.round)
    torch.testing.assert_close(ash_b(x, 65), torch.tensor([[0, 3.25, 0, 3.25, 3.25, 0, 0, 3.25, 0, 0]]))
    with pytest.raises(ValueError, match="keeps no activation"):
        kept_activations(10, 96)


# -- OpenMax --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_shape", [0.7, 2.5, 40.0])
def test_weibull_mle_solves_the_likelihood_equations(true_shape: float) -> None:
    """The fit is the MLE (wblfit/libmr): both score equations of the Weibull likelihood vanish at it."""
    samples = scipy.stats.weibull_min.rvs(true_shape, scale=3.0, size=20, random_state=np.random.default_rng(0))
    shape, scale = weibull_mle(samples)
    logs = np.log(samples)
    powers = samples**shape
    # d/dk log L = 0  <=>  1/k + mean(log x) - sum(x^k log x) / sum(x^k) = 0;  d/dlambda = 0  <=>  lambda^k = mean(x^k)
    assert 1.0 / shape + logs.mean() - (powers * logs).sum() / powers.sum() == pytest.approx(0.0, abs=1e-7)
    assert scale == pytest.approx(powers.mean() ** (1.0 / shape), rel=1e-7)
    assert shape == pytest.approx(true_shape, rel=0.6)  # and it is near the truth (20 samples)
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, 10.0], dtype=torch.float64)
    expected = np.where(x.numpy() < 0, 0.0, scipy.stats.weibull_min.cdf(x.numpy(), shape, scale=scale))
    torch.testing.assert_close(weibull_cdf(x, torch.tensor(shape, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)),
                               torch.from_numpy(expected))
    with pytest.raises(ValueError, match="differ"):
        weibull_mle(np.ones(5))


def test_openmax_equals_a_per_sample_loop(toy: dict) -> None:
    """OpenOOD's per-sample algorithm written plainly (scipy Weibull, Python loops) against the vectorised one."""
    train, ood = toy["train"], toy["ood"]
    detector = _fitted("openmax", toy)
    logits, labels = train.logits.double(), train.labels
    correct = logits.argmax(dim=1) == labels
    models = []
    for c in range(CLASSES):
        rows = logits[correct & (labels == c)]
        mav = rows.mean(dim=0)
        tail = np.sort((rows - mav).norm(dim=1).numpy())[-20:]
        shape, _, scale = scipy.stats.weibull_min.fit(tail + 1.0 - tail.min(), floc=0)
        models.append((mav, shape, scale, tail.min()))
    expected = []
    for v in ood.logits.double()[:30]:
        omega = np.zeros(CLASSES)
        omega[np.argsort(v.numpy())[::-1][:3]] = [1.0, 2 / 3, 1 / 3]
        revised, unknown = [], 0.0
        for c, (mav, shape, scale, tail_min) in enumerate(models):
            shifted = float((v - mav).norm()) + 1.0 - tail_min
            w = 0.0 if shifted < 0 else scipy.stats.weibull_min.cdf(shifted, shape, scale=scale)
            revised.append(float(v[c]) * (1 - w * omega[c]))
            unknown += float(v[c]) - revised[-1]
        e = np.exp(np.array(revised + [unknown]))
        expected.append(-e[-1] / e.sum())
    expected_scores = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(detector.score(ood)[:30], expected_scores, rtol=1e-3, atol=1e-6)


def test_openmax_needs_correct_samples_of_every_class(toy: dict) -> None:
    train = toy["train"]
    labels = train.labels.clone()
    labels[labels == 3] = 4  # class 3 has no sample left
    with pytest.raises(ValueError, match="class 3 has 0 correctly classified"):
        OpenMax().fit(FeatureSet(train.logits, train.features, labels), toy["head"])


# -- ODIN -----------------------------------------------------------------------------------------------


def _tiny_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    )


def _odin(toy: dict, **params: object) -> ODIN:
    return build_detector("odin", input_std="cifar10", **params).fit(toy["train"], toy["head"])


def test_odin_scores_images(toy: dict) -> None:
    network, images = _tiny_net(), torch.randn(10, 3, 8, 8)
    loader = [(images[:6], torch.zeros(6)), (images[6:], torch.zeros(4))]
    scores = _odin(toy).score_images(network, loader)
    assert scores.shape == (10,) and bool(torch.isfinite(scores).all())
    assert bool(((scores >= 1 / 5 - 1e-6) & (scores <= 1.0)).all())
    dict_scores = _odin(toy).score_images(network, [{"data": images[:6]}, {"data": images[6:]}])
    torch.testing.assert_close(dict_scores, scores)
    assert network.training  # mode restored


def test_odin_without_noise_is_msp_with_temperature(toy: dict) -> None:
    network, images = _tiny_net(), torch.randn(10, 3, 8, 8)
    scores = _odin(toy, noise=0.0, temperature=10.0).score_images(network, [images])
    network.eval()
    with torch.no_grad():
        expected = torch.softmax(network(images) / 10.0, dim=1).max(dim=1).values
    torch.testing.assert_close(scores, expected)


def test_odin_perturbation_follows_openood(toy: dict) -> None:
    """OpenOOD: mean cross-entropy at temperature T vs the argmax, ge(grad, 0) -> +-1, divided by std."""
    network, images = _tiny_net().eval(), torch.randn(6, 3, 8, 8)
    detector = _odin(toy, temperature=1000.0, noise=0.0014)
    x = images.clone().requires_grad_(True)
    output = network(x)
    loss = nn.CrossEntropyLoss()(output / 1000.0, output.detach().argmax(dim=1))
    loss.backward()
    sign = (torch.ge(x.grad, 0).float() - 0.5) * 2
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(detector.perturb(network, images), images - 0.0014 * sign / std)


def test_odin_errors(toy: dict) -> None:
    detector = build_detector("odin").fit(toy["train"], toy["head"])
    assert detector.needs_network
    with pytest.raises(RuntimeError, match="score_images"):
        detector.score(toy["test"])
    with pytest.raises(ValueError, match="needs input_std"):
        detector.score_images(_tiny_net(), [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        build_detector("odin", input_std="svhn")
    with pytest.raises(TypeError, match="each loader batch"):
        _odin(toy).score_images(_tiny_net(), [[1, 2]])
