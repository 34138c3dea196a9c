"""`python -m oracle_cli …` runs the `oracle` command."""

from oracle_cli.entry import main

main()
