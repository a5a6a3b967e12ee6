"""workflow/Snakefile: the whole pipeline on synthetic data (2D groups, volumes, one volume split into z ranges,
a tiny benchmark), its re-runs, and the GPU requests of the SLURM profile."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("snakemake")

TINY_BENCHMARK = {  # a 64-px synthetic benchmark, one iteration, no augmentation, the pretrained encoder's arch
    "experiment_name": "tiny", "num_classes": 1, "class_names": ["mito"], "data_dir": "bench", "model_dir": "models/",
    "logging": True, "num_save_checkpoints": 1, "resume": "", "bsz": 1, "jobs": 0, "finetune_layer": "all",
    "encoder": "resnet18", "pretraining": "random_init", "iters": 1, "num_prints": 1, "augmentations": [],
    "test_dir2d": "bench/test2d", "threshold2d": 0.5, "eval_classes2d": [1],
}
TINY_PRETRAINING = ["epochs=1", "iters_per_epoch=2", "batch_size=8", "moco_k=8", "crop_size=32", "workers=0",
                    "save_freq=1", "health_patches=32", "device=cpu"]


def make_inputs(folder: Path) -> dict:
    """Synthetic sources and benchmark in `folder`, and the workflow config that names them."""
    from cellemnet.io import write_volume
    from cellemnet.synthetic import make_benchmark, make_corpus, make_volume

    make_corpus(folder / "raw", n_groups_2d=2, images_per_group=2, n_volumes=2, image_shape=(256, 256),
                volume_shape=(12, 128, 128), seed=0)
    volume, _ = make_volume((70, 64, 64), "fib_sem", seed=3)
    write_volume(folder / "raw" / "big" / "big.h5:/raw", volume, spacing=(5.0, 5.0, 5.0))
    make_benchmark(folder / "data" / "bench", n_train=2, n_test=1, n_valid=0, n_test3d=0, shape=(64, 64))
    (folder / "configs").mkdir()
    (folder / "configs" / "tiny.yaml").write_text(yaml.safe_dump(TINY_BENCHMARK))
    return {
        "output_dir": "out",
        "sources": [{"images": "raw/images2d"}, {"volumes": "raw/volumes"},
                    {"volume": "raw/big/big.h5:/raw", "z_parts": 3}],
        "patch": {"crop_size": 32},
        "pretraining": {"arm": "mine", "method": "mocov2", "config": "pretraining/configs/mocov2_small.yaml",
                        "overrides": TINY_PRETRAINING, "export_force": True},  # 2 steps do not learn
        "evaluation": {"benchmarks": ["tiny"], "config_dir": str(folder / "configs"),
                       "pretrainings": {"random_init": "all"}, "custom_finetune_layer": "none",
                       "data_root": str(folder / "data"), "overrides": ["device=cpu", "save_overlays=0"]},
    }


def snakemake(root: Path, workdir: Path, settings: dict, *extra, timeout=300):
    (workdir / "wf.yaml").write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "workflow" / "Snakefile"), *extra, "--configfile",
           "wf.yaml"]  # last: --configfile takes several values
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    return result, result.stdout + result.stderr


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def jobs(out: str) -> list[dict]:
    """The dry run's job listing: one dict per job (rule, output, resources as a dict, shell command)."""
    found = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n|rule \w+:\n|localrule \w+:\n)", out):
        m = re.search(r"^(?:local)?rule (\w+):$", block, flags=re.M)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        output = re.search(r"^\s+output: (.*)$", block, flags=re.M)
        shell = re.search(r"^Shell command: (.*)$|^\s{4}(\S.*(?:python|torch).*)$", block, flags=re.M)
        found.append({
            "rule": m.group(1), "output": output.group(1) if output else "",
            "resources": dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {},
            "shell": next((g for g in shell.groups() if g), "") if shell else "",
        })
    return found


@pytest.fixture
def inputs(tmp_path):
    return make_inputs(tmp_path)


def test_slurm_profile_dry_run_asks_for_gpus_on_pretraining_finetuning_and_inference(tmp_path, inputs, root):
    result, out = snakemake(root, tmp_path, inputs, "--profile", str(root / "workflow" / "profiles" / "slurm"),
                            "--dry-run")
    assert result.returncode == 0, out[-3000:]
    listed = jobs(out)
    by_rule = {}
    for job in listed:
        by_rule.setdefault(job["rule"], []).append(job)
    assert set(by_rule) >= {"patchify_group", "patchify_volume", "hash_part", "cut_part", "merge_parts", "dedupe",
                            "filter",
                            "pretrain", "export", "eval_finetune", "eval_score", "eval_report"}
    (pretrain,) = by_rule["pretrain"]
    assert pretrain["resources"]["gpu"] == "4" and pretrain["resources"]["slurm_partition"] == "gpu"
    assert "--nproc_per_node=4" in pretrain["shell"] and "train_mocov2.py" in pretrain["shell"]  # torchrun, DDP
    for rule in ("eval_finetune", "eval_score"):
        assert len(by_rule[rule]) == 2  # two arms
        assert all(j["resources"]["gpu"] == "1" and j["resources"]["slurm_partition"] == "gpu" for j in by_rule[rule])
    cpu_rules = ("patchify_group", "patchify_volume", "hash_part", "cut_part", "merge_parts", "dedupe", "filter",
                 "export")
    assert all(j["resources"].get("gpu", "0") == "0" for r in cpu_rules for j in by_rule[r])
    assert all(j["resources"]["runtime"] and j["resources"]["mem_mb"] for j in listed if j["rule"] != "all")


