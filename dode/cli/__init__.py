"""Command-line entry points: ``python -m dode.<name>`` runs ``dode/cli/<name>.py``.

=============================  ======================================================
``python -m dode.train``       fit λ with Lightning (LightningCLI), write a solver file
``python -m dode.sample``      samples (PNGs, ``samples.npz``) from a solver file
``python -m dode.evaluate``    generate N samples with a solver and score them (FID)
``python -m dode.export``      a solver file as a diffusers scheduler folder
``python -m dode.fid``         reference statistics and Fréchet distances of image folders
``python -m dode.pretrain``    train the small digits models (LightningCLI)
``python -m dode.digits``      train the digits classifier of FD-digits
``python -m dode.bench``       time ``dode.train`` against a direct ``dode.fit_lambdas``
=============================  ======================================================

Each module here only parses arguments and calls the function that does the work. One style:
``-h`` lists every option with a description, flags are spelled with underscores
(``--solver_file``, ``--batch_size``). Bad input prints one ``error:`` line and exits
with status 2. ``dode/<name>.py`` (``dode/digits/__main__.py`` for ``digits``) only calls
``main()`` when run as a script,
so that no library code imports a module whose name clashes with a function of the package
(``dode.sample`` is the sampling function).
"""

from .common import ENTRY_POINTS

__all__ = ["ENTRY_POINTS"]
