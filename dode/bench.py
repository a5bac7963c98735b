"""``python -m dode.bench``: runs :func:`dode.cli.bench.main`."""

if __name__ == "__main__":
    from dode.cli.bench import main

    main()
