"""``python -m dode.sample``: samples from a fitted-solver file (see :mod:`dode.cli.sample`).

Only a script entry point: import :mod:`dode.cli.sample` for :func:`~dode.cli.sample.main`
and :func:`~dode.cli.sample.generate`. Importing this module would shadow the sampling
function ``dode.sample`` with it, so nothing in the package does.
"""

if __name__ == "__main__":
    from dode.cli.sample import main

    main()
