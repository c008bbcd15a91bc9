"""HTTP API: upload images as tasks, poll them, download masks and registered ids."""
