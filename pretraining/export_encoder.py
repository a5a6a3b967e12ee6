"""Export a MoCoV2/SwAV checkpoint (ours or the published CEM500K/CEM1.5M files) as a plain ResNet-50 encoder.

`python pretraining/export_encoder.py CHECKPOINT OUT.pth` writes {"state_dict", "norms", "method", "in_channels"};
the state_dict loads with strict=True into torchvision's resnet50 (1-channel conv1, no fc) and into
segmentation_models_pytorch.Unet('resnet50', in_channels=1).encoder.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cellemnet.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (.pth / .pth.tar)")
    parser.add_argument("out", help="exported encoder file to write")
    args = parser.parse_args(argv)
    from cellemnet.pretraining.export import export_encoder

    enc = export_encoder(args.checkpoint, args.out)
    print(f"wrote {args.out}: {enc['method']} ResNet-50 encoder, {len(enc['state_dict'])} tensors, "
          f"norms mean {enc['norms'][0]:.6f} std {enc['norms'][1]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
