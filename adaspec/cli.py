"""`adaspec <command>`: every command is one options dataclass plus one function.

Flags are generated from the dataclass fields (the field's `help` metadata is the flag's help text and its
default is written once, in the dataclass). Range checks live in each dataclass's `__post_init__`, so the
same checks apply from Python and from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from typing import Any, Callable

from adaspec.errors import AdaspecError

# command -> (module, options dataclass, function taking the options)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "generate": ("adaspec.decoding.command", "GenerateOptions", "run_generate",
                 "speculative decoding of one prompt, streaming text and printing acceptance stats"),
    "train-target": ("adaspec.training.target", "TrainTargetOptions", "run_train_target",
                     "fine-tune (or build and train) the target model on a task"),
    "distill": ("adaspec.distill.recipe", "DistillOptions", "run_distill",
                "distil a draft from the target: plain KD (reference / DistillSpec) or AdaSPEC selective KD"),
    "cache": ("adaspec.distill.cache", "CacheOptions", "run_cache",
              "store the target's top-K distribution and the reference's divergence per response token"),
    "eval": ("adaspec.evaluation.command", "EvalOptions", "run_eval",
             "measure a draft: empirical and analytic acceptance, speed-up and the target's task quality"),
    "reproduce": ("adaspec.reproduce.pipeline", "ReproduceOptions", "run_reproduce",
                  "run the whole paper pipeline at CPU scale and write results/<task>/"),
}


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
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
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


def options_from_args(cls: type, ns: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (torch and transformers are slow to import)."""
    parser = argparse.ArgumentParser(prog="adaspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, cls_name, _fn, summary) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=summary)
            continue
        cls = getattr(importlib.import_module(module), cls_name)
        p = sub.add_parser(name, help=summary, description=(cls.__doc__ or summary).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_dataclass_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if a in COMMANDS), None))
    ns = parser.parse_args(argv)
    module, cls_name, fn_name, _ = COMMANDS[ns.command]
    mod = importlib.import_module(module)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # per-file load/save bars drown our own progress output
    try:
        options = options_from_args(getattr(mod, cls_name), ns)
        fn: Callable[[Any], Any] = getattr(mod, fn_name)
        result = fn(options)
    except AdaspecError as exc:
        print(f"adaspec {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adaspec {ns.command}: interrupted (checkpoints already written are kept)", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
