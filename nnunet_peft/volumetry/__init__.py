"""Volumetry and diagnosis: volumes in mL from segmentations, and a cross-validated classifier over them.

    table = volume_table("predictions/", labels=dataset_json["labels"])      # one row per case
    metrics = classify("volumes.csv", "metadata.csv", "diagnosis", "out/")  # metrics.json and figures

The command line is ``nnunet-peft volumes`` and ``nnunet-peft classify`` (``nnunet_peft.commands.volumetry``).
"""
from nnunet_peft.volumetry.diagnosis import build_cohort, classify, cross_validate, subject_volumes
from nnunet_peft.volumetry.volumes import case_volumes, volume_table

__all__ = ["build_cohort", "case_volumes", "classify", "cross_validate", "subject_volumes", "volume_table"]
