"""Option declarations: one field per option holds its type, default, range and help, and every check,
the composed config and the configuration reference come from it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
from omegaconf import OmegaConf

from conftest import compose
from ssl_cli.core.errors import UserError
from ssl_cli.core.options import Options, defaults, from_config, option
from ssl_cli.engine.config import NAMED_GROUPS, SINGLE_GROUPS, check_config

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Example(Options):
    group = "example"
    rate: float = option(0.5, "a rate", low=0, high=1)
    count: int = option(3, "a count", above=0)
    mode: str = option("a", "a mode", choices=("a", "b"))
    size: Optional[int] = option(None, "a size or null", low=1)
    values: List[float] = option([1.0, 2.0], "some numbers")


@pytest.mark.parametrize("values,message", [
    ({"rate": 1.5}, "example.rate must be in [0, 1], got 1.5"),
    ({"rate": "high"}, "example.rate must be a finite number, got 'high'"),
    ({"rate": float("nan")}, "example.rate must be a finite number, got nan"),
    ({"count": 0}, "example.count must be > 0, got 0"),
    ({"count": 2.5}, "example.count must be an integer, got 2.5"),
    ({"count": True}, "example.count must be an integer, got true"),
    ({"count": 2**63}, "example.count must be an integer"),
    ({"mode": "c"}, "example.mode must be one of a, b, got 'c'"),
    ({"size": 0}, "example.size must be >= 1, got 0"),
    ({"values": [1, "x"]}, "example.values must be a list of numbers, got [1, 'x']"),
    ({"values": 3}, "example.values must be a list of numbers, got 3"),
])
def test_a_declaration_refuses_what_it_does_not_allow(values, message):
    with pytest.raises(UserError) as e:
        Example(**values)
    assert str(e.value).startswith(message), str(e.value)


def test_a_declaration_keeps_valid_values_with_their_type():
    o = Example(rate=1, count=7, mode="b", size=None, values=[3])
    assert (o.rate, o.count, o.mode, o.size, o.values) == (1.0, 7, "b", None, [3.0])
    assert isinstance(o.rate, float) and defaults(Example)["values"] == [1.0, 2.0]


def test_unknown_and_deleted_keys_are_named():
    with pytest.raises(UserError, match="example=x has no option speed; its options: rate, count, mode, size, values"):
        from_config(Example, {**defaults(Example), "speed": 1}, "example=x")
    node = defaults(Example)
    del node["count"]
    with pytest.raises(UserError, match=r"example.count is missing; example=x needs it \(removed with ~example.count\?\)"):
        from_config(Example, node, "example=x")


@pytest.mark.parametrize("group,name", [(g, n) for g, r in NAMED_GROUPS.items() for n in r.names()])
def test_each_group_option_composes_to_its_declaration_plus_its_yaml(group, name):
    composed = OmegaConf.to_container(compose([f"{group}={name}"])[group], resolve=True)
    declared = {"name": name, **defaults(NAMED_GROUPS[group].options(name))}
    assert set(composed) == set(declared)  # no key outside the declaration, none missing
    yaml = OmegaConf.load(REPO / "configs" / group / f"{name}.yaml")
    overridden = {k for k in yaml if k != "defaults"}
    for key, value in composed.items():
        if key not in overridden:
            assert value == declared[key], key  # what the YAML does not set is the declared default


def test_every_option_is_explained():
    classes = {cls for r in NAMED_GROUPS.values() for cls in (r.options(n) for n in r.names())}
    classes |= set(SINGLE_GROUPS.values())
    unexplained = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c) if not f.metadata.get("help")]
    assert not unexplained


def test_check_config_returns_typed_options():
    run = check_config(compose(["method=fixmatch", "method.confidence_threshold=0.6", "trainer.max_steps=10"]))
    assert run.names["method"] == "fixmatch" and run.method.confidence_threshold == 0.6
    assert run.trainer.max_steps == 10 and type(run.method).__name__ == "FixMatchOptions"


def test_the_configuration_reference_is_generated_from_the_declarations():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "config_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
