"""The front door: the `oracle` command (typer app, entry point), above every other layer. Nothing imports it."""
