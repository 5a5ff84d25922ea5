"""Options declared once: each option's type, default, allowed range and help, in one dataclass field.

Every pluggable part (a data set, a backbone, a method, an optimiser, ...) declares its options as a
subclass of `Options`. That one declaration serves everything that needs it:

* the config store: `defaults(cls)` is the group's node that Hydra composes (the YAML files of a group
  only add what differs from it);
* the checks: constructing an `Options` checks every value against its field's type and rule and
  raises a one-line `UserError` naming the key, the value and what is allowed; `check()` holds the
  rules that tie several options together;
* the reference: `describe(cls)` gives each option's type, default, range and help for the docs.

A field is declared with `option(default, help, low=..., high=..., choices=...)`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from ssl_cli.core.errors import UserError

MISSING = "???"  # OmegaConf's mark for a value the user must set


@dataclass(frozen=True)
class Rule:
    """The values an option allows beyond its type: bounds (inclusive unless open) or a set of choices."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[Tuple[Any, ...]] = None

    def allows(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True  # strings, lists, None: the type check decides
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(c if isinstance(c, str) else show(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {show(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {show(self.high)}"
        return ""


def option(default, help: str, *, low=None, high=None, above=None, below=None, choices=None):
    """A dataclass field with its rule and help. `low`/`high` are inclusive bounds, `above`/`below` open ones."""
    rule = Rule(low=above if above is not None else low, high=below if below is not None else high,
                low_open=above is not None, high_open=below is not None,
                choices=tuple(choices) if choices is not None else None)
    metadata = {"help": help, "rule": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def show(value) -> str:
    """A value as an error message shows it: YAML-like, short, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- types


def _kinds(annotation) -> List[Any]:
    """The plain types an annotation allows: Optional[int] -> [int, NoneType]."""
    if typing.get_origin(annotation) is typing.Union:
        return [k for arg in typing.get_args(annotation) for k in _kinds(arg)]
    return [annotation]


def _type_words(annotation) -> str:
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null"}
    out = []
    for kind in _kinds(annotation):
        origin = typing.get_origin(kind) or kind
        if origin in (list, tuple):
            args = typing.get_args(kind)
            inner = words.get(args[0], "values").replace("an integer", "integers").replace("a finite number",
                                                                                            "numbers")
            out.append(f"a list of {inner}" if args else "a list")
        elif origin is dict:
            out.append("a mapping of options")
        elif kind is Any:
            out.append("any value")
        else:
            out.append(words.get(kind, getattr(kind, "__name__", str(kind))))
    return " or ".join(dict.fromkeys(out))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(value, annotation):
    """`value` as the annotation's type, or raise TypeError. An integer where a float belongs becomes a float."""
    for kind in _kinds(annotation):
        origin = typing.get_origin(kind) or kind
        if kind is Any:
            return value
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and _is_int(value) and -2**63 <= value < 2**63:
            return value
        if kind is float and (_is_int(value) or isinstance(value, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                return float(value)
        if kind is str and isinstance(value, str):
            return value
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            args = typing.get_args(kind)
            try:
                return [_coerce(v, args[0]) for v in value] if args else list(value)
            except TypeError:
                continue
        if origin is dict and isinstance(value, dict):
            return value
    raise TypeError


# --------------------------------------------------------------------------- the base class


@dataclass
class Options:
    """Base of every options declaration. `group` names the config group, for messages (`method.lr`)."""

    group: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            key = f"{self.group}.{f.name}" if self.group else f.name
            if value == MISSING:
                raise UserError(f"{key} must be set (e.g. {key}=...); it has no default")
            try:
                value = _coerce(value, hints[f.name])
            except TypeError:
                raise UserError(f"{key} must be {_type_words(hints[f.name])}, got {show(value)}") from None
            rule: Rule = f.metadata.get("rule", Rule())
            if not rule.allows(value):
                raise UserError(f"{key} must be {rule.describe()}, got {show(value)}")
            setattr(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules that tie several options together; raise a UserError naming the keys."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def names(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def defaults(cls) -> Dict[str, Any]:
    """The options' defaults as a plain dict: the node the config store composes."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def from_config(cls, values: Dict[str, Any], label: str, ignore: Tuple[str, ...] = ("name",)):
    """`cls` built from a config node: unknown and deleted keys are refused first, then every value checked."""
    known = names(cls)
    unknown = sorted(k for k in values if k not in known and k not in ignore)
    if unknown:
        raise UserError(f"{label} has no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    missing = [k for k in known if k not in values]
    if missing:
        key = f"{cls.group}.{missing[0]}" if cls.group else missing[0]
        raise UserError(f"{key} is missing; {label} needs it (removed with ~{key}?)")
    return cls(**{k: values[k] for k in known})


def describe(cls) -> List[Tuple[str, str, str, str]]:
    """(name, type, default, help with its range) of every option: the configuration reference."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        rule: Rule = f.metadata.get("rule", Rule())
        default = defaults(cls)[f.name]
        allowed = rule.describe()
        text = f.metadata.get("help", "") + (f" ({allowed})" if allowed and rule.choices is None else "")
        kind = _type_words(hints[f.name]) if rule.choices is None else rule.describe()
        rows.append((f.name, kind, "required" if default == MISSING else show(default), text))
    return rows
