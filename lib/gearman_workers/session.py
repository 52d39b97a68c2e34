"""A child's worker session with one gearmand: where it stands in the
worker protocol's grab-and-sleep cycle, and the rules for what to send next.

gearmand offers a worker nothing until asked: the worker sends GRAB, and
gets a job or NO_JOB. After NO_JOB it sends PRE_SLEEP and waits for a NOOP,
gearmand's "something came in", then grabs again. The rules here decide
which of those packets go out when; the child (child.py) sends them, runs
the jobs and handles a lost connection by calling reset(). The transport
(connect, send, receive, the socket's low-water mark) is connection.py's.
"""

from __future__ import annotations

from . import protocol as p
from .connection import UP, GearmandConnection

GRAB = p.request(p.GRAB_JOB_UNIQ)
PRE_SLEEP = p.request(p.PRE_SLEEP)
# Jobs that come one at a time: the GRAB a NOOP calls for, and the one after
# such a job, carry the PRE_SLEEP too, instead of sending it after their
# NO_JOB. It reaches gearmand before the client can send the next job, and
# the socket's low-water mark stays raised from one job to the next: a lone
# NO_JOB (the job went to another worker, or there is no next one) wakes
# nobody, and no system call per job moves the mark.
# (A GRAB clears gearmand's sleep flag and a PRE_SLEEP that finds a job
# waiting is answered with a NOOP at once: the pair is safe either way.)
GRAB_THEN_SLEEP = GRAB + PRE_SLEEP
NOTHING = b""


class Session:
    """The grab-and-sleep state of one connection. Each rule returns the
    bytes to send (NOTHING when silence is the answer) and assumes they go
    out; if they cannot, the connection is lost and reset() starts over."""

    __slots__ = ("awaiting_grab", "dozing", "grabbed_on_noop", "link", "registered", "regrab", "sleep_sent")

    def __init__(self, link: GearmandConnection) -> None:
        self.link = link
        self.reset()

    def reset(self) -> None:
        """The connection is gone: a new one starts from nothing."""
        self.awaiting_grab = False  # a GRAB is out and not answered yet
        self.registered = False  # gearmand answered a GRAB: every CAN_DO before it is in effect
        self.grabbed_on_noop = False  # the GRAB in flight answered a NOOP: jobs come one at a time
        self.sleep_sent = False  # gearmand has our PRE_SLEEP, and no GRAB since
        self.dozing = False  # the socket's low-water mark is raised (see settle_low_water)
        self.regrab = False  # grab again once the GRAB out is answered (see offered_again)

    def opening(self, hello: bytes) -> bytes:
        """A fresh connection: our CAN_DOs and the first GRAB."""
        self.awaiting_grab = True
        return hello + GRAB

    def confirm_registration(self) -> bool:
        """The first answer to a GRAB on this connection confirms the
        registration (gearmand answers in order): True the first time only."""
        if self.registered:
            return False
        self.registered = True
        return True

    def no_job(self) -> bytes:
        """NO_JOB: PRE_SLEEP at once, unless it went out with the GRAB. Until
        gearmand has it, a new job does not wake us."""
        self.awaiting_grab = False
        if self.regrab:
            return self._grab_again()
        if self.sleep_sent:
            return NOTHING
        self.sleep_sent = True
        return PRE_SLEEP

    def noop(self, accepting: bool) -> bytes:
        """NOOP, gearmand's wake-up: grab (and sleep, see GRAB_THEN_SLEEP),
        unless a GRAB is out or we take no jobs."""
        if not accepting or self.awaiting_grab:
            return NOTHING
        self.awaiting_grab = self.grabbed_on_noop = self.sleep_sent = True
        return GRAB_THEN_SLEEP

    def woken(self, accepting: bool) -> bytes:
        """NO_JOB and the NOOP after it, read together: what no_job() and
        then noop() send, in one call (this is the wake-up of every job
        that comes one at a time)."""
        if self.sleep_sent and not self.regrab and self.awaiting_grab and accepting:
            self.grabbed_on_noop = True  # the usual case: asleep with a GRAB out, which the NOOP renews
            return GRAB_THEN_SLEEP
        return self.no_job() + self.noop(accepting)

    def offered_again(self, accepting: bool) -> bytes:
        """Our CAN_DO for a task went out again (taskctl/offers.py). gearmand
        wakes nobody for the jobs of it that it already holds: grab now, or,
        with a GRAB out (whose NO_JOB may come before the CAN_DO counted),
        once it is answered."""
        if not accepting:
            return NOTHING
        if self.awaiting_grab:
            self.regrab = True
            return NOTHING
        return self.noop(accepting)

    def _grab_again(self) -> bytes:
        self.regrab = self.sleep_sent = False
        self.awaiting_grab = True
        return GRAB

    def after_job(self, accepting: bool) -> bytes:
        """A JOB_ASSIGN answered our GRAB; what goes out with the job's
        answer: the next GRAB (with a PRE_SLEEP when jobs come one at a
        time), or nothing when we take no more. (One call per job, not two:
        this is every job's path.)"""
        self.awaiting_grab = accepting
        if not accepting:
            self.grabbed_on_noop = False
            return NOTHING
        follow = GRAB_THEN_SLEEP if self.grabbed_on_noop else GRAB
        self.sleep_sent, self.grabbed_on_noop = self.grabbed_on_noop, False
        return follow

    def settle_low_water(self, stopping: bool) -> None:
        """Doze while the answer to GRAB + PRE_SLEEP is pending (a lone
        NO_JOB then does not wake us: see GearmandConnection.doze), not
        otherwise, and not when stopping: then that answer is what we wait
        for. Nor with a packet read in part: the rest of it (the last
        segment of a big job, say) may be shorter than the raised mark, and
        would never wake us. Raises ConnectionLost."""
        wanted = self.awaiting_grab and self.sleep_sent and not stopping and not self.regrab \
            and not self.link.reader.pending
        if wanted != self.dozing and self.link.status == UP:
            if wanted:
                self.link.doze()
            else:
                self.link.undoze()
            self.dozing = wanted
