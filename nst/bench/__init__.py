"""``make bench``: nst against a plain reference implementation, per evaluation and end to end."""
