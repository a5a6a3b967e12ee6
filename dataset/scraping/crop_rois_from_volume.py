"""Split a large local volume into sparse random ROI cubes (nrrd, with the source's voxel spacing).

The code is cellemnet/cli/crop_rois_from_volume.py;
installed, this is the command `cellemnet-crop-rois-from-volume`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.crop_rois_from_volume import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
