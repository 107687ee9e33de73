"""Seconds per epoch of nnU-Net's trainer for every method against Finetune: see
nnunet_peft/benchmarks/trainer_epochs.py (``-h``) and docs/results/speed_and_memory.md."""
import sys

from nnunet_peft.benchmarks.trainer_epochs import main

if __name__ == "__main__":
    sys.exit(main())
