"""GROOD's OOD prototype (eq. 8) and the strategies behind it (eq. 9, appendix A.2, Table 1): one registry.

Each strategy produces candidate penultimate features ``X_ood [M, D]``; the OOD prototype is their
mean (eq. 8), after the section-5.2 proximity filter when ``filter_quantile`` is set. The pipeline,
the OpenOOD postprocessor and the network-level GROOD all build prototypes with
:func:`build_ood_prototype`. This module works on tensors only: a strategy that needs a pass of the
network reads a source of :class:`PrototypeInputs`, which :func:`grood.prototype_inputs.prototype_inputs`
builds from what a caller has (the network, its training pass, validation or test data); a strategy
that needs something missing says what.

Strategies (:data:`STRATEGIES`; parameters and defaults in each :class:`Strategy`):

- ``mixup`` (default, eq. 9): ``h = f_mid(λ f_early(x) + (1-λ) p_early[c2])`` for ID training images,
  with ``c2`` the 2nd-highest predicted class; ``mixup_lambda`` (λ = 0.5), ``num_images`` (None = all
  training images, else a seeded sample drawn evenly across classes).
- ``uniform``: ``num_images`` uniform-noise images, the ``keep`` with the lowest energy score.
- ``val_ood``: a seeded sample of ``num_images`` (100) auxiliary OOD validation images.
- ``corrupted`` (appendix A.2 "ID-Corrupted Val"): ``num_images`` (100) corrupted ID images. ``source``:
  ``real`` (default, the paper's data) samples them, seeded and evenly across classes, from the
  benchmark's real corrupted images (CIFAR-10-C / CIFAR-100-C, ImageNet-C; they come with the csid
  download); ``synthetic`` corrupts ID validation images in code (noise, blur, contrast, ...;
  ``corruptions``, :mod:`grood.method.corruptions`). No source stands in for the other: a missing input
  is an error.
- ``mean``: the mean of the class prototypes (no OOD data at all; eq. 8 over the class prototypes).
- ``local_oracle`` / ``global_oracle`` (Table 1): ``num_images`` (100) images of the OOD test set itself /
  of each of the *other* OOD test sets. One prototype per OOD test set (``target=``); the evaluation
  must also hold the oracle images (:func:`oracle_split`) out of the scored set.
- the proximity filter (section 5.2), for every strategy: ``filter_quantile`` (None = off) and ``min_keep``.

Besides the registry, the functions behind it work on their own: :func:`stratified_sample`,
:func:`second_predicted_class`, :func:`lowest_energy_rows`, :func:`finish_prototype`, ...; the network
passes (:func:`grood.prototype_inputs.mixup_features`, ...) live in :mod:`grood.prototype_inputs`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, Callable, List, Mapping, Optional, Sequence

import torch

from grood.method.corruptions import CORRUPTIONS
from grood.method.prototypes import mean_of_class_prototypes, ood_prototype, proximity_filter
from grood.valid_values import Count, Valid, declared_rules


def stratified_sample(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``count`` rows drawn evenly across the classes in ``labels``.

    Image lists are usually sorted by class, so "the first ``count``" would be one class only.
    ``count=None`` or ``count >= len(labels)`` returns all indices in order.

    Args:
        labels: ``[N]`` class index per row.
    Returns:
        ``[min(count, N)]`` int64 indices, sorted.
    """
    n = labels.shape[0]
    if count is None or count >= n:
        return torch.arange(n)
    if count <= 0:
        raise ValueError(f"sample size must be positive; got {count}")
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [(labels == c).nonzero().flatten() for c in classes]
    per_class = [rows[torch.randperm(rows.numel(), generator=generator)] for rows in per_class]
    base, extra = divmod(count, len(classes))
    extra_classes = set(torch.randperm(len(classes), generator=generator)[:extra].tolist())
    chosen: list[torch.Tensor] = []
    leftovers: list[torch.Tensor] = []
    for position, rows in enumerate(per_class):
        want = base + (1 if position in extra_classes else 0)
        chosen.append(rows[:want])
        leftovers.append(rows[want:])
    picked = torch.cat(chosen)
    if picked.numel() < count:  # some classes had fewer rows than their share: top up at random
        pool = torch.cat(leftovers)
        pool = pool[torch.randperm(pool.numel(), generator=generator)]
        picked = torch.cat([picked, pool[: count - picked.numel()]])
    return picked.sort().values


