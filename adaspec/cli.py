"""`adaspec <command>`: every command is one options dataclass plus one function.

Flags are generated from the dataclass fields (the field's `help` metadata is the flag's help text and its
default is written once, in the dataclass). Range checks live in each dataclass's `__post_init__`, so the
same checks apply from Python and from the command line. `--config FILE` sets options from a JSON/YAML file
(flags override it) and each run writes its resolved options beside its output (adaspec.config). The options
dataclasses live in modules that import no torch or transformers, and a command's function is imported only
once its options are parsed, so `adaspec <command> --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

from safetensors import SafetensorError

from adaspec import config as config_lib
from adaspec.errors import AdaspecError, warn
from adaspec.options import rename_notice, renamed


class Command(NamedTuple):
    options: str  # "module:class", the options dataclass (its module imports no torch: the parser is built from it)
    run: str  # "module:function" taking the options, imported when the command runs
    summary: str


COMMANDS: dict[str, Command] = {
    "generate": Command(
        "adaspec.recipes.generate_options:GenerateOptions",
        "adaspec.recipes.generate:run_generate",
        "speculative decoding of one prompt, streaming text and printing acceptance stats",
    ),
    "train-target": Command(
        "adaspec.recipes.train_target_options:TrainTargetOptions",
        "adaspec.recipes.train_target:run_train_target",
        "fine-tune (or build and train) the target model on a task",
    ),
    "distill": Command(
        "adaspec.recipes.distill_options:DistillOptions",
        "adaspec.recipes.distill:run_distill",
        "distil a draft from the target: plain KD (reference / DistillSpec) or AdaSPEC selective KD",
    ),
    "train-head": Command(
        "adaspec.recipes.train_head.options:TrainHeadOptions",
        "adaspec.recipes.train_head.options:run_train_head",
        "train an EAGLE feature head, MTP modules or Medusa heads on a frozen target (KD or AdaSPEC)",
    ),
    "export": Command(
        "adaspec.recipes.export_options:ExportOptions",
        "adaspec.recipes.export:run_export",
        "write a trained head in the layout vLLM / SGLang load (EAGLE-3 or EAGLE-1)",
    ),
    "cache": Command(
        "adaspec.recipes.cache_options:CacheOptions",
        "adaspec.recipes.cache:run_cache",
        "store the target's top-K distribution and the reference's divergence per response token",
    ),
    "eval": Command(
        "adaspec.recipes.eval_options:EvalOptions",
        "adaspec.recipes.eval:run_eval",
        "measure a draft: empirical and analytic acceptance, speed-up and the target's task quality",
    ),
    "build": Command(
        "adaspec.recipes.build.command:BuildOptions",
        "adaspec.recipes.build.command:run_build",
        "your target and data in: train a KD and an AdaSPEC drafter of every servable family, measure "
        "them on held-out prompts, export the fastest for vLLM/SGLang, write a report",
    ),
    "reproduce": Command(
        "adaspec.recipes.reproduce.options:ReproduceOptions",
        "adaspec.recipes.reproduce.pipeline:run_reproduce",
        "run the whole paper pipeline at CPU scale and write results/<task>/",
    ),
}


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def options_class(command: str) -> type:
    """The options dataclass of `command` (importing no torch)."""
    return _load(COMMANDS[command].options)


class _RenamedFlag(argparse.Action):
    """An option's old flag, kept for one release: it sets the option and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warn(rename_notice(str(option_string), self.new))
        setattr(namespace, self.dest, values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; a field without a default is a required flag."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("cli") is False:
            continue
        tp = hints[field.name]
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        optional = origin in (typing.Union, types.UnionType) and type(None) in args
        if optional:
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        kwargs: dict[str, Any] = {"help": field.metadata.get("help", "")}
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else (field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        )
        if has_default:
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default})"
        else:
            kwargs["required"] = True
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif origin in (list, tuple):
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0]
        else:
            kwargs["type"] = tp
        if "metavar" in field.metadata:
            kwargs["metavar"] = field.metadata["metavar"]
        parser.add_argument(_flag(field.name), dest=field.name, **kwargs)
        for old in (old for old, new in renamed(cls).items() if new == field.name):
            parser.add_argument(
                _flag(old),
                dest=field.name,
                action=_RenamedFlag,
                new=_flag(field.name),
                help=argparse.SUPPRESS,
                default=argparse.SUPPRESS,
                **{k: v for k, v in kwargs.items() if k in ("type", "choices", "nargs", "metavar")},
            )


def options_from_args(cls: type, ns: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def _apply_config(parser: argparse.ArgumentParser, values: dict[str, Any]) -> None:
    """Config values become the flags' defaults (so flags still override) and satisfy required flags."""
    for action in parser._actions:
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False


def build_parser(command: str | None = None, config: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s options module is imported, and no torch or transformers.
    `config`: option values from a --config file, used as that command's defaults."""
    parser = argparse.ArgumentParser(prog="adaspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_options, _run, summary) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=summary)
            continue
        cls = options_class(name)
        p = sub.add_parser(
            name,
            help=summary,
            description=(cls.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_dataclass_arguments(p, cls)
        p.add_argument(
            "--config",
            metavar="FILE",
            help="read options from a JSON or YAML file (flags override "
            "it); each run writes its resolved options beside its output, readable back by --config",
        )
        _apply_config(p, config or {})
    return parser


def _config_path(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return known.config


def parse_options(argv: list[str]) -> tuple[str, Any]:
    """(command, its options) from a command line, a --config file under the flags; AdaspecError on a bad
    config or bad values (argparse exits on bad flags)."""
    command = next((a for a in argv if a in COMMANDS), None)
    config_values = None
    if command is not None and (config_file := _config_path(argv)) is not None:
        config_values = config_lib.load_config(config_file, command, options_class(command))
    ns = build_parser(command, config_values).parse_args(argv)
    return ns.command, options_from_args(options_class(ns.command), ns)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    if command is None:
        build_parser().parse_args(argv)  # no command: argparse prints usage or help and exits
    try:
        command, options = parse_options(argv)  # --help exits here, before torch is imported
        fn: Callable[[Any], Any] = _load(COMMANDS[command].run)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file load/save bars drown our own progress output
        result = fn(options)
        config_lib.write_resolved(command, options)
    except AdaspecError as exc:
        print(f"adaspec {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the operating system's refusal (read-only, disk full, ...): one line, the path named
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"adaspec {command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except SafetensorError as exc:  # safetensors' own write errors (a full disk: "os error 28")
        print(f"adaspec {command}: error: could not write weights: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adaspec {command}: interrupted (checkpoints already written are kept)", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
