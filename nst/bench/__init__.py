"""``make bench``: nst against a plain reference implementation, per evaluation and end to end.

``reference`` is the plain implementation and the roofline, ``races`` the measurements,
``run_phases`` where one run's seconds go (its run.json phases, tracked and untracked), ``cli`` the command (``python -m nst.bench``) that prints them as markdown tables.
"""