def second_predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """``[N, C] -> [N]`` the class with the 2nd-highest logit (``c2`` of eq. 9)."""
    if logits.shape[1] < 2:
        raise ValueError("the mixup prototype needs at least 2 classes")
    return logits.topk(2, dim=1).indices[:, 1]


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``[N, C] -> [N]`` energy score ``T·logsumexp(logits / T)`` (higher = more ID)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def lowest_energy_rows(features: torch.Tensor, logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Appendix A.2 "Uniform"'s selection: ``[keep, D]`` the ``features [N, D]`` of the ``keep`` rows with the
    lowest energy score of their ``logits [N, C]`` (the least ID-like)."""
    return features[energy_score(logits).argsort()[:keep]]


def finish_prototype(
    candidates: torch.Tensor,
    class_prototypes: torch.Tensor,
    *,
    filter_quantile: float | None = None,
    min_keep: int = 1,
) -> torch.Tensor:
    """Eq. 8 on ``candidates [M, D]``, after the section-5.2 proximity filter when ``filter_quantile`` is set.

    Returns the OOD prototype ``[D]``.
    """
    if not torch.isfinite(candidates).all():
        bad = (~torch.isfinite(candidates)).any(dim=1).sum().item()
        raise ValueError(f"{bad} OOD candidate feature row(s) contain NaN or inf")
    if filter_quantile is not None:
        candidates = proximity_filter(candidates, class_prototypes, filter_quantile, min_keep)
    return ood_prototype(candidates)


def mean_prototype(class_prototypes: torch.Tensor) -> torch.Tensor:
    """The "Mean of Prototypes" strategy: ``[C, D] -> [D]``."""
    return mean_of_class_prototypes(class_prototypes)


def oracle_split(count: int, num_oracle: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``count`` OOD test rows into (oracle rows ``[min(num_oracle, count)]``, scored rows)."""
    if count <= num_oracle:
        raise ValueError(
            f"an oracle prototype needs more than {num_oracle} OOD test images to leave some for scoring; got {count}"
        )
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return permutation[:num_oracle].sort().values, permutation[num_oracle:].sort().values


# --------------------------------------------------------------------------- what the strategies read
class FeatureRows:
    """``count`` samples whose ``[M, D]`` penultimate features are read by row index: cached features
    (:meth:`of_features`), or images a network runs over only for the rows asked
    (:func:`grood.prototype_inputs.image_rows`)."""

    def __init__(self, count: int, take: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.count = int(count)
        self._take = take

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """``[len(rows), D]``: the features of ``rows`` (int64 indices in ``0..count-1``), in that order."""
        return self._take(rows)

    @classmethod
    def of_features(cls, features: torch.Tensor) -> "FeatureRows":
        """Rows of a ``[N, D]`` feature tensor."""
        return cls(features.shape[0], lambda rows: features[rows])


#: The sources of :class:`PrototypeInputs` that strategies may read, and what each is.
_SOURCES = {
    "mixup": "eq. 9's mixed training samples (the network and its ID training pass)",
    "noise": "uniform-noise images through the network",
    "corrupted": "corrupted ID images through the network",
    "val_ood": "OOD validation samples",
    "ood_test": "the OOD test sets",
}


@dataclass
class PrototypeInputs:
    """What the strategies read: the class prototypes and sources of candidate features. A source is a
    callable, called only by the strategies that need it; a missing one is None. The sources that run a
    network are built by :func:`grood.prototype_inputs.prototype_inputs` (the one builder, used by the
    pipeline, the OpenOOD postprocessor and :mod:`grood.on_network`).

    Attributes:
        class_prototypes: ``[C, D]`` eq. 7 class prototypes (every strategy: the proximity filter, "mean").
        mixup: ``(mixup_lambda, num_images, seed) -> [M, D]`` eq. 9 features of mixed training samples
            (``num_images`` None = every training image) ("mixup").
        noise: ``(num_images, seed) -> (features [num_images, D], logits [num_images, C])`` of uniform-noise
            images ("uniform").
        corrupted: ``(source, num_images, corruptions, seed) -> [M, D]`` features of corrupted ID images,
            ``source`` "real" or "synthetic" ("corrupted").
        val_ood: ``() -> FeatureRows`` of the OOD validation samples ("val_ood").
        ood_test: ``name -> FeatureRows`` of OOD test set ``name``; ``ood_names`` lists them (oracles).
        seed: seeds the strategies' samples.
        advice: per source name, what to do when it is missing (added to the error).
    """

    class_prototypes: torch.Tensor
    mixup: Callable[[float, int | None, int], torch.Tensor] | None = None
    noise: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    corrupted: Callable[[str, int, Sequence[str], int], torch.Tensor] | None = None
    val_ood: Callable[[], FeatureRows] | None = None
    ood_test: Callable[[str], FeatureRows] | None = None
    ood_names: Sequence[str] = ()
    seed: int = 0
    advice: Mapping[str, str] = field(default_factory=dict)

    def require(self, name: str, strategy: str) -> Any:
        """The source ``name``, or a ValueError saying that ``strategy`` needs it."""
        value = getattr(self, name)
        if value is None:
            hint = self.advice.get(name, "")
            raise ValueError(f"prototype strategy {strategy!r} needs {_SOURCES[name]}, which this caller does not "
                             f"give{'; ' + hint if hint else ''} (grood.prototype_inputs.prototype_inputs builds "
                             "the sources that run a network)")
        return value


# --------------------------------------------------------------------------- the strategies
def _mixup(inputs: PrototypeInputs, target: str | None, *, mixup_lambda: float, num_images: int | None
           ) -> torch.Tensor:
    return inputs.require("mixup", "mixup")(float(mixup_lambda), num_images, inputs.seed)


def _uniform(inputs: PrototypeInputs, target: str | None, *, num_images: int, keep: int) -> torch.Tensor:
    features, logits = inputs.require("noise", "uniform")(int(num_images), inputs.seed)
    return lowest_energy_rows(features, logits, int(keep))


def _val_ood(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    samples = inputs.require("val_ood", "val_ood")()
    if samples.count == 0:
        raise ValueError("prototype strategy 'val_ood': the OOD validation set holds no sample")
    rows = torch.randperm(samples.count, generator=torch.Generator().manual_seed(inputs.seed))
    return samples.take(rows[: int(num_images)].sort().values)


def _corrupted(inputs: PrototypeInputs, target: str | None, *, num_images: int, corruptions: Sequence[str],
               source: str) -> torch.Tensor:
    return inputs.require("corrupted", "corrupted")(source, int(num_images), tuple(corruptions), inputs.seed)


def _mean(inputs: PrototypeInputs, target: str | None) -> torch.Tensor:
    return inputs.class_prototypes  # eq. 8 over the class prototypes: their mean


def _oracle_rows(inputs: PrototypeInputs, strategy: str, name: str, num_images: int) -> torch.Tensor:
    samples = inputs.require("ood_test", strategy)(name)
    return samples.take(oracle_split(samples.count, int(num_images), inputs.seed)[0])


def _local_oracle(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    return _oracle_rows(inputs, "local_oracle", target, num_images)


def _global_oracle(inputs: PrototypeInputs, target: str | None, *, num_images: int) -> torch.Tensor:
    others = [name for name in inputs.ood_names if name != target]
    if not others:
        raise ValueError(f"prototype strategy 'global_oracle' needs OOD test sets other than {target!r}; "
                         f"the OOD test sets are {list(inputs.ood_names)}")
    return torch.cat([_oracle_rows(inputs, "global_oracle", name, num_images) for name in others])


@dataclass(frozen=True)
class Strategy:
    """One way to build the OOD prototype: ``candidates(inputs, target, **params) -> [M, D]``.

    Attributes:
        parameters: the dataclass declaring its own parameters (besides the proximity filter's, which all
            take): each field's type and default, the one declaration the config schema is built from.
        uses_seed: its candidates depend on ``PrototypeInputs.seed``.
        per_ood_set: one prototype per OOD test set (the oracles; :func:`build_ood_prototype` needs ``target``).
        uses_network: its candidates need a pass of the network over images (a caller may cache the result).
    """

    name: str
    reference: str
    candidates: Callable[..., torch.Tensor]
    parameters: type  # a dataclass: its fields are the strategy's parameters, with their types and defaults
    uses_seed: bool
    per_ood_set: bool = False
    uses_network: bool = False

    @property
    def params(self) -> dict[str, Any]:
        """Its own parameters and their defaults (from :attr:`parameters`)."""
        return _defaults(self.parameters)


#: Where the "corrupted" strategy's images come from (its ``source``).
CORRUPTED_SOURCES = ("real", "synthetic")

def _defaults(parameters: type) -> dict[str, Any]:
    """A parameter dataclass's field -> default (list defaults as tuples)."""
    out = {}
    for item in fields(parameters):
        value = item.default_factory() if item.default is MISSING else item.default
        out[item.name] = tuple(value) if isinstance(value, list) else value
    return out


# Each strategy's parameters: name, type, valid values and default, declared once (the config schema,
# grood.config, is generated from these dataclasses; Optional: None = the value the strategy's docstring names).
@dataclass
class FilterParams:
    """The proximity filter (section 5.2), a parameter of every strategy."""

    filter_quantile: Optional[Annotated[float, Valid(low=0, high=1, why="None: no proximity filter")]] = None
    min_keep: Annotated[int, Valid(low=0)] = 1


@dataclass
class MixupParams:
    mixup_lambda: Annotated[float, Valid(low=0, high=1, low_open=True, high_open=True,
                                         why="eq. 9's λ; 0 or 1 mixes nothing")] = 0.5
    num_images: Optional[Count] = None   # None = every training image


@dataclass
class UniformParams:
    num_images: Count = 1000
    keep: Count = 100                    # at most num_images


@dataclass
class NumImagesParams:
    num_images: Count = 100


@dataclass
class CorruptedParams:
    num_images: Count = 100
    corruptions: Annotated[List[str], Valid(choices=tuple(CORRUPTIONS))] = field(
        default_factory=lambda: list(CORRUPTIONS))
    source: Annotated[str, Valid(choices=CORRUPTED_SOURCES, why=(
        "real: the benchmark's corrupted images, e.g. CIFAR-10-C; synthetic: ID validation images corrupted in "
        "code"))] = "real"


@dataclass
class NoParams:
    pass


#: The proximity filter's parameters and their defaults (None = off).
FILTER_PARAMS: dict[str, Any] = _defaults(FilterParams)

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("mixup", "eq. 9, section 5.2", _mixup, MixupParams, uses_seed=True, uses_network=True),
    Strategy("uniform", "appendix A.2 'Uniform'", _uniform, UniformParams, uses_seed=True, uses_network=True),
    Strategy("val_ood", "appendix A.2 'OpenOOD Val'", _val_ood, NumImagesParams, uses_seed=True),
    Strategy("corrupted", "appendix A.2 'ID-Corrupted Val'", _corrupted, CorruptedParams, uses_seed=True,
             uses_network=True),
    Strategy("mean", "appendix A.2 'Mean of Prototypes'", _mean, NoParams, uses_seed=False),
    Strategy("local_oracle", "Table 1 'Local Oracle'", _local_oracle, NumImagesParams, uses_seed=True,
             per_ood_set=True),
    Strategy("global_oracle", "Table 1 'Global Oracle'", _global_oracle, NumImagesParams, uses_seed=True,
             per_ood_set=True),
)}
#: The strategies with one prototype for every OOD set (all but the oracles, which need the OOD test sets).
SINGLE_PROTOTYPE: tuple[str, ...] = tuple(name for name, strategy in STRATEGIES.items() if not strategy.per_ood_set)
#: Every strategy parameter (of any strategy, and the filter's).
STRATEGY_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(
    [name for strategy in STRATEGIES.values() for name in strategy.params] + list(FILTER_PARAMS)))


def get_strategy(name: str) -> Strategy:
    """The strategy ``name``; ValueError listing the valid names."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown OOD-prototype strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters strategy ``name`` reads (its own and the filter's), from ``params`` where given and
    not None, else their defaults; checked.

    ``params`` may also hold parameters of other strategies (one config or postprocessor holds them
    all; ``name`` does not read them). A name that is no strategy's parameter raises ValueError.
    """
    strategy = get_strategy(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(STRATEGY_PARAMS))
    if unknown:
        raise ValueError(f"unknown OOD-prototype parameter(s) {unknown}; valid: {', '.join(STRATEGY_PARAMS)}")
    resolved = {key: default if params.get(key) is None else params[key]
                for key, default in {**strategy.params, **FILTER_PARAMS}.items()}

    rules = {**declared_rules(FilterParams), **declared_rules(strategy.parameters)}
    for key, rule in rules.items():
        problem = rule.problem(resolved[key])
        if problem is not None:
            raise ValueError(f"prototype strategy {name!r}: {key}={resolved[key]!r}: {problem.split('; got ')[0]}")
    if "keep" in resolved and resolved["keep"] > resolved["num_images"]:
        raise ValueError(f"prototype strategy {name!r}: keep={resolved['keep']!r}: must be at most num_images "
                         f"({resolved['num_images']})")
    return resolved


def build_ood_prototype(
    strategy: str, inputs: PrototypeInputs, params: Mapping[str, Any] | None = None, target: str | None = None
) -> torch.Tensor:
    """``[D]`` the OOD prototype ``p_ood`` (eq. 8) of ``strategy``, on ``inputs``.

    Args:
        strategy: a name of :data:`STRATEGIES`.
        inputs: what the caller has; the strategy reads what it needs (an error names what is missing).
        params: strategy parameters (see :func:`strategy_params`); None/missing: the defaults.
        target: the OOD test set the prototype is for (oracles only; None for the others).
    """
    spec = get_strategy(strategy)
    resolved = strategy_params(strategy, params)
    if spec.per_ood_set != (target is not None):
        raise ValueError(f"prototype strategy {strategy!r} " + (
            "builds one prototype per OOD test set: give target=<OOD test set name>" if spec.per_ood_set
            else f"builds one prototype for every OOD set; got target={target!r}"))
    filter_quantile, min_keep = resolved.pop("filter_quantile"), resolved.pop("min_keep")
    candidates = spec.candidates(inputs, target, **resolved)
    return finish_prototype(candidates, inputs.class_prototypes, filter_quantile=filter_quantile,
                            min_keep=int(min_keep))
