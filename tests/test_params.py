"""params.yaml is read as DVC reads it (YAML 1.2), and every section is a typed, range-checked config."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from twinhead.errors import TwinheadError
from twinhead.evaluate import EvaluateConfig
from twinhead.export import ExportConfig
from twinhead.model import ModelConfig
from twinhead.params import BaseConfig, load_config, parse_section, read_params_file
from twinhead.preprocess import PreprocessConfig
from twinhead.readers import DataConfig
from twinhead.tracking import MlflowConfig
from twinhead.train import TrainConfig
from twinhead.vocab import VocabConfig

CONFIGS = {"base": BaseConfig, "data": DataConfig, "preprocess": PreprocessConfig, "vocab": VocabConfig,
           "model": ModelConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig,
           "mlflow": MlflowConfig}


def test_every_section_of_params_yaml_has_a_config_and_no_other_default():
    params = read_params_file(ROOT / "params.yaml")
    assert set(params) == set(CONFIGS)
    for name, cls in CONFIGS.items():
        cfg = parse_section(cls, params[name], name)
        for f in dataclasses.fields(cls):
            assert f.name in params[name], f"params.yaml lacks {name}.{f.name}"
            if f.default is not dataclasses.MISSING:
                code_default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                code_default = f.default_factory()
            else:
                continue  # required: params.yaml is the only source
            # One source of truth: deleting a key from params.yaml must not change anything.
            assert code_default == getattr(cfg, f.name), f"{name}.{f.name}: code default differs from params.yaml"


def test_yaml_1_2_numbers_as_dvc_reads_them(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 3e-4\n  weight_decay: 1e-5\n  deterministic: true\n", encoding="utf-8")
    cfg = load_config({"train": TrainConfig}, p)["train"]
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.weight_decay == pytest.approx(1e-5)
    # YAML 1.1's booleans (`on`, `yes`) are strings in YAML 1.2, as for DVC: refused, not guessed
    p.write_text("train:\n  deterministic: on\n", encoding="utf-8")
    with pytest.raises(TwinheadError, match=r"train\.deterministic: input should be a valid boolean"):
        load_config({"train": TrainConfig}, p)


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: '3e-4'\n", r"params.yaml: train\.lr: input should be a valid number \(got '3e-4'\)"),
    ("train:\n  lr: 0\n", r"train\.lr: input should be greater than 0 \(got 0\)"),
    ("train:\n  patience: -1\n", r"train\.patience: input should be greater than or equal to 0"),
    ("train:\n  epochs: 2.5\n", r"train\.epochs: input should be a valid integer"),
    ("train:\n  intent_weight: 0\n  tag_weight: 0\n", r"train: every trained task has loss weight 0"),
    ("train:\n  tasks: [intent, intent]\n", r"train: tasks lists a task twice"),
    ("train:\n  tasks: [slots]\n", r"train\.tasks\.0: input should be 'intent' or 'tags'"),
    ("train:\n  loss_rule: mean\n", r"train\.loss_rule: input should be 'sum', 'grad_mean', 'uncertainty' or 'pcgrad'"),
    ("train:\n  loss_rule: uncertainty\n  tag_weight: 2\n", r"uncertainty' learns the task weights"),
    ("train:\n  device: gpu\n", r"train\.device: must be auto, cpu, cuda"),
    ("model:\n  char_kernel: 4\n", r"model\.char_kernel: must be odd"),
    ("model:\n  dropout: 1.5\n", r"model\.dropout: input should be less than 1"),
    ("model:\n  overlong: cut\n", r"model\.overlong: input should be 'window' or 'truncate'"),
    ("mlflow:\n  enable: true\n",
     r"mlflow\.enable: unknown key \(known: enabled, experiment, registered_model, candidate_min, champion_metric\)"),
    ("export:\n  examples: []\n", r"export\.examples: list should have at least 1 item"),
    ("train: 5\n", r"train: expected a mapping of keys, got int"),
    ("train:\n  lr: [\n", r"params.yaml:\d+: invalid YAML"),
])
def test_bad_values_are_one_line_naming_section_and_key(tmp_path, text, message):
    p = tmp_path / "params.yaml"
    p.write_text(text, encoding="utf-8")
    sections = {name: CONFIGS[name] for name in ("train", "model", "mlflow", "export") if f"{name}:" in text}
    with pytest.raises(TwinheadError, match=message) as e:
        load_config(sections, p)
    assert "\n" not in str(e.value)


def test_missing_section_and_missing_required_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data:\n  format: bio\n", encoding="utf-8")
    with pytest.raises(TwinheadError, match="missing params section.*: base"):
        load_config({"base": BaseConfig, "data": DataConfig}, p)
    with pytest.raises(TwinheadError, match=r"data\.path: missing \(required\)"):
        load_config({"data": DataConfig}, p)
    # every other key may be left out: the code default equals params.yaml's value (test above)
    p.write_text("train: {}\n", encoding="utf-8")
    assert load_config({"train": TrainConfig}, p)["train"] == TrainConfig()


# One bad value per section, through the stage that reads it: one line on stderr, exit code 1, nothing written.
STAGE_CASES = [
    ("preprocess", "base", "seed", -1, "input should be greater than or equal to 0"),
    ("preprocess", "data", "on_error", "eror", "input should be 'raise' or 'skip'"),
    ("preprocess", "preprocess", "lowercase", "yes", "input should be a valid boolean"),
    ("vocab", "vocab", "min_freq", 0, "input should be greater than or equal to 1"),
    ("train", "model", "char_kernel", 4, "must be odd"),
    ("train", "train", "patience", -1, "input should be greater than or equal to 0"),
    ("train", "mlflow", "enable", True, "unknown key"),
    ("evaluate", "evaluate", "batch_size", -1, "input should be greater than or equal to 1"),
    ("export", "export", "examples", "play music", "input should be a valid list"),
]
STAGE_ARGS = {"preprocess": ["raw", "out", "report.json"], "vocab": ["processed", "out"],
              "train": ["processed", "vocab", "ckpt.pt", "log.csv", "run.json"],
              "evaluate": ["bundle", "processed", "run.json", "metrics"], "export": ["ckpt.pt", "run.json", "out"]}


@pytest.mark.parametrize("stage, section, key, value, reason", STAGE_CASES, ids=[f"{c[1]}.{c[2]}" for c in STAGE_CASES])
def test_each_stage_refuses_a_bad_value_in_one_line(tmp_path, stage, section, key, value, reason):
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params[section][key] = value
    with open(tmp_path / "params.yaml", "w", encoding="utf-8") as fh:
        yaml.dump(params, fh)
    res = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *STAGE_ARGS[stage]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: params.yaml: {section}.{key}: "), lines[0]
    assert reason in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
