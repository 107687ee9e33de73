"""``nnUNetv2_train`` as the demo runs it: nnU-Net's training, without the two steps that cost a small
CPU more than they give the demo.

* **nnU-Net's validation after training** predicts the fold's two held-out cases, with mirroring and a
  pool of export worker processes started for them: tens of seconds per training on a 2-core CPU, for
  a number the demo's table does not show (it scores held-out test cases of the target and the source).
* **Timing the forward modes** (``auto``: every layer shape in each of its method's modes, when training
  starts) takes longer on a small CPU than the demo's 60 fine-tuning iterations gain from it. Each layer
  runs its method's untuned mode instead (``MethodSpec.untuned_mode``: the single mode that did best on
  this CPU's benchmarks). The modes compute the same function, so only the training time can differ.

Everything else is ``nnUNetv2_train``: run as ``python -m nnunet_peft.demo.train`` with its arguments.
checkpoint_final.pth, the training log and the plugin's summary and adapter are written as usual (all
before the validation would start).
"""
from __future__ import annotations

import sys

VALIDATION_SKIPPED = "validation skipped: nnunet-peft demo scores its held-out test cases"
MODES_UNTUNED = "forward modes not timed: nnunet-peft demo runs each method's untuned mode"


def patch_trainers() -> None:
    """Replace the two steps on the classes every demo trainer inherits them from."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_peft.training.trainer import nnUNetTrainerPeft

    def skip_validation(self, *args, **kwargs) -> None:
        self.print_to_log_file(VALIDATION_SKIPPED)

    def untuned_modes(self) -> None:
        self.print_to_log_file(MODES_UNTUNED)

    nnUNetTrainer.perform_actual_validation = skip_validation
    nnUNetTrainerPeft._choose_forward_modes = untuned_modes


def main() -> int | None:
    from nnunetv2.run.run_training import run_training_entry

    patch_trainers()
    return run_training_entry()


if __name__ == "__main__":
    sys.exit(main())
