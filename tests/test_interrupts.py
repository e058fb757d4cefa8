"""Interrupts held while a run's end is written (nst/interrupts.py)."""

import os
import signal

import pytest

from nst import interrupts


def test_an_interrupt_inside_takes_effect_when_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block went on")
    assert done == ["the block went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_interrupt_takes_effect_at_once():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            done.append("not reached")
    assert done == []


def test_sigterm_is_held_and_given_to_its_own_handler():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: received.append(number))
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGTERM)
            assert received == []
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
