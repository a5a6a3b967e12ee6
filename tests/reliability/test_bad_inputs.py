"""The bad-input corpus against every stage script (issue "Reliability"): each case runs the real command in a
process (or, for the commands that import torch, calls its main() in this process: an escaping exception then
fails the test as a traceback would) and checks the exit code, a one-line message naming the file or key, no
traceback, that the good inputs finished, that nothing outside the output folder was written and that nothing
already written was lost.

Full and read-only output folders are real: small tmpfs mounts (CI runs as root here; elsewhere the cases that
need a mount are skipped with that reason, and fail under CI=true).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from reliability_corpus import Corpus, damage_shard, make_corpus, tree

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
pytestmark = pytest.mark.slow


def run(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [PY, *(str(a) for a in args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def call(capsys, script: Path, *args) -> subprocess.CompletedProcess:
    """Run a stage script's main() in this process (no torch import per case); an exception that escapes main()
    fails the test as a traceback would. Returns what `run` returns."""
    import importlib.util

    name = "reliability_" + script.relative_to(ROOT).as_posix().replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    capsys.readouterr()
    try:
        code = sys.modules[name].main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return subprocess.CompletedProcess([str(script), *map(str, args)], code, out.out, out.err)


def assert_clean_failure(proc: subprocess.CompletedProcess, *names: str, code: int | None = None) -> list[str]:
    """Non-zero exit, no traceback, and an error line naming each of `names`; returns the error lines."""
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-2000:]
    if code is not None:
        assert proc.returncode == code, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    for name in names:
        assert any(name in line for line in errors), f"no error line names {name!r}:\n{text[-2000:]}"
    return errors


def assert_one_line_error(proc, *names: str) -> str:
    """A fatal error: exactly one line on stderr, naming `names`."""
    assert_clean_failure(proc, *names)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> Path:
    """Good patch shards of the corpus's good volumes."""
    vols = tmp_path_factory.mktemp("goodvols")
    for rel in corpus.good_volumes:
        shutil.copy(corpus.volumes / rel, vols / rel)
    out = tmp_path_factory.mktemp("shards") / "shards"
    proc = run(ROOT / "dataset/patchify3d.py", vols, out, "-cs", "64", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture
def untouched(corpus):
    """The corpus must be byte for byte what it was after each case (nothing written beside the inputs)."""
    before = tree(corpus.root)
    yield
    assert tree(corpus.root) == before
    assert not corpus.marker.exists()  # no malicious pickle ran


@pytest.fixture
def mount(tmp_path):
    """mount(name, size, readonly) -> a tmpfs folder: a disk that really fills up, or really refuses writes."""
    mounted = []

    def make(name: str, size: str = "128k", readonly: bool = False) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            reason = f"cannot mount a tmpfs here ({proc.stderr.strip()}): these cases need root"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"CI=true: {reason}")
            pytest.skip(reason)
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ------------------------------------------------------------------------------------------------------ curation
def test_patchify2d_names_every_bad_image_and_keeps_the_good_ones(corpus, tmp_path, untouched):
    out = tmp_path / "out"
    proc = run(ROOT / "dataset/patchify2d.py", corpus.images, out, "-cs", "64", "-q")
    errors = assert_clean_failure(proc, *(str(corpus.images / rel) for rel in corpus.bad_images), code=1)
    assert any("none of its 7 images could be read" in line for line in errors)
    manifest = (out / "manifest.csv").read_text(encoding="utf-8")
    for rel in corpus.good_images:  # the good group finished, the non-ASCII name included
        assert Path(rel).stem in manifest
    assert (out / "good.h5").is_file() and not (out / "bad.h5").exists()


def test_patchify3d_names_every_bad_volume_and_keeps_the_good_ones(corpus, tmp_path, untouched):
    out = tmp_path / "out"
    proc = run(ROOT / "dataset/patchify3d.py", corpus.volumes, out, "-cs", "64", "-q")
    errors = assert_clean_failure(proc, *(str(corpus.volumes / rel) for rel in corpus.bad_volumes), code=1)
    assert any("huge.nrrd" in line and "memory" in line for line in errors)
    assert any("nan.nrrd: contains NaN" in line for line in errors)
    assert sorted(p.name for p in out.glob("*.h5")) == sorted(Path(r).stem + ".h5" for r in corpus.good_volumes)


