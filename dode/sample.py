"""``python -m dode.sample``: runs :func:`dode.cli.sample.main`.

Only a script entry point: importing it would shadow the sampling function ``dode.sample``.
"""

if __name__ == "__main__":
    from dode.cli.sample import main

    main()