def test_local_dry_run_splits_the_big_volume_and_trains_without_torchrun(tmp_path, inputs, root):
    result, out = snakemake(root, tmp_path, inputs, "--profile", str(root / "workflow" / "profiles" / "local"),
                            "--dry-run", "--printshellcmds")
    assert result.returncode == 0, out[-3000:]
    assert job_counts(out) == {"patchify_group": 2, "patchify_volume": 2, "hash_part": 3, "cut_part": 3,
                               "merge_parts": 1,
                               "dedupe": 1, "filter": 1, "pretrain": 1, "export": 1, "eval_finetune": 2,
                               "eval_score": 2, "eval_report": 1, "all": 1}
    for start, stop in ((0, 32), (32, 64), (64, 70)):  # band edges of crop_size 32 (patchify.z_ranges)
        assert f"out/parts/big_raw/big_raw.z{start}-{stop}.tiles" in out and f"--z-range {start}:{stop}" in out
        assert f"out/parts/big_raw/big_raw.z{start}-{stop}.patches" in out
    (pretrain,) = [j for j in jobs(out) if j["rule"] == "pretrain"]
    assert "torch.distributed.run" not in pretrain["shell"] and pretrain["resources"]["gpu"] == "1"
    assert "--only tem_project0" in out  # one job per 2D group


@pytest.mark.parametrize("change, message", [
    ({"sources": [{"images": "raw/images2d", "z_parts": 2}]}, "z_parts applies to volumes"),
    ({"patch": {"crop": 32}}, "patch: unknown key 'crop'"),
    ({"evaluation": {"output_dir": "x"}}, "'output_dir' is set by the workflow"),
    ({"sources": [{"volumes": "raw/volumes"}, {"volume": "raw/volumes/fibsem_iso01.nrrd"}]},
     "the name 'fibsem_iso01'"),
])
def test_bad_settings_fail_before_anything_runs(tmp_path, inputs, root, change, message):
    result, out = snakemake(root, tmp_path, {**inputs, **change}, "--cores", "1", "--dry-run")
    assert result.returncode != 0 and message in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_whole_pipeline_runs_then_does_nothing_then_redoes_only_a_deleted_shard(tmp_path, inputs, root):
    from cellemnet.dataset import store
    from cellemnet.evaluation.infer import read_result

    result, out = snakemake(root, tmp_path, inputs, "--cores", "2", timeout=600)
    logs = "\n".join(f"{p}: {p.read_text()[-800:]}" for p in (tmp_path / "out" / "logs").rglob("*.log")) \
        if (tmp_path / "out" / "logs").exists() else ""
    assert result.returncode == 0, out[-3000:] + logs[-3000:]
    o = tmp_path / "out"
    shards = sorted(p.relative_to(o / "shards").as_posix() for p in store.list_shards(o / "shards", recursive=True))
    assert shards == ["2d/sem_inverted_project1/sem_inverted_project1.h5", "2d/tem_project0/tem_project0.h5",
                      "3d/big_raw/big_raw.h5", "3d/fibsem_iso01/fibsem_iso01.h5",
                      "3d/sstem_aniso00/sstem_aniso00.h5"]
    assert not list((o / "parts").rglob("*.tiles")) + list((o / "parts").rglob("*.patches"))  # temporary
    with open(o / "curated" / "filter_manifest.csv", newline="") as fh:
        kept = [r for r in csv.DictReader(fh) if r["decision"] == "keep"]
    assert len(kept) > 100
    assert (o / "encoders" / "mine" / "encoder.pth").stat().st_size > 1000
    scores = {arm: read_result(o / "evaluation" / "tiny" / arm / "iters1" / "predictions_2d" / "result.json")
              for arm in ("random_init", "mine")}
    assert scores["mine"]["checkpoint"].endswith("tiny-mine_ft_none_epoch1_of_1.pth")
    report = (o / "evaluation" / "report" / "benchmark_iou.md").read_text()
    assert "random_init [all]" in report and "mine [none]" in report
    benchmark = np.loadtxt(o / "benchmarks" / "hash_part" / "big_raw.z0-32.tsv", skiprows=1, usecols=(0, 2))
    assert benchmark[0] > 0 and benchmark[1] > 10  # seconds, max_rss (MB) of the job

    again, out = snakemake(root, tmp_path, inputs, "--cores", "2", "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in out

    (o / "shards" / "3d" / "fibsem_iso01" / "fibsem_iso01.h5").unlink()
    plan, out = snakemake(root, tmp_path, inputs, "--cores", "2", "--dry-run")
    assert plan.returncode == 0, out[-3000:]
    # that volume, then everything downstream of the shards; not the other sources nor the random-init arm
    assert job_counts(out) == {"patchify_volume": 1, "dedupe": 1, "filter": 1, "pretrain": 1, "export": 1,
                               "eval_finetune": 1, "eval_score": 1, "eval_report": 1, "all": 1}
    listed = jobs(out)
    assert [j["output"] for j in listed if j["rule"] == "patchify_volume"] == [
        "out/shards/3d/fibsem_iso01/fibsem_iso01.h5"]
    assert all("/mine/" in j["output"] for j in listed if j["rule"] in ("eval_finetune", "eval_score"))
    rerun, out = snakemake(root, tmp_path, inputs, "curation", "--cores", "2")  # the rest was planned above
    assert rerun.returncode == 0, out[-3000:]
    assert job_counts(out) == {"patchify_volume": 1, "dedupe": 1, "filter": 1, "curation": 1}
    assert "(1 new)" in (o / "logs" / "dedupe.log").read_text()  # only the re-cut shard compared with the rest
    assert (o / "shards" / "3d" / "fibsem_iso01" / "fibsem_iso01.h5").is_file()
