"""Task control's rules, without servers: what a child offers, the shares and
permits while Redis is away, which pause wins, what a cancel or pause must carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from gearman_workers import config as configuration
from gearman_workers import protocol as p
from gearman_workers.children import KILLED_CANCEL, Child, kill_verdict
from gearman_workers.config import Server
from gearman_workers.connection import UP, GearmandConnection
from gearman_workers.control import cancel, pause
from gearman_workers.control.messages import BadMessage, Message, encode
from gearman_workers.scoreboard import ChildState, Scoreboard
from gearman_workers.session import GRAB, GRAB_THEN_SLEEP, Session
from gearman_workers.taskctl.offers import Offers
from gearman_workers.taskctl.switchboard import NO_TOKEN, PAUSED, Switchboard
from gearman_workers.taskctl.tokens import LocalPermits, share


def test_a_child_withholds_what_its_row_says_and_offers_it_again_when_cleared() -> None:
    board = Switchboard(4)
    for task in ("a", "b", "c"):
        board.task_index(task)
    board.withhold(1, "a", PAUSED, True)
    offers = Offers(["a", "b"], board.reader(1, ["a", "b"]))
    assert offers.withheld == {"a"} and offers.can_do() == p.request(p.CAN_DO, b"b")
    assert offers.refresh() == (set(), set())  # no new version: nothing read
    board.withhold(1, "b", NO_TOKEN, True)
    board.publish(1)
    assert offers.refresh() == ({"b"}, set())
    board.withhold(1, "a", PAUSED, False)
    board.withhold(1, "b", NO_TOKEN, False)
    board.publish(1)
    gone, back = offers.refresh()
    assert (gone, back) == (set(), {"a", "b"})
    assert Offers.changes(gone, back) == p.request(p.CAN_DO, b"a") + p.request(p.CAN_DO, b"b")
    assert Offers(["c"], board.reader(2, ["c"])).withheld == set()  # another slot's row is its own


def test_a_task_with_a_rate_is_offered_for_one_job_per_permit() -> None:
    board = Switchboard(2)
    board.task_index("paced")
    offers = Offers(["paced"], board.reader(0, ["paced"], frozenset({"paced"})))
    assert offers.withheld == {"paced"} and board.unused_permit(0, "paced") is False  # none granted yet
    board.grant_permit(0, "paced")
    board.publish(0)
    assert offers.refresh() == (set(), {"paced"}) and board.unused_permit(0, "paced")
    offers.spend("paced")  # the job starts
    assert not board.unused_permit(0, "paced")  # the master may grant the next one now
    assert offers.withdraw("paced") == p.request(p.CANT_DO, b"paced")  # sent after the answer
    board.publish(0)  # another change of the row, no permit: still withheld
    assert offers.refresh() == (set(), set())
    for _ in range(70000):  # counters wrap: only whether one is unused counts
        board.grant_permit(1, "paced")
    assert board.unused_permit(1, "paced")


def test_a_can_do_grabs_at_once_or_once_the_grab_out_is_answered() -> None:
    session = Session(GearmandConnection(Server("127.0.0.1", 4730), 0, 1.0))
    session.link.status = UP
    session.no_job()  # asleep: nothing out
    assert session.offered_again(accepting=True) == GRAB_THEN_SLEEP and session.awaiting_grab
    assert session.offered_again(accepting=True) == b"" and session.regrab  # a GRAB is out: after its answer
    assert session.no_job() == GRAB and not session.regrab and session.awaiting_grab
    assert session.offered_again(accepting=False) == b""


def test_shares_add_up_to_the_limit_and_a_pool_alone_takes_one() -> None:
    pools = ["host-a/alpha", "host-b/beta", "host-c/gamma"]
    assert [share(7, pools, pool) for pool in pools] == [3, 2, 2]
    assert [share(2, pools, pool) for pool in pools] == [1, 1, 0]
    assert share(5, [], "host-a/alpha") == 1 and share(5, ["host-b/beta"], "host-a/alpha") == 1


def test_permits_while_redis_is_away_come_at_the_pools_share_of_the_rate() -> None:
    local = LocalPermits({"paced": ["host-a/alpha", "host-b/beta"]})
    waits, fleet = local.reserve("paced", 10.0, 3, "host-a/alpha")
    assert fleet == ["host-a/alpha", "host-b/beta"]
    assert [round(w, 3) for w in waits] == [0.0, 0.2, 0.4]  # 10/s over two pools: 5/s here
    later, _ = local.reserve("paced", 10.0, 1, "host-a/alpha")
    assert round(later[0], 2) == 0.6


def test_the_newest_pause_or_resume_of_a_task_wins_whatever_its_scope(tmp_path: Path) -> None:
    book = pause.PauseBook(tmp_path / "paused.json", None)

    def kept(name: str, task: str, ts: float, **aim: object) -> tuple[str, Message, bytes]:
        message = Message(name, key=task, ts=ts, **aim)  # type: ignore[arg-type]
        scope = "host:h" if aim.get("hosts") else "all"
        return scope, message, encode(message, None)
    book.replace([kept("pause", "a", 1.0), kept("resume", "a", 2.0, hosts=("h",)),
                  kept("resume", "b", 1.0), kept("pause", "b", 2.0, hosts=("h",))])
    assert book.paused() == {"b"}
    again = pause.PauseBook(tmp_path / "paused.json", None)
    again.load()  # what a pool restarted while Redis is away reads
    assert again.paused() == {"b"}


@pytest.mark.parametrize(("message", "why"), [
    (Message("pause", ts=1.0), "needs a task name"),
    (Message("pause", key="a"), "needs a timestamp"),
    (Message("cancel", key="H:x:1"), "value 'handle', 'unique' or 'job'"),
    (Message("cancel", key="not-an-id", value="job"), "a job id is 16 hex digits"),
    (Message("cancel", key="H x", value="handle"), "without spaces"),
    (Message("cancel", key="u", value="unique", n=1), "queued job (n = 1) takes a handle"),
])
def test_a_pause_or_cancel_without_what_it_needs_is_refused_in_one_line(message: Message, why: str) -> None:
    command = pause.PAUSE if message.cmd == "pause" else cancel.CANCEL
    with pytest.raises(BadMessage, match=why.replace("(", r"\(").replace(")", r"\)")):
        command.check(message)


def test_concurrency_and_rate_are_checked_and_need_redis(tmp_path: Path) -> None:
    spec = configuration._task({"call": "m:f", "concurrency": 2, "rate": "100/m"})
    assert spec.governed and spec.starts_per_second == pytest.approx(100 / 60)
    for bad, why in (({"rate": "10/d"}, "unit of s, m or h"), ({"rate": "0/s"}, "COUNT/UNIT"),
                     ({"concurrency": -1}, "concurrency")):
        with pytest.raises(ValueError, match=why):
            configuration._task({"call": "m:f", **bad})
    path = tmp_path / "pool.toml"
    path.write_text('[tasks]\nt = { call = "m:f", concurrency = 2 }\n')
    with pytest.raises(configuration.ConfigError, match="concurrency and rate are shared by the fleet through Redis"):
        configuration.load(path=path)


def test_a_child_that_keeps_a_cancelled_job_past_kill_grace_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[pool]\nkill_grace = 0.5\n[tasks]\nt = "m:f"\n')
    config = configuration.load(path=path)
    board = Scoreboard(2)
    board.reset(0)
    writer = board.writer(0, 123)
    writer.busy(100.0, 0.0, 0, b"t", b"u", b"H:x:1")
    child = Child(123, 0, 0, 0.0, None, cancelling="H:x:1", cancel_deadline=100.5)  # type: ignore[arg-type]
    assert kill_verdict(child, board.read(0), config, 100.4) is None
    assert kill_verdict(child, board.read(0), config, 100.5)[0] == KILLED_CANCEL  # type: ignore[index]
    writer.between_jobs(ChildState.IDLE, 100.6)  # it let go: nothing to kill
    assert kill_verdict(child, board.read(0), config, 101.0) is None
