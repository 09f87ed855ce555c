"""The experiment config: its records in a run directory, the resume policy, refused options."""

import json
import os
import subprocess
import sys

import pytest
from absl import logging

from advent_tf.experiment import config
from advent_tf.experiment import run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**values):
    return config.from_values(dict(dict(class_names=("road", "car"), num_classes=2), **values))


def test_json_and_flagfile_round_trip(tmp_path):
    cfg = _config(method="minent", entropy_top_fraction=0.3, source_size=(640, 360),
                  multi_level=False, lambda_seg_aux=0.1, train_dir=str(tmp_path))
    run_dir.write(str(tmp_path), cfg)
    content = json.loads((tmp_path / run_dir.CONFIG_FILENAME).read_text())
    assert content["model"]["class_names"] == ["road", "car"]
    assert content["data"]["source_size"] == [640, 360]
    assert run_dir.read_config(str(tmp_path)) == cfg
    flags_text = (tmp_path / run_dir.FLAGS_FILENAME).read_text()
    assert "--nomulti_level" in flags_text and "--entropy_top_fraction=0.3" in flags_text
    assert "class_prior" not in flags_text  # unset: not written
    # A run of an earlier release records run.flags only: it is read from there.
    os.remove(tmp_path / run_dir.CONFIG_FILENAME)
    from_flags = run_dir.read_config(str(tmp_path))
    assert from_flags == config.from_values(dict(config.flat(cfg), class_names=()))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".incomplete")]


