"""What every stage shares: the settings schema (config.py), the run-folder layout (runs.py), the
record schema (records.py), atomic file writes (files.py), figure files, the scripts' common wrapper
(cli.py), process state (parallel.py), the Hub check (hub.py) and the one error base class."""
