"""``python -m cosmicai`` runs the command line."""

from cosmicai.cli import main

main()
