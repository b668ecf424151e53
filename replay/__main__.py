"""``python -m replay`` runs the ``tradeledger`` command."""

from replay.cli import main

main()
