"""Before a run: `preflight.py` checks that every model can be had (stop in seconds, not after an
hour), `dry_run.py` prints what `bench run EXP --dry-run` would do and how long it would take."""
