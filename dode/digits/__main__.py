"""``python -m dode.digits``: train the digits classifier (:mod:`dode.cli.digits`)."""

if __name__ == "__main__":
    from dode.cli.digits import main

    main()
