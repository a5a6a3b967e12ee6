"""Each loader says what kind of file it got and what it expected (issue "Reliability", item 4)."""
import pickle

import pytest
import torch

from cellemnet.encoder import checkpoint_kind, load_checkpoint_file
from cellemnet.errors import InputError
from cellemnet.evaluation.train import load_training_checkpoint
from cellemnet.pretraining.checkpoint import load_checkpoint

PRETRAIN = {"method": "mocov2", "state_dict": {"w": torch.zeros(1)}, "optimizer": {}, "global_step": 3,
            "config": {}, "norms": [0.5, 0.1], "epoch": 1}
FINETUNE = {"state_dict": {"w": torch.zeros(1)}, "optimizer": {}, "scheduler": {}, "norms": {"mean": [0.5]},
            "config": {}, "step": 2}
ENCODER = {"state_dict": {"w": torch.zeros(1)}, "norms": [0.5, 0.1], "method": "mocov2", "in_channels": 1}


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_kinds_are_told_apart():
    assert checkpoint_kind(PRETRAIN) == "a mocov2 pretraining checkpoint"
    assert checkpoint_kind(FINETUNE) == "a fine-tuning checkpoint"
    assert checkpoint_kind(ENCODER) == "an exported encoder"
    assert checkpoint_kind({"a": 1}).startswith("an unknown dict (keys: a")


@pytest.mark.parametrize("obj,kind", [(FINETUNE, "a fine-tuning checkpoint"), (ENCODER, "an exported encoder"),
                                      ({"weights": torch.zeros(2)}, "an unknown dict")])
def test_pretraining_resume_refuses_other_kinds(tmp_path, obj, kind):
    path = _save(tmp_path, "x.pth", obj)
    with pytest.raises(InputError, match=f"resume needs a pretraining checkpoint.*this is {kind}"):
        load_checkpoint(path)
    assert load_checkpoint(_save(tmp_path, "p.pth", PRETRAIN))["global_step"] == 3


@pytest.mark.parametrize("obj,kind", [(PRETRAIN, "a mocov2 pretraining checkpoint"), (ENCODER, "an exported encoder")])
def test_finetune_resume_refuses_other_kinds(tmp_path, obj, kind):
    with pytest.raises(InputError, match=f"expected a fine-tuning checkpoint.*this is {kind}"):
        load_training_checkpoint(_save(tmp_path, "x.pth", obj))
    assert load_training_checkpoint(_save(tmp_path, "f.pth", FINETUNE))["step"] == 2


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused_without_torch_advice(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises(InputError) as err:
        load_checkpoint_file(path)
    text = str(err.value)
    assert "refused" in text and "weights_only" not in text and len(text.splitlines()) == 1
    assert "this must never run" not in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="junk.pth: not a loadable checkpoint"):
        load_checkpoint_file(tmp_path / "junk.pth")
    assert pickle  # the module under test relies on pickle's error type
