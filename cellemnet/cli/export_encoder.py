"""Export a MoCoV2/SwAV checkpoint (ours or the published CEM500K/CEM1.5M files) as a plain ResNet-50 encoder.

`python pretraining/export_encoder.py CHECKPOINT OUT.pth` writes {"state_dict", "norms", "method", "in_channels"};
the state_dict loads with strict=True into torchvision's resnet50 (1-channel conv1, no fc) and into
segmentation_models_pytorch.Unet('resnet50', in_channels=1).encoder.
"""
import argparse
import sys

from cellemnet.encoder import export_encoder, load_checkpoint_file
from cellemnet.errors import InputError, cli_main


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (.pth / .pth.tar)")
    parser.add_argument("out", help="exported encoder file to write")
    parser.add_argument("--force", action="store_true",
                        help="export even when the checkpoint's run ended with the verdict 'did not learn'")
    args = parser.parse_args(argv)
    from cellemnet.pretraining.health import checkpoint_verdict, refusal  # lazy: imports torch; --help stays fast

    ckpt = load_checkpoint_file(args.checkpoint)
    why_not = refusal(ckpt, args.checkpoint)
    if why_not and not args.force:
        raise InputError(why_not)
    if why_not:
        print(f"WARNING (--force): {why_not}", file=sys.stderr)
    verdict = checkpoint_verdict(ckpt)
    del ckpt
    enc = export_encoder(args.checkpoint, args.out)
    arch = enc.get("arch", "resnet50")
    status = "no verdict recorded" if verdict is None else (
        "run verdict: learned" if verdict["learned"] else "run verdict: did not learn (forced)")
    print(f"wrote {args.out}: {enc['method']} {arch} encoder ({status}), {len(enc['state_dict'])} tensors, "
          f"norms mean {enc['norms'][0]:.6f} std {enc['norms'][1]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
