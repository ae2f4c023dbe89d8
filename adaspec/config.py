"""`--config run.json|run.yaml` for every command, and the resolved options written beside each output.

A config file maps option names (`max_steps` or `max-steps`) to values; flags given on the command line
override it. An optional `command` key must name the command it is used with. Every command that writes
an output writes its full resolved options there as `resolved_options.json` (eval: `<json>.options.json`),
a file `--config` reads back to the same options, so one file reproduces a run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaspec.errors import AdaspecError, warn
from adaspec.io import atomic_write_json
from adaspec.options import rename_notice, renamed

RESOLVED_NAME = "resolved_options.json"

# command -> where its resolved options go, given the options (None: the run wrote no file)
_DESTINATIONS: dict[str, Callable[[Any], Path | None]] = {
    "train-target": lambda o: Path(o.output) / RESOLVED_NAME,
    "distill": lambda o: Path(o.output) / RESOLVED_NAME,
    "train-head": lambda o: Path(o.output) / RESOLVED_NAME,
    "export": lambda o: Path(o.output) / RESOLVED_NAME,
    "cache": lambda o: Path(o.output) / RESOLVED_NAME,
    "eval": lambda o: Path(o.json).with_suffix(".options.json") if o.json else None,
    "reproduce": lambda o: Path(o.runs_dir) / o.task / o.preset / RESOLVED_NAME,
}


def option_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli") is not False]


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdaspecError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdaspecError(f"cannot read config file {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise AdaspecError(f"{path}: YAML needs PyYAML (pip install pyyaml); or write the config as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AdaspecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdaspecError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _fits(tp: Any, value: Any) -> bool:
    """Whether a config value is of an option's type as written: no coercion (a JSON "false" is no bool,
    2.7 no integer, null no string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin in (list, tuple):
        return isinstance(value, list) and all(_fits(args[0], v) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # no option has another type; nothing to check


def load_config(path: str | Path, command: str, cls: type) -> dict[str, Any]:
    """The options a config file sets for `command` (field names as keys); refuses unknown keys and values
    of another type than the option's, in one line naming the key, the type and the value. An option's old
    name (`cls.RENAMED`, e.g. in a resolved_options.json written before the rename) still sets it, with a
    notice."""
    path = Path(path)
    raw = _parse(path)
    if not isinstance(raw, dict):
        raise AdaspecError(f"{path}: a config must map option names to values, got {type(raw).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in raw.items()}
    named = values.pop("command", command)
    if named != command:
        raise AdaspecError(f"{path} is a config for `adaspec {named}`, not `adaspec {command}`")
    for old, new in renamed(cls).items():
        if old in values:
            if new in values:
                raise AdaspecError(f"{path}: option {old} is the old name of {new}; give only {new}")
            warn(f"{path}: " + rename_notice(f"option {old}", new))
            values[new] = values.pop(old)
    known = set(option_names(cls))
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise AdaspecError(
            f"{path}: unknown option{'s' if len(unknown) > 1 else ''} for adaspec {command}: {', '.join(unknown)}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _fits(hints[key], value):
            raise AdaspecError(
                f"{path}: option {key} must be {_type_name(hints[key])}, got {json.dumps(value, default=str)}"
            )
    return values


def resolved_options(command: str, options: Any) -> dict[str, Any]:
    """Every option of a run (defaults included), as a config file for `command`."""
    return {"command": command, **{name: getattr(options, name) for name in option_names(type(options))}}


def write_resolved(command: str, options: Any) -> Path | None:
    """Write the resolved options beside the command's output; the path, or None when it wrote none."""
    destination = _DESTINATIONS.get(command, lambda o: None)(options)
    if destination is None or not destination.parent.is_dir():
        return None
    atomic_write_json(destination, resolved_options(command, options))
    return destination
