"""Config validation: every original key, clear errors, data root resolution, mode3d precedence."""
from __future__ import annotations

import pytest
import yaml
from eval_core_helpers import CONFIGS, EXAMPLE

from cellemnet.errors import ConfigError
from cellemnet.evaluation.config import SCHEMA, load_eval_config

ORIGINAL_KEYS = [
    "experiment_name", "num_classes", "class_names", "data_dir", "model_dir", "logging", "num_save_checkpoints",
    "resume", "bsz", "jobs", "finetune_layer", "unfreeze_encoder_bn", "encoder", "pretraining", "lr", "wd", "optim",
    "lr_policy", "momentum", "iters", "power", "epochs", "lr_decay_epochs", "norms", "metrics", "num_prints",
    "augmentations", "test_dir2d", "test_dir3d", "threshold2d", "threshold3d", "instance_match2d", "eval_classes2d",
    "eval_classes3d", "mode3d", "mask_prediction3d", "save_dir2d", "save_dir3d", "class_weights", "restart_training",
    "test_dir", "benchmark_names", "benchmark_dimensions", "eval_classes", "thresholds", "save_dirs",
]
BENCHMARKS = ["all_mito", "cremi", "guay", "kasthuri_pp", "lucchi_pp", "perez_lyso", "perez_mito", "perez_nuclei",
              "perez_nucleoli", "urocell"]


def test_schema_has_every_original_key():
    assert not [k for k in ORIGINAL_KEYS if k not in SCHEMA]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_configs_load_with_paper_settings(name, tmp_path):
    cfg = load_eval_config(CONFIGS / f"{name}.yaml", [f"data_root={tmp_path}"])
    assert cfg["pretraining"] == "cellemnet_mocov2"
    assert cfg["data_dir"].startswith(str(tmp_path))
    assert cfg["lr"] == 0.003 and cfg["optim"] == "AdamW" and cfg["lr_policy"] == "OneCycle"


def test_benchmark_configs_share_one_base_and_set_only_what_differs():
    from cellemnet.config import BASE_KEY, read_yaml

    base = read_yaml(CONFIGS / "base.yaml")
    for name in BENCHMARKS:
        own = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert own.pop(BASE_KEY) == "base.yaml"
        assert not [k for k, v in own.items() if k in base and base[k] == v]  # nothing repeated from the base
        assert read_yaml(CONFIGS / f"{name}.yaml") == {**base, **own}


def test_base_key_inherits_recursively_and_refuses_cycles_and_missing_files(tmp_path):
    from cellemnet.config import read_yaml

    (tmp_path / "a.yaml").write_text("experiment_name: t\nnum_classes: 1\nclass_names: [mito]\nlr: 0.1\niters: 5\n"
                                     "augmentations: [{aug: HorizontalFlip}]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("BASE: ../a.yaml\niters: 7\n")
    (tmp_path / "c.yaml").write_text("BASE: sub/b.yaml\naugmentations: []\n")
    assert read_yaml(tmp_path / "c.yaml") == {"experiment_name": "t", "num_classes": 1, "class_names": ["mito"],
                                              "lr": 0.1, "iters": 7, "augmentations": []}  # lists replaced whole
    (tmp_path / "loop1.yaml").write_text("BASE: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("BASE: loop1.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        read_yaml(tmp_path / "loop1.yaml")
    (tmp_path / "d.yaml").write_text("BASE: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: key 'BASE': base config not found"):
        read_yaml(tmp_path / "d.yaml")
    cfg = load_eval_config(tmp_path / "c.yaml")  # the loaders read through it
    assert cfg["lr"] == 0.1 and cfg["iters"] == 7


def test_benchmark_table_values():
    def load(n):
        return load_eval_config(CONFIGS / f"{n}.yaml")

    assert load("urocell")["mode3d"] == "orthoplane" and load("urocell")["eval_classes3d"] == [1, 2]
    assert load("guay")["class_weights"] == [0.1, 0.1, 1, 1, 0.1, 3, 3] and load("guay")["mask_prediction3d"]
    assert load("perez_mito")["instance_match2d"] is True and load("lucchi_pp")["instance_match2d"] is False
    assert load("all_mito")["mode3d"][4] == "orthoplane" and load("all_mito")["bsz"] == 32
    assert [load(n)["iters"] for n in ("cremi", "guay", "kasthuri_pp", "perez_lyso")] == [5000, 1000, 10000, 2500]


def test_data_root_from_env_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLEMNET_DATA_ROOT", str(tmp_path / "env"))
    cfg = load_eval_config(CONFIGS / "lucchi_pp.yaml")
    assert cfg["data_dir"] == str(tmp_path / "env" / "lucchi_pp")
    assert cfg["test_dir2d"] == str(tmp_path / "env" / "lucchi_pp" / "test")
    cfg = load_eval_config(CONFIGS / "lucchi_pp.yaml", [f"data_root={tmp_path / 'cli'}"])
    assert cfg["data_dir"] == str(tmp_path / "cli" / "lucchi_pp")


@pytest.mark.parametrize("override, message", [
    (["bogus_key=1"], "unknown key 'bogus_key'"),
    (["iters=ten"], "key 'iters' must be int"),
    (["lr_policy=Cosine"], "key 'lr_policy' must be one of"),
    (["class_names=[a, b]"], "class_names"),
    (["pretraining=cellemnet_mocov3"], "did you mean 'cellemnet_mocov2'"),
    (["pretraining=/no/such/weights.pth"], "weights file not found"),
    (["augmentations=[{aug: RandomResizedCrap}]"], "did you mean 'RandomResizedCrop'"),
    (["augmentations=[{aug: Rotate, limit: [1, 2, 3]}]"], "Rotate"),
    (["mode3d=cube"], "mode3d"),
    (["eval_classes2d=[5]"], "outside"),
    (["norms={mean: 0.5}"], "norms"),
    (["precise_bn=-1"], "key 'precise_bn'"),
    (["encoder_lr_scale=0"], "key 'encoder_lr_scale'"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_eval_config(EXAMPLE, override)


def test_missing_data_dir_is_an_error_before_training(tmp_path):
    with pytest.raises(ConfigError, match="key 'data_dir': directory not found"):
        load_eval_config(EXAMPLE, [f"data_root={tmp_path}"], stage="train")
    (tmp_path / "example_data" / "train" / "images").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no 'train/masks' folder"):
        load_eval_config(EXAMPLE, [f"data_root={tmp_path}"], stage="train")


def test_unknown_key_in_file(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["learning_rate"] = 0.1
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'learning_rate'"):
        load_eval_config(p)


def test_mode3d_config_holds_unless_overridden(tmp_path):
    (tmp_path / "example_data" / "test3d" / "images").mkdir(parents=True)
    cfg = load_eval_config(EXAMPLE, [f"data_root={tmp_path}"], stage="infer3d")
    assert cfg["mode3d"] == "orthoplane"  # the example config says orthoplane; nothing forces 'stack'
    cfg = load_eval_config(EXAMPLE, [f"data_root={tmp_path}", "mode3d=stack"], stage="infer3d")
    assert cfg["mode3d"] == "stack"
