"""The bundled digits models: their data, the classifier of FD-digits, and their training.

==============  ==================================================================================
``classifier``  the 8×8 digits data split, the classifier behind FD-digits and its features,
                FD-digits / FD-pixel, the shipped files (``dode/assets/``) and their hashes
``pretrain``    training the bundled digits DDPMs and rectified flow (``python -m dode.pretrain``)
==============  ==================================================================================

``python -m dode.digits`` trains the classifier (:mod:`dode.cli.digits`). ``from dode.digits
import fd_digits`` works for every public name of :mod:`~dode.digits.classifier` (imported on
first use; :mod:`~dode.digits.pretrain` imports Lightning and is imported only by name).
"""

from ..import_paths import wing_exports


def _modules():
    from . import classifier

    return (classifier,)


__getattr__ = wing_exports(__name__, __path__, _modules)
