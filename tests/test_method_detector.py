"""The GROOD detector on toy Gaussian blobs: AUROC, variants, save/load, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from grood.method.detector import GROOD, NotFittedError
from grood.method.prototypes import ood_prototype
from grood.method.synthetic import clustered_vectors

DIM, CLASSES = 32, 5


@pytest.fixture(scope="module")
def blobs() -> dict[str, torch.Tensor]:
    """ID: 5 Gaussian classes on an 8-d subspace of 32-d. OOD: far points, and points near the OOD prototype."""
    train, train_labels, centres, basis = clustered_vectors(
        3000, DIM, num_clusters=CLASSES, subspace_dim=8, centre_scale=3.0, cluster_std=0.5, noise_std=0.05, seed=0
    )
    test, test_labels, _, _ = clustered_vectors(
        400, DIM, subspace_dim=8, cluster_std=0.5, noise_std=0.05, seed=1, centres=centres, basis=basis
    )
    generator = torch.Generator().manual_seed(2)
    far_ood = 10.0 + 3.0 * torch.randn(400, DIM, generator=generator)
    # OOD data around the mean of the class prototypes, between the classes
    between_ood = train.mean(dim=0) + 0.3 * torch.randn(400, DIM, generator=generator)
    return {
        "train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels,
        "far_ood": far_ood, "between_ood": between_ood,
    }


def _auroc(detector: GROOD, id_features: torch.Tensor, ood_features: torch.Tensor) -> float:
    """AUROC with ID as the positive class on the detector's scores (higher = more ID)."""
    scores = torch.cat([detector.score(id_features), detector.score(ood_features)])
    truth = torch.cat([torch.ones(len(id_features)), torch.zeros(len(ood_features))])
    return float(roc_auc_score(truth.numpy(), scores.numpy()))


@pytest.mark.parametrize("index", ["exact", "torch", "ivf"])
@pytest.mark.parametrize("ood", ["far_ood", "between_ood"])
def test_grood_separates_toy_blobs(blobs, index: str, ood: str) -> None:
    params = {"nlist": 16} if index == "ivf" else {}
    detector = GROOD(index=index, index_params=params).fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    assert detector.num_indexed == 3000 and detector.index.ntotal == 3000
    assert _auroc(detector, blobs["test"], blobs[ood]) > 0.95


def test_grood_with_an_eq8_ood_prototype(blobs) -> None:
    p_ood = ood_prototype(blobs["far_ood"][:100])  # eq. 8 on 100 OOD samples ("oracle")
    detector = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype=p_ood)
    torch.testing.assert_close(detector.ood_prototype.cpu(), p_ood)
    assert _auroc(detector, blobs["test"], blobs["far_ood"][100:]) > 0.95


def test_the_ood_prototype_is_an_explicit_choice(blobs) -> None:
    with pytest.raises(ValueError, match="GROOD.fit needs ood_prototype=.*'mean'"):  # no silent default
        GROOD().fit(blobs["train"], blobs["train_labels"])
    with pytest.raises(ValueError, match="ood_prototype='mixup': give a \\[D\\] tensor or 'mean'"):
        GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mixup")
    detector = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    torch.testing.assert_close(detector.ood_prototype, detector.class_prototypes.mean(dim=0))


@pytest.mark.parametrize("variant", ["ood_distance", "gradient_l1", "class_gradient"])
def test_table4_variants_rank_id_higher(blobs, variant: str) -> None:
    """Each variant's sign makes ID score higher when p_ood stands for the OOD data (eq. 8)."""
    p_ood = ood_prototype(blobs["between_ood"][:100])
    detector = GROOD(variant=variant).fit(blobs["train"], blobs["train_labels"], ood_prototype=p_ood)
    assert (detector.index is None) == (variant != "class_gradient")
    assert _auroc(detector, blobs["test"], blobs["between_ood"][100:]) > 0.95


