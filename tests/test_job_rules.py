"""The rules of a job's life beyond one attempt, without a server: the
back-off curve, which run a unique names, the spool's records, and what
the dead command accepts."""

from __future__ import annotations

import base64
import json

import pytest

from gearman_workers import Permanent
from gearman_workers.config import TaskSpec
from gearman_workers.control.messages import BadMessage, Message
from gearman_workers.jobs import dead, policy, results
from gearman_workers.jobs.results import RETRYING
from gearman_workers.jobs.spool import Failure, Spool


def test_delays_double_from_retry_delay_up_to_the_cap_with_ten_percent_jitter() -> None:
    spec = TaskSpec("m:f", retries=8, retry_delay=10, retry_max_delay=300)
    middle = [policy.retry_delay(spec, attempt, draw=0.5) for attempt in range(1, 9)]
    assert middle == [10, 20, 40, 80, 160, 300, 300, 300]
    assert policy.retry_delay(spec, 1, draw=0.0) == pytest.approx(9.0)
    assert policy.retry_delay(spec, 1, draw=0.999999) == pytest.approx(11.0, abs=1e-4)
    assert policy.retry_delay(spec, 9) is None  # the ninth run was the last allowed


def test_no_retry_for_a_permanent_failure_or_a_task_without_retries() -> None:
    assert policy.retry_delay(TaskSpec("m:f"), 1) is None
    assert not policy.retried(Permanent("bad input"))
    assert not policy.retried(type("BadInput", (Permanent,), {})("subclass"))
    assert policy.retried(ValueError("x")) and policy.retried(None)


def test_a_runs_unique_names_its_chain_and_attempt_and_nothing_else_does() -> None:
    run = policy.Run("0123456789abcdef", 3)
    assert run.unique() == b"gw:0123456789abcdef:3"
    assert policy.Run.of(run.unique()) == run
    for unique in (b"order-17", b"", b"gw:0123456789abcdef", b"gw:0123456789ABCDEF:3", b"gw:0123456789abcdef:3x",
                   b"gw:0123456789abcdef:1234"):
        assert policy.Run.of(unique) == policy.FIRST_RUN


def test_a_spooled_failure_keeps_binary_payload_and_unique(tmp_path) -> None:
    failure = Failure("0123456789abcdef", 2, "t", b"\xff\x00u", bytes(range(256)), 3, RETRYING, 20.5, "E: x",
                      "Traceback ...", "h", "p", 1.0, 2.0)
    spool = Spool(tmp_path / "spool")
    spool.put(failure)
    (path,) = spool.pending()
    assert path.name == "0123456789abcdef.2.json"
    assert spool.load(path) == failure


def test_an_unreadable_spool_file_is_set_aside_not_retried_forever(tmp_path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "x.1.json").write_text("{half")
    (path,) = spool.pending()
    assert spool.load(path) is None
    assert spool.pending() == [] and (tmp_path / "x.1.bad").exists()


@pytest.mark.parametrize("value, problem", [
    ({"ids": []}, "ids must be 1 to 1000 job ids"),
    ({"ids": ["../../etc"]}, "ids must be 1 to 1000 job ids"),
    ({"ids": "0123456789abcdef"}, "ids must be 1 to 1000 job ids"),
    ({}, "give ids, or all: true"),
    ({"all": True, "older_than": "old"}, "older_than a number of seconds"),
    ({"all": True, "task": 7}, "task must be text"),
])
def test_the_dead_command_refuses_what_it_cannot_act_on(value: dict, problem: str) -> None:
    with pytest.raises(BadMessage, match=problem):
        dead.DEAD.check(Message("dead", key="retry", value=value))
    with pytest.raises(BadMessage, match="key retry or purge"):
        dead.DEAD.check(Message("dead", key="drop", value={"all": True}))
    dead.DEAD.check(dead.message("purge", task="resize", older_than=86400))  # what gm-ctl sends passes


def test_a_record_is_json_with_every_field_a_reader_expects() -> None:
    fixed = results.fixed_fields('re"size', "h\u00e9", "p")
    done = json.loads(results.record(fixed, results.DONE, 2, 1.5, 2.25, (3, 4), b"\x00\xff"))
    assert done["task"] == 're"size' and done["host"] == "h\u00e9" and done["state"] == "done"
    assert done["attempt"] == 2 and done["started"] == 1.5 and done["progress"] == [3, 4]
    assert base64.b64decode(done["result"]) == b"\x00\xff" and done["ended"] == 2.25
    failed = json.loads(results.record(fixed, results.RETRYING, 1, 1.0, 2.0, None,
                                       fields={"error": 'E: "x"\n', "retry_in": 2.5}))
    assert failed["error"] == 'E: "x"\n' and failed["retry_in"] == 2.5 and failed["progress"] is None
    running = json.loads(results.record(fixed, results.RUNNING, 1, 1.0, None, None))
    assert "ended" not in running and "result" not in running
    big = json.loads(results.record(fixed, results.DONE, 1, 1.0, 2.0, None, b"x" * (results.MAX_RESULT + 1)))
    assert big["result_size"] == results.MAX_RESULT + 1 and "result" not in big
