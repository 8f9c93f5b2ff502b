"""The search space: dotted config keys to Optuna distributions, read from a space YAML (presets/spaces/NAME.yaml, or
NAME.space.yaml beside a config file) and checked against the base config before any trial runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from genforge.config import load_config
from genforge.errors import GenforgeError


@dataclass
class Param:
    """One dotted config key and its distribution. Categorical choices that Optuna cannot store (lists, mappings)
    travel as their JSON text and are decoded back before they reach the config."""

    key: str
    distribution: object  # an optuna.distributions.BaseDistribution
    decoded: dict = field(default_factory=dict)  # JSON text -> the choice it stands for

    def suggest(self, trial):
        d = self.distribution
        if hasattr(d, "choices"):
            return self.decode(trial.suggest_categorical(self.key, d.choices))
        suggest = trial.suggest_int if isinstance(d.low, int) else trial.suggest_float
        return suggest(self.key, d.low, d.high, step=d.step, log=d.log)

    def decode(self, value):
        return self.decoded.get(value, value) if isinstance(value, str) else value

    def bounds(self) -> list:
        d = self.distribution
        return [self.decode(c) for c in d.choices] if hasattr(d, "choices") else [d.low, d.high]


def yaml_value(value) -> str:
    """A value as override text that YAML reads back as the same value (1e-05 stays a float, 'on' a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def _number(key: str, name: str, value) -> int | float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenforgeError(f"search space: {key}: {name} must be a number, got {value!r}")
    return value


def _distribution(key: str, spec) -> Param:
    from optuna.distributions import (  # deferred: optuna is the optional `tune` extra
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not isinstance(spec, dict) or not spec:
        raise GenforgeError(f"search space: {key}: give {{low, high}} (optionally log: true or step) or "
                            f"{{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise GenforgeError(f"search space: {key}: a categorical is {{choices: [a, b, ...]}} alone, got {spec!r}")
        decoded = {json.dumps(c): c for c in spec["choices"] if isinstance(c, (list, dict))}
        choices = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in spec["choices"]]
        if len(set(map(json.dumps, choices))) < len(choices):
            raise GenforgeError(f"search space: {key}: a choice is listed twice: {spec['choices']}")
        return Param(key, CategoricalDistribution(choices), decoded)
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        what = f"unknown field {sorted(unknown)[0]!r}" if unknown else "needs both low and high"
        raise GenforgeError(f"search space: {key}: {what}; a range is {{low, high}} with optional log: true or step")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise GenforgeError(f"search space: {key}: log is true or false, got {log!r}")
    step = None if step is None else _number(key, "step", step)
    integer = all(isinstance(v, int) for v in (low, high, step if step is not None else 1))
    try:
        if integer:
            return Param(key, IntDistribution(low, high, log=log, step=step or 1))
        return Param(key, FloatDistribution(float(low), float(high), log=log, step=step))
    except ValueError as e:  # low > high, log with low <= 0, log with a step
        raise GenforgeError(f"search space: {key}: {' '.join(str(e).split())}") from None


def default_space_path(source: str) -> Path | None:
    """A preset's shipped space (presets/spaces/NAME.yaml), or NAME.space.yaml beside a config file."""
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        beside = path.with_name(f"{path.stem}.space.yaml")
        return beside if beside.is_file() else None
    shipped = resources.files("genforge.presets").joinpath(f"spaces/{source}.yaml")
    return Path(str(shipped)) if shipped.is_file() else None


def load_space(source: str, space: str | Path | None) -> tuple[list[Param], Path]:
    path = Path(space) if space is not None else default_space_path(source)
    if path is None:
        raise GenforgeError(f"{source} ships no search space; give one with --space space.yaml (dotted config keys "
                            f"to distributions, e.g. train.lr: {{low: 1.0e-4, high: 1.0e-2, log: true}})")
    if not path.is_file():
        raise GenforgeError(f"search space {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GenforgeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise GenforgeError(f"{path}: a search space is a mapping of dotted config keys to distributions")
    return [_distribution(str(key), spec) for key, spec in raw.items()], path


def check_space(source: str, overrides: list[str], space: list[Param]) -> None:
    """Every bound of every distribution (each choice of a categorical) must make a valid config with the others at
    the base config's values: an unknown key or an out-of-range bound fails here, before any trial runs."""
    for param in space:
        for value in param.bounds():
            try:
                load_config(source, [*overrides, f"{param.key}={yaml_value(value)}"])
            except GenforgeError as e:
                raise GenforgeError(f"search space: {param.key}={yaml_value(value)}: {e}") from None