def test_variant_scores_are_what_the_docstring_says(blobs) -> None:
    from grood.method.ncp import grood_gradient

    features = blobs["test"][:20]
    fitted = {v: GROOD(variant=v).fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
              for v in ("ood_distance", "gradient_l1")}
    p_ood = fitted["ood_distance"].ood_prototype.cpu()
    torch.testing.assert_close(fitted["ood_distance"].score(features), (features - p_ood).norm(dim=1))
    gradient = grood_gradient(features, fitted["gradient_l1"].class_prototypes.cpu(), p_ood)
    torch.testing.assert_close(fitted["gradient_l1"].score(features), -gradient.abs().sum(dim=1))


def test_score_is_minus_eq6_distance(blobs) -> None:
    detector = GROOD(index="torch").fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    train_gradients = detector.gradients(blobs["train"]).cpu()
    test_gradients = detector.gradients(blobs["test"][:50]).cpu()
    expected = torch.cdist(test_gradients.double(), train_gradients.double()).min(dim=1).values
    torch.testing.assert_close(detector.score(blobs["test"][:50]).double(), -expected, rtol=1e-4, atol=1e-7)
    # a training sample's own gradient is in the index: distance 0
    assert torch.allclose(detector.score(blobs["train"][:10]), torch.zeros(10), atol=1e-6)


