"""The trainer-name grammar: every valid name parses to its configuration, every bad one fails with the grammar."""
import pytest

from nnunet_peft.config import PLACEMENTS
from nnunet_peft.name_grammar import (DEFAULT_EPOCHS, DEFAULT_ITERATIONS, DEFAULT_RANK, GRAMMAR, TrainerNameError,
                                        is_plugin_name, parse_trainer_name)


@pytest.mark.parametrize("name, method, peft, placement, rank, alpha, epochs, iterations", [
    ("nnUNetTrainerCPLoRA", "CPLoRA", "cp_lora", PLACEMENTS, DEFAULT_RANK, None, DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
    ("nnUNetTrainerCPLoRA_dec_r64_a64_100ep", "CPLoRA", "cp_lora", ("decoder",), 64, 64, 100, DEFAULT_ITERATIONS),
    ("nnUNetTrainerCPDoRA_r4", "CPDoRA", "cp_dora", PLACEMENTS, 4, None, DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
    ("nnUNetTrainerConvLoRA_dec_enc", "ConvLoRA", "conv_lora", ("encoder", "decoder"), DEFAULT_RANK, None,
     DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
    ("nnUNetTrainerLoRAPT_bn_3ep_7it", "LoRAPT", "lora_pt", ("bottleneck",), DEFAULT_RANK, None, 3, 7),
    ("nnUNetTrainerTCURLoRA_a2", "TCURLoRA", "tcur_lora", PLACEMENTS, DEFAULT_RANK, 2, DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
    ("nnUNetTrainerHyPS_enc_bn_dec_r1", "HyPS", "hyps", PLACEMENTS, 1, None, DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
    ("nnUNetTrainerLoRAC", "LoRAC", "lora_c", PLACEMENTS, DEFAULT_RANK, None, DEFAULT_EPOCHS, DEFAULT_ITERATIONS),
])
def test_valid_names(name, method, peft, placement, rank, alpha, epochs, iterations):
    spec = parse_trainer_name(name)
    assert (spec.method, spec.peft_method, spec.placement, spec.rank, spec.alpha, spec.epochs, spec.iterations) == (
        method, peft, placement, rank, alpha, epochs, iterations)
    config = spec.peft_config()
    assert config.method == peft and config.rank == rank and config.placement == placement
    assert config.alpha == (alpha if alpha is not None else rank)


def test_baselines():
    ft = parse_trainer_name("nnUNetTrainerFinetune_enc_5ep_10it")
    assert (ft.baseline, ft.placement, ft.epochs, ft.iterations, ft.peft_method) == ("finetune", ("encoder",), 5, 10, None)
    assert parse_trainer_name("nnUNetTrainerSegHead_20ep").baseline == "seg_head"
    none = parse_trainer_name("nnUNetTrainerNoFinetune")
    assert (none.baseline, none.epochs) == ("none", 0)
    with pytest.raises(ValueError, match="trains no adapters"):
        ft.peft_config()


@pytest.mark.parametrize("name, why", [
    ("nnUNetTrainerCPLoRA_x", "unknown token 'x'"),
    ("nnUNetTrainerCPLoRA_r0", "rank must be >= 1"),
    ("nnUNetTrainerCPLoRA_dec_dec", "appears twice"),
    ("nnUNetTrainerCPLoRA_r4_r8", "rank is given twice"),
    ("nnUNetTrainerCPLoRA_", "empty token"),
    ("nnUNetTrainerCPLoRA__r4", "empty token"),
    ("nnUNetTrainerDoRAC_it5", "unknown token 'it5'"),
    ("nnUNetTrainerSegHead_r4", "SegHead trains no adapters"),
    ("nnUNetTrainerFinetune_a8", "Finetune trains no adapters"),
    ("nnUNetTrainerSegHead_dec", "takes no placement tokens"),
    ("nnUNetTrainerNoFinetune_5ep", "runs 0 epochs"),
    ("nnUNetTrainerCPLoRAX", "must start with nnUNetTrainer followed by one of"),
    ("nnUNetTrainerLoRA", "must start with nnUNetTrainer followed by one of"),
])
def test_bad_names_show_the_grammar(name, why):
    with pytest.raises(TrainerNameError) as err:
        parse_trainer_name(name)
    assert why in str(err.value)
    assert GRAMMAR in str(err.value) and name in str(err.value)


def test_plugin_name_detection():
    assert is_plugin_name("nnUNetTrainerCPLoRA") and is_plugin_name("nnUNetTrainerHyPS_r2")
    # names of other trainers must stay free for nnU-Net's other folders
    for other in ["nnUNetTrainer", "nnUNetTrainer_5epochs", "nnUNetTrainerNoMirroring", "nnUNetTrainerCPLoRAX", "MyTrainer"]:
        assert not is_plugin_name(other)


def test_trainer_module_answers_the_grammar():
    """The module nnU-Net imports from nnUNet_extTrainer: grammar names resolve, others are AttributeErrors."""
    import importlib

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    module = importlib.import_module("nnunet_peft.trainers.nnunet_peft_trainers")
    cls = getattr(module, "nnUNetTrainerCPLoRA_dec_r4_2ep")
    assert issubclass(cls, nnUNetTrainer) and cls.__name__ == "nnUNetTrainerCPLoRA_dec_r4_2ep"
    assert cls.spec.rank == 4 and cls is getattr(module, "nnUNetTrainerCPLoRA_dec_r4_2ep")  # cached, one class per name
    assert not hasattr(module, "nnUNetTrainerSomethingElse")
    with pytest.raises(TrainerNameError):
        getattr(module, "nnUNetTrainerCPLoRA_bogus")


def test_scratch_is_a_finetune_token():
    spec = parse_trainer_name("nnUNetTrainerFinetune_scratch_5ep_10it")
    assert spec.scratch and spec.baseline == "finetune" and spec.epochs == 5
    assert not parse_trainer_name("nnUNetTrainerFinetune").scratch
    for bad in ["nnUNetTrainerCPLoRA_scratch", "nnUNetTrainerFinetune_scratch_scratch"]:
        with pytest.raises(TrainerNameError, match="'scratch' is a Finetune token"):
            parse_trainer_name(bad)


@pytest.mark.parametrize("name, lr", [
    ("nnUNetTrainerCPLoRA_lr0p03", 0.03),
    ("nnUNetTrainerLoRAC_r4_lr0p003_5ep", 0.003),
    ("nnUNetTrainerFinetune_lr0p001", 0.001),
    ("nnUNetTrainerSegHead_lr0p1_3ep", 0.1),
])
def test_learning_rate_token(name, lr):
    assert parse_trainer_name(name).initial_lr == pytest.approx(lr)


def test_learning_rate_defaults_per_family():
    from nnunet_peft.name_grammar import DEFAULT_LEARNING_RATES

    assert parse_trainer_name("nnUNetTrainerCPLoRA").initial_lr == DEFAULT_LEARNING_RATES["adapter"]
    assert parse_trainer_name("nnUNetTrainerFinetune").initial_lr == DEFAULT_LEARNING_RATES["finetune"]
    assert parse_trainer_name("nnUNetTrainerFinetune_scratch").initial_lr == DEFAULT_LEARNING_RATES["finetune"]


@pytest.mark.parametrize("name, why", [
    ("nnUNetTrainerCPLoRA_lr0p0", "above 0 and below 1"),
    ("nnUNetTrainerCPLoRA_lr1p5", "above 0 and below 1"),
    ("nnUNetTrainerCPLoRA_lr0p1_lr0p2", "learning rate is given twice"),
    ("nnUNetTrainerCPLoRA_lr1e3", "unknown token 'lr1e3'"),
    ("nnUNetTrainerNoFinetune_lr0p1", "runs 0 epochs"),
])
def test_bad_learning_rates(name, why):
    with pytest.raises(TrainerNameError, match=why):
        parse_trainer_name(name)


def test_trainer_uses_the_named_learning_rate(monkeypatch):
    """The generated class hands the name's rate to nnU-Net's optimiser and poly schedule."""
    from nnunet_peft.training import trainer as trainer_module

    cls = trainer_module.trainer_class("nnUNetTrainerCPLoRA_lr0p03_2ep")
    seen = {}
    monkeypatch.setattr(trainer_module.nnUNetTrainer, "__init__", lambda self, *a, **k: seen.setdefault("init", True))
    instance = cls({}, "3d_fullres", 0, {})
    assert seen and instance.initial_lr == pytest.approx(0.03) and instance.num_epochs == 2


def _nnunet_lookup(name: str, monkeypatch):
    """nnU-Net's own search (nnUNetv2_train and nnUNetv2_predict call it), with our folder in nnUNet_extTrainer."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_peft.trainer_folder import trainer_dir

    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_dir()))
    return recursive_find_trainer_class_by_name(name)


def test_a_malformed_name_ends_nnunets_search_with_the_grammar_alone(monkeypatch):
    """hasattr lets only AttributeError through as 'not here': the grammar error leaves nnU-Net's search as a
    SystemExit carrying the message (printed without a traceback) that is also a TrainerNameError."""
    assert _nnunet_lookup("nnUNetTrainerCPLoRA_dec_r4_2ep", monkeypatch).spec.rank == 4
    with pytest.raises(SystemExit) as err:
        _nnunet_lookup("nnUNetTrainerCPLoRA_foo", monkeypatch)
    assert isinstance(err.value, TrainerNameError)
    assert err.value.code == str(err.value) and "unknown token 'foo'" in err.value.code and GRAMMAR in err.value.code
    with pytest.raises(SystemExit, match="rank must be >= 1"):
        _nnunet_lookup("nnUNetTrainerLoRAC_r0", monkeypatch)
    # names that are not ours still reach nnU-Net's own 'not found'
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerSomethingElse"):
        _nnunet_lookup("nnUNetTrainerSomethingElse", monkeypatch)


def test_nnunetv2_train_prints_the_grammar_error_without_a_traceback(tmp_path):
    """The whole command line: the trainer lookup comes before the (missing) dataset is read."""
    import os
    import subprocess

    from nnunet_peft.trainer_folder import trainer_environment

    env = trainer_environment({**os.environ, "OMP_NUM_THREADS": "1"})
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(tmp_path / var)
    proc = subprocess.run(["nnUNetv2_train", "1", "3d_fullres", "0", "-tr", "nnUNetTrainerCPLoRA_foo", "-device", "cpu"],
                          env=env, capture_output=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "nnunet-peft: cannot parse trainer name 'nnUNetTrainerCPLoRA_foo': unknown token 'foo'" in proc.stderr
    assert GRAMMAR in proc.stderr


@pytest.mark.parametrize("name, spelt", [
    ("nnUNetTrainerCpLoRA", "nnUNetTrainerCPLoRA"),
    ("nnunettrainerNOFINETUNE", "nnUNetTrainerNoFinetune"),
    ("nnUNetTrainerLoRAc_DEC_R4_100EP_LR0P01", "nnUNetTrainerLoRAC_dec_r4_100ep_lr0p01"),
    ("nnUNetTrainerLoRAPT_Unetr", "nnUNetTrainerLoRAPT_unetr"),
    ("nnUNetTrainerhyps_PRIMUSB", "nnUNetTrainerHyPS_primusB"),  # backbone tokens keep their own mixed case
])
def test_a_name_in_the_wrong_case_is_answered_with_the_right_spelling(name, spelt, monkeypatch):
    parse_trainer_name(spelt)  # the suggestion is a valid name
    import importlib

    module = importlib.import_module("nnunet_peft.trainers.nnunet_peft_trainers")
    for lookup in (lambda: _nnunet_lookup(name, monkeypatch), lambda: getattr(module, name)):
        with pytest.raises(SystemExit) as err:
            lookup()
        assert isinstance(err.value, TrainerNameError) and f"did you mean {spelt}?" in err.value.code
        assert f"'{name}'" in err.value.code


def test_the_case_is_corrected_before_the_grammar_is_checked(monkeypatch):
    # the method in the wrong case, a token wrong too: the right case, and why it still fails
    with pytest.raises(SystemExit) as err:
        _nnunet_lookup("nnUNetTrainerCpLoRA_foo", monkeypatch)
    assert "nnUNetTrainerCPLoRA_foo is its spelling" in err.value.code and "unknown token 'foo'" in err.value.code
    assert "did you mean" not in err.value.code
    # the method right, a token in the wrong case: the grammar error ends with the spelling that parses
    with pytest.raises(SystemExit) as err:
        _nnunet_lookup("nnUNetTrainerCPLoRA_Dec_r4", monkeypatch)
    assert "unknown token 'Dec'" in err.value.code
    assert err.value.code.endswith("did you mean nnUNetTrainerCPLoRA_dec_r4?")
    # no method of ours in any case: nnU-Net's own 'not found'
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        _nnunet_lookup("nnUNetTrainerCpLoRAX", monkeypatch)


def test_correct_case():
    from nnunet_peft.training.trainer_lookup import correct_case

    assert correct_case("nnUNetTrainerCPLoRA_dec") is None  # already right
    assert correct_case("nnUNetTrainer_5epochs") is None and correct_case("MyTrainer") is None
    assert correct_case("NNUNETTRAINERSEGHEAD_20EP") == "nnUNetTrainerSegHead_20ep"
    assert correct_case("nnUNetTrainerCpLoRA__X") == "nnUNetTrainerCPLoRA__x"  # the tokens as they are, but for case
