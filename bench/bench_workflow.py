"""Benchmark: the curation part of workflow/Snakefile as a simulated cluster run, against the scripts run by hand.

N synthetic volumes (default 50) are curated twice, side by side on the same machine:

  workflow  `snakemake -s workflow/Snakefile curation --cores C`: one job per volume (a fresh process each, C of
            them at once; the local executor standing in for a cluster's nodes), then dedupe and filter jobs;
            snakemake's `benchmark:` files give every job's wall time and peak memory (max_rss);
  scripts   `patchify3d.py VOLDIR OUT -p C`, `dedupe.py OUT`, `classify_patches.py OUT CURATED --format h5 -p C`
            (one process pool), what a user runs on one machine.

Printed: wall times and their ratio, per-rule job counts, median / max seconds and peak memory per job, the time
snakemake needs to find that nothing is left to do, and whether both runs kept the same patches.

    .venv/bin/python bench/bench_workflow.py                       # 50 volumes of 32 x 192 x 192, --cores 2
    .venv/bin/python bench/bench_workflow.py --volumes 8 --append  # and append the figures to bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_patchify3d import make_volume  # noqa: E402


def run(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - started


def job_figures(benchmarks: Path) -> dict[str, dict]:
    """Per rule: jobs, median and max seconds, median and max peak memory (MB), from snakemake's benchmark files."""
    figures = {}
    for folder in sorted(p for p in benchmarks.iterdir()):
        files = sorted(folder.glob("*.tsv")) if folder.is_dir() else [folder]
        rows = []
        for f in files:
            with open(f, newline="") as fh:
                rows += list(csv.DictReader(fh, delimiter="\t"))
        seconds = [float(r["s"]) for r in rows]
        rss = [float(r["max_rss"]) for r in rows if r["max_rss"] not in ("", "NA", "-")]
        figures[folder.stem] = {"jobs": len(rows), "s_median": statistics.median(seconds), "s_max": max(seconds),
                                "rss_median": statistics.median(rss) if rss else float("nan"),
                                "rss_max": max(rss) if rss else float("nan")}
    return figures


def kept_names(folder: Path) -> set[str]:
    from cellemnet.dataset import store

    names = set()
    for shard in store.list_shards(folder, recursive=True):
        with store.ShardReader(shard) as reader:
            names.update(reader.names)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=50)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 192, 192])
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--cores", type=int, default=2, help="jobs (one thread each) at once / pool processes")
    p.add_argument("--append", action="store_true", help="append the figures to bench/RESULTS.md")
    args = p.parse_args(argv)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_workflow_") as tmp:
        tmp = Path(tmp)
        voldir = tmp / "volumes"
        voldir.mkdir()
        for i in range(args.volumes):
            make_volume(voldir / f"vol{i:03d}.nrrd", tuple(args.shape), seed=i)
        config = {"output_dir": "out", "sources": [{"volumes": str(voldir)}], "patch": {"crop_size": args.crop_size},
                  "pretraining": None, "evaluation": None}
        (tmp / "wf.yaml").write_text(yaml.safe_dump(config))
        snakemake = [python, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "curation", "--cores",
                     str(args.cores), "--configfile", "wf.yaml"]
        wall_workflow = run(snakemake, tmp)
        wall_nothing = run(snakemake, tmp)
        figures = job_figures(tmp / "out" / "benchmarks")

        scripts = tmp / "scripts"
        wall_scripts = sum([
            run([python, str(ROOT / "dataset" / "patchify3d.py"), str(voldir), str(scripts / "shards"), "-cs",
                 str(args.crop_size), "-p", str(args.cores), "-q"], tmp),
            run([python, str(ROOT / "dataset" / "dedupe.py"), str(scripts / "shards"), "-q"], tmp),
            run([python, str(ROOT / "dataset" / "classify_patches.py"), str(scripts / "shards"),
                 str(scripts / "curated"), "--format", "h5", "-p", str(args.cores), "--no-progress"], tmp),
        ])
        same = kept_names(tmp / "out" / "curated") == kept_names(scripts / "curated")
        n_kept = len(kept_names(tmp / "out" / "curated"))

    shape = "x".join(map(str, args.shape))
    lines = [
        f"{args.volumes} volumes of {shape} uint8 (nrrd), crop_size {args.crop_size}, --cores {args.cores}; "
        f"{n_kept} patches in the curated set",
        f"  workflow (snakemake curation, local executor)  {wall_workflow:7.1f} s",
        f"  scripts (patchify3d -p, dedupe, classify -p)   {wall_scripts:7.1f} s",
        f"  ratio workflow / scripts                       {wall_workflow / wall_scripts:7.2f}",
        f"  re-run with nothing to do                      {wall_nothing:7.1f} s",
        f"  same curated patch names in both runs          {same}",
        "  per job (snakemake benchmark files):      jobs   s median   s max   MB median   MB max",
    ]
    for rule, f in figures.items():
        lines.append(f"    {rule:<38} {f['jobs']:5d} {f['s_median']:10.2f} {f['s_max']:7.2f} "
                     f"{f['rss_median']:11.0f} {f['rss_max']:8.0f}")
    text = "\n".join(lines)
    print(text)
    if args.append:
        command = " ".join(["nice -n 19 .venv/bin/python bench/bench_workflow.py", *(argv or sys.argv[1:])])
        note = textwrap.fill(f"Command: `{command}` (2-core machine shared with other engineers' jobs: wall times "
                             f"are noise, the ratio was measured side by side; memory figures are fine).", 116)
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n### Curation as a workflow: {args.volumes} volumes, simulated cluster run "
                     f"(`bench/bench_workflow.py`)\n\n{note}\n\n```\n{text}\n```\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
