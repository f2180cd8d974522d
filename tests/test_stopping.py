"""The stop SIGTERM, SIGINT and SIGHUP set in `worker`, `serve` and `project --follow`
(`ledger.cli.stopping`): set by a signal at any instant of a wait, it ends the wait; a
terminal closed under them stops them as SIGTERM does. And SIGTERM or SIGHUP in a one-shot
command: raised as Ctrl-C is, so what it made is removed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from ledger.cli.stopping import SignalStop, Terminated, terminated_as_interrupted
from tests.cli_support import (
    children_of,
    from_a_terminal,
    line_within,
    lines_until,
    piped,
    run_with,
    start_with,
)
from tests.facts import grant

ROOT = Path(__file__).resolve().parents[1]

# A main thread that waits on the stop again and again, each time in a new
# `stopped_by_signals` block, signalled by the test as each wait begins: every wait must
# end. A handler that took a lock (`threading.Event.set`) met its own thread holding it, now
# and then, and the process hung there.
WAITS_FOR_SIGNALS = """
import signal, sys
from ledger.cli.stopping import stopped_by_signals

signal.signal(signal.SIGTERM, lambda *_: None)  # between two blocks, a signal is let go
for _ in range(int(sys.argv[1])):
    with stopped_by_signals() as stop:
        print("waiting", flush=True)
        # A wait of no time holds an Event's lock for most of its turn; the other polls.
        while not (stop.wait(0) or stop.wait(0.0001)):
            pass
# Held from here: the interpreter's shutdown puts the default handler back.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("stopped every time", flush=True)
"""


def test_a_signal_at_any_instant_of_a_wait_ends_it() -> None:
    waits = 3000
    waiting = subprocess.Popen(
        [sys.executable, "-c", WAITS_FOR_SIGNALS, str(waits)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        for _ in range(waits):
            # Each wait is signalled once it has begun; a wait that never ends prints no
            # next line, and `line_within` fails the test.
            assert line_within(waiting.stdout, 60) == "waiting\n"
            os.kill(waiting.pid, signal.SIGTERM)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err[-2000:]
    assert out == "stopped every time\n", (out, err)


def test_a_stop_waits_until_set_or_timed_out_and_stays_set() -> None:
    stop = SignalStop()
    assert not stop.is_set() and not stop.wait(0) and not stop.wait(-1)
    started = time.monotonic()
    assert not stop.wait(0.05)
    assert time.monotonic() - started >= 0.05
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(stop.wait()))
    waiter.start()
    stop.set()
    waiter.join(timeout=30)
    assert woken == [True]
    stop.set()  # again: nothing more happens
    assert stop.is_set() and stop.wait(0) and stop.wait()
    with pytest.raises(NotImplementedError):
        stop.clear()


def test_a_stop_gives_back_its_pipe() -> None:
    """Each stop holds two file descriptors until it is dropped, not until the process ends."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        stop = SignalStop()
        stop.set()
        del stop
    assert len(os.listdir("/proc/self/fd")) == before


def test_sigterm_and_sighup_raise_in_a_one_shot_command_unless_ignored_before() -> None:
    """`nohup` starts a command with SIGHUP ignored: it stays so. (Set here either way: the
    test's own process may have been started under `nohup`.)"""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            with terminated_as_interrupted(), pytest.raises(Terminated) as raised:
                signal.raise_signal(signum)
            assert (raised.value.signum, str(raised.value)) == (signum, signum.name)
            assert isinstance(raised.value, KeyboardInterrupt)  # every Ctrl-C path takes it
            assert signal.getsignal(signum) is signal.SIG_DFL  # put back
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with terminated_as_interrupted():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])


def test_a_one_shot_command_takes_sigterm_over_from_a_python_handler() -> None:
    """As `make coverage` runs every command: its measurement's SIGTERM handler (save the
    data, then end by the signal) was left in place, so a `backup` stopped by SIGTERM died
    with its half-made copy behind. The command ends its own way, and the handler is put
    back after."""
    seen: list[int] = []

    def measuring(signum: int, _frame: object) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, measuring)
    try:
        with terminated_as_interrupted(), pytest.raises(Terminated) as raised:
            signal.raise_signal(signal.SIGTERM)
        assert raised.value.signum == signal.SIGTERM
        assert seen == []
        assert signal.getsignal(signal.SIGTERM) is measuring
    finally:
        signal.signal(signal.SIGTERM, before)


