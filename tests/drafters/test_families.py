"""The family registry (adaspec.drafters.FAMILIES) is the only place drafter families are enumerated: every
family has what its callers look up, a checkpoint is told apart by its family alone, and no code outside a
family's own folder tests for a family's classes or compares against a head family's name."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import typing
from pathlib import Path

import pytest

from adaspec.drafters import DRAFTERS, FAMILIES, HEADS, drafter_family
from adaspec.drafters.family import SERVERS
from adaspec.drafters.loading import saved_family
from adaspec.errors import AdaspecError
from adaspec.models import build_model

PACKAGE = Path(__file__).resolve().parents[2] / "adaspec"


def test_every_family_has_what_its_callers_look_up():
    assert list(DRAFTERS) == list(FAMILIES) and HEADS == ("eagle", "medusa", "mtp", "dflash")
    for name, family in FAMILIES.items():
        assert family.name == name and DRAFTERS[name] is family.drafter
        assert callable(getattr(family.drafter, "load", None)), name
        assert family.signal in ("none", "final", "layers") and family.recipe
        assert (family.recipe == "distill") == family.is_draft_model, name
        for server in SERVERS:  # a layout, or a reason why there is none
            assert (server in family.exports) != (server in family.unserved), (name, server)
        assert set(family.exports) <= set(SERVERS) and set(family.unserved) <= set(SERVERS)
        if name in HEADS:  # a head train-head writes: recognized, loaded, exported, trained for a γ
            assert family.recognizes and family.export_command and family.train_options and family.train_shape, name
            assert callable(family.head.from_pretrained) and callable(family.head.save_pretrained), name
            assert importlib.util.find_spec(f"adaspec.recipes.train_head.{family.recipe}"), name
            # the multi-token recipe's families: a default depth, a fresh head, a saved one or the target's
            # responses to start from
            multi_token = family.default_depth is not None
            assert multi_token == (family.new_head is not None) == family.takes_draft_init, name
            assert multi_token == family.takes_target_data, name
        else:
            assert family.recognizes is None and family.export_command is None and family.signal == "none"


def _heads(target):
    from adaspec.drafters.dflash.model import DFlashHead
    from adaspec.drafters.eagle.model import EagleHead
    from adaspec.drafters.medusa.model import build_medusa
    from adaspec.drafters.mtp.model import build_mtp

    return {
        "eagle": EagleHead.from_target(target),
        "medusa": build_medusa(target, heads=2),
        "mtp": build_mtp(target, depth=2),
        "dflash": DFlashHead.from_target(target),
    }


def test_a_saved_head_is_recognized_as_its_family_alone(tmp_path):
    target = build_model("tiny-llama", 64, seed=0)
    heads = _heads(target)
    assert set(heads) == set(HEADS)
    for name, head in heads.items():
        head.save_pretrained(tmp_path / name)
        assert saved_family(tmp_path / name) is FAMILIES[name]
        assert type(FAMILIES[name].head.from_pretrained(str(tmp_path / name))) is type(head)
        drafter = FAMILIES[name].drafter.load(str(tmp_path / name), target)
        assert drafter_family(drafter) is FAMILIES[name] and FAMILIES[name].max_gamma(head) == drafter.max_gamma
    target.save_pretrained(tmp_path / "target")
    with pytest.raises(AdaspecError, match="holds no adaspec heads"):
        saved_family(tmp_path / "target")
    with pytest.raises(AdaspecError, match="is not a head checkpoint"):
        saved_family(tmp_path / "missing")
    assert drafter_family(object()) is None


def _python_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_no_isinstance_against_a_family_class_outside_its_folder():
    homes: dict[str, tuple[Path, Path]] = {}  # where code may test for a class: its family's folder, its file
    for name, family in FAMILIES.items():
        for cls in (family.drafter, family.head):
            if cls is not None:
                homes[cls.__name__] = (PACKAGE / "drafters" / name, Path(inspect.getfile(cls)).resolve())
    found = []
    for path, tree in _python_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                for cls in names & set(homes):
                    if not any(path == home or home in path.parents for home in homes[cls]):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} isinstance(..., {cls})")
    assert found == []


def test_no_comparison_with_a_head_familys_name_outside_its_folder():
    """`kind == "mtp"`, `kind in ("mtp", "medusa")` and {"eagle": ...} tables are dispatch over families: the
    registry's job. ("lm" is left out: it is also what --draft sources are called, a draft model.) A table is
    one keyed by family names alone: the reproduction's run tables are keyed by run names, some of which are
    also a family's ("eagle" beside "eagle_adaspec" and "eagle1")."""
    found = []
    for path, tree in _python_files():
        if (PACKAGE / "drafters") in path.parents and path.parent.name in FAMILIES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.Dict):
                keys = [k for k in node.keys if k is not None]
                tabled = all(isinstance(k, ast.Constant) and k.value in FAMILIES for k in keys)
                operands = keys if tabled else []
            else:
                continue
            constants = {c.value for op in operands for c in ast.walk(op) if isinstance(c, ast.Constant)}
            if constants & set(HEADS):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} names {sorted(constants & set(HEADS))}")
    assert found == []


def test_train_heads_kinds_are_the_head_families():
    """--kind's choices are declared where --help reads them, without the registry (which loads torch)."""
    from adaspec.recipes.train_head.options import TrainHeadOptions

    assert set(typing.get_args(typing.get_type_hints(TrainHeadOptions)["kind"])) == set(HEADS)
