"""Export a fine-tuned U-Net as a bioimage.io model package: `python evaluation/export_model.py CHECKPOINT OUTDIR`.

OUTDIR gets rdf.yaml (bioimage.io spec 0.5), the weights as pytorch_state_dict, torchscript and onnx, test input and
output tensors, a cover image and a README. Preprocessing is this project's normalisation (x / 255, then the
checkpoint's mean and std); postprocessing is sigmoid and the checkpoint's threshold2d (binary) or softmax.
The TorchScript and ONNX weights are checked against PyTorch (max logit difference 1e-4) and the package with
bioimageio.core's model test on the CPU before OUTDIR is written (replaced whole). napari (bioimageio plugin),
deepImageJ, ilastik and `bioimageio predict` run it; `predict` here reads it as it reads the checkpoint.
"""
import argparse
import sys

from cellemnet.errors import cli_main


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="fine-tuning checkpoint written by evaluation/finetune.py")
    parser.add_argument("outdir", help="package folder to write (new, empty, or an earlier package: replaced whole)")
    parser.add_argument("--zip", metavar="FILE", help="also write the package as one .zip (for bioimage.io uploads)")
    parser.add_argument("--test-image", metavar="IMAGE",
                        help="2D image for the test tensors and the cover (default: a synthetic EM image); "
                             "cropped to sides of 64 + n * 32")
    parser.add_argument("--name", help="model name (default: 'CellEMNet <encoder> U-Net <benchmark>')")
    parser.add_argument("--author", action="append", help="author name (repeat for several; default CellEMNet)")
    parser.add_argument("--no-test", action="store_true", help="skip bioimageio.core's model test (faster)")
    args = parser.parse_args(argv)
    from cellemnet.evaluation.package import describe_export, export_package  # lazy: imports torch

    test_image = None
    if args.test_image:
        from pathlib import Path

        from cellemnet.evaluation.data import read_gray8

        test_image = read_gray8(Path(args.test_image))
    result = export_package(args.checkpoint, args.outdir, test_image=test_image, name=args.name, authors=args.author,
                            validate=not args.no_test, zip_path=args.zip)
    print(describe_export(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
