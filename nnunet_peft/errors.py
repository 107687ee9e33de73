"""Errors that library code raises and the ``nnunet-peft`` command line reports in one way.

Here, below the commands, so that a library module (the demo's pipeline, planning from a checkpoint)
can raise them without importing ``nnunet_peft.cli``.
"""
from __future__ import annotations


class StepFailed(RuntimeError):
    """A step that a command runs (an nnU-Net program, a stage of a pipeline) failed, and its own output
    says why: exit status 1, where a user error caught before anything ran (a ValueError) gets 2.

    ``advice``, where a kind of step sets it, is printed on the line after the error: what to do next
    that holds for every failure of that kind (the demo's: rerunning skips the finished steps)."""

    advice: str = ""
