"""A misspelled augmentation argument is an error, not a silently dropped setting (issue "Reliability" item 5)."""
import glob

import pytest
import yaml

from cellemnet.errors import ConfigError
from cellemnet.evaluation.augment import build_augmentations


@pytest.mark.parametrize("entry,hint", [({"aug": "HorizontalFlip", "pp": 0.5}, "did you mean 'p'"),
                                        ({"aug": "Rotate", "limt": 180}, "did you mean 'limit'")])
def test_misspelled_argument_names_the_transform_and_the_fix(entry, hint):
    with pytest.raises(ConfigError, match=f"{entry['aug']}: unknown argument.*{hint}"):
        build_augmentations([entry])


def test_every_shipped_config_builds(root):
    built = 0
    for path in glob.glob(str(root / "evaluation" / "**" / "*.yaml"), recursive=True):
        data = yaml.safe_load(open(path))
        if isinstance(data, dict) and data.get("augmentations"):
            assert build_augmentations(data["augmentations"]), path
            built += 1
    assert built >= 3
