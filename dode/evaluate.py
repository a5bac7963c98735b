"""``python -m dode.evaluate``: runs :func:`dode.cli.evaluate.main`."""

if __name__ == "__main__":
    import sys

    from dode.cli.evaluate import main

    sys.exit(main())
