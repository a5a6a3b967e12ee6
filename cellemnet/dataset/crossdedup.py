"""De-duplicate across shards (across datasets), incrementally.

After the per-source pass, near duplicates can remain between sources (two volumes of the same tissue, an image
folder that repeats another). ``cross_deduplicate`` walks the kept patches of every shard in a folder:
patches of shards already processed come first (they are exemplars of earlier runs), then the patches of new
shards in a seeded random order; greedy removal as in the per-source pass. Dropped patches leave their shard
(it is rewritten atomically) and their manifest rows say which patch they duplicate, as ``SHARD:NAME`` when
that patch is in another shard.

A state file (``crossdedup.json``) records the shards processed (with a fingerprint of their content) and,
while shards are being rewritten, the plan being applied. A run that is killed is finished by the next run
exactly as planned, so killing and re-running gives the same result as one clean run; shards added later are
compared only with what was kept.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cellemnet.constants import DEFAULT_MAX_HAMMING
from cellemnet.dataset import store
from cellemnet.dataset.dedup import greedy_clusters
from cellemnet.errors import ConfigError, InputError
from cellemnet.io import atomic_write_text, check_writable

STATE_NAME = "crossdedup.json"
STATE_FORMAT = "cellemnet-crossdedup"


@dataclass
class CrossDedupReport:
    shards: int = 0
    new_shards: int = 0
    patches_compared: int = 0
    dropped: int = 0
    rewritten: list[str] = field(default_factory=list)
    resumed: bool = False
    errors: list[str] = field(default_factory=list)


def fingerprint(shard: Path) -> str:
    """A digest of a shard's patch names and hashes: changes whenever its set of patches changes."""
    with store.ShardReader(shard) as reader:
        digest = hashlib.sha1()
        digest.update("\n".join(reader.names).encode())
        digest.update(reader.hashes.tobytes())
    return digest.hexdigest()


def _load_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable de-duplication state ({exc}); delete it to start over") from None
    if state.get("format") != STATE_FORMAT:
        raise InputError(f"{path}: not a cellemnet de-duplication state file")
    return state


def _save_state(path: Path, state: dict) -> None:
    atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True))


def _rewrite(shard: Path, keep: list[int], dropped: dict[str, str], settings: dict) -> None:
    """Write the shard again without its dropped patches, their manifest rows pointing at what they duplicate."""
    with store.ShardReader(shard) as reader:
        names = reader.names
        hashes = reader.hashes
        metadata = dict(reader.metadata)
        manifest = reader.manifest()
        patches = [reader.read(i) for i in keep]
    manifest.duplicate_of = [dropped.get(n, d) for n, d in zip(manifest.names, manifest.duplicate_of)]
    metadata["n_kept"] = len(keep)
    metadata["cross_dedup"] = {**settings, "dropped": int(metadata.get("cross_dedup", {}).get("dropped", 0))
                               + len(dropped)}
    store.write_shard(shard, [names[i] for i in keep], patches, hashes[keep], metadata, manifest=manifest)


def _apply_plan(root: Path, plan: dict, settings: dict, progress: Callable[[], None]) -> list[str]:
    """Rewrite the shards of a plan that are not rewritten yet (idempotent)."""
    done = []
    for rel, step in sorted(plan.items()):
        shard = root / rel
        current = fingerprint(shard) if store.is_complete_shard(shard) else None
        if current == step["after"]:
            progress()
            continue
        if current != step["before"]:
            raise InputError(f"{shard}: changed while a de-duplication was being applied; "
                             f"restore it or delete {root / STATE_NAME} to start over")
        _rewrite(shard, step["keep"], step["dropped"], settings)
        done.append(rel)
        progress()
    return done


