"""Grids of runs (sweep.py): grid files and their cells' state (grid.py), running the cells (grid_run.py)."""
