"""sage_nb."""
