"""Build progress a user can see, even under pip.

pip captures everything a PEP 517/660 backend writes to stdout and stderr and shows it only with
`pip install -v` or when the build fails (pypa/pip#6634), so a long CUDA build looks like
`Building editable for pipo-kernels (pyproject.toml): still running...` for minutes. `say()`
therefore writes each progress line to stdout (pip's log, `-v`, CI) *and* to the controlling
terminal (/dev/tty) when stdout is not a terminal itself. `PIPO_BUILD_TTY=0` turns the terminal
copy off.

Run as a program it wraps ninja (setup.py puts a `ninja` shim that calls it first on the PATH
while the extension builds): torch's BuildExtension runs `ninja -v`, whose every status line is a
multi-kilobyte compiler command; the wrapper prints one line per finished object instead
(`[3/12] nvcc csrc/cuda/attention.cu (sm_80, sm_90a)  2:41`), an estimate before the first one,
a heartbeat while a slow file compiles, and passes compiler messages (warnings, errors) through
to stdout unchanged. The full commands go to `ninja.log` in the build folder.

    python scripts/build_progress.py ninja-wrap /usr/bin/ninja -v -j 2
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFIX = "[pipo-kernels build]"
ROOT = Path(__file__).resolve().parent.parent

# CPU seconds per object on the 2-core development machine (AMD EPYC, nvcc 13.0, g++ 12, -O3, no
# debug info): the CMake build of these sources took 421 s of CPU in all, 125 s of it for the C++
# objects, so a CUDA file costs ~28 s per architecture and a C++ file ~20 s (docs/build.md).
SEC_PER_CUDA_ARCH = 28.0
SEC_PER_CXX = 20.0

_tty = None
_tty_checked = False
# whether this build has written to the terminal yet (shared with the ninja wrapper's process)
_STARTED = "_PIPO_BUILD_TTY_STARTED"
_lock = threading.Lock()


def _terminal():
    """The controlling terminal when stdout is not one (under pip), else None."""
    global _tty, _tty_checked
    if not _tty_checked:
        _tty_checked = True
        if os.environ.get("PIPO_BUILD_TTY", "1") != "0" and not sys.stdout.isatty():
            try:
                _tty = open("/dev/tty", "w")  # noqa: SIM115 (kept open for the whole build)
            except OSError:  # no controlling terminal (CI, cron, nohup)
                _tty = None
    return _tty


def say(msg: str) -> None:
    """One progress line, to stdout and to the user's terminal."""
    line = f"{PREFIX} {msg}"
    with _lock:
        print(line, flush=True)
        tty = _terminal()
        if tty is not None:
            try:
                # pip's spinner line has no newline yet: end it once, and later overwrite the
                # one spinner character it leaves at the start of a line
                tty.write(("\r" if os.environ.get(_STARTED) else "\n") + line + "\n")
                os.environ[_STARTED] = "1"
                tty.flush()
            except OSError:
                pass


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


_EDGE = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")
_ARCH = re.compile(r"(?:code|arch)=((?:sm|compute)_\d+[af]?)")


