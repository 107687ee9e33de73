"""What the benchmark needs to know about a trainer name: its method, and whether it fine-tunes.

Plugin names are parsed by the trainers' own grammar (nnunet_peft.name_grammar), so a name the
benchmark accepts is one nnU-Net will find. Every other name is taken to be one of nnU-Net's own
trainers (``nnUNetTrainer``, ``nnUNetTrainer_5epochs``...), trained from scratch: the benchmark
gives ``-pretrained_weights`` to plugin trainers only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nnunet_peft import name_grammar as grammar

PREFIX = grammar.PREFIX
REFERENCE_METHOD = "Finetune"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TrainerName:
    name: str
    method: str | None  # None for nnU-Net's own (stock) trainers
    scratch: bool = False  # a plugin trainer that trains from random initialisation

    @property
    def fine_tunes(self) -> bool:
        """Whether it starts from the pretrained checkpoint (plugin trainers but 'scratch' ones)."""
        return self.is_plugin and not self.scratch

    @property
    def is_plugin(self) -> bool:
        return self.method is not None

    @property
    def display(self) -> str:
        """Short name for tables and plots: the plugin prefix says nothing in a comparison."""
        return self.name[len(PREFIX):] if self.is_plugin else self.name


def classify_trainer_name(name: str) -> TrainerName:
    """Classify ``name``; a malformed plugin name raises the grammar's ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"trainer name {name!r} is not a Python class name")
    if grammar.is_plugin_name(name):
        spec = grammar.parse_trainer_name(name)
        return TrainerName(name, spec.method, spec.scratch)
    head = name[len(PREFIX):].split("_")[0] if name.startswith(PREFIX) else ""
    # a case slip would otherwise silently turn an adapter run into a from-scratch stock run
    if head.lower() in {m.lower() for m in grammar.METHOD_TOKENS}:
        raise ValueError(f"trainer name {name!r}: method {head!r} is spelled differently from "
                         f"the plugin's; expected one of {', '.join(grammar.METHOD_TOKENS)}")
    return TrainerName(name, None)


def choose_reference(trainers: list[TrainerName], reference: str | None) -> tuple[str | None, str]:
    """The trainer the paired test compares against, and a sentence for the report saying why.

    ``reference`` (the user's choice) must be one of ``trainers``; otherwise the single trainer whose
    method is Finetune is used. Several Finetune trainers need an explicit choice (ValueError); none
    means no test.
    """
    names = [t.name for t in trainers]
    if reference is not None:
        if reference not in names:
            raise ValueError(f"--reference {reference} is not among the trainers ({', '.join(names)})")
        return reference, f"Paired tests compare each method with {reference} (chosen with --reference)."
    finetune = [t.name for t in trainers if t.method == REFERENCE_METHOD and not t.scratch]
    if len(finetune) > 1:
        raise ValueError(f"several {REFERENCE_METHOD} trainers ({', '.join(finetune)}); say which one "
                         "the paired tests compare against with --reference NAME")
    if not finetune:
        return None, (f"No paired test: no {PREFIX}{REFERENCE_METHOD}... trainer was benchmarked "
                      "and no --reference was given.")
    return finetune[0], f"Paired tests compare each method with {finetune[0]} (full fine-tuning)."
