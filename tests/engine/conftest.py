"""Fixtures of the engine's tests."""

import pytest

from tests.helpers.batches import batch_problem


@pytest.fixture(scope="module")
def batch_setup():
    """(backbone, content, loss) of ``tests.helpers.batches.batch_problem``, built once per module."""
    return batch_problem()
