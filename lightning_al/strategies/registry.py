"""Short names of strategies, in one table: ``entropy`` <-> ``EntropySampling()``,
``softmax-confidence`` <-> ``StochasticSampling(score="confidence", mode="softmax")``, ...

The loop (``--loop.strategy entropy``), ``lightning-al study`` (``--strategies``) and the report
(run labels) all read this table, so a strategy has one spelling everywhere.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from lightning_al.strategies.balanced import TaskBalancedSampling
from lightning_al.strategies.base import HIGHER_IS_UNCERTAIN, AcquisitionStrategy
from lightning_al.strategies.facility import FacilityLocation
from lightning_al.strategies.kcenter import KCenterGreedy
from lightning_al.strategies.random_sampling import RandomSampling
from lightning_al.strategies.stochastic import MODES, StochasticSampling
from lightning_al.strategies.uncertainty_sampling import (
    ConfidenceSampling,
    EntropySampling,
    MarginSampling,
    MaxTokenUncertainty,
    MinMarginSampling,
    UncertaintySampling,
)


@dataclass(frozen=True)
class Entry:
    """A short name and the strategy it stands for."""

    name: str
    cls: type[AcquisitionStrategy]
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self, **overrides: Any) -> AcquisitionStrategy:
        return self.cls(**{**self.init_args, **overrides})


def _entries() -> list[Entry]:
    entries = [
        Entry("random", RandomSampling),
        Entry("entropy", EntropySampling),
        Entry("confidence", ConfidenceSampling),
        Entry("margin", MarginSampling),
        Entry("min_margin", MinMarginSampling),
        Entry("max_entropy", MaxTokenUncertainty),
        Entry("kcenter", KCenterGreedy),
        Entry("facility", FacilityLocation),
        Entry("task-balanced", TaskBalancedSampling, {"score": "confidence", "allocation": "uniform"}),
        Entry("task-balanced-confidence", TaskBalancedSampling,
              {"score": "confidence", "allocation": "inverse_confidence"}),
    ]
    entries += [Entry(f"{mode}-{score}", StochasticSampling, {"score": score, "mode": mode})
                for mode in MODES for score in HIGHER_IS_UNCERTAIN]
    return entries


#: Every short name, in a stable order (the order of ``--help`` and error messages).
REGISTRY: dict[str, Entry] = {entry.name: entry for entry in _entries()}
#: Other spellings accepted on input (``name_of`` always gives the REGISTRY name).
ALIASES: dict[str, str] = {"min-margin": "min_margin", "minmargin": "min_margin", "max-entropy": "max_entropy",
                           "k-center": "kcenter", "facility-location": "facility"}
_UNCERTAINTY = re.compile(r"^uncertainty-(\w+)-(highest|lowest)$")
_WITH_ARGS = re.compile(r"^([\w-]+)\((.*)\)$")


def _key(strategy: AcquisitionStrategy) -> tuple:
    return type(strategy), tuple(sorted(strategy.init_args().items()))


_BY_KEY: dict[tuple, str] = {_key(entry.build()): name for name, entry in REGISTRY.items()}


def strategy_from_name(name: str) -> AcquisitionStrategy:
    """The strategy of a short name (``entropy``, ``power-entropy``, ``kcenter``, ...), of a name with
    overridden arguments as ``name_of`` writes it (``power-entropy(beta=2.0)``), or of a class path."""
    name = name.strip()
    name = ALIASES.get(name, name)
    if name in REGISTRY:
        return REGISTRY[name].build()
    if match := _UNCERTAINTY.match(name):
        return UncertaintySampling(match.group(1), highest=match.group(2) == "highest")
    if (match := _WITH_ARGS.match(name)) and ALIASES.get(match.group(1), match.group(1)) in REGISTRY:
        args = yaml.safe_load("{" + match.group(2).replace("=", ": ") + "}") or {}
        return REGISTRY[ALIASES.get(match.group(1), match.group(1))].build(**args)
    if "." in name:
        return strategy_from_spec({"class_path": name})
    raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(REGISTRY)} or a class path")


def strategy_from_spec(spec: Any) -> AcquisitionStrategy:
    """The strategy of a config's ``loop.strategy`` value: a short name or class path, or a mapping with
    ``class_path`` and ``init_args`` (as a run's config.yaml holds it)."""
    if not isinstance(spec, dict):
        return strategy_from_name(str(spec))
    class_path = str(spec.get("class_path", ""))
    if "." not in class_path:
        return strategy_from_name(class_path)
    module, _, cls = class_path.rpartition(".")
    try:
        strategy = getattr(importlib.import_module(module), cls)(**(spec.get("init_args") or {}))
    except (ImportError, AttributeError, TypeError) as err:
        raise ValueError(f"strategy {class_path!r}: cannot build it ({err})") from None
    if not isinstance(strategy, AcquisitionStrategy):
        raise ValueError(f"strategy {class_path!r} is not an AcquisitionStrategy")
    return strategy


def name_of(strategy: AcquisitionStrategy) -> str:
    """The short name of a strategy: its REGISTRY name, else the nearest one of its class with the
    differing arguments (``power-entropy(beta=2.0)``); ``strategy_from_name`` reads both back."""
    if (name := _BY_KEY.get(_key(strategy))) is not None:
        return name
    args = strategy.init_args()
    if type(strategy) is UncertaintySampling:
        return f"uncertainty-{args['score']}-{'highest' if args['highest'] else 'lowest'}"
    best: tuple[int, str, dict] | None = None
    for name, entry in REGISTRY.items():
        if entry.cls is type(strategy):
            defaults = entry.build().init_args()
            diff = {k: v for k, v in args.items() if defaults.get(k) != v}
            if best is None or len(diff) < best[0]:
                best = (len(diff), name, diff)
    if best is None:
        return type(strategy).__name__.removesuffix("Sampling").lower() or type(strategy).__name__
    return f"{best[1]}({', '.join(f'{k}={v!r}' for k, v in best[2].items())})"
