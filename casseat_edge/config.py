"""Stage configs: one frozen dataclass per stage, with the help text on each field.

Precedence is flag > `--config` YAML > dataclass default. `load_config` merges the three and
reports every unknown YAML key at once; `click_options` turns a config's fields into CLI options
whose help is the field's help, so the two cannot drift. Every config checks its field values
against their annotations when it is built (before the subclass's own `__post_init__`), so
`EvalConfig(limit="x")` is a `ConfigError` naming `limit`, not a TypeError deep in a stage.

    @dataclass(frozen=True)
    class BenchConfig(StageConfig):
        n: int = option(1000, "number of problems")
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
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
    """Base of every stage config. Subclasses validate in `__post_init__` with `ConfigError`;
    the field types are checked before it runs (see `check_field_types`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a dataclass calls only the most derived `__post_init__`: wrap each subclass's own so
        # the type check runs first without every subclass remembering to call super()
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_types", False):

            @functools.wraps(own)
            def post_init(self: StageConfig) -> None:
                check_field_types(self)
                own(self)

            post_init._checks_types = True  # type: ignore[attr-defined]
            cls.__post_init__ = post_init  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        check_field_types(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def check_field_types(config: StageConfig) -> None:
    """Check each field's value against its annotation (all problems in one `ConfigError`).
    Sequences become tuples (a string is split at commas, as on the command line); a str field
    also takes a path."""
    cls, problems = type(config), []
    for field, hint in _hints(cls).items():
        value = getattr(config, field.name)
        try:
            checked = _checked_value(value, hint)
        except TypeError as exc:
            flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
            problems.append(f"{field.name} ({flag}): expected {exc}, found {_brief(value)}")
            continue
        if checked is not value:
            object.__setattr__(config, field.name, checked)
    if problems:
        raise ConfigError(f"{cls.__name__}: " + "; ".join(problems))


@functools.cache
def _hints(cls: type) -> dict[dataclasses.Field, Any]:
    hints = typing.get_type_hints(cls)
    return {f: hints[f.name] for f in dataclasses.fields(cls)}


def _checked_value(value: Any, hint: Any) -> Any:
    """`value` (tuples normalized) if it fits `hint`; else TypeError saying what was expected."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise TypeError("one of: " + ", ".join(map(str, args)))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return value
        failures = []
        for option_hint in (a for a in args if a is not type(None)):
            try:
                return _checked_value(value, option_hint)
            except TypeError as exc:
                failures.append(str(exc))
        raise TypeError(" or ".join(failures))
    if origin is tuple or hint is tuple:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list (or a comma-separated string)")
        item = args[0] if args else Any
        try:
            return tuple(_checked_value(v, item) for v in value)
        except TypeError as exc:
            raise TypeError(f"a list whose items are each {exc}") from None
    if hint in _SCALARS and not _SCALARS[hint][0](value):
        raise TypeError(_SCALARS[hint][1])
    return value


_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, (str, os.PathLike)), "a string"),
}


def _brief(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the config file as UTF-8"
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
    if value is None and type(None) in get_args(hint):  # an optional field's `null`
        return None
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


MAX_THREADS_PER_CORE = 4  # more only adds contention; ggml crashes on absurd counts (100000)


def check_threads(threads: int | None) -> int:
    """The CPU thread count to use: 0/None -> all cores; else 1 .. 4x the cores, or ConfigError."""
    cores = os.cpu_count() or 1
    if not threads:
        return cores
    limit = MAX_THREADS_PER_CORE * cores
    if not 1 <= threads <= limit:
        raise ConfigError(
            f"--threads: expected 1 to {limit} ({MAX_THREADS_PER_CORE}x the {cores} CPU cores) or "
            f"0 for all cores, found {threads}"
        )
    return threads