def test_the_flagfile_relaunches_the_same_config(tmp_path):
    """run.flags parsed by train's own flags gives back the recorded config."""
    cfg = config.from_values(dict(
        method="minent", entropy_top_fraction=0.5, source_size=(64, 32), augment=True,
        source_pattern="s-*.tfrecord", target_pattern="t-*.tfrecord",
        multi_level=False, backbone_update_repeats="reference",
        mixed_precision="mixed_bfloat16", train_dir=str(tmp_path)))
    run_dir.write(str(tmp_path), cfg)
    script = ("import sys; from absl import flags; from advent_tf import train\n"
              "from advent_tf.experiment import config\n"
              "flags.FLAGS(['train', '--flagfile=' + sys.argv[1]])\n"
              "print(config.to_json(train.config_from_flags()))\n")
    result = subprocess.run([sys.executable, "-c", script,
                             str(tmp_path / run_dir.FLAGS_FILENAME)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert config.from_json(result.stdout) == cfg


def test_find_train_dir_from_a_checkpoint_inside_it(tmp_path):
    run_dir.write(str(tmp_path / "run"), _config())
    (tmp_path / "run" / "checkpoints").mkdir()
    for path in ("run", "run/checkpoints", "run/checkpoints/ckpt-4", "run/"):
        assert run_dir.find_train_dir(str(tmp_path / path)) == str(tmp_path / "run"), path
    assert run_dir.find_train_dir(str(tmp_path / "elsewhere" / "x.weights.h5")) is None


def test_same_config_resumes_silently(tmp_path, monkeypatch):
    run_dir.write(str(tmp_path), _config())
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    run_dir.check_resume(str(tmp_path), _config())
    assert warnings == []


@pytest.mark.parametrize("change, named", [
    (dict(method="minent"), "--method: 'advent' in the record, now 'minent'"),
    (dict(lambda_ent_main=0.01), "--lambda_ent_main: 0.001 in the record, now 0.01"),
    (dict(multi_level=False), "--multi_level: True in the record, now False"),
    (dict(class_prior="prior.json"), "--class_prior: None in the record"),
    (dict(class_names=("road", "person")), "--class_names"),
    (dict(backbone="resnet50"), "--backbone"),
])
def test_changed_experiment_is_refused_naming_it(change, named, tmp_path):
    run_dir.write(str(tmp_path), _config())
    before = (tmp_path / run_dir.CONFIG_FILENAME).read_text()
    with pytest.raises(config.ConfigError, match="resuming would continue") as error:
        run_dir.check_resume(str(tmp_path), _config(**change))
    assert named in str(error.value)
    assert f"--init_checkpoint={tmp_path}" in str(error.value)
    assert (tmp_path / run_dir.CONFIG_FILENAME).read_text() == before


def test_other_changes_warn_and_execution_settings_pass(tmp_path, monkeypatch):
    run_dir.write(str(tmp_path), _config())
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
    run_dir.check_resume(str(tmp_path), _config(
        learning_rate=0.01, num_steps=5, eval_every=3, jit_compile=True, augment=True))
    assert len(warnings) == 2, warnings
    assert "--augment: False in the record, now True" in warnings[0]
    assert "--learning_rate: 0.00025 in the record, now 0.01" in warnings[1]


def test_a_record_without_class_names_does_not_refuse_them(tmp_path):
    """A run of an earlier release (run.flags only) resumes with the names filled in."""
    run_dir.write(str(tmp_path), _config())
    os.remove(tmp_path / run_dir.CONFIG_FILENAME)
    run_dir.check_resume(str(tmp_path), _config())


def test_run_without_record_is_not_checked(tmp_path):
    run_dir.check_resume(str(tmp_path), _config(method="minent"))


def test_damaged_record_names_the_file(tmp_path):
    (tmp_path / run_dir.CONFIG_FILENAME).write_text("{not json")
    with pytest.raises(config.ConfigError, match="config.json: not JSON"):
        run_dir.read_config(str(tmp_path))


# Each combination that cannot apply, with the words its error must contain.
REFUSED = [
    (dict(method="source_only", class_prior="p.json"), "--class_prior"),
    (dict(method="advent", lambda_ent_main=0.01), "--lambda_ent_main"),
    (dict(method="advent", lambda_ent_aux=0.01), "--lambda_ent_aux"),
    (dict(method="source_only", lambda_ent_main=0.01), "--lambda_ent_main"),
    (dict(method="minent", lambda_adv_main=0.01), "--lambda_adv_main"),
    (dict(method="source_only", lambda_adv_aux=0.01), "--lambda_adv_aux"),
    (dict(method="minent", learning_rate_d=1e-3), "--learning_rate_d"),
    (dict(eval_every=10), "--eval_every=10 without --eval_pattern"),
    (dict(method="minent", prior_mu=0.7), "--prior_mu=0.7 without --class_prior"),
    (dict(method="minent", lambda_cp=0.01), "--lambda_cp=0.01 without --class_prior"),
    (dict(method="minent", entropy_top_fraction=0.0), "--entropy_top_fraction=0.0"),
    (dict(method="minent", entropy_top_fraction=1.5), "--entropy_top_fraction=1.5"),
    (dict(method="advent", entropy_top_fraction=0.3), "applies to --method=minent only"),
    (dict(multi_level=False, lambda_seg_aux=0.2), "--lambda_seg_aux"),
    (dict(backbone="vgg16"), "--nomulti_level"),
    (dict(backbone="vgg16", multi_level=False, backbone_update_repeats="reference"),
     "the reference code has no vgg16"),
    (dict(backbone_update_repeats="0"), "--backbone_update_repeats=0"),
    (dict(num_classes=3, class_names=("a", "b")), "2 class names for --num_classes=3"),
    (dict(num_classes=2, class_names=("a", "a")), "class names must be distinct"),
    (dict(num_steps=120000, lr_horizon=90000), "--num_steps=120000 is past --lr_horizon=90000"),
    (dict(method="source_only", compare_source_only=True, eval_pattern="v-*"),
     "--compare_source_only needs an adaptation method"),
    (dict(method="advent", compare_source_only=True), "--compare_source_only needs"),
]


@pytest.mark.parametrize("values, message", REFUSED)
def test_options_that_cannot_apply_are_refused(values, message):
    with pytest.raises(config.ConfigError) as error:
        config.validate(config.from_values(values))
    assert message in str(error.value)


def test_paper_settings_are_accepted():
    for values in (dict(method="advent"), dict(method="minent", entropy_top_fraction=0.3),
                   dict(method="minent", class_prior="p.json", prior_mu=0.5, lambda_cp=1e-3),
                   dict(method="advent", class_prior="p.json"), dict(method="source_only"),
                   dict(eval_every=5, eval_pattern="val-*"),
                   dict(backbone="vgg16", multi_level=False),
                   dict(backbone_update_repeats="deduplicated"),
                   dict(num_steps=90000, lr_horizon=90000)):
        config.validate(config.from_values(values))


def test_train_refuses_them_as_usage_errors_before_anything_is_built(tmp_path):
    """Every refused combination, through train's own flags, in one process."""
    cases = [[f"--{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in values.items()
              if k != "class_names" and k != "multi_level"]
             + (["--nomulti_level"] if values.get("multi_level") is False else [])
             for values, _ in REFUSED if "class_names" not in values]
    script = (
        "import json, sys; from absl import app, flags; from advent_tf import train\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    flags.FLAGS.unparse_flags()\n"
        "    flags.FLAGS(['train', '--source_pattern=s', '--target_pattern=t',\n"
        "                 '--train_dir=" + str(tmp_path / "run") + "', *args])\n"
        "    try:\n"
        "        train.config_from_flags()\n"
        "        print('ACCEPTED', args)\n"
        "    except app.UsageError as e:\n"
        "        print('REFUSED', e)\n")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(cases)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    expected = [message for values, message in REFUSED if "class_names" not in values]
    assert len(lines) == len(expected)
    for line, message in zip(lines, expected):
        assert line.startswith("REFUSED") and message in line, (line, message)
    assert not (tmp_path / "run").exists()
