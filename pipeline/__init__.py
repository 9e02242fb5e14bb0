"""Pure compute for Loupe: models and layer addressing, feature visualization, dataset scans.

Nothing in this package talks to Ray or to storage; jobs/ glues it to both.
"""
