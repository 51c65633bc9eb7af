"""A parameter's valid values: declared once in its annotation (grood/valid_values.py), checked by the
constructor for every caller and, copied into the config catalogue, by ``grood run`` before torch is imported."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest

from grood.valid_values import Count, Percent, Positive, Valid, check_fields, checked_arguments, field_problems

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("rule, value, message", [
    (Valid(low=1, integer=True), 0, "must be an integer >= 1; got 0"),
    (Valid(low=1, integer=True), 2.5, "must be an integer >= 1; got 2.5"),
    (Valid(low=1, integer=True), True, "must be an integer >= 1; got True"),
    (Valid(low=0, low_open=True), 0.0, "must be a number > 0; got 0.0"),
    (Valid(low=0, low_open=True), math.nan, "must be a number > 0; got nan"),
    (Valid(low=0, high=100, high_open=True), 100, "must be a number in [0, 100); got 100"),
    (Valid(choices=("a", "b"), why="letters"), "c", "must be one of a, b (letters); got 'c'"),
    (Valid(choices=("a", "b")), ["a", "z"], "must be a non-empty list of a, b; got ['a', 'z']"),
    (Valid(choices=("a", "b")), [], "must be a non-empty list of a, b; got []"),
    (Valid(low=0), "1", "must be a number >= 0; got '1'"),
])
def test_a_value_outside_the_rule_is_named_with_the_rule(rule, value, message) -> None:
    assert rule.problem(value) == message


@pytest.mark.parametrize("rule, value", [
    (Valid(low=1, integer=True), 1), (Valid(low=0, low_open=True), 1e-9), (Valid(low=0, high=100, high_open=True), 0),
    (Valid(choices=("a", "b")), ["b", "a"]), (Valid(low=1), None),
])
def test_a_valid_value_or_none_passes(rule, value) -> None:
    assert rule.problem(value) is None


def test_the_source_of_a_rule_builds_the_same_rule() -> None:
    for rule in (Valid(low=1, integer=True), Valid(low=0, high=1, low_open=True, high_open=True, why="λ"),
                 Valid(choices=("x", "y"))):
        assert eval(rule.source(), {"Valid": Valid}) == rule


class _Base:
    @checked_arguments
    def __init__(self, k: Count = 1, p: Optional[Percent] = None, t: Positive = 1.0) -> None:
        self.k, self.p, self.t = k, p, t


class _Child(_Base):
    pass


def test_the_constructor_checks_its_annotated_arguments_naming_the_class() -> None:
    assert _Child(k=3, p=50).k == 3
    with pytest.raises(ValueError, match=r"^_Child: k must be an integer >= 1; got 0$"):
        _Child(k=0)
    with pytest.raises(ValueError, match=r"^_Child: p must be a number in \[0, 100\); got 100$"):
        _Child(p=100)
    with pytest.raises(ValueError, match=r"^_Base: t must be a number > 0; got -1$"):
        _Base(1, None, -1)  # positional arguments too


@dataclasses.dataclass
class _Params:
    n: Count = 5
    mode: Annotated[str, Valid(choices=("on", "off"))] = "on"

    def __post_init__(self) -> None:
        check_fields(self)


def test_a_parameter_dataclass_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="_Params: mode must be one of on, off; got 'auto'"):
        _Params(mode="auto")


def test_the_catalogue_holds_the_rules_the_constructors_declare() -> None:
    """Every built-in component's generated schema carries, per field, the rule of its annotation."""
    from grood.config import catalogue, generate
    from grood.valid_values import METADATA_KEY

    schemas = {(group, name): schema for group, name, _, schema in catalogue.BUILTIN}
    checked = 0
    for group, name, _, parameters in generate.builtin_components():
        fields = {item.name: item for item in dataclasses.fields(schemas[group, name])}
        for p in parameters:
            assert fields[p.name].metadata.get(METADATA_KEY) == p.valid, (group, name, p.name)
            checked += p.valid is not None
    assert checked >= 30  # KNN's k, the percentiles, the temperatures, the index's counts, the strategies' ...


def test_field_problems_names_key_value_and_rule() -> None:
    from grood.config.catalogue import KnnParams, MixupPrototypeConfig

    assert field_problems(KnnParams(k=0), "method.params") == ["method.params.k=0: must be an integer >= 1"]
    assert field_problems(KnnParams(k=5), "method.params") == []
    assert field_problems(MixupPrototypeConfig(mixup_lambda=1.0), "prototype") == [
        "prototype.mixup_lambda=1.0: must be a number in (0, 1) (eq. 9's λ; 0 or 1 mixes nothing)"]


@pytest.mark.parametrize("overrides, message", [
    (["method=knn", "method.params.k=0"], "method.params.k=0: must be an integer >= 1"),
    (["method=all", "method.params.react.percentile=100"],
     "method.params.react.percentile=100.0: must be a number in [0, 100)"),
    (["method=ash", "method.params.variant=ash-x"], "method.params.variant='ash-x': must be one of ash-b, ash-p"),
    (["prototype=corrupted", "prototype.source=auto"], "prototype.source='auto': must be one of real, synthetic"),
    (["index=ivf", "index.params.nprobe=0"], "index.params.nprobe=0: must be an integer >= 1"),
])
def test_an_out_of_range_value_is_refused_before_torch_is_imported(overrides, message) -> None:
    """The check ``grood run`` does before Hydra starts (check_command_line): the value's problem, and
    torch still not imported (what keeps the answer under two seconds)."""
    code = ("import sys\nfrom grood.config import ConfigError, check_command_line\n"
            f"try:\n    check_command_line({overrides!r})\nexcept ConfigError as error:\n    print(error)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert message in out.stdout, out.stdout + out.stderr
    assert out.stdout.strip().endswith("torch imported: False"), out.stdout


def test_a_relation_between_valid_values_is_still_checked_by_the_component() -> None:
    """Each value in range, the pair not (uniform's keep above num_images): the strategy itself refuses it."""
    from grood.config import ConfigError, compose_run_config

    with pytest.raises(ConfigError, match=r"keep=200: must be at most num_images \(100\)"):
        compose_run_config(["prototype=uniform", "prototype.num_images=100", "prototype.keep=200"])


class PluginMethod:
    def __init__(self, temperature: Positive = 1.0, device: str | None = None) -> None:
        self.temperature = temperature


def test_a_plugin_declares_its_rules_the_same_way() -> None:
    """A component registered from outside gets its annotated rules into its config schema."""
    from grood.config.generate import declared_parameters, parameters_schema

    schema = parameters_schema("PluginParams", declared_parameters(PluginMethod, "method"))
    assert field_problems(schema(temperature=0.0), "method.params") == [
        "method.params.temperature=0.0: must be a number > 0"]


def test_an_annotation_that_does_not_resolve_is_an_error_not_a_dropped_rule() -> None:
    from grood.valid_values import declared_rules

    def constructor(self, k: "Undefined" = 1) -> None:  # noqa: F821 - the name is missing on purpose
        pass

    with pytest.raises(NameError, match="Undefined"):
        declared_rules(constructor)
