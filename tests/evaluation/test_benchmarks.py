"""The benchmark registry (cellemnet/evaluation/benchmarks/, one module per benchmark): unique names, configs that
load and agree with their modules, and the setup, the Snakefile and the report taking their benchmarks from it."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cellemnet.errors import ConfigError
from cellemnet.evaluation import benchmarks, report
from cellemnet.evaluation.benchmarks import BENCHMARKS, DATASETS, all_mito
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.layout import benchmark_paths, datasets_for

PACKAGE = Path(benchmarks.__file__).parent
PAPER = ["all_mito", "cremi", "guay", "kasthuri_pp", "lucchi_pp", "perez_lyso", "perez_mito", "perez_nuclei",
         "perez_nucleoli", "urocell"]


def test_one_module_per_benchmark_with_unique_names():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.name.startswith("_"))
    assert list(BENCHMARKS) == modules == PAPER  # the module's name is the benchmark's, so names are unique
    assert all(b.name == name for name, b in BENCHMARKS.items())
    assert len({b.name for b in BENCHMARKS.values()}) == len(BENCHMARKS)
    for b in BENCHMARKS.values():  # a benchmark's dataset is the registered one of that name
        assert DATASETS[b.dataset.name] is b.dataset
    assert set(DATASETS) == {b.dataset.name for b in BENCHMARKS.values()}
    files = [r.filename for d in DATASETS.values() for r in d.sources]
    assert len(files) == len(set(files))  # one downloads folder: no two files share a name


def test_converters_are_the_shared_ones():
    kinds = {d.converter for d in DATASETS.values()}
    assert all(c.__module__ == convert.__name__ for c in kinds)
    assert DATASETS["lucchi_pp"].converter is DATASETS["kasthuri_pp"].converter is convert.convert_casser
    assert {b.dataset.name for b in BENCHMARKS.values() if b.name.startswith("perez_")} == {"perez"}


@pytest.mark.parametrize("name", PAPER)
def test_every_benchmark_has_a_config_that_loads_and_agrees_with_its_module(name, tmp_path):
    b = benchmarks.get(name)
    assert b.config == benchmarks.CONFIG_DIR / f"{name}.yaml" and b.config.is_file()
    cfg = load_eval_config(b.config, [f"data_root={tmp_path}"])
    assert cfg["experiment_name"] == name
    assert cfg["class_names"] == list(b.classes) and cfg["num_classes"] == len(b.classes)
    assert Path(cfg["data_dir"]) == tmp_path / b.data_dir
    test_key = {"2d": "test_dir2d", "3d": "test_dir3d", "mixed": "test_dir"}[b.test_dim]
    assert Path(cfg[test_key]) == tmp_path / b.test_dir
    assert [k for k in ("test_dir2d", "test_dir3d", "test_dir") if cfg[k]] == [test_key]
    paths = benchmark_paths(name, tmp_path)
    assert paths["data_dir"] == tmp_path / b.data_dir and paths["test_dir"] == tmp_path / b.test_dir


def test_all_mito_mixes_the_benchmarks_its_config_scores():
    cfg = yaml.safe_load(all_mito.BENCHMARK.config.read_text())
    assert dict(zip(cfg["benchmark_names"], cfg["benchmark_dimensions"])) == {
        b.name: b.test_dim for b in all_mito.PARTS}
    params = all_mito.DATASET.params
    assert [prefix for _, _, prefix in params["train"]] == [b.name for b in all_mito.PARTS]
    assert params["train"][3] == ("urocell/2d/train", 2, "urocell")  # mitochondria are urocell's class 2
    assert set(params["test2d"]) | set(params["test3d"]) == {b.name for b in all_mito.PARTS}
    assert all_mito.DATASET.needs == ("perez", "lucchi_pp", "kasthuri_pp", "urocell", "guay")


def test_lookups_name_the_closest_benchmark():
    assert benchmarks.get("guay") is BENCHMARKS["guay"]
    with pytest.raises(ConfigError, match=r"benchmark 'luchi_pp' \(did you mean 'lucchi_pp'\?\); known: all_mito"):
        benchmarks.get("luchi_pp")
    with pytest.raises(ConfigError, match=r"unknown dataset 'perz' \(did you mean 'perez'\?\)"):
        benchmarks.dataset("perz")
    with pytest.raises(ConfigError, match="did you mean 'urocell'"):
        datasets_for(["urocel"])


def test_registry_entries_are_frozen_and_checked():
    b = BENCHMARKS["lucchi_pp"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.data_dir = "elsewhere"
    with pytest.raises(TypeError):
        b.dataset.params["folder_name"] = "x"
    assert BENCHMARKS["guay"].label("mito") == 2 and b.label("mito") == 1
    with pytest.raises(ValueError, match="no class 'lyso'"):
        b.label("lyso")
    with pytest.raises(ValueError, match="test_dim"):
        dataclasses.replace(b, test_dim="4d")
    with pytest.raises(ValueError, match="exactly one source"):
        dataclasses.replace(b.dataset, sources=())


def test_setup_order_puts_a_dataset_after_what_it_is_built_from():
    order = list(DATASETS)
    for d in DATASETS.values():
        assert all(order.index(n) < order.index(d.name) for n in d.needs)
    assert datasets_for(["perez_mito", "perez_lyso"]) == ["perez"]
    assert datasets_for(["all_mito"]) == [n for n in order if n in all_mito.DATASET.needs] + ["all_mito"]
    assert datasets_for(PAPER) == order


def test_setup_script_lists_and_names_the_registry():
    from cellemnet.cli import setup_data as script  # the code of evaluation/setup_benchmarks/setup_data.py

    assert script.source_lines("all_mito") == [
        "all_mito: built from perez, lucchi_pp, kasthuri_pp, urocell and guay (no download)"]
    lucchi = DATASETS["lucchi_pp"].sources[0]
    assert script.source_lines("lucchi_pp") == [
        f"lucchi_pp: {lucchi.url} -> downloads/lucchi_pp.zip (sha256 {lucchi.sha256})"]
    assert "checksum recorded on first download" in script.source_lines("perez")[0]


def test_report_orders_benchmarks_as_the_registry():
    names = ["zz_mine", *reversed(PAPER), "aa_mine"]
    results = pd.DataFrame({"benchmark": names, "pretraining": "random_init", "iters": 10, "finetune_layer": "all",
                            "seed": 0, "run_id": "r", "Test_Set_IoU": 0.5})
    summary = report.summarize(results)
    assert list(summary["benchmark"]) == [*BENCHMARKS, "aa_mine", "zz_mine"]


def test_snakefile_scores_each_registered_benchmark_as_its_module_says(tmp_path, root):
    pytest.importorskip("snakemake")
    settings = {"pretrainings": {"random_init": "all"}, "iterations": [1], "output_dir": "runs", "report": False}
    (tmp_path / "smk.yaml").write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "evaluation" / "Snakefile"), "--cores", "1",
           "--configfile", "smk.yaml", "-n"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    scored = set(re.findall(r"runs/([A-Za-z0-9_]+)/random_init/iters1/predictions_(2d|3d|mixed)/result\.json", out))
    # the default sweep is every registered benchmark, each scored by the inference of its test set only
    assert scored == {(name, b.test_dim) for name, b in BENCHMARKS.items()}