def ctrl_c_as_a_terminal_gives_it() -> None:
    """For `preexec_fn`: SIGINT at its default, so Python makes it KeyboardInterrupt (a
    job started in the background of a script has it ignored, and so would its commands)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("signum", "status", "line"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM, "consent-ledger: terminated (SIGTERM)"),
        (signal.SIGINT, 130, "consent-ledger: interrupted"),
    ],
)
def test_a_backup_ended_by_a_signal_leaves_no_copy_of_the_key_store(
    tmp_path: Path, signum: signal.Signals, status: int, line: str
) -> None:
    """Killed by SIGTERM, it left its half-made backup (`.NAME.incomplete-PID`) with the key
    store's copy in it, whose data keys outlive any later erasure; now the copy is removed
    and the command says why it ended (exit 143, as a shell reports SIGTERM). Ctrl-C takes
    the same way out, with the status and line every command gives it."""
    data = tmp_path / "data"
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    assert run_with(env, "demo", "--subjects", "20").returncode == 0
    into = tmp_path / "backups" / "monday"
    # The log held by another process in exclusive mode: the backup makes its directory,
    # then waits on the log (its busy timeout, 30 s), its copy half made.
    holder = sqlite3.connect(data / "ledger.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    backup = start_with(
        env,
        "backup",
        "--into",
        str(into),
        preexec_fn=ctrl_c_as_a_terminal_gives_it if signum == signal.SIGINT else None,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(into.parent.glob(".monday.incomplete-*")):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the backup never started copying"
            time.sleep(0.01)
        backup.send_signal(signum)
        _, said = backup.communicate(timeout=60)
    finally:
        holder.close()
        if backup.poll() is None:
            backup.kill()
            backup.communicate()
    assert backup.returncode == status, said
    assert said.strip() == line
    assert list(into.parent.iterdir()) == []


def test_record_ended_by_sigterm_keeps_what_it_answered_and_says_so(tmp_path: Path) -> None:
    """SIGTERM while `record` waits for more of its pipe: what it answered is recorded, and
    it ends with one line, not silently by the signal. (SIGHUP takes the same path, but a
    process started under `nohup`, as a CI job may be, ignores it, as it should.)"""
    data = tmp_path / "data"
    env = {"LEDGER_DATA_DIR": str(data)}
    assert run_with({**os.environ, **env}, "init").returncode == 0
    with piped("record", "-", env=env) as fed:
        assert fed.stdin is not None and fed.stdout is not None and fed.stderr is not None
        fed.stdin.write(orjson.dumps(grant("hup-1", event_id="hup-1")) + b"\n")
        fed.stdin.flush()
        (answer,) = lines_until(fed.stdout, lambda line: True, timeout=60)
        assert '"receipt"' in answer, answer
        fed.send_signal(signal.SIGTERM)
        assert fed.wait(timeout=60) == 128 + signal.SIGTERM
        assert fed.stderr.read().strip() == b"consent-ledger: terminated (SIGTERM)"
    trail = run_with({**os.environ, **env}, "trail", "hup-1", "--tenant", "demo", "--json")
    assert trail.returncode == 0 and '"hup-1"' in trail.stdout, trail


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def stopped_lines(output: bytes) -> list[dict[str, object]]:
    logged = [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    return [entry for entry in logged if entry.get("message") == "stopped"]


def test_a_closed_terminal_stops_serve_as_sigterm_does(tmp_path: Path) -> None:
    """SIGHUP to the service's process group (its terminal closed): the service stops
    cleanly, its log says so, and it ends by the signal, as on SIGTERM; its writer process,
    in the same group, ignores the signal and is stopped by the service. Until 2026-12-07
    SIGHUP ended both on the spot, requests in flight unanswered."""
    from ledger.application import ConsentLedger
    from ledger.settings import Settings
    from tests.server_support import demo_key, serve

    settings = Settings(data_dir=tmp_path / "data")
    ConsentLedger(settings).close()
    key = demo_key(settings, "publisher")
    server, base = serve(settings, preexec_fn=from_a_terminal())
    try:
        import httpx

        published = httpx.post(
            f"{base}/v1/facts",
            json=grant("hup-serve", event_id="hup-serve"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert published.status_code == 201, published.text
        writers = [
            pid
            for pid in children_of(server.pid)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(writers) == 1, writers
        assert signal.SIGHUP in ignored_signals(writers[0])
        assert signal.SIGHUP not in ignored_signals(server.pid)
        os.killpg(server.pid, signal.SIGHUP)
        assert server.wait(timeout=60) == -signal.SIGHUP
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.stdout is not None
    assert [entry["by"] for entry in stopped_lines(server.stdout.read())] == [["SIGHUP"]]


def test_serve_started_under_nohup_outlives_its_terminal(tmp_path: Path) -> None:
    from ledger.application import ConsentLedger
    from ledger.settings import Settings
    from tests.server_support import serve

    settings = Settings(data_dir=tmp_path / "data")
    ConsentLedger(settings).close()
    server, base = serve(settings, preexec_fn=from_a_terminal(hangup=False))
    try:
        import httpx

        assert signal.SIGHUP in ignored_signals(server.pid)
        os.killpg(server.pid, signal.SIGHUP)
        # Had it ended the service, nothing would answer; had the service taken it as a
        # stop, the log would name it below, and the service end by it.
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == -signal.SIGTERM
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.stdout is not None
    assert [entry["by"] for entry in stopped_lines(server.stdout.read())] == [["SIGTERM"]]


def test_sighup_stops_what_runs_until_stopped_unless_ignored_before() -> None:
    from ledger.cli.stopping import stopped_by_signals, stopping_signals

    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert signal.SIGHUP in stopping_signals()
        with stopped_by_signals() as stop:
            signal.raise_signal(signal.SIGHUP)
            assert stop.is_set()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # `nohup`
        assert stopping_signals() == (signal.SIGTERM, signal.SIGINT)
        with stopped_by_signals() as stop:
            signal.raise_signal(signal.SIGHUP)
            assert not stop.is_set()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
