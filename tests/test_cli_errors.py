"""nnunet_peft.cli.main reports every command's errors the same way: one line on stderr, an exit status.

A failed step (an nnU-Net program the command ran) is status 1, a user error caught before anything
ran is status 2; neither prints a traceback.
"""
from __future__ import annotations

import pytest

from nnunet_peft import cli
from nnunet_peft.planning.from_checkpoint import NnUNetStepFailed


@pytest.fixture
def commands(monkeypatch):
    # only the commands under test: the others' modules may not be importable everywhere
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nnunet_peft.commands.plan_from_checkpoint",
                                                 "nnunet_peft.commands.plan_views"))


def test_a_failed_nnunet_step_of_plan_from_checkpoint_is_status_1(commands, tmp_path, monkeypatch, capsys):
    import nnunet_peft.planning.from_checkpoint as pfc

    def fail(*args, **kwargs):
        raise NnUNetStepFailed("nnUNetv2_preprocess -d 902 failed with exit code 3")

    monkeypatch.setattr(pfc, "plan_from_checkpoint", fail)
    (tmp_path / "ckpt.pth").write_bytes(b"")
    assert cli.main(["plan-from-checkpoint", "-d", "902", "--checkpoint", str(tmp_path / "ckpt.pth")]) == 1
    assert capsys.readouterr().err == ("nnunet-peft plan-from-checkpoint: error: nnUNetv2_preprocess -d 902 "
                                       "failed with exit code 3\n")


def test_a_failed_nnunet_step_of_plan_views_is_status_1(commands, monkeypatch, capsys):
    import nnunet_peft.commands.plan_views as views

    def fail(*args, **kwargs):
        raise NnUNetStepFailed("planning or preprocessing a view failed")

    monkeypatch.setattr(views, "plan_views", fail)
    assert cli.main(["plan-views", "-d", "902"]) == 1
    assert capsys.readouterr().err == "nnunet-peft plan-views: error: planning or preprocessing a view failed\n"


def test_a_user_error_is_status_2_and_other_failures_are_not_swallowed(commands, monkeypatch, capsys):
    import nnunet_peft.commands.plan_views as views

    assert cli.main(["plan-views", "-d", "902", "--checkpoints", "a.pth", "--target-spacing", "1", "1", "1"]) == 2
    assert capsys.readouterr().err.startswith("nnunet-peft plan-views: error: --architecture and --target-spacing")

    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not a failed step")

    monkeypatch.setattr(views, "plan_views", crash)
    with pytest.raises(RuntimeError, match="a bug"):  # a traceback: it is neither the user's nor nnU-Net's
        cli.main(["plan-views", "-d", "902"])


def test_a_failed_demo_step_is_status_1_with_the_advice_to_rerun(monkeypatch, tmp_path, capsys):
    import nnunet_peft.commands.demo as demo
    from nnunet_peft.demo.pipeline import DemoStepFailed

    def fail(*args, **kwargs):
        raise DemoStepFailed("step 'train CPLoRA' failed (exit code 1); full log: x.log")

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nnunet_peft.commands.demo",))
    monkeypatch.setattr(demo, "run_demo", fail)
    assert cli.main(["demo", "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("nnunet-peft demo: error: step 'train CPLoRA' failed (exit code 1); full log: "
                                       "x.log\nFix the cause and run the same command again: finished steps are "
                                       "skipped.\n")
