"""``python -m cosmicai.rendezvous`` runs the rendezvous command line."""

from cosmicai.rendezvous.cli import main

main()
