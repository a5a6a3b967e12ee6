"""Download sparse random ROI cubes from OME-Zarr / NGFF volumes listed in a CSV, as nrrd with voxel spacing.

The code is cellemnet/cli/ngff_download.py;
installed, this is the command `cellemnet-ngff-download`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.ngff_download import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
