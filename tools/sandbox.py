"""Run untrusted, model-written Python in a sandbox: bubblewrap + rlimits + a wall-clock timeout.

`Sandbox(config).run(code) -> SandboxResult` runs `code` with Debian's system Python (`/usr/bin/python3`; the
project's own interpreter may live where uid nobody cannot read it) inside `bwrap`:

- every namespace unshared (`--unshare-all`: no network at all, only a down loopback; own pid, ipc, uts, user
  and cgroup namespaces) and no nested user namespaces (`--disable-userns`);
- a root that holds only `/usr` (read-only bind), the `/lib` `/lib64` `/bin` `/sbin` links (or read-only binds
  on hosts without a merged /usr), a fresh `/proc`, a minimal `/dev`, and two size-capped tmpfs: `/work` (the
  working directory, where the code is written as `main.py`) and `/tmp`. The home directory, `/etc`, the project
  and every other host path are absent;
- uid/gid nobody (65534) inside, and on the host too when the caller is root (bwrap is started as nobody, so
  no host-root credentials are ever mapped into the sandbox); an empty environment; `--new-session` (no
  terminal injection); `--die-with-parent`;
- rlimits set by a small bootstrap before the code runs, soft = hard so the code cannot raise them: CPU seconds
  (SIGXCPU, then SIGKILL one second later), address space (allocations beyond it raise MemoryError), file size,
  and processes (fork bombs get EAGAIN; counted per sandbox, as each has its own user namespace);
- a wall-clock timeout that SIGKILLs bwrap's process group; `--die-with-parent` and the pid namespace take every
  process of the sandbox down with it.

The code arrives on stdin (the bootstrap writes it to /work/main.py and runs it as `__main__` with stdin
redirected to /dev/null). stdout and stderr are captured together, in order, and cut to `max_output_bytes`
(the rest is drained and counted, never held in memory).

Without bwrap there is only a fallback: the same bootstrap and rlimits in a plain subprocess (as nobody when
root), in a temporary directory. It is NOT a sandbox (it sees the network and the file system), so it is refused
unless `allow_unsandboxed=True`, and it warns loudly when used. `make_python_tool(sandbox)` returns the typed tool
function `python(code: str) -> str` for a ToolSet.
"""
from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Optional

BWRAP = "/usr/bin/bwrap"
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
MARKER = "agentrl-sandbox"  # in every sandboxed command line (with a per-run id), so stray processes can be found

# Runs inside the sandbox as `python3 -s -c BOOTSTRAP MARKER-ID cpu_s mem_bytes fsize_bytes nproc` (not -I: that
# would ignore PYTHONHASHSEED, and a fixed hash seed makes runs, hence env replays, deterministic).
BOOTSTRAP = r"""
import os, resource, sys, traceback
cpu, mem, fsize, nproc = (int(a) for a in sys.argv[2:6])
for lim, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                        (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NPROC, nproc, nproc),
                        (resource.RLIMIT_CORE, 0, 0)):
    resource.setrlimit(lim, (soft, hard))
src = sys.stdin.buffer.read()
with open("main.py", "wb") as f:
    f.write(src)
fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
sys.argv = ["main.py"]
g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
del os, resource, fd, f, lim, soft, hard
try:
    exec(compile(src, "main.py", "exec"), g)
except SystemExit:
    raise
except BaseException:
    etype, e, tb = sys.exc_info()
    traceback.print_exception(etype, e, tb.tb_next)
    sys.stderr.flush()
    sys.exit(1)
"""


