"""The ``attnsched`` command line (typer + rich)."""
