"""``python -m nst.cli``: the ``nst`` command."""

from nst.cli.nst_app import console

console()
