"""The grab-and-sleep rules of a worker session (session.py), packet by
packet, without a socket: what goes out after each answer from gearmand."""

from __future__ import annotations

import pytest

from gearman_workers.config import Server
from gearman_workers.connection import GearmandConnection
from gearman_workers.session import GRAB, GRAB_THEN_SLEEP, NOTHING, PRE_SLEEP, Session

HELLO = b"can-do packets"


@pytest.fixture
def session() -> Session:
    fresh = Session(GearmandConnection(Server("127.0.0.1", 1), 0, 1.0))
    assert fresh.opening(HELLO) == HELLO + GRAB
    return fresh


def test_the_first_answer_confirms_the_registration_once(session: Session) -> None:
    assert session.confirm_registration() is True
    assert session.confirm_registration() is False
    assert session.registered


def test_no_job_is_followed_by_pre_sleep_and_a_noop_by_a_grab_that_sleeps_too(session: Session) -> None:
    assert session.no_job() == PRE_SLEEP
    assert not session.awaiting_grab
    assert session.noop(accepting=True) == GRAB_THEN_SLEEP
    assert session.noop(accepting=True) == NOTHING  # one GRAB out at a time
    assert session.no_job() == NOTHING  # the job went elsewhere: gearmand has the PRE_SLEEP already


def test_a_job_woken_by_a_noop_sends_its_pre_sleep_with_the_next_grab(session: Session) -> None:
    session.no_job()
    session.noop(accepting=True)
    assert session.after_job(accepting=True) == GRAB_THEN_SLEEP
    assert session.no_job() == NOTHING  # gearmand has the PRE_SLEEP already


def test_jobs_in_a_stream_are_followed_by_a_plain_grab(session: Session) -> None:
    assert session.after_job(accepting=True) == GRAB
    assert session.no_job() == PRE_SLEEP


def test_a_child_that_takes_no_more_jobs_grabs_nothing(session: Session) -> None:
    assert session.after_job(accepting=False) == NOTHING
    assert not session.awaiting_grab
    session.no_job()
    assert session.noop(accepting=False) == NOTHING


def test_a_lost_connection_starts_over(session: Session) -> None:
    session.confirm_registration()
    session.no_job()
    session.reset()
    assert not (session.registered or session.awaiting_grab or session.sleep_sent or session.dozing)


STATE = ("awaiting_grab", "registered", "grabbed_on_noop", "sleep_sent", "dozing", "regrab")


@pytest.mark.parametrize("flags", range(1 << len(STATE)))
@pytest.mark.parametrize("accepting", [True, False])
def test_a_wake_up_read_is_answered_as_its_no_job_then_its_noop(flags: int, accepting: bool) -> None:
    """woken() is the shortcut for NO_JOB and NOOP read together: in every
    state, the same bytes out and the same state after as the two rules."""
    def in_state() -> Session:
        made = Session(GearmandConnection(Server("127.0.0.1", 1), 0, 1.0))
        for bit, name in enumerate(STATE):
            setattr(made, name, bool(flags >> bit & 1))
        return made

    by_rules, shortcut = in_state(), in_state()
    sent = by_rules.no_job() + by_rules.noop(accepting)
    assert shortcut.woken(accepting) == sent
    assert [getattr(shortcut, name) for name in STATE] == [getattr(by_rules, name) for name in STATE]


def test_the_usual_wake_up_grabs_and_sleeps_again(session: Session) -> None:
    session.no_job()
    session.noop(accepting=True)
    session.after_job(accepting=True)  # a job came; its answer carries GRAB and PRE_SLEEP
    assert session.woken(accepting=True) == GRAB_THEN_SLEEP
    assert session.awaiting_grab and session.sleep_sent and session.grabbed_on_noop
