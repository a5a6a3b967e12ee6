"""Every command checks that it can write its outputs before its expensive work; a late failure keeps the result
(issue "Reliability", item 2). A file where the output folder should be stands in for a read-only folder: it
refuses writes for root too."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from cellemnet.errors import InputError
from cellemnet.io import check_writable, write_volume


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not list((tmp_path / "new" / "deeper").iterdir())  # the probe file is gone
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"afile/out: cannot write the shards here"):
        check_writable(tmp_path / "afile" / "out", "shards")


@pytest.mark.parametrize("script,args", [
    ("dataset/patchify3d.py", ["{vols}", "{blocked}"]),
    ("dataset/patchify2d.py", ["{imgs}", "{blocked}"]),
])
def test_curation_scripts_refuse_an_unwritable_output_in_one_line(tmp_path, root, script, args):
    vols = tmp_path / "vols"
    write_volume(vols / "v.nrrd", np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8))
    imgs = tmp_path / "imgs" / "p"
    imgs.mkdir(parents=True)
    from cellemnet.io import write_image

    write_image(imgs / "a.png", np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "blocker").write_text("not a folder")
    values = {"vols": vols, "imgs": tmp_path / "imgs", "blocked": tmp_path / "blocker" / "out"}
    proc = subprocess.run([sys.executable, str(root / script), *[a.format(**values) for a in args], "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "blocker/out: cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_finetune_checkpoint_write_failure_keeps_the_model(tmp_path, monkeypatch, capsys):
    import cellemnet.io as io
    from cellemnet import engine

    real = io.atomic_path
    target = tmp_path / "models" / "m.pth"

    def refuse(path, *a, **k):
        if str(path) == str(target):
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(io, "atomic_path", refuse)
    monkeypatch.setattr(io.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    written = engine.save_state({"state_dict": {"w": torch.ones(2)}}, target)
    assert written != target and written.is_file() and "cellemnet-rescued" in str(written)
    assert torch.load(written, weights_only=True)["state_dict"]["w"].sum() == 2
    assert f"saved to {written}" in capsys.readouterr().err
