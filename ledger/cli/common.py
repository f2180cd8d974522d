"""What every command shares: exit statuses, errors, opening the ledger, input, JSON out."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import os
import stat
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, TextIO

import orjson

from ledger.application import ConsentLedger
from ledger.cli.pipe_lines import PipeLines
from ledger.controls import json_escape, visible
from ledger.envelope import named_twice, without_bom
from ledger.errors import FactRejected
from ledger.fsync import write_new_private
from ledger.json_names import MAX_DEPTH, TooDeep, marked, repeats_a_name
from ledger.keystore import KeyStore
from ledger.settings import Settings
from ledger.storage import storage_failure
from ledger.tenant import Tenant

if TYPE_CHECKING:  # imported where used: a command that needs no views does not load them
    from projections.views import Views

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_BROKEN = 4
EXIT_FENCED = 5  # Kafka mode: another writer took the ledger partitions
EXIT_UNAVAILABLE = 6  # storage failed, key store held open elsewhere; Kafka: broker or topic
# An error the code did not expect: a bug (sysexits.h's EX_SOFTWARE), said without its
# message (`ledger.bug_report`).
EXIT_BUG = 70
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report a process it ended

# The lines of an input whose first line opens an object or an array looked at to tell JSON
# Lines (a bad first line) from one document; past them, it is read whole.
LOOK_AHEAD = 100
# The last byte of a JSON value on a line of its own: an object, an array, a string, a
# number, true, false or null.
VALUE_ENDS = frozenset({b"}", b"]", b'"', b"e", b"l", *(str(d).encode() for d in range(10))})


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int) -> int:
    say(f"consent-ledger: {message}", file=sys.stderr)
    return status


def say(line: str = "", *, file: TextIO | None = None, flush: bool = False) -> None:
    """Print one line for a person. Values in it come from publishers (an `event_id`, a
    subject's name, a reason): any character in them that would act on the terminal instead
    of showing, a newline that would forge a row included, is printed as its escape
    (`ledger.controls.visible`). Every human line of the CLI goes through here."""
    print(visible(line), file=file, flush=flush)


def open_ledger(settings: Settings) -> ConsentLedger:
    return ConsentLedger(settings)


def print_json(value: Any) -> None:
    sys.stdout.write(json_text(orjson.dumps(value, option=orjson.OPT_INDENT_2)) + "\n")


def json_text(data: bytes) -> str:
    """JSON for a terminal: orjson escapes the C0 controls only; the rest that would act
    (DEL, C1, bidirectional overrides) is escaped too, the same value read back. On a
    stdout that is not UTF-8 every character beyond ASCII is a JSON escape as well: the
    backslash escapes it would otherwise get are not JSON."""
    text = visible(data.decode(), lines=True)
    if _writes_utf8(sys.stdout) or text.isascii():
        return text
    return "".join(char if char.isascii() else json_escape(char) for char in text)


def _writes_utf8(stream: TextIO) -> bool:
    try:
        return codecs.lookup(stream.encoding or "utf-8").name == "utf-8"
    except LookupError:
        return False


def about_subject(
    settings: Settings,
    args: argparse.Namespace,
    question: Callable[[ConsentLedger, str, uuid.UUID], dict[str, Any] | None],
) -> dict[str, Any]:
    """A question about the subject the arguments name (SUBJECT or --sid, --tenant)."""
    ledger = open_ledger(settings)
    try:
        answer = question(ledger, args.tenant, subject_sid(ledger, args))
    finally:
        ledger.close()
    if answer is None:
        raise CliError("no such subject in this tenant", EXIT_NOT_FOUND)
    return answer


def write_once(value: Any, out: str | None, what: str, summary: str) -> None:
    """A new file only its owner can read (0600, as `tenants export` makes): an evidence
    package holds the subject's personal data in the clear."""
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"
    if out in (None, "-"):
        sys.stdout.buffer.write(data)
        return
    assert out is not None
    try:
        write_new_private(Path(out), data)
    except FileExistsError:
        raise CliError(f"{out} exists: {what} is never overwritten") from None
    except OSError as e:
        # A full disk has the exit status of every storage failure.
        raise storage_failure(e) or CliError(f"cannot write {out}: {e.strerror}") from None
    say(f"{summary}; written to {out}", file=sys.stderr)


def load_json(path: str) -> Any:
    try:
        return orjson.loads(without_bom(read_input(path)))
    except orjson.JSONDecodeError:  # also for bytes that are not UTF-8
        raise CliError(f"{path} is not JSON") from None


def key_store(settings: Settings) -> KeyStore:
    """The key store alone, refused where there is none (a fresh key there would sign for
    a ledger that is elsewhere)."""
    from ledger.keystore import load_master_key

    if not settings.keystore_path.exists():
        raise CliError(f"no key store at {settings.keystore_path}: run consent-ledger init")
    return KeyStore(settings.keystore_path, load_master_key(settings))


def known_purpose(ledger: ConsentLedger, tenant: str, purpose: str) -> None:
    """A purpose no policy version names was never granted: a typo, not a finding."""
    found = ledger.tenant(tenant, shared=True)
    if found is None:
        raise CliError("no such tenant", EXIT_NOT_FOUND)
    if not found.names_purpose(purpose):
        raise CliError(
            "unknown_purpose: no policy version of this tenant names this purpose", EXIT_NOT_FOUND
        )


@contextlib.contextmanager
def current_views(settings: Settings, name: str) -> Iterator[tuple[ConsentLedger, Views, Tenant]]:
    """The ledger, its consent views brought up to date with the log, and the tenant."""
    from projections.views import Views

    ledger = open_ledger(settings)
    views = Views(ledger)
    try:
        tenant = ledger.tenant(name)
        if tenant is None:
            raise CliError("no such tenant", EXIT_NOT_FOUND)
        views.refresh()
        yield ledger, views, tenant
    finally:
        views.close()
        ledger.close()


def subject_from_stdin(args: argparse.Namespace) -> None:
    """SUBJECT `-`: the reference is the first line of stdin. A reference is personal data
    (an email, a phone number); on the command line every user of the machine sees it in
    the process list, and the shell keeps it in its history."""
    if getattr(args, "subject", None) != "-":
        return
    # Bytes, read as UTF-8 as every input is: decoded in the terminal's encoding, a
    # reference beyond ASCII would be another reference (another sid), said "no such subject".
    try:
        line = sys.stdin.buffer.readline().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError("SUBJECT '-': stdin's first line is not UTF-8 text") from None
    reference = line.removesuffix("\n").removesuffix("\r")
    if not reference:
        raise CliError("SUBJECT '-' reads the subject's reference from stdin, which gave none")
    args.subject = reference


def subject_sid(ledger: ConsentLedger, args: argparse.Namespace) -> uuid.UUID:
    return given_sid(args.subject) if args.sid else ledger.sid(args.tenant, args.subject)


def given_sid(subject: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=subject)
    except ValueError:
        raise CliError("with --sid, SUBJECT must be a sid (32 hex digits)") from None


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for '-'. Bytes, not text: what is not UTF-8 is refused
    where it is parsed (a fact's own line, a JSON document), never as a traceback."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None


class InputFacts(NamedTuple):
    """The facts of an input (or of a batch of it, the first at index `first`), and for JSON
    Lines the line in the file each came from."""

    items: list[bytes | FactRejected | Any]
    lines: list[int] | None  # None: one JSON document, whose facts are not lines
    first: int = 0
    # The batch ended because the input's next line had not come (a pipe): a caller that
    # waits for the next batch before answering this one waits on the input's writer.
    idle: bool = False

    def answer(self, index: int, **outcome: Any) -> dict[str, Any]:
        """A fact's line of output: its `index` among the input's facts and, for JSON Lines,
        its `line` in the file (blank lines are skipped, so the two part after one)."""
        if self.lines is None:
            return {"index": index, **outcome}
        return {"index": index, "line": self.lines[index - self.first], **outcome}


def fact_batches(path: str, size: int) -> Iterator[InputFacts]:
    """The facts of a file (or stdin, '-'), `size` at a time, as `read_facts` reads them.

    JSON Lines are read a line at a time, so no more than a batch of them is held: read
    whole, a file of 1,000,000 facts (323 MB) took 1.1 GB before the first was recorded
    (2026-12-04), and a pipe was answered only once it closed. One JSON document (an object
    over several lines, or an array) is read whole, as it must be to be parsed. An input
    whose first line opens an object or an array and does not close it may be one; it is
    taken as JSON Lines as soon as two lines in turn are each a JSON value on its own
    (which no document holds), looked for among its first `LOOK_AHEAD` lines, and read
    whole otherwise. The input's first lines are read before this returns: an input that
    cannot be read, or holds no facts, is refused before the caller opens anything.

    From a pipe, a batch also ends where the next line has not come yet (`idle`), so that a
    writer that waits for a fact's answer before writing the next gets it. Its first line,
    if the next has not come, is taken as JSON Lines unless it opens a document (an array on
    one line is waited on): its answer names line 1, where the same lone line read whole,
    as a document, has no line.
    """
    source = _open_input(path)
    try:
        head: list[bytes] = []  # the bytes read so far, as read
        numbered: list[tuple[int, bytes]] = []  # the non-blank lines among them
        n = 0
        opens: bool | None = None  # whether the first line may open a document
        as_lines = False  # decided: JSON Lines, read on a batch at a time
        value_before = False  # the last non-blank line read is a JSON value on its own
        for raw in source:
            if not head:
                raw = without_bom(raw)
            head.append(raw)
            for line in raw.splitlines():  # as `read_facts` splits, on \r too
                n += 1
                if not line.strip():
                    continue
                numbered.append((n, line))
                if opens is None:
                    opens = _may_open_a_document(line)
                elif opens and not as_lines:
                    value_now = _is_a_value(line)
                    as_lines = value_before and value_now
                    value_before = value_now
            # An input whose first line does not open an object or an array (a string or a
            # number never spans lines) cannot be one JSON document, nor can one with two
            # lines in turn that are each a value (a document has a `,`, `:`, `]` or `}`
            # after a value, and no token spans lines): `read_facts` would read either as
            # JSON Lines, and so a bad first line does not make the whole input read.
            if as_lines or (len(numbered) >= 2 and not opens):
                break
            if len(numbered) == 1 and not _at_hand(source) and _stands_alone(numbered[0][1]):
                break  # a lone first line, the next not come: not read as a document
            if len(numbered) > LOOK_AHEAD:
                numbered = []  # read whole: the lines are not needed
                head.append(source.read())
                break
        else:
            numbered = []
        if not numbered or (opens and not as_lines):
            whole = read_facts(b"".join(head))
            _close(source)
            return _in_batches(whole, size)
    except BaseException:
        _close(source)
        raise
    return _lines_in_batches(source, numbered, n, size)


def _open_input(path: str) -> BinaryIO | PipeLines:
    """The input as a file, or, when it is a pipe, a FIFO or a terminal, as `PipeLines`."""
    if path == "-":
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError):  # stdin replaced by an object in process
            return sys.stdin.buffer
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return sys.stdin.buffer
        return PipeLines(fd, owned=False)  # stdin is the process's, not this reader's
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return open(fd, "rb")  # closed by fact_batches, or by the iterator it returns
    if stat.S_ISDIR(mode):  # opened, as a directory can be, but not read
        os.close(fd)
        raise CliError(f"cannot read {path}: {os.strerror(errno.EISDIR)}")
    return PipeLines(fd, owned=True)


def _close(source: BinaryIO | PipeLines) -> None:
    if source is not sys.stdin.buffer:  # stdin is the process's, not this reader's
        source.close()


def _at_hand(source: BinaryIO | PipeLines) -> bool:
    """Whether the input's next line (or its end) can be read without waiting: always, but
    for a pipe."""
    return source.ready() if isinstance(source, PipeLines) else True


def _stands_alone(line: bytes) -> bool:
    """Whether a first line is read as JSON Lines whatever follows it, but for its answer's
    `line`: it neither opens a document nor is an array (a document on one line)."""
    return line.lstrip()[:1] != b"[" and not _may_open_a_document(line)


def _is_a_value(line: bytes) -> bool:
    """Whether a line is a JSON value on its own. A line that ends in none of the bytes a
    value can end in (a document's `{...},` line) is not parsed to find out."""
    if line.rstrip()[-1:] not in VALUE_ENDS:
        return False
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _may_open_a_document(line: bytes) -> bool:
    """Whether an input's first line may begin a JSON document over several lines."""
    if line.lstrip()[:1] not in (b"{", b"["):  # as `read_facts` strips the input
        return False
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return True
    return False


def _in_batches(whole: InputFacts, size: int) -> Iterator[InputFacts]:
    for first in range(0, len(whole.items), size):
        lines = None if whole.lines is None else whole.lines[first : first + size]
        yield InputFacts(whole.items[first : first + size], lines, first)


def _lines_in_batches(
    source: BinaryIO | PipeLines, numbered: list[tuple[int, bytes]], n: int, size: int
) -> Iterator[InputFacts]:
    """JSON Lines, read on from `source` after the `numbered` lines already read (`n` lines
    in all, blank ones included)."""
    try:
        pending = deque(numbered)  # non-blank lines read, not yet in a batch
        raws = iter(source)
        items: list[bytes | FactRejected | Any] = []
        at: list[int] = []
        first = 0
        while True:
            if pending:
                number, line = pending.popleft()
                items.append(line)
                at.append(number)
                if len(items) == size:
                    yield InputFacts(items, at, first)
                    first += size
                    items, at = [], []
                continue
            if items and not _at_hand(source):  # the writer has not sent the next line
                yield InputFacts(items, at, first, idle=True)
                first += len(items)
                items, at = [], []
            raw = next(raws, None)
            if raw is None:
                break
            for line in raw.splitlines():
                n += 1
                if line.strip():
                    pending.append((n, line))
        if items:
            yield InputFacts(items, at, first)
    finally:
        _close(source)


def read_facts(data: bytes) -> InputFacts:
    """A JSON object, a JSON array of objects, or JSON Lines; bad lines become rejections,
    and so does a document's fact with an object that names a member twice (a refusal in
    its place: the decoded object has lost one of the two)."""
    data = without_bom(data)  # as some editors save
    stripped = data.strip()
    if not stripped:
        raise CliError("no facts in the input")
    # A whole JSON document first (an object, possibly pretty-printed, or an array of them);
    # anything else is read as JSON Lines, where a bad line is that line's own rejection.
    try:
        whole = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        whole = None
    if whole == []:
        # As an empty input: a file that should have held facts and holds none is said so,
        # not answered with nothing and exit 0.
        raise CliError("no facts in the input (an empty array)")
    if isinstance(whole, list | dict):
        try:
            exact = marked(stripped, whole)
        except TooDeep:
            raise CliError(f"the input nests deeper than {MAX_DEPTH} levels") from None
        facts: list[Any] = whole if isinstance(whole, list) else [whole]
        marks: list[Any] = [exact] if isinstance(whole, dict) else exact or []
        items = [
            named_twice() if exact is not None and repeats_a_name(marks[i]) else fact
            for i, fact in enumerate(facts)
        ]
        return InputFacts(items, None)
    numbered = [(n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    return InputFacts([line for _, line in numbered], [n for n, _ in numbered])


def subject_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "subject",
        metavar="SUBJECT",
        help="the publisher's reference (or a sid with --sid); '-' reads it from the first "
        "line of stdin, out of the process list and the shell's history",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--sid", action="store_true", help="SUBJECT is a sid, not a reference")


def whole(low: int, high: int, out_of_range: str = "") -> Callable[[str], int]:
    """An argument's whole number, bounded: a number past any sensible size is a usage
    error, not an OverflowError deep in SQLite or datetime (the HTTP routes' bounds)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(out_of_range or f"from {low} to {high}")
        return value

    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError("more than 0 and at most 3600 seconds")
    return value


def demo_subjects(text: str) -> int:
    from ledger.demo import MAX_SUBJECTS, MIN_SUBJECTS

    return whole(
        MIN_SUBJECTS,
        MAX_SUBJECTS,
        f"the demo's story needs at least {MIN_SUBJECTS}, and tells at most {MAX_SUBJECTS:,}",
    )(text)
