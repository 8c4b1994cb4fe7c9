"""`python -m awpo.ablation`: a grid of training runs that differ only in the advantage estimator
(or one AWPO component), over seeds, and the report that compares them. See `grid.py` (the runs),
`report.py` (the tables and the plot), `stats.py` (the intervals and the test), `evidence.py` (the
pre-registered decision of docs/EVIDENCE.md) with `evidence_report.py` (its report, `--report`), and
`signal.py` (`python -m awpo.ablation.signal`, the evidence round's phase 0: is there a reasoning signal
where the outcome is silent?)."""
