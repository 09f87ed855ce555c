"""The flags record of a training run: a relaunchable flagfile, and the resume check."""

import os

import pytest
from absl import flags
from absl import logging

from advent_tf.training import run_flags


def _define(values=None):
    """Flags like train.py's, in their own FlagValues, parsed from `values` (a list of args)."""
    fv = flags.FlagValues()
    holders = [
        flags.DEFINE_enum("method", "advent", ["source_only", "minent", "advent"], "", flag_values=fv),
        flags.DEFINE_float("lambda_ent_main", 0.001, "", flag_values=fv),
        flags.DEFINE_bool("multi_level", True, "", flag_values=fv),
        flags.DEFINE_bool("normalise", True, "", flag_values=fv),  # 'no' begins the name
        flags.DEFINE_list("source_size", ["1280", "720"], "", flag_values=fv),
        flags.DEFINE_string("class_prior", None, "", flag_values=fv),
        flags.DEFINE_float("learning_rate", 2.5e-4, "", flag_values=fv),
        flags.DEFINE_integer("num_steps", 120000, "", flag_values=fv),
    ]
    fv(["train", *(values or [])])
    return holders, fv


EXPERIMENT = ["method", "lambda_ent_main", "multi_level", "class_prior"]
IGNORED = ["num_steps"]


def test_record_relaunches_the_same_flags(tmp_path):
    holders, fv = _define(["--method=minent", "--lambda_ent_main=2e-4", "--nomulti_level",
                           "--nonormalise", "--source_size=640,360", "--num_steps=7"])
    run_flags.write(str(tmp_path), holders)
    text = (tmp_path / run_flags.FILENAME).read_text()
    assert "--nomulti_level" in text and "class_prior" not in text  # unset: not written
    _, relaunched = _define([f"--flagfile={tmp_path / run_flags.FILENAME}"])
    for name in ("method", "lambda_ent_main", "multi_level", "normalise", "source_size",
                 "class_prior", "learning_rate", "num_steps"):
        assert relaunched[name].value == fv[name].value, name
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".incomplete")]


def test_same_flags_resume_silently(tmp_path, monkeypatch):
    holders, _ = _define(["--nonormalise"])
    run_flags.write(str(tmp_path), holders)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    run_flags.check_resume(str(tmp_path), _define(["--nonormalise"])[0], EXPERIMENT, IGNORED)
    assert warnings == []


@pytest.mark.parametrize("args, named", [
    (["--method=minent"], "method: --method=advent in"),
    (["--lambda_ent_main=0.01"], "lambda_ent_main: --lambda_ent_main=0.001 in"),
    (["--nomulti_level"], "multi_level: --multi_level in"),
    (["--class_prior=prior.json"], "class_prior: (unset) in"),
])
def test_changed_experiment_flag_is_refused_naming_it(args, named, tmp_path):
    run_flags.write(str(tmp_path), _define()[0])
    before = (tmp_path / run_flags.FILENAME).read_text()
    with pytest.raises(run_flags.FlagChangeError, match="resuming would continue") as error:
        run_flags.check_resume(str(tmp_path), _define(args)[0], EXPERIMENT, IGNORED)
    assert named in str(error.value)
    assert f"--init_checkpoint={tmp_path}" in str(error.value)
    assert (tmp_path / run_flags.FILENAME).read_text() == before


def test_other_changes_warn_and_execution_flags_pass(tmp_path, monkeypatch):
    run_flags.write(str(tmp_path), _define()[0])
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    run_flags.check_resume(str(tmp_path), _define(["--learning_rate=0.01", "--num_steps=5",
                                                   "--nonormalise"])[0], EXPERIMENT, IGNORED)
    assert len(warnings) == 2
    assert "learning_rate: --learning_rate=0.00025 in" in warnings[0]
    assert "now --learning_rate=0.01" in warnings[0]
    assert "normalise: --normalise in" in warnings[1]


def test_run_without_record_is_not_checked(tmp_path):
    run_flags.check_resume(str(tmp_path), _define(["--method=minent"])[0], EXPERIMENT, IGNORED)
