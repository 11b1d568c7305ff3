"""The jobs every surface calls: validate, run, rollback, export, history."""