@pytest.mark.parametrize("how", ["truncate", "no-names", "no-manifest"])
def test_damaged_shards_are_named_by_dedupe_classify_and_reconstruct(corpus, shards, tmp_path, how):
    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    bad = damage_shard(folder / "good.h5", how)
    good = folder / "ünï vølume.h5"
    good_before = good.read_bytes()
    # dedupe: the damaged shard is left out and named, the other one is still deduplicated and listed
    proc = run(ROOT / "dataset/dedupe.py", folder, "-q")
    assert_clean_failure(proc, str(bad), code=1)
    assert "ünï vølume" in (folder / "manifest.csv").read_text(encoding="utf-8")
    assert good.read_bytes() == good_before
    # classify_patches: every shard is checked before anything is written
    final = tmp_path / "final"
    assert_one_line_error(run(ROOT / "dataset/classify_patches.py", folder, final, "--no-progress"), str(bad))
    assert not final.exists() or not any(final.rglob("*.tif*"))
    # reconstruct3d
    proc = run(ROOT / "dataset/reconstruct3d.py", folder, "-vd", corpus.volumes, "-sd", tmp_path / "rec", "-q")
    assert_clean_failure(proc, str(bad))


def test_weights_files_that_are_not_weights_are_refused_without_running_them(corpus, shards, tmp_path, untouched,
                                                                             capsys):
    for weights in (corpus.random_bytes, corpus.malicious):
        proc = call(capsys, ROOT / "dataset/classify_patches.py", shards, tmp_path / "final", "--weights", weights,
                    "--method", "nn", "--no-progress")
        line = assert_one_line_error(proc, str(weights))
        assert "weights_only" not in line and "Re-running" not in line  # no advice to load it unsafely
    assert not (tmp_path / "final").exists()  # bad weights never lock the output folder


def test_binvol_nan_volume_and_a_factor_larger_than_the_volume(corpus, tmp_path, untouched):
    vols = tmp_path / "vols"
    vols.mkdir()
    shutil.copy(corpus.volumes / "nan.nrrd", vols / "nan.nrrd")
    shutil.copy(corpus.volumes / "good.nrrd", vols / "good.nrrd")
    proc = run(ROOT / "dataset/preprocess/binvol.py", vols, "-o", tmp_path / "binned", "-f", "2", "-q")
    assert_clean_failure(proc, str(vols / "nan.nrrd"))
    assert (tmp_path / "binned" / "good_bin2.nrrd").is_file() and not (tmp_path / "binned" / "nan_bin2.nrrd").exists()
    proc = run(ROOT / "dataset/preprocess/binvol.py", vols, "-o", tmp_path / "big", "-f", "1000", "-q")
    errors = assert_clean_failure(proc, str(vols / "good.nrrd"))
    assert len([e for e in errors if "good.nrrd" in e]) == 1


def test_cleanup2d_follows_a_symlinked_project_folder(corpus, tmp_path, untouched):
    imdir = tmp_path / "imgs"
    imdir.mkdir()
    (imdir / "linked").symlink_to(corpus.images / "good", target_is_directory=True)
    proc = run(ROOT / "dataset/preprocess/cleanup2d.py", imdir, "-o", tmp_path / "clean", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / "clean" / "linked").iterdir())) == len(corpus.good_images)


# ---------------------------------------------------------------------------------------------------- pretraining
def _pretrain_args(data: Path, model_dir: Path) -> list[str]:
    return [f"data_path={data}", f"model_dir={model_dir}", "arch=resnet18", "batch_size=4", "workers=0",
            "logging=false", "device=cpu", "epochs=1", "allow_unsafe_ssl=true", "health_patches=8"]


