"""``python -m dode.fid``: reference statistics and Fréchet distances of image folders.

The command line is :mod:`dode.cli.fid`. The library moved to :mod:`dode.evaluation.fid`;
importing ``dode.fid`` still gives that module, with a ``DeprecationWarning``, until dode 0.2.
"""

if __name__ != "__main__":  # imported by its old library path
    from dode.import_paths import redirect

    redirect(__name__)

if __name__ == "__main__":
    import sys

    from dode.cli.fid import main

    sys.exit(main())
