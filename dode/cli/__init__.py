"""Command-line entry points (``python -m dode.<name>`` runs the one here of that name).

The modules here hold the implementations; ``dode/<name>.py`` is a shim that only calls
``main()`` when run as a script, so that no library code imports a module whose name clashes
with a function of the package (``dode.sample`` is the sampling function).
"""
