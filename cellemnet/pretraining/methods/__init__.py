"""Self-supervised methods, one file each, registered by name: what a method is to the training loop.

A method object (built from the validated config) gives the pretraining task (cellemnet/pretraining/train.py, run
by the training engine, cellemnet/engine.py):
`transform()` and `health_transform()` (the views), `build_model()`, `build_optimizer(model)`,
`lr(epoch, step, iters_per_epoch)`, `start_epoch(epoch, model, run)`, `step(batch, run)` -> metrics (one optimizer
step), and `extra_state(run)` / `load_extra_state(state, run)` for what its checkpoint holds beyond the model and
optimizer. A new method is a new file here and one line in METHODS.
"""
from __future__ import annotations

from cellemnet.pretraining.methods.mocov2 import MoCoV2Method
from cellemnet.pretraining.methods.swav import SwAVMethod

METHODS = {MoCoV2Method.name: MoCoV2Method, SwAVMethod.name: SwAVMethod}