@pytest.mark.parametrize("case", ["broken_yaml", "duplicate_key", "bad_value", "unknown_key", "no_equals",
                                  "random_resume", "finetune_resume", "malicious_resume", "nan_patch"])
def test_train_mocov2_refuses_bad_configs_and_files_in_one_line(corpus, tmp_path, case, untouched, capsys):
    data = tmp_path / "patches"
    for i in range(8):
        from cellemnet.io import write_image

        write_image(data / "src" / f"p{i}.tif", np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8))
    config = ROOT / "pretraining/configs/mocov2.yaml"
    extra: list[str] = []
    expect: str = ""
    if case == "broken_yaml":
        config, expect = corpus.bad_yaml, str(corpus.bad_yaml)
    elif case == "duplicate_key":
        config, expect = corpus.duplicate_key_yaml, "epochs"
    elif case == "bad_value":
        extra, expect = ["epochs=abc"], "epochs"
    elif case == "unknown_key":
        extra, expect = ["epochz=3"], "epochz"
    elif case == "no_equals":
        extra, expect = ["epochs"], "epochs"
    elif case == "random_resume":
        extra, expect = [f"resume={corpus.random_bytes}"], str(corpus.random_bytes)
    elif case == "finetune_resume":
        extra, expect = [f"resume={corpus.finetune_ckpt}"], "fine-tuning checkpoint"
    elif case == "malicious_resume":
        extra, expect = [f"resume={corpus.malicious}"], str(corpus.malicious)
    elif case == "nan_patch":
        shutil.copy(corpus.images / "bad" / "nan.tif", data / "src" / "nan.tif")
        expect = "nan.tif: contains NaN"
    model_dir = tmp_path / "run"
    proc = call(capsys, ROOT / "pretraining/train_mocov2.py", config, *_pretrain_args(data, model_dir), *extra)
    assert_one_line_error(proc, expect)
    assert not (model_dir / "current.pth").exists()


# ----------------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    from cellemnet.synthetic import make_benchmark

    folder = tmp_path_factory.mktemp("bench") / "bench"
    make_benchmark(folder, n_train=2, n_test=1, shape=(64, 64), volume_shape=(4, 64, 64))
    return folder


def _finetune_config(path: Path, bench: Path, **overrides) -> Path:
    cfg = yaml.safe_load((ROOT / "evaluation/configs/example.yaml").read_text())
    cfg.update({"data_dir": str(bench), "test_dir2d": str(bench / "test2d"), "test_dir3d": str(bench / "test3d"),
                "iters": 2, "num_prints": 1, "bsz": 2, "jobs": 0, "encoder": "resnet18", "logging": False,
                "model_dir": str(path.parent / "models"),
                "augmentations": [{"aug": "RandomCrop", "height": 64, "width": 64}]})
    cfg.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("case", ["pretraining_ckpt_resume", "random_pretraining", "malicious_pretraining",
                                  "misspelled_augmentation", "missing_data"])
def test_finetune_refuses_bad_files_and_configs_in_one_line(corpus, benchmark, tmp_path, case, untouched, capsys):
    overrides, expect = {}, ""
    if case == "pretraining_ckpt_resume":
        overrides, expect = {"resume": str(corpus.pretraining_ckpt)}, "mocov2 pretraining checkpoint"
    elif case == "random_pretraining":
        overrides, expect = {"pretraining": str(corpus.random_bytes)}, str(corpus.random_bytes)
    elif case == "malicious_pretraining":
        overrides, expect = {"pretraining": str(corpus.malicious)}, str(corpus.malicious)
    elif case == "misspelled_augmentation":
        overrides = {"augmentations": [{"aug": "RandomCrop", "height": 64, "widht": 64}]}
        expect = "widht"
    elif case == "missing_data":
        overrides, expect = {"data_dir": str(tmp_path / "nowhere")}, "nowhere"
    cfg = _finetune_config(tmp_path / "cfg.yaml", benchmark, **overrides)
    assert_one_line_error(call(capsys, ROOT / "evaluation/finetune.py", cfg), expect)
    assert not list((tmp_path / "models").glob("*.pth")) if (tmp_path / "models").exists() else True