def test_kth_neighbour_and_batching(blobs) -> None:
    first = GROOD(k=1).fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    third = GROOD(k=3, batch_size=97).fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    assert (third.score(blobs["test"]) <= first.score(blobs["test"])).all()
    assert (third.score(blobs["test"]) < first.score(blobs["test"])).any()
    small_batches = GROOD(batch_size=33).fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    torch.testing.assert_close(small_batches.class_prototypes, first.class_prototypes, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(small_batches.score(blobs["test"]), first.score(blobs["test"]), rtol=1e-5, atol=1e-6)


def test_fit_on_correct_indexes_only_correct_rows(blobs) -> None:
    predictions = blobs["train_labels"].clone()
    predictions[:700] = (predictions[:700] + 1) % CLASSES  # 700 wrong predictions
    detector = GROOD(fit_on="correct").fit(blobs["train"], blobs["train_labels"], train_predictions=predictions,
                                           ood_prototype="mean")
    assert detector.num_indexed == 2300 and detector.index.ntotal == 2300
    everything = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    # eq. 7 prototypes still use every labelled training row
    torch.testing.assert_close(detector.class_prototypes, everything.class_prototypes)  # same device
    # a wrongly predicted training row is no longer its own neighbour
    assert (detector.score(blobs["train"][:700]) < 0).all()
    assert torch.allclose(detector.score(blobs["train"][700:710]), torch.zeros(10), atol=1e-6)
    # batches whose rows are all wrong add nothing; the index is the same
    batched = GROOD(fit_on="correct", batch_size=100).fit(
        blobs["train"], blobs["train_labels"], train_predictions=predictions, ood_prototype="mean"
    )
    assert batched.index.ntotal == 2300
    torch.testing.assert_close(batched.score(blobs["test"]), detector.score(blobs["test"]))


def test_class_gradient_uses_network_predictions_when_fitted_with_them(blobs) -> None:
    predictions = blobs["train_labels"]
    detector = GROOD(variant="class_gradient").fit(
        blobs["train"], blobs["train_labels"], train_predictions=predictions, ood_prototype="mean"
    )
    with pytest.raises(ValueError, match=r"pass predictions=logits.argmax\(1\) to score\(\) too"):
        detector.score(blobs["test"])
    scores = detector.score(blobs["test"], predictions=blobs["test_labels"])
    assert scores.shape == (400,)
    ncp_only = GROOD(variant="class_gradient").fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    with pytest.raises(ValueError, match="fitted without train_predictions"):
        ncp_only.score(blobs["test"], predictions=blobs["test_labels"])


def test_predict_is_nearest_class_prototype(blobs) -> None:
    detector = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    predictions = detector.predict(blobs["test"])
    expected = torch.cdist(blobs["test"], detector.class_prototypes.cpu()).argmin(dim=1)
    assert torch.equal(predictions, expected)
    assert (predictions == blobs["test_labels"]).float().mean() > 0.95


@pytest.mark.parametrize(
    ("index", "variant"),
    [("exact", "grood"), ("ivf", "grood"), ("torch", "grood"), ("exact", "class_gradient"), ("exact", "gradient_l1")],
)
def test_save_load_round_trip_is_bit_identical(blobs, tmp_path: Path, index: str, variant: str) -> None:
    params = {"nlist": 16, "nprobe": 4} if index == "ivf" else {}
    detector = GROOD(index=index, index_params=params, variant=variant, k=2).fit(blobs["train"], blobs["train_labels"],
                                                                                ood_prototype="mean")
    features = torch.cat([blobs["test"], blobs["far_ood"]])
    target = tmp_path / "detector"
    detector.save(target)
    detector.save(target)  # replacing an earlier save is allowed
    loaded = GROOD.load(target)
    assert loaded.config() == detector.config() and loaded.device == detector.device
    assert torch.equal(loaded.score(features), detector.score(features))
    assert torch.equal(loaded.predict(features), detector.predict(features))
    assert not [p for p in tmp_path.iterdir() if p.name != "detector"]  # no temporary directory left


def test_save_refuses_to_replace_a_foreign_directory(blobs, tmp_path: Path) -> None:
    detector = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a GROOD save"):
        detector.save(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="not a directory written by GROOD.save"):
        GROOD.load(tmp_path)


def test_not_fitted_errors(blobs, tmp_path: Path) -> None:
    detector = GROOD()
    assert issubclass(NotFittedError, RuntimeError)
    with pytest.raises(NotFittedError, match=r"call fit\(train_features, train_labels, ...\) first"):
        detector.score(blobs["test"])
    with pytest.raises(NotFittedError):
        detector.predict(blobs["test"])
    with pytest.raises(NotFittedError):
        detector.save(tmp_path / "x")


def test_bad_feature_inputs(blobs) -> None:
    detector = GROOD().fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    with pytest.raises(ValueError, match="features have dimension 31 but this GROOD detector was fitted on dimension 32"):
        detector.score(blobs["test"][:, :31])
    bad = blobs["test"][:10].clone()
    bad[[2, 5, 7], 0] = float("nan")
    bad[5, 3] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 3 of 10 row\(s\) \(first rows: \[2, 5, 7\]\)"):
        detector.score(bad)
    with pytest.raises(ValueError, match=r"NaN or inf in 3 of 10 row\(s\)"):
        detector.predict(bad)
    with pytest.raises(ValueError, match="2-D"):
        detector.score(blobs["test"][0])


def test_bad_fit_inputs(blobs) -> None:
    train, labels = blobs["train"], blobs["train_labels"]
    with pytest.raises(ValueError, match=r"value\(s\) \[7\] outside the valid class range 0\.\.4 \(num_classes=5\)"):
        GROOD().fit(train, torch.where(labels == 0, 7, labels), num_classes=5, ood_prototype="mean")
    with pytest.raises(ValueError, match=r"value\(s\) \[-1\] outside the valid class range"):
        GROOD().fit(train, torch.where(labels == 0, -1, labels), ood_prototype="mean")
    with pytest.raises(ValueError, match="train_labels has 2999 entries but train_features has 3000 rows"):
        GROOD().fit(train, labels[:-1], ood_prototype="mean")
    with pytest.raises(ValueError, match=r"class\(es\) \[5\] of 6 have no sample"):
        GROOD().fit(train, labels, num_classes=6, ood_prototype="mean")
    nan_train = train.clone()
    nan_train[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"train_features contains NaN or inf in 1 of 3000 row\(s\)"):
        GROOD().fit(nan_train, labels, ood_prototype="mean")
    with pytest.raises(ValueError, match="fit_on='correct' needs train_predictions"):
        GROOD(fit_on="correct").fit(train, labels, ood_prototype="mean")
    with pytest.raises(ValueError, match="train_predictions has 10 entries"):
        GROOD(fit_on="correct").fit(train, labels, train_predictions=labels[:10], ood_prototype="mean")
    with pytest.raises(ValueError, match=r"ood_prototype must have shape \[32\]; got shape \(31,\)"):
        GROOD().fit(train, labels, ood_prototype=torch.zeros(31))
    with pytest.raises(ValueError, match="k=5 exceeds the 4 training gradients"):
        GROOD(k=5).fit(train[:4], torch.tensor([0, 1, 0, 1]), ood_prototype="mean")
    with pytest.raises(ValueError, match="0 rows"):
        GROOD().fit(torch.empty(0, DIM), torch.empty(0, dtype=torch.long), ood_prototype="mean")


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="GROOD: index must be one of exact, faiss_flat, ivf, torch, faiss_ivf; "
                                         "got 'annoy'"):
        GROOD(index="annoy")
    with pytest.raises(ValueError, match="GROOD: variant must be one of grood, ood_distance, gradient_l1, "
                                         "class_gradient; got 'knn'"):
        GROOD(variant="knn")
    with pytest.raises(ValueError, match="fit_on must be one of all, correct"):
        GROOD(fit_on="some")
    with pytest.raises(ValueError, match="k must be an integer >= 1; got 0"):
        GROOD(k=0)


