"""Packaged data: the SDSS Main Galaxy Sample catalogue and the galaxy-image renderer."""
