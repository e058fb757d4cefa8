"""What the tests share: override lists, composed configs, the CLI runners, store queries, waiting, images.

One definition each; the fixtures that use them are in ``tests/conftest.py``.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
