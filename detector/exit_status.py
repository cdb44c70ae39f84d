"""One exit-status contract for every `detector` command (the "Exit codes" table of docs/reliability.md):

  0    done
  1    done, with some inputs skipped; each one is named (on stderr, in the log or in a listing)
  2    a usage, config, input or checkpoint error, or a path that cannot be read or written:
       one line, `detector COMMAND: message`, and nothing is left half done
  3    an unexpected internal error (a bug): one line naming the exception and a file holding
       the whole traceback; never 1
  130  interrupted (Ctrl-C)

`run` applies it around a command's function. `train --nproc N` runs N copies of the command
under torchrun, which reports any failed process as 1: each process's `run` also writes its
status to a file in the folder `$DETECTOR_EXIT_STATUS_DIR` names, and `from_workers` turns
those files back into one status of this contract.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from detector.errors import DetectorError

DONE, SKIPPED, ERROR, INTERNAL_ERROR, INTERRUPTED = 0, 1, 2, 3, 130
WORKER_STATUS_DIR = "DETECTOR_EXIT_STATUS_DIR"  # set by `train --nproc` for the processes it launches


def run(command: str, function: Callable[[], int | None]) -> int:
    """`function()`'s status (None counts as 0), or the status of the exception it raised, told in one line on stderr."""
    try:
        status = function() or DONE
    except KeyboardInterrupt:
        print(f"detector {command}: interrupted", file=sys.stderr)
        status = INTERRUPTED
    except DetectorError as error:  # raised on purpose; the message names what is at fault
        print(f"detector {command}: {error}", file=sys.stderr)
        status = ERROR
    except OSError as error:  # a path that cannot be read or written: --out naming a file, a read-only folder
        print(f"detector {command}: {describe_os_error(error)}", file=sys.stderr)
        status = ERROR
    except Exception as error:  # noqa: BLE001 - anything else is a bug: say where its traceback is
        first = failed_worker()
        if first is None:
            print(f"detector {command}: {describe_internal_error(command, error)}", file=sys.stderr)
        else:  # most often the lost connection to that process: its own message and traceback say why
            print(f"detector {command}: stopped after process {first} failed ({type(error).__name__})", file=sys.stderr)
        status = INTERNAL_ERROR
    return report_to_launcher(status)


def describe_os_error(error: OSError) -> str:
    """'PATH: why' for an OSError about a path (Python's own message otherwise)."""
    if error.filename is None:
        return str(error)
    path = Path(os.fsdecode(error.filename))
    if isinstance(error, FileExistsError) and path.is_file():
        why = "is a file, not a folder"
    elif isinstance(error, NotADirectoryError):
        why = "a part of this path is a file, not a folder"
    else:
        why = (error.strerror or str(error)).lower()
    target = f" -> {os.fsdecode(error.filename2)}" if error.filename2 is not None else ""
    return f"{path}{target}: {why}"


def describe_internal_error(command: str, error: BaseException) -> str:
    """One line: the exception's type and first message line, and the file its traceback went to."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}{' ...' if len(lines) > 1 else ''}" if lines else type(error).__name__
    try:
        path = write_traceback(command, error)
    except OSError as unwritable:
        traceback.print_exception(error, file=sys.stderr)  # the traceback has nowhere else to go
        return f"internal error (a bug; please report it): {message}; its traceback is above ({unwritable})"
    return f"internal error (a bug; please report it): {message}; the traceback is in {path}"


def write_traceback(command: str, error: BaseException, folder: str | Path | None = None) -> Path:
    """A new file `detector-COMMAND-<time>-<random>-traceback.txt` in `folder` (default: the
    system's temporary folder) holding the command line, the versions and the full traceback."""
    import torch

    import detector

    stamp = time.strftime("%Y%m%d-%H%M%S")
    handle, name = tempfile.mkstemp(prefix=f"detector-{command}-{stamp}-", suffix="-traceback.txt", dir=folder)
    with os.fdopen(handle, "w") as file:
        file.write(f"command: {' '.join(sys.argv)}\n")
        file.write(f"detector {detector.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
                   f"{platform.platform()}\n\n")
        file.write("".join(traceback.format_exception(error)))
    return Path(name)


def failed_worker() -> str | None:
    """In a process of `train --nproc`, the rank of another process that has already reported a
    failure (this process's own error is then most often a consequence), else None."""
    folder, rank = os.environ.get(WORKER_STATUS_DIR), os.environ.get("RANK")
    if folder is None or rank is None:
        return None
    for path in sorted(Path(folder).glob("rank*")):
        other = path.name[len("rank"):]
        if other != rank and int(path.read_text().split()[0]) not in (DONE, SKIPPED):
            return other
    return None


def report_to_launcher(status: int) -> int:
    """In a process of `train --nproc`, write `status` where the launcher reads it, and return
    what this process should exit with: torchrun counts any status but 0 as a failure and stops
    the other processes, so "done with some inputs skipped" (1) leaves as 0 and travels in the file."""
    folder = os.environ.get(WORKER_STATUS_DIR)
    rank = os.environ.get("RANK")
    if folder is None or rank is None:
        return status
    try:
        (Path(folder) / f"rank{rank}").write_text(f"{status} {time.time()!r}\n")
    except OSError:  # the launcher then reports a process that ended without a status (3)
        return status
    return DONE if status == SKIPPED else status


def from_workers(launcher_status: int, folder: str | Path, processes: int) -> int:
    """The status of a `train --nproc` run from torchrun's status and the files its processes
    wrote: 0 or 1 when all succeeded (1 when any skipped inputs); otherwise the status of the
    process that failed first (later failures are most often the others losing it), and 3 when
    a process died without a word (killed, out of memory) or torchrun itself failed."""
    reports = []  # (time, rank, status)
    for path in Path(folder).glob("rank*"):
        status, when = path.read_text().split()
        reports.append((float(when), int(path.name[len("rank"):]), int(status)))
    failures = sorted(report for report in reports if report[2] not in (DONE, SKIPPED))
    if failures:
        _, rank, status = failures[0]
        others = f"; {len(failures) - 1} other(s) failed after it" if len(failures) > 1 else ""
        print(f"detector train: process {rank} of {processes} failed first, status {status} "
              f"(its message is above){others}", file=sys.stderr)
        return status if status in (ERROR, INTERNAL_ERROR, INTERRUPTED) else INTERNAL_ERROR
    if launcher_status != 0:
        silent = processes - len(reports)
        print(f"detector train: torchrun exited with status {launcher_status}; "
              + (f"{silent} of {processes} processes ended without reporting a status (killed? out of memory?); "
                 if silent else "")
              + "see torchrun's report above", file=sys.stderr)
        return INTERRUPTED if launcher_status in (130, -2) else INTERNAL_ERROR
    return max((status for _, _, status in reports), default=DONE)
