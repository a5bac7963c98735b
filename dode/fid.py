"""``python -m dode.fid``: runs :func:`dode.cli.fid.main`."""

if __name__ == "__main__":
    import sys

    from dode.cli.fid import main

    sys.exit(main())