class SandboxError(RuntimeError):
    """The sandbox cannot run code as configured (bwrap missing and the unsandboxed fallback refused, ...)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one run. Memory is the address-space limit (virtual memory; Python itself needs ~30 MB)."""

    timeout_s: float = 5.0  # wall clock, the whole run (launch included)
    cpu_s: int = 5  # RLIMIT_CPU of each process
    memory_mb: int = 512  # RLIMIT_AS of each process
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file the code may write
    max_processes: int = 32  # RLIMIT_NPROC inside the sandbox (threads count too)
    tmpfs_mb: int = 64  # size of each tmpfs (/work and /tmp)
    max_output_bytes: int = 8192  # stdout + stderr kept; the rest is counted and dropped
    allow_unsandboxed: bool = False  # without bwrap: refuse (False) or run the rlimit-only fallback (True)
    hash_seed: int = 0  # PYTHONHASHSEED: set/dict-of-str order is the same on every run
    bwrap: str = BWRAP
    python: str = SYSTEM_PYTHON

    def __post_init__(self):
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "tmpfs_mb",
                     "max_output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What one run did. `exit_code` is None when the run was killed by the wall-clock timeout or never
    started; `killed_reason` is "timeout", "cpu_time", "signal SIGxxx", or "launch failed: ..."."""

    output: str  # stdout and stderr interleaved, cut to max_output_bytes
    exit_code: Optional[int]
    timed_out: bool
    killed_reason: Optional[str]
    truncated: bool
    output_bytes: int  # everything the code wrote, including what was dropped
    duration_s: float
    sandboxed: bool  # False for the rlimit-only fallback
    run_id: str  # appears in the command line of every process of the run (MARKER-<run_id>)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.killed_reason is None

    def describe(self, limits: Optional[SandboxConfig] = None) -> str:
        """Agent-facing text: the output, then a bracketed line for truncation, a non-zero exit or a kill."""
        text = self.output if self.output else "(no output)"
        if self.truncated:
            text += f"\n[output truncated: only the first {len(self.output)} characters are shown]"
        if self.timed_out:
            limit = f" of {limits.timeout_s:g} s" if limits else ""
            text += f"\n[killed: wall-clock time limit{limit} exceeded]"
        elif self.killed_reason == "cpu_time":
            limit = f" of {limits.cpu_s} s" if limits else ""
            text += f"\n[killed: CPU time limit{limit} exceeded]"
        elif self.killed_reason and self.killed_reason.startswith("launch failed"):
            text += f"\n[sandbox error: {self.killed_reason}]"
        elif self.killed_reason:
            text += f"\n[killed: {self.killed_reason}]"
        elif self.exit_code:
            text += f"\n[exit code {self.exit_code}]"
        return text


def bwrap_available(path: str = BWRAP) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


_warned_unsandboxed = False
_PROBED: dict[tuple, str] = {}  # (bwrap, python, sandboxed) -> "" (works) or why not; probed once per process


def _warn_unsandboxed() -> None:
    global _warned_unsandboxed
    if not _warned_unsandboxed:
        _warned_unsandboxed = True
        warnings.warn("agentrl sandbox: bwrap not found; running model-written code WITHOUT a sandbox (rlimits "
                      "only: it can read your files and use the network). Install bubblewrap "
                      "(apt-get install bubblewrap) for untrusted code.", RuntimeWarning, stacklevel=3)


class Sandbox:
    """Runs Python code under `config`'s limits; thread-safe (each run is its own process tree)."""

    def __init__(self, config: Optional[SandboxConfig] = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        self.sandboxed = bwrap_available(self.config.bwrap)

    # ------------------------------------------------------------------ availability
    def check(self) -> None:
        """Raise SandboxError unless code can run: bwrap present and working, or the fallback explicitly allowed.
        Probes once with `print(1)` (a few ms) and caches the verdict."""
        if not self.sandboxed and not self.config.allow_unsandboxed:
            raise SandboxError(f"{self.config.bwrap} not found: cannot sandbox untrusted code. Install bubblewrap "
                               "(apt-get install bubblewrap), or pass allow_unsandboxed=True to run code without a "
                               "sandbox (rlimits only; trusted code only).")
        key = (self.config.bwrap, self.config.python, self.sandboxed)
        if key not in _PROBED:
            r = self.run("print(1)")
            _PROBED[key] = "" if r.ok and r.output.strip() == "1" else (
                f"the {'sandbox' if self.sandboxed else 'fallback'} cannot run code: {r.describe(self.config)[:500]}")
        if _PROBED[key]:
            raise SandboxError(_PROBED[key])

    # ------------------------------------------------------------------ commands
    def _limits_args(self, run_id: str) -> list[str]:
        c = self.config
        return ["-s", "-c", BOOTSTRAP, f"{MARKER}-{run_id}", str(int(c.cpu_s)), str(int(c.memory_mb) << 20),
                str(int(c.file_size_mb) << 20), str(int(c.max_processes))]

    def bwrap_command(self, run_id: str) -> list[str]:
        c = self.config
        cmd = [c.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--ro-bind", "/usr", "/usr"]
        for top in ("/lib", "/lib64", "/bin", "/sbin"):
            if os.path.islink(top):
                cmd += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                cmd += ["--ro-bind", top, top]
        size = str(int(c.tmpfs_mb) << 20)
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size,
                "--tmpfs", "/work", "--chdir", "/work", "--uid", str(NOBODY), "--gid", str(NOBODY),
                "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME",
                "/work", "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                "--setenv", "PYTHONHASHSEED", str(c.hash_seed), "--"]
        return cmd + [c.python, *self._limits_args(run_id)]

    def _fallback_command(self, run_id: str) -> list[str]:
        python = self.config.python if os.path.exists(self.config.python) else _host_python()
        return [python, *self._limits_args(run_id)]

    # ------------------------------------------------------------------ running
    def run(self, code: str) -> SandboxResult:
        """Run `code`; never raises for anything the code does (a launch failure is a result too)."""
        if not self.sandboxed and not self.config.allow_unsandboxed:
            self.check()  # raises SandboxError with the explanation
        run_id = secrets.token_hex(6)
        workdir = None
        if self.sandboxed:
            cmd, cwd = self.bwrap_command(run_id), "/"
        else:
            _warn_unsandboxed()
            workdir = tempfile.mkdtemp(prefix="agentrl-unsandboxed-")
            cmd, cwd = self._fallback_command(run_id), workdir
        drop = os.geteuid() == 0
        if drop and workdir:
            os.chown(workdir, NOBODY, NOBODY)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    cwd=cwd, start_new_session=True, close_fds=True,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd,
                                         "PYTHONHASHSEED": str(self.config.hash_seed)},
                                    **({"user": NOBODY, "group": NOBODY, "extra_groups": []} if drop else {}))
        except OSError as e:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            return SandboxResult("", None, False, f"launch failed: {e}", False, 0, time.monotonic() - start,
                                 self.sandboxed, run_id)
        try:
            return self._collect(proc, code, start, run_id)
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def _collect(self, proc: subprocess.Popen, code: str, start: float, run_id: str) -> SandboxResult:
        c = self.config
        threading.Thread(target=_feed, args=(proc.stdin, code.encode("utf-8", "replace")), daemon=True).start()
        deadline = start + c.timeout_s
        kept, total, timed_out = bytearray(), 0, False
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                _kill_group(proc)
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if len(kept) <= c.max_output_bytes:
                kept += chunk[: c.max_output_bytes + 1 - len(kept)]
        if timed_out:  # whatever is still buffered, briefly (the whole process tree is dead or dying)
            total += _drain(fd, kept, c.max_output_bytes, 1.0)
        try:
            code_ = proc.wait(timeout=max(0.1, deadline - time.monotonic()) if not timed_out else 2.0)
        except subprocess.TimeoutExpired:  # output closed but the process lingers: kill it
            timed_out = True
            _kill_group(proc)
            code_ = proc.wait()
        proc.stdout.close()
        duration = time.monotonic() - start
        truncated = total > c.max_output_bytes
        text = bytes(kept[: c.max_output_bytes]).decode("utf-8", "replace")
        exit_code, reason = self._interpret(code_, timed_out, text)
        return SandboxResult(text, exit_code, timed_out, reason, truncated, total, duration, self.sandboxed, run_id)

    def _interpret(self, returncode: int, timed_out: bool, text: str) -> tuple[Optional[int], Optional[str]]:
        if timed_out:
            return None, "timeout"
        # bwrap reports a child killed by signal N as exit status 128 + N; a plain subprocess as -N
        sig = -returncode if returncode < 0 else (returncode - 128 if self.sandboxed and returncode > 128 else 0)
        if sig == signal.SIGXCPU:
            return returncode, "cpu_time"
        if sig:
            return returncode, f"signal {_signal_name(sig)}"
        if self.sandboxed and returncode == 1 and text.startswith("bwrap:"):
            return returncode, f"launch failed: {text.strip()[:300]}"
        return returncode, None


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError):
        pass  # the process died before reading its code: the result says why
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def _drain(fd: int, kept: bytearray, limit: int, timeout_s: float) -> int:
    total, end = 0, time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        total += len(chunk)
        if len(kept) <= limit:
            kept += chunk[: limit + 1 - len(kept)]
    return total


def _host_python() -> str:
    import sys

    return sys.executable


def make_python_tool(sandbox: Sandbox) -> Callable[[str], str]:
    """The `python(code)` tool bound to `sandbox`: its result text is the output plus a status line."""

    def python(code: str) -> str:
        """Run Python code in a sandbox (no network, no files outside the work dir) and return what it prints.

        Args:
            code: a complete Python program; use print() to see values.
        """
        if not isinstance(code, str) or not code.strip():
            raise ValueError("empty code: put a Python program between the tags")
        return sandbox.run(code).describe(sandbox.config)

    return python
