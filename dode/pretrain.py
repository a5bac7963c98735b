"""``python -m dode.pretrain``: runs :func:`dode.cli.pretrain.main`."""

if __name__ == "__main__":
    from dode.cli.pretrain import main

    main()
