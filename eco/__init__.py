"""The ``eco`` command line; the entry point is :func:`eco.cli.main`."""
