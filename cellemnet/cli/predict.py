"""Segment your own images or volumes: `python evaluation/predict.py MODEL INPUT OUTPUT [key=value ...]`.

MODEL   a fine-tuning checkpoint (evaluation/finetune.py) or an exported package (a folder or .zip with rdf.yaml);
        the normalisation and the threshold come from it.
INPUT   a folder of 2D images, one image, or a volume: TIFF stack, nrrd/nii/mha, mrc, file.h5:/key, Zarr, OME-Zarr.
OUTPUT  for volumes: out.ome.zarr (OME-Zarr with a pyramid, the voxel size kept) or out.tif/.nrrd/.nii.gz/.mha/.mrc
        (spacing kept; must fit in memory as uint8); a folder gets <input stem>.ome.zarr. For 2D: a folder of .tif.
        result.json (what was read, how, how long, peak memory) is written beside the output.

Volumes are predicted block by block with a halo, so memory stays bounded whatever the volume size; a killed run
resumes where it stopped when run again with the same settings. Several GPUs: torchrun --nproc_per_node=N
evaluation/predict.py ... splits the blocks between them.

Keys (key=value):
  mode=orthoplane     stack (xy slices) or orthoplane (xy, xz, yz averaged; too thin planes left out, with a note)
  output=probabilities  probabilities (uint8 0-255), labels (the model's threshold; argmax for several classes),
                      or instances (connected components of a binary model's labels)
  block=[64,512,512]  core block (z, y, x) predicted at a time; halo=[16,64,64] context read around it
                      (stack mode reads no z halo)
  tile=512 overlap=64 2D tiles and their blended overlap; batch=2 slices per forward pass
  device=auto amp=true  the GPU (with mixed precision) when present
  max_blocks=0        stop after this many new blocks (0: all); run again to continue
  progress=true       progress bar (blocks/s and ETA)
"""
from __future__ import annotations

import argparse

from cellemnet.config import Field, load_config
from cellemnet.errors import cli_main
from cellemnet.evaluation.blockwise import DEFAULT_BATCH, DEFAULT_BLOCK, DEFAULT_HALO, OUTPUT_KINDS


def _positive_triple(value) -> str | None:
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return f"must be three positive integers (z, y, x), got {value}"
    return None


def _non_negative_triple(value) -> str | None:
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return f"must be three integers >= 0 (z, y, x), got {value}"
    return None


def _positive(value) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def _non_negative(value) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


PREDICT_SCHEMA = {
    "mode": Field(str, "orthoplane", choices=("stack", "orthoplane")),
    "output": Field(str, "probabilities", choices=OUTPUT_KINDS),
    "block": Field(list, list(DEFAULT_BLOCK), check=_positive_triple),
    "halo": Field(list, list(DEFAULT_HALO), check=_non_negative_triple),
    "tile": Field(int, 512, check=_positive),
    "overlap": Field(int, 64, check=_non_negative),
    "batch": Field(int, DEFAULT_BATCH, check=_positive),
    "device": Field(str, "auto"),
    "amp": Field(bool, True),
    "max_blocks": Field(int, 0, check=_non_negative),
    "progress": Field(bool, True),
}


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="fine-tuning checkpoint, or exported package (folder or .zip with rdf.yaml)")
    parser.add_argument("input", help="folder of 2D images, an image, or a volume (any format cellemnet.io reads)")
    parser.add_argument("output", help="out.ome.zarr, out.tif/.nrrd/.nii.gz/.mha/.mrc, or a folder")
    parser.add_argument("overrides", nargs="*", help="key=value settings (see above)")
    args = parser.parse_args(argv)
    opts = load_config(None, PREDICT_SCHEMA, args.overrides, source="predict")

    from cellemnet.evaluation.blockwise import predict  # lazy: imports torch
    from cellemnet.runtime import cleanup_distributed

    try:
        record = predict(args.model, args.input, args.output, mode=opts["mode"], kind=opts["output"],
                         block=opts["block"], halo=opts["halo"], tile=opts["tile"], overlap=opts["overlap"],
                         batch=opts["batch"], device=opts["device"], amp=opts["amp"], max_blocks=opts["max_blocks"],
                         progress=opts["progress"])
    finally:
        cleanup_distributed()
    if record["rank"] != 0:  # under torchrun rank 0 reports for every process
        return 0
    memory = record["memory_mb"]
    state = "written" if record["complete"] else "not finished (run again to continue)"
    print(f"{record['output']}: {state} in {record['seconds']:.1f} s; peak memory {memory['peak']:.0f} MB "
          f"({memory['peak_above_model']:.0f} MB above the loaded model)")
    return 0
