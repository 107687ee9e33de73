"""Serving several adapters from one frozen base: ``nnunet-peft predict`` (docs/serving_many_adapters.md)."""
