"""``python -m dode.train``: fit D-ODE λ with Lightning (implementation: :mod:`dode.cli.train`).

Only a script entry point; ``dode.train.main`` and ``dode.train.DODECLI`` still resolve, with a
``DeprecationWarning``: import them from :mod:`dode.cli.train`.
"""

from .import_paths import moved_names

__getattr__ = moved_names("dode.train", "dode.cli.train", ("main", "DODECLI"))

if __name__ == "__main__":
    from dode.cli.train import main

    main()
