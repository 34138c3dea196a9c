"""`python -m oracle …` runs the `oracle` command; the job scripts start training as `torchrun -m oracle train …`."""

from oracle_cli.entry import main

main()
