"""Stage configs: one frozen dataclass per stage, with the help text on each field.

Precedence is flag > `--config` YAML > dataclass default. `load_config` merges the three and
reports every unknown YAML key at once; `click_options` turns a config's fields into CLI options
whose help is the field's help, so the two cannot drift.

    @dataclass(frozen=True)
    class BenchConfig(StageConfig):
        n: int = option(1000, "number of problems")
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import click
import yaml

from casseat_edge.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True) -> Any:
    """A config field with help text. `flag` overrides the CLI flag name; `cli=False` hides it."""
    meta = {"help": help, "flag": flag, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base of every stage config. Subclasses validate in `__post_init__` with `ConfigError`."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_config(
    cls: type[C], yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> C:
    """Build `cls` from defaults, then the YAML file (if any), then non-None `overrides`."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_read_yaml(cls, Path(yaml_path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return coerce(cls, values, source=str(yaml_path) if yaml_path else "overrides")


def _read_yaml(cls: type[StageConfig], path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def coerce(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
    """Instantiate `cls` from a plain mapping, converting lists to tuples; unknown keys all at once."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs, problems = {}, []
    for key, value in values.items():
        try:
            kwargs[key] = _convert(key, value, hints[key], source)
        except ConfigError as exc:
            problems.append(str(exc).removeprefix(f"{source}: "))
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cls(**kwargs)


def _convert(name: str, value: Any, hint: Any, source: str) -> Any:
    origin = get_origin(hint)
    scalar = _base_type(hint) if origin is not Literal else None
    if scalar in (int, float, str, bool) and origin is not tuple:
        return _check_scalar(name, value, scalar, source)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if origin is tuple and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if origin is Literal and value not in get_args(hint):
        choices = ", ".join(map(str, get_args(hint)))
        raise ConfigError(f"{source}: {name}={value!r} is not one of: {choices}")
    return value


def _check_scalar(name: str, value: Any, kind: type, source: str) -> Any:
    """YAML gives ints, floats, strings and booleans: accept exactly the field's type
    (an int where a float is expected too), so `limit: "5"` or `seed: 1.5` is an error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {name}={value!r} is not a {kind.__name__}")


def click_options(cls: type[StageConfig], *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one click option per config field (default None: unset flags don't override)."""
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or not f.metadata.get("cli", True):
                continue
            func = _click_option(f, hints[f.name])(func)
        return func

    return decorate


def _click_option(f: dataclasses.Field, hint: Any) -> Callable:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    help_text = f"{f.metadata.get('help', '')}  [default: {_plain(f.default)}]"
    kind = _base_type(hint)
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    origin = get_origin(hint)
    if origin is tuple:
        help_text += " (comma-separated or repeated)"
        return click.option(flag, f.name, multiple=True, default=None, help=help_text)
    if origin is Literal:
        return click.option(flag, f.name, type=click.Choice(get_args(hint)), help=help_text)
    return click.option(flag, f.name, type=kind, default=None, help=help_text)


def _base_type(hint: Any) -> Any:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _base_type(args[0])
    return hint if hint in (int, float, str, bool) else str


def cli_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Click params -> config overrides: drop unset values and flatten repeated comma lists."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = tuple(p.strip() for v in value for p in str(v).split(",") if p.strip())
        out[key] = value
    return out