def test_ivf_too_small_training_set_error_reaches_the_user(blobs) -> None:
    detector = GROOD(index="ivf", index_params={"nlist": 1000})
    with pytest.raises(ValueError, match="needs at least 39000 vectors"):
        detector.fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("index", ["exact", "torch"])
def test_cuda_device_matches_cpu(blobs, index: str) -> None:
    cpu = GROOD(index=index, device="cpu").fit(blobs["train"], blobs["train_labels"], ood_prototype="mean")
    cuda = GROOD(index=index, device="cuda").fit(blobs["train"].cuda(), blobs["train_labels"].cuda(),
                                                 ood_prototype="mean")
    scores = cuda.score(blobs["test"].cuda())
    assert scores.is_cuda
    torch.testing.assert_close(scores.cpu(), cpu.score(blobs["test"]), rtol=1e-3, atol=1e-5)
    assert not cuda.score(blobs["test"]).is_cuda  # CPU features in, CPU scores out
    assert torch.equal(cuda.predict(blobs["test"].cuda()).cpu(), cpu.predict(blobs["test"]))


def test_precomputed_class_prototypes_give_the_same_detector(blobs) -> None:
    from grood.method import class_prototypes

    train_x, train_y, test_x = blobs["train"], blobs["train_labels"], torch.cat([blobs["test"], blobs["far_ood"]])
    computed = GROOD().fit(train_x, train_y, ood_prototype="mean")
    given = GROOD().fit(train_x, train_y, class_prototypes=class_prototypes(train_x, train_y, int(train_y.max()) + 1),
                        ood_prototype="mean")
    torch.testing.assert_close(given.class_prototypes, computed.class_prototypes, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(given.score(test_x), computed.score(test_x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"class_prototypes has 2 rows but there are \d+ classes"):
        GROOD().fit(train_x, train_y, class_prototypes=computed.class_prototypes[:2], ood_prototype="mean")
    with pytest.raises(ValueError, match="class_prototypes has feature dimension"):
        GROOD().fit(train_x, train_y, class_prototypes=computed.class_prototypes[:, :3], ood_prototype="mean")
    bad = computed.class_prototypes.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="class_prototypes contains NaN or inf"):
        GROOD().fit(train_x, train_y, class_prototypes=bad, ood_prototype="mean")