@pytest.mark.parametrize("script", ["pretraining/export_encoder.py", "evaluation/probe_encoder.py"])
def test_encoder_tools_name_a_file_that_is_no_encoder(corpus, benchmark, tmp_path, script, untouched, capsys):
    for weights in (corpus.random_bytes, corpus.malicious, corpus.finetune_ckpt):
        args = [weights, tmp_path / "out.pth"] if "export" in script else [weights, benchmark]
        assert_one_line_error(call(capsys, ROOT / script, *args), str(weights))
    assert not (tmp_path / "out.pth").exists()


def test_report_never_creates_a_tracking_store(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "holds_data"):
        if folder.name == "holds_data":
            folder.mkdir()
            (folder / "notes.txt").write_text("keep me")
        before = tree(tmp_path)
        proc = run(ROOT / "evaluation/report.py", "--tracking-dir", folder, "--out", tmp_path / "report")
        assert_clean_failure(proc, str(folder))
        assert tree(tmp_path) == before  # no mlflow.db, no report


# ------------------------------------------------------------------------------------------- full and read-only disks
def test_patchify3d_on_a_full_disk_names_the_shard_and_keeps_what_fitted(corpus, mount, untouched):
    disk = mount("disk", size="128k")
    vols = disk.parent / "vols"
    vols.mkdir()
    for rel in corpus.good_volumes:
        shutil.copy(corpus.volumes / rel, vols / rel)
    proc = run(ROOT / "dataset/patchify3d.py", vols, disk / "out", "-cs", "64", "-q")
    errors = assert_clean_failure(proc, "No space left on device", code=1)
    assert any(".h5: cannot write the shard (No space left on device)" in line for line in errors)
    assert all(str(disk / "out") in line for line in errors)  # every line names the output that refused
    finished = [p for p in (disk / "out").glob("*.h5")]
    assert len(finished) == 1 and not list((disk / "out").glob(".*part*"))  # the shard that fitted, whole
    from cellemnet.dataset.store import ShardReader

    with ShardReader(finished[0]) as reader:
        assert len(reader) > 0


def test_curation_into_a_read_only_folder_is_one_line(corpus, mount, untouched):
    disk = mount("ro", size="64k", readonly=True)
    for script, src in (("patchify2d.py", corpus.images), ("patchify3d.py", corpus.volumes)):
        assert_one_line_error(run(ROOT / "dataset" / script, src, disk / "out", "-q"), str(disk / "out"))


def test_finetune_on_a_full_disk_rescues_the_trained_model(benchmark, mount, tmp_path):
    disk = mount("disk", size="256k")
    cfg = _finetune_config(tmp_path / "cfg.yaml", benchmark, model_dir=str(disk / "models"), checkpoint_iters=0)
    rescue_dir = tmp_path / "tmp"
    rescue_dir.mkdir()
    proc = run(ROOT / "evaluation/finetune.py", cfg, env={"TMPDIR": str(rescue_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    rescued = list(rescue_dir.rglob("*.pth"))
    assert len(rescued) == 1 and str(rescued[0]) in proc.stderr
    import torch

    assert "state_dict" in torch.load(rescued[0], weights_only=True)


def test_pretraining_on_a_full_disk_rescues_the_checkpoint(mount, tmp_path):
    from cellemnet.io import write_image

    data = tmp_path / "patches"
    for i in range(8):
        write_image(data / "src" / f"p{i}.tif", np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8))
    disk = mount("disk", size="256k")
    rescue_dir = tmp_path / "tmp"
    rescue_dir.mkdir()
    proc = run(ROOT / "pretraining/train_mocov2.py", ROOT / "pretraining/configs/mocov2.yaml",
               *_pretrain_args(data, disk / "run"), "crop_size=32", "moco_k=8", "iters_per_epoch=2",
               env={"TMPDIR": str(rescue_dir)})
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "No space left on device" in proc.stderr and "current.pth" in proc.stderr
    assert list(rescue_dir.rglob("*current.pth"))
