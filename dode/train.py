"""``python -m dode.train``: runs :func:`dode.cli.train.main`."""

if __name__ == "__main__":
    from dode.cli.train import main

    main()
