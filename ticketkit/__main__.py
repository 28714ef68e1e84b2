"""`python -m ticketkit` runs the CLI."""

from ticketkit.cli import main

main()
