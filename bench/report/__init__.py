"""Outputs made from records only: `tables.py` (report.md/csv, the quality tables), `compare.py`
(paired significance tests and their tables), `page.py` (the self-contained results page) and
`plots.py` (the one PNG writer). Nothing here runs a model: every number comes from a record.
"""
