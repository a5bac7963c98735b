"""The bundled digits models: their data, the classifier of FD-digits, and their training.

==============  ==================================================================================
``classifier``  the 8×8 digits data split, the classifier behind FD-digits and its features,
                FD-digits / FD-pixel, the shipped files (``dode/assets/``) and their hashes
``pretrain``    training the bundled digits DDPMs and rectified flow (``python -m dode.pretrain``)
==============  ==================================================================================

``python -m dode.digits`` trains the classifier (:mod:`dode.cli.digits`). The package hands out
the names of :mod:`~dode.digits.classifier`; :mod:`~dode.digits.pretrain` imports Lightning and
is imported by name.
"""

from .classifier import (
    ASSETS,
    DIGITS_CLASSIFIER,
    DIGITS_MODEL,
    DigitsClassifier,
    DigitsSplit,
    asset_files,
    check_images,
    digits_features,
    digits_stats,
    fd_digits,
    fd_pixel,
    load_classifier,
    load_digits_split,
    mse,
    pixel_stats,
    to_images,
    train_classifier,
    verify_assets,
    write_asset_hashes,
)

__all__ = [
    "ASSETS",
    "DIGITS_MODEL",
    "DIGITS_CLASSIFIER",
    "DigitsSplit",
    "load_digits_split",
    "to_images",
    "DigitsClassifier",
    "load_classifier",
    "train_classifier",
    "digits_features",
    "fd_digits",
    "fd_pixel",
    "mse",
    "check_images",
    "digits_stats",
    "pixel_stats",
    "asset_files",
    "write_asset_hashes",
    "verify_assets",
]
