"""Comparing results: a sweep's report (table, grid, report.html), and the human review (nst-review's
judgements, their Bradley-Terry ranking, its pages)."""
