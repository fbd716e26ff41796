"""The reaper of a local Ray instance: once the driver that started it is gone, however it
ended (SIGKILL included), every process of that instance is killed within a second or two.

Why it is needed: Ray ties its GCS and raylet to the driver (the kernel kills them when it
dies) and its workers follow the raylet, but the raylet's agents (dashboard agent, runtime-env
agent) outlive a SIGKILLed driver by a minute or more: they try to report the raylet's death
to a GCS that is gone, with a 60 s timeout. A killed `lawam label` or `lawam ingest` must not
leave processes behind.

How: `pipeline.ray_runtime.ensure_ray` starts this script in a session of its own (a signal
to the driver's process group does not reach it), with a pipe from the driver on stdin, and
gives the processes `ray.init` starts (GCS, raylet, ...) the environment variable
`LAWAM_RAY_OWNER=<token>`; the driver itself does not carry it. While the driver lives, the
reaper notes every process that carries the token and every descendant of one (agents and
workers rename themselves, which can overwrite the environment the kernel shows, so they
are known by ancestry), with its start time, so a reused pid is never mistaken for one.
End of file on stdin means the driver exited: the reaper sends SIGKILL to all of them, sweeping
until none is left (for at most `SWEEP_SECONDS`), and exits. Standard library only, run as a
script: it starts in milliseconds and imports nothing of Ray.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

OWNER_ENV = "LAWAM_RAY_OWNER"
SWEEP_SECONDS = 30.0  # a process still being spawned when the driver died is caught within this
LOOK_EVERY = (0.5, 2.0)  # seconds between looks at the process table: in the first minute, then


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else (int(fields[1]), int(fields[19]))


def _has_token(pid: str, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


class Watch:
    """The processes of one Ray instance: its token's carriers and their descendants."""

    def __init__(self, token: str):
        self.needle = f"{OWNER_ENV}={token}".encode()
        self.known: dict[int, int] = {}  # pid -> start time
        self._checked: dict[tuple[int, int], bool] = {}  # (pid, start) -> carries the token

    def look(self) -> dict[int, int]:
        """Note the instance's live processes; returns them (pid -> start time)."""
        me = os.getpid()
        table = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me and (st := _stat(name)) is not None:
                table[int(name)] = st
        live = {}
        for pid, (_, start) in table.items():
            key = (pid, start)
            if key not in self._checked:
                self._checked[key] = _has_token(str(pid), self.needle)
            if self._checked[key] or self.known.get(pid) == start:
                live[pid] = start
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(live)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in live:
                    live[child] = table[child][1]
                    todo.append(child)
        self.known = {pid: start for pid, start in self.known.items() if table.get(pid, (0, None))[1] == start}
        self.known.update(live)
        self._checked = {k: v for k, v in self._checked.items() if table.get(k[0], (0, None))[1] == k[1]}
        return live

    def sweep(self, seconds: float = SWEEP_SECONDS) -> None:
        """SIGKILL the instance's processes until three looks in a row find none, or `seconds` pass."""
        deadline, quiet = time.monotonic() + seconds, 0
        while quiet < 3 and time.monotonic() < deadline:
            live = self.look()
            for pid in live:
                with contextlib.suppress(OSError):  # gone meanwhile
                    os.kill(pid, signal.SIGKILL)
            quiet = 0 if live else quiet + 1
            time.sleep(0.1)


def main(token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver is not for us
    watch, started, fd = Watch(token), time.monotonic(), sys.stdin.fileno()
    while True:
        every = LOOK_EVERY[0] if time.monotonic() - started < 60 else LOOK_EVERY[1]
        ready, _, _ = select.select([fd], [], [], every)
        if ready and not os.read(fd, 4096):  # the driver never writes: end of file is its exit
            break
        watch.look()
    watch.sweep()


if __name__ == "__main__":
    main(sys.argv[1])
