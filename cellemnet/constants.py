"""Facts shared by every stage, defined once."""

# Mean and standard deviation of CEM500K pixel intensities (scaled to 0..1); the
# published CEM weights were trained with these, one input channel.
EM_MEAN = 0.57287007
EM_STD = 0.12740536
EM_NORMS = {"mean": [EM_MEAN], "std": [EM_STD]}

# ImageNet statistics, for three-channel ImageNet-initialised encoders.
IMAGENET_NORMS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

DEFAULT_CROP_SIZE = 224
DEFAULT_HASH_SIZE = 8
DEFAULT_MAX_HAMMING = 12
