"""``python -m dode.export``: runs :func:`dode.cli.export.main`."""

if __name__ == "__main__":
    import sys

    from dode.cli.export import main

    sys.exit(main())
