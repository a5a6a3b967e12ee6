"""IoU definitions: per class, empty-vs-empty = 1 (never NaN), instance matching, training batch IoU."""
from __future__ import annotations

import math

import numpy as np
import torch

from cellemnet.evaluation.metrics import EMAMeter, batch_iou, instance_match, iou_from_counts, ious


def test_empty_vs_empty_is_one_and_never_nan():
    z = np.zeros((4, 4), np.uint8)
    assert ious(z, z, [1]) == {1: 1.0}
    assert iou_from_counts(0, 0) == 1.0
    one = z.copy()
    one[0, 0] = 1
    assert ious(one, z, [1]) == {1: 0.0} and ious(z, one, [1]) == {1: 0.0}


def test_known_values_per_class():
    pred = np.array([[1, 1, 0, 2], [0, 0, 2, 2]])
    truth = np.array([[1, 0, 0, 2], [0, 0, 0, 2]])
    out = ious(pred, truth, [1, 2])
    assert out[1] == 0.5 and math.isclose(out[2], 2 / 3)


def test_instance_match_drops_components_not_touching_truth():
    pred = np.zeros((10, 10), np.uint8)
    pred[0:3, 0:3] = 1  # touches the labelled object
    pred[6:9, 6:9] = 1  # an unlabelled object: dropped
    truth = np.zeros_like(pred)
    truth[1:4, 1:4] = 1
    kept = instance_match(pred, truth)
    assert kept[0:3, 0:3].all() and not kept[6:9, 6:9].any()
    assert ious(kept, truth, [1])[1] > ious(pred, truth, [1])[1]


def test_batch_iou_binary_and_multiclass():
    logits = torch.tensor([[[[5.0, -5.0], [5.0, -5.0]]]])  # predicts left column
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert batch_iou(logits, target, 1) == [0.5]
    logits3 = torch.zeros(1, 3, 2, 2)
    logits3[0, 2] = 1.0  # predicts class 2 everywhere
    target3 = torch.tensor([[[2, 2], [0, 0]]])
    out = batch_iou(logits3, target3, 3)
    assert out == [0.0, 1.0, 0.5]  # class 1 absent from both: 1.0, not NaN


def test_ema_meter_is_bias_corrected():
    m = EMAMeter()
    m.update(2.0)
    assert math.isclose(m.value, 2.0)
