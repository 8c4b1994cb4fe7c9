"""`python -m awpo.ablation`: a grid of training runs that differ only in the advantage estimator
(or one AWPO component), over seeds, and the report that compares them. See `grid.py` (the runs),
`report.py` (the tables and the plot) and `stats.py` (the intervals)."""
