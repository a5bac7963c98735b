"""``python -m dode.pretrain``: train the bundled digits models (LightningCLI).

The command line is :mod:`dode.cli.pretrain`. The library moved to :mod:`dode.digits.pretrain`;
importing ``dode.pretrain`` still gives that module, with a ``DeprecationWarning``, until dode
0.2.
"""

if __name__ != "__main__":  # imported by its old library path
    from dode.import_paths import redirect

    redirect(__name__)

if __name__ == "__main__":
    from dode.cli.pretrain import main

    main()