def cross_deduplicate(
    shard_dir: str | os.PathLike,
    max_distance: int = DEFAULT_MAX_HAMMING,
    seed: int = 0,
    progress: bool = False,
) -> CrossDedupReport:
    """De-duplicate the shards under ``shard_dir`` against each other (only what is new since the last run)."""
    from tqdm import tqdm

    root = Path(shard_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")

    for folder in sorted({p.parent for p in store.list_shards(root, recursive=True)} | {root}):
        check_writable(folder, "de-duplicated shards")  # shards are rewritten in place
    state_path = root / STATE_NAME
    report = CrossDedupReport()
    settings = {"max_distance": int(max_distance), "seed": int(seed)}
    state = _load_state(state_path) or {"format": STATE_FORMAT, "version": 1, **settings, "processed": {},
                                        "pending": None}
    if state["max_distance"] != max_distance:
        raise ConfigError(f"{state_path}: earlier runs used -d {state['max_distance']}; use the same distance "
                          f"(or delete the state file and start from fresh shards)")

    for folder in {p.parent for p in store.list_shards(root, recursive=True)} | {root}:
        store.remove_stale_temporaries(folder)
    if state.get("pending"):
        report.resumed = True
        plan = state["pending"]["plan"]
        with tqdm(total=len(plan), desc="finish earlier run", disable=not progress, leave=False) as bar:
            report.rewritten += _apply_plan(root, plan, settings, bar.update)
        state["processed"] = state["pending"]["processed"]
        state["pending"] = None
        _save_state(state_path, state)

    shards = []
    for path in store.list_shards(root, recursive=True):
        if store.is_complete_shard(path):
            shards.append(path)
        else:
            report.errors.append(f"{path}: not a complete patch shard (left out)")
    rels = [p.relative_to(root).as_posix() for p in shards]
    prints = {rel: fingerprint(p) for rel, p in zip(rels, shards)}
    base = [rel for rel in rels if state["processed"].get(rel) == prints[rel]]
    new = [rel for rel in rels if rel not in base]
    report.shards, report.new_shards = len(rels), len(new)
    if not new:
        _save_state(state_path, {**state, "processed": {rel: prints[rel] for rel in rels}})
        _rebuild_manifests(root, shards)
        return report

    order_rels = base + new
    hashes, owner, local, order = _walk(root, order_rels, len(base), settings["seed"])
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    result = greedy_clusters(all_hashes, max_distance, order=order)
    report.patches_compared = len(all_hashes)
    removed = np.nonzero(result.exemplar_of != np.arange(len(all_hashes)))[0]
    report.dropped = len(removed)
    plan = _plan_drops(root, order_rels, hashes, owner, local, result.exemplar_of, removed, prints)

    processed_after = {rel: (plan[rel]["after"] if rel in plan else prints[rel]) for rel in rels}
    state["pending"] = {"plan": plan, "processed": processed_after}
    state["seed"] = settings["seed"]
    _save_state(state_path, state)  # from here on a killed run is finished by the next one
    with tqdm(total=len(plan), desc="rewrite shards", disable=not progress, leave=False) as bar:
        report.rewritten += _apply_plan(root, plan, settings, bar.update)
    state["processed"] = processed_after
    state["pending"] = None
    _save_state(state_path, state)
    _rebuild_manifests(root, [root / rel for rel in rels])
    return report


def _walk(root: Path, order_rels: list[str], n_base_shards: int, seed: int):
    """Every kept patch of every shard, base shards first (their patches are the earlier exemplars), then the new
    ones in a seeded order: (hashes per shard, owner shard index, index within its shard, walk order)."""
    owners: list[np.ndarray] = []
    hashes: list[np.ndarray] = []
    for k, rel in enumerate(order_rels):
        with store.ShardReader(root / rel) as reader:
            hashes.append(reader.hashes)
            owners.append(np.full(len(reader), k, dtype=np.int64))
    total = int(sum(len(h) for h in hashes))
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    local = np.concatenate([np.arange(len(h)) for h in hashes]) if hashes else np.zeros(0, np.int64)
    n_base = int(sum(len(h) for h in hashes[:n_base_shards]))
    rng = np.random.default_rng(seed)
    order = np.concatenate([np.arange(n_base), n_base + rng.permutation(total - n_base)])
    return hashes, owner, local, order


def _plan_drops(root: Path, order_rels: list[str], hashes, owner, local, exemplar_of, removed,
                prints: dict[str, str]) -> dict[str, dict]:
    """Per shard that loses patches: which names go (and the patch each duplicates, `SHARD:NAME` across shards),
    which indices stay, and the shard's fingerprint before and after the rewrite."""
    names_cache: dict[int, list[str]] = {}

    def names_of(k: int) -> list[str]:
        if k not in names_cache:
            with store.ShardReader(root / order_rels[k]) as reader:
                names_cache[k] = list(reader.names)
        return names_cache[k]

    plan: dict[str, dict] = {}
    for i in removed.tolist():
        k, e = int(owner[i]), int(exemplar_of[i])
        ke = int(owner[e])
        target = names_of(ke)[int(local[e])]
        ref = target if ke == k else f"{order_rels[ke]}:{target}"
        step = plan.setdefault(order_rels[k], {"dropped": {}})
        step["dropped"][names_of(k)[int(local[i])]] = ref
    for rel, step in plan.items():
        k = order_rels.index(rel)
        dropped_local = set(int(local[i]) for i in removed.tolist() if owner[i] == k)
        step["keep"] = [j for j in range(len(names_of(k))) if j not in dropped_local]
        step["before"] = prints[rel]
        step["after"] = _expected_fingerprint(names_of(k), hashes[k], step["keep"])
    return plan


def _expected_fingerprint(names: list[str], hashes: np.ndarray, keep: list[int]) -> str:
    digest = hashlib.sha1()
    digest.update("\n".join(names[i] for i in keep).encode())
    digest.update(np.asarray(hashes, dtype=np.uint64)[keep].tobytes())
    return digest.hexdigest()


def _rebuild_manifests(root: Path, shards: list[Path]) -> None:
    """Each folder's manifest from its good shards (`shards`); the bad ones were reported as errors already."""
    good = {p.resolve() for p in shards}
    for folder in sorted({p.parent for p in shards}):
        bad = [p for p in store.list_shards(folder) if p.resolve() not in good]
        store.rebuild_folder_manifest(folder, left_out=bad)
