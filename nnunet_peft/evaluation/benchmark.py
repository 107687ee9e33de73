"""Running a benchmark: every trainer on every fold with nnU-Net, then their scores compared in a report.

``run_benchmark`` takes the parsed options of `nnunet-peft benchmark` (nnunet_peft.commands.benchmark).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunet_peft.evaluation.trainer_names import TrainerName, choose_reference, classify_trainer_name


def run_benchmark(args: argparse.Namespace) -> int:
    from nnunet_peft.evaluation import collect, report, runs, stats

    trainers = _parse_trainers(args.trainers)
    folds = list(dict.fromkeys(runs.parse_fold(f) for f in args.folds))
    # with --views the reference is a view's or the ensemble's method name (set below)
    reference, reference_note = (None, "") if args.views else choose_reference(trainers, args.reference)
    if args.volume_bins is not None:
        stats.volume_bin_edges([], args.volume_bins)  # validate now, not after hours of training
    if (args.test_images is None) != (args.test_labels is None):
        raise ValueError("--test-images and --test-labels go together")
    if (args.source_test_images is None) != (args.source_test_labels is None):
        raise ValueError("--source-test-images and --source-test-labels go together")
    if args.source_test_images is not None and args.pretrained is None:
        raise ValueError("--source-test-images needs --pretrained: the checkpoint's task is the old task")
    test_folds = folds
    if args.test_folds is not None:
        test_folds = list(dict.fromkeys(runs.parse_fold(f) for f in args.test_folds))
        if not set(test_folds) <= set(folds):
            raise ValueError(f"--test-folds {' '.join(map(str, test_folds))} must be among --folds "
                             f"{' '.join(map(str, folds))}")
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}")
    pretrained = None
    checkpoints = [None] * len(args.views or [None])
    if args.pretrained is not None:
        if len(args.pretrained) != len(checkpoints):
            raise ValueError(f"--pretrained takes {len(checkpoints)} checkpoint(s) ({'one per view of --views' if args.views else 'one'}), "
                             f"got {len(args.pretrained)}")
        checkpoints = [c.resolve() for c in args.pretrained]
        for given, checkpoint in zip(args.pretrained, checkpoints):
            if not checkpoint.is_file():
                raise FileNotFoundError(f"pretrained checkpoint {given} does not exist")
        pretrained = checkpoints[0]
    elif any(t.fine_tunes for t in trainers) and not args.collect_only:
        raise ValueError("plugin trainers fine-tune a pretrained network: give --pretrained CKPT")
    if args.views and args.source_test_images is not None:
        raise ValueError("--source-test-images is not supported with --views yet; check each view's old task "
                         "with a benchmark of that view's plans")

    results_root = _env_folder("nnUNet_results", required=True)
    experiment = runs.Experiment(dataset=_dataset_name(args.dataset), configuration=args.configuration,
                                 plans=args.plans, results_root=results_root, pretrained=pretrained,
                                 device=args.device, test_time_mirroring=not args.disable_tta,
                                 predict_processes=args.num_processes)
    planned = [runs.Run(t, f) for t in trainers for f in folds]
    env = runs.trainer_environment()
    experiments = [experiment]
    if args.views:
        from nnunet_peft.evaluation import view_ensembles

        experiments = view_ensembles.view_experiments(experiment, args.views, checkpoints)
        reference = view_ensembles.default_reference(trainers, args.reference)
        reference_note = (f"Paired tests compare each method and view with {reference} (nnU-Net's ensemble of "
                          f"the views' probabilities).")

    if args.jobs_only:
        pending = 0
        for exp in experiments:
            for run in planned:
                command = runs.train_command(exp, run, runs.run_state(exp, run))
                if command is not None:
                    print(runs.job_line(command, env))
                    pending += 1
        total = len(planned) * len(experiments)
        print(f"# {pending} of {total} runs to do; {total - pending} finished. "
              "When they are done: the same command with --collect-only.", file=sys.stderr)
        return 0

    failed = []
    if not args.collect_only:
        for exp in experiments:
            outcomes = runs.execute(exp, planned, env)
            failed += [o for o in outcomes if o.returncode not in (None, 0)]
    if args.views:
        return _report_views(args, experiments, planned, trainers, folds, test_folds, reference, reference_note,
                             env, failed)

    preprocessed_root = _env_folder("nnUNet_preprocessed")
    dataset_json = collect.load_dataset_json(experiment, preprocessed_root, [t.name for t in trainers])
    labels, file_ending = dataset_json["labels"], dataset_json.get("file_ending", ".nii.gz")
    reference_dir = collect.reference_folder(experiment.dataset, preprocessed_root, _env_folder("nnUNet_raw"))
    rows, costs, curves, notes = collect.collect_validation(experiment, planned, reference_dir, labels,
                                                            file_ending, args.num_processes)
    out = (args.out or results_root / experiment.dataset
           / f"peft_benchmark_{experiment.plans}_{experiment.configuration}").resolve()
    if args.test_images is not None:
        collect.check_test_labels(args.test_images, args.test_labels, file_ending)
        test_runs = [r for r in planned if r.fold in test_folds]
        folders = collect.predict_test(experiment, test_runs, args.test_images.resolve(),
                                       out / "test_predictions", env, file_ending)
        rows += collect.collect_test(test_runs, folders, args.test_labels, labels, file_ending,
                                     args.num_processes)
        notes.append(f"Test set predicted by the model of fold(s) {' '.join(map(str, test_folds))} of each "
                     f"method{'' if experiment.test_time_mirroring else ', without test-time mirroring'}, each fold "
                     "on its own (not the fold ensemble) and without postprocessing.")
    if args.source_test_images is not None:
        from nnunet_peft.evaluation.old_task import old_task_check

        _, old_task_note = old_task_check(experiment, [r for r in planned if r.fold in test_folds],
                                          args.source_test_images.resolve(), args.source_test_labels.resolve(),
                                          dataset_json, out, env)
        notes.append(old_task_note)
    if reference is not None and not any(r["trainer"] == reference for r in rows):
        reference_note = f"No paired test: the reference {reference} has no finished run."
        reference = None
    notes = [f"Dataset {experiment.dataset}, configuration {experiment.configuration}, plans "
             f"{experiment.plans}, folds {' '.join(map(str, folds))}; validation references from "
             f"{reference_dir}.", reference_note, *notes]
    if pretrained is not None:
        notes.insert(1, f"Plugin trainers start from {pretrained}; nnU-Net's own trainers from scratch.")
    path = report.write_report(out / "report", rows, costs, reference, args.volume_bins, notes,
                               title=f"Fine-tuning benchmark on {experiment.dataset}", curves=curves)
    return _reported(path, failed)


def _report_views(args: argparse.Namespace, experiments: list, planned: list, trainers: list, folds: list,
                  test_folds: list, reference: str, reference_note: str, env: dict, failed: list) -> int:
    """The report of a tri-planar benchmark: every view as its own method, and the ensemble of the views."""
    from nnunet_peft.evaluation import collect, report, view_ensembles

    preprocessed_root = _env_folder("nnUNet_preprocessed")
    dataset = experiments[0].dataset
    dataset_json = collect.load_dataset_json(experiments[0], preprocessed_root, [t.name for t in trainers])
    labels, file_ending = dataset_json["labels"], dataset_json.get("file_ending", ".nii.gz")
    reference_dir = collect.reference_folder(dataset, preprocessed_root, _env_folder("nnUNet_raw"))
    out = (args.out or experiments[0].results_root / dataset
           / f"peft_benchmark_views_{experiments[0].configuration}").resolve()
    rows, costs, curves, notes = [], [], [], []
    for exp in experiments:
        r, c, cu, n = collect.collect_validation(exp, planned, reference_dir, labels, file_ending, args.num_processes)
        rows += view_ensembles.retag(r, exp)
        costs += view_ensembles.retag(c, exp)
        curves += view_ensembles.retag(cu, exp)
        notes += n
    costs += view_ensembles.ensemble_costs(list(costs), planned)
    r, n = view_ensembles.ensemble_rows(
        experiments, planned, "val", lambda e, run: e.fold_folder(run.trainer.name, run.fold) / "validation",
        out / "view_ensembles" / "val", reference_dir, labels, file_ending, dataset_json, args.num_processes)
    rows, notes = rows + r, notes + n
    if args.test_images is not None:
        collect.check_test_labels(args.test_images, args.test_labels, file_ending)
        test_runs = [r for r in planned if r.fold in test_folds]
        predicted = {}
        for exp in experiments:
            label = view_ensembles.view_label(exp.plans)
            predicted[exp.plans] = collect.predict_test(exp, test_runs, args.test_images.resolve(),
                                                        out / "test_predictions" / label, env, file_ending)
            rows += view_ensembles.retag(collect.collect_test(test_runs, predicted[exp.plans], args.test_labels, labels,
                                                     file_ending, args.num_processes), exp)
        r, n = view_ensembles.ensemble_rows(
            experiments, test_runs, "test",
            lambda e, run: predicted[e.plans].get((run.trainer.name, str(run.fold))),
            out / "view_ensembles" / "test", args.test_labels, labels, file_ending, dataset_json, args.num_processes)
        rows, notes = rows + r, notes + n
        notes.append(f"Test set predicted by the model of fold(s) {' '.join(map(str, test_folds))} of each "
                     f"method and view{'' if experiments[0].test_time_mirroring else ', without test-time mirroring'}, "
                     "each fold on its own (not the fold ensemble) and without postprocessing.")
    notes = [f"Dataset {dataset}, configuration {experiments[0].configuration}, views "
             f"{', '.join(f'{view_ensembles.view_label(e.plans)} ({e.plans})' for e in experiments)}, folds "
             f"{' '.join(map(str, folds))}; validation references from {reference_dir}. 'METHOD [ensemble]' "
             f"averages the views' probabilities with nnU-Net's ensembling; its costs are the views' summed.",
             reference_note, *notes]
    path = report.write_report(out / "report", rows, costs, reference, args.volume_bins, notes,
                               title=f"Tri-planar benchmark on {dataset}", curves=curves)
    return _reported(path, failed)


def _reported(path, failed) -> int:
    """Say where the report is and which runs failed; the exit status (1 when any failed)."""
    print(f"report: {path}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{o.run.trainer.name} fold {o.run.fold}"
                                                         for o in failed), file=sys.stderr)
        return 1
    return 0


def _parse_trainers(names: list[str]) -> list[TrainerName]:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"trainer(s) listed twice: {', '.join(duplicates)}")
    return [classify_trainer_name(n) for n in names]


def _env_folder(variable: str, required: bool = False) -> Path | None:
    value = os.environ.get(variable)
    if not value:
        if required:
            raise ValueError(f"{variable} is not set; export it as for nnUNetv2_train")
        return None
    return Path(value)


def _dataset_name(dataset: str) -> str:
    """nnU-Net's own resolution of an id to DatasetNNN_Name (it reads the nnUNet_* folders)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return str(maybe_convert_to_dataset_name(dataset))
    except RuntimeError as e:
        raise ValueError(str(e)) from None
