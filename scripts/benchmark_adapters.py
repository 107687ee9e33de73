"""Speed and memory of one training step of every adapter method against full fine-tuning (and merged
inference, and with --per-layer each layer alone): see nnunet_peft/benchmarks/adapter_step.py (``-h``)
and docs/results/speed_and_memory.md."""
import sys

from nnunet_peft.benchmarks.adapter_step import main

if __name__ == "__main__":
    sys.exit(main())
