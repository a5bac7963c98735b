"""``python -m dode.export``: a fitted-solver file as a diffusers scheduler folder.

The command line is :mod:`dode.cli.export`. The library moved to :mod:`dode.hosts.export`;
importing ``dode.export`` still gives that module, with a ``DeprecationWarning``, until dode
0.2.
"""

if __name__ != "__main__":  # imported by its old library path
    from dode.import_paths import redirect

    redirect(__name__)

if __name__ == "__main__":
    import sys

    from dode.cli.export import main

    sys.exit(main())