def describe(command: str) -> tuple[str, str, list[str]]:
    """(compiler, source relative to the checkout, architectures) of one compile command."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    compiler = os.path.basename(words[0]) if words else "?"
    # the compiled file: the word after the last -c (torch's flags may already hold a -c)
    source = "?"
    for i, w in enumerate(words[:-1]):
        if w == "-c" and not words[i + 1].startswith("-"):
            source = words[i + 1]
    source = _rel(Path(source))
    archs = sorted({m for m in _ARCH.findall(command) if m.startswith("sm_")})
    if not archs:  # an arch only embedded as PTX
        archs = sorted(set(_ARCH.findall(command)))
    return compiler, source, archs


def estimate_seconds(n_cuda: int, n_archs: int, n_cxx: int, jobs: int) -> float:
    """Wall time of compiling these objects with `jobs` parallel compilers."""
    cores = os.cpu_count() or 1
    work = n_cuda * max(n_archs, 1) * SEC_PER_CUDA_ARCH + n_cxx * SEC_PER_CXX
    return work / max(1, min(jobs, cores, n_cuda + n_cxx))


def _jobs(args: list[str]) -> int:
    if "-j" in args:
        try:
            return int(args[args.index("-j") + 1])
        except (IndexError, ValueError):
            pass
    return (os.cpu_count() or 1) + 2  # ninja's default


totals = [0]  # objects to compile in this build, from the dry run


def _plan(ninja: str, args: list[str]) -> None:
    """Says, before compiling, what will be compiled and about how long it takes."""
    dry = subprocess.run(
        [ninja, "-n", *[a for a in args if a != "-v"], "-v"], capture_output=True, text=True
    )
    edges = [m.group(3) for ln in dry.stdout.splitlines() if (m := _EDGE.match(ln))]
    if dry.returncode != 0:
        return
    if not edges:
        say(f"nothing to compile: every object in {_rel(Path.cwd())} is up to date")
        return
    described = [describe(e) for e in edges]
    cuda = [d for d in described if d[0] == "nvcc"]
    n_cxx = len(edges) - len(cuda)
    archs = sorted({arch for _, _, arch_list in cuda for arch in arch_list})
    what = f"{len(cuda)} CUDA ({', '.join(archs)}) + {n_cxx} C++" if cuda else f"{n_cxx} C++"
    jobs = _jobs(args)
    est = estimate_seconds(len(cuda), len(archs), n_cxx, jobs)
    totals[0] = len(edges)
    say(
        f"compiling {len(edges)} files: {what}; {jobs} jobs on {os.cpu_count()} cores, about "
        f"{max(1, round(est / 60))} min if they are idle (objects are kept in "
        f"{_rel(Path.cwd())}: a rebuild compiles only what changed)"
    )


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def wrap_ninja(ninja: str, args: list[str]) -> int:
    if "-v" not in args or any(a in args for a in ("-t", "-n", "--version")):
        return subprocess.call([ninja, *args])
    _plan(ninja, args)
    start = time.monotonic()
    last = [start, 0, totals[0]]  # time of the last finished object, finished count, total
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(15):
            now = time.monotonic()
            if now - last[0] >= 60:
                say(f"still compiling ({last[1]} of {last[2]} done, {_clock(now - start)})")
                last[0] = now

    threading.Thread(target=heartbeat, daemon=True).start()
    log = open("ninja.log", "a")  # noqa: SIM115 (appended line by line while ninja runs)
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} ninja {' '.join(args)}\n")
    proc = subprocess.Popen(
        [ninja, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        m = _EDGE.match(line.rstrip("\n"))
        if m:
            compiler, source, archs = describe(m.group(3))
            last[:] = [time.monotonic(), int(m.group(1)), int(m.group(2))]
            target = f" ({', '.join(archs)})" if archs else ""
            say(
                f"[{m.group(1)}/{m.group(2)}] {compiler} {source}{target}  {_clock(last[0] - start)}"
            )
        elif line.startswith("FAILED: "):
            target = re.sub(r"^\[code=\d+\]\s*", "", line[8:].strip())  # ninja >= 1.12 adds it
            say(f"FAILED: {target} (the compiler's output follows; commands in ninja.log)")
            sys.stdout.write(line)
        else:  # compiler messages: pip shows them with -v and on failure
            sys.stdout.write(line)
    rc = proc.wait()
    done.set()
    log.close()
    sys.stdout.flush()
    if rc == 0 and totals[0]:
        say(f"compiled in {_clock(time.monotonic() - start)}")
    return rc


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "ninja-wrap":
        raise SystemExit(__doc__)
    sys.exit(wrap_ninja(sys.argv[2], sys.argv[3:]))
