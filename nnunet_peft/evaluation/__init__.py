"""Scoring segmentations and comparing fine-tuning methods (`nnunet-peft benchmark`).

For other code (e.g. the demo) the entry points are::

    rows = evaluate_folder(pred_dir, ref_dir, dataset_json["labels"])   # per case and label
    write_report(out_dir, [{"method": "CPLoRA", **r} for r in rows])    # CSV, report.md, plots
"""
from nnunet_peft.evaluation.metrics import case_metrics, dice, evaluate_case, evaluate_folder, hd95, volume_ml
from nnunet_peft.evaluation.report import write_report

__all__ = ["case_metrics", "dice", "evaluate_case", "evaluate_folder", "hd95", "volume_ml", "write_report"]
