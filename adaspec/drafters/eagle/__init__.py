"""The EAGLE family (EAGLE-3 and EAGLE-1/2 feature heads): model, drafter, training-time-test unroll, and the
layouts vLLM and SGLang load."""

from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.eagle.export import export_command, servable_variant, serve
from adaspec.drafters.eagle.model import CHECKPOINT_KEY, EagleHead
from adaspec.drafters.eagle.training import eagle_forward
from adaspec.drafters.family import Family
from adaspec.models.servable import head_size_problem

FAMILY = Family(
    name="eagle",
    drafter=EagleDrafter,
    head=EagleHead,
    signal="layers",
    recipe="eagle",
    recognizes=lambda config: CHECKPOINT_KEY in config,
    exports={
        "vllm": lambda path, target, out: serve("vllm", path, out),
        "sglang": lambda path, target, out: serve("sglang", path, out),
    },
    target_problem=lambda target, drafter: head_size_problem(target),
    export_command=export_command,
    # unbounded at decoding; trained for γ unroll steps, in the variant vLLM can serve on the target
    train_options=lambda gamma, target: {"variant": servable_variant(target), "ttt_steps": gamma},
    train_shape=lambda gamma, unroll: {"ttt_steps": unroll},
    teacher_forced=lambda drafter, depth: eagle_forward(drafter.head, depth),
    keep_tree_rows=lambda drafter: EagleDrafter(drafter.head, keep_tree_rows=True),
)

__all__ = ["FAMILY", "EagleDrafter", "EagleHead"]
