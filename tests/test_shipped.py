"""Shipped configs by name (cellemnet.shipped): the checkout's folders here, the package data in a wheel
(tests/test_install.py runs the installed case)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cellemnet import shipped
from cellemnet.config import load_config
from cellemnet.errors import ConfigError
from cellemnet.pretraining.config import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_folder_is_found_and_names_are_unique():
    for name, folder in shipped.SHIPPED_DIRS.items():
        assert shipped.shipped_dir(name) == ROOT / folder
    configs = shipped.shipped_configs()
    names = [p.name for p in configs.values()]
    assert len(names) == len(set(names))  # a bare name is never ambiguous
    assert {"mocov2_small.yaml", "example.yaml", "lucchi_pp.yaml", "base.yaml"} <= set(names)
    assert configs["pretraining/configs/mocov2.yaml"] == ROOT / "pretraining/configs/mocov2.yaml"


def test_find_config_by_name_path_or_checkout_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout
    expected = ROOT / "pretraining" / "configs" / "mocov2_small.yaml"
    for given in ("mocov2_small.yaml", "mocov2_small", "pretraining/configs/mocov2_small.yaml"):
        assert shipped.find_config(given) == expected, given
    mine = tmp_path / "mocov2_small.yaml"
    mine.write_text("arch: resnet18\n")
    assert shipped.find_config("mocov2_small.yaml") == Path("mocov2_small.yaml")  # a file of the user's wins
    # a mistyped folder or an absolute path is never replaced by a shipped file of the same name
    assert shipped.find_config("my/configs/mocov2.yaml") == Path("my/configs/mocov2.yaml")
    assert shipped.find_config(tmp_path / "nowhere" / "swav.yaml") == tmp_path / "nowhere" / "swav.yaml"


def test_load_config_takes_a_shipped_name_and_names_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("mocov2_small", SCHEMAS["mocov2"], ["epochs=1"], check_paths=False)
    assert cfg["arch"] == "resnet18" and cfg["epochs"] == 1
    with pytest.raises(ConfigError, match="no_such_config.yaml: config file not found"):
        load_config("no_such_config.yaml", SCHEMAS["mocov2"], check_paths=False)


def test_outside_a_checkout_the_package_data_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "CHECKOUT", tmp_path)  # as in site-packages: no pretraining/configs beside it
    where = shipped.shipped_dir("pretraining_configs")
    assert where.parts[-3:] == ("cellemnet", "shipped", "pretraining_configs")
    with pytest.raises(KeyError):
        shipped.shipped_dir("nothing")
