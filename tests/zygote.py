"""A fork server for gateway processes in tests: `python -m ven.cli run` without paying for its imports each time.

The suite starts over a hundred gateways through GatewayProcess, 2.1-2.3 s of CPU each on the 2-core VM to their
"ready", most of it importing bacpypes3, openleadr, aiohttp and numpy (a fork: 0.5-0.6 s). A zygote per test worker
imports those once and forks a child per start; the child takes the test's environment, cwd, umask, argv and log as
an exec would, then runs ven.cli as `-m` runs it. What a fork cannot give the same as an exec (an import-time
variable of another value, other limits, a prefix command) is left to the exec path (eligible()), and so is a start
from a thread other than the main one: PR_SET_PDEATHSIG fires when the thread that forked dies, and the zygote
outlives the test."""
from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_PDEATHSIG = 1
# Variables read while Python starts or a library loads (the allocator, the dynamic loader, libfaketime, BLAS
# thread pools, locale): a child forked from imports done under other values would not be what an exec gives
_IMPORT_TIME = ("PYTHON", "LD_", "FAKETIME", "OPENBLAS", "OMP_", "MKL_", "GOTO", "BLIS", "NUMEXPR", "VECLIB",
                "MALLOC", "GLIBC_", "LANG", "LC_", "OPENSSL", "SSL_CERT", "NO_FAKE")
# what `run` imports, at once or in its start (ven.app._import_slow_parts, bacnet_api.device's BAC0, which reads
# ./.env: eligible()); imported only: no event loop, no logging set up, no socket (the child's log is the exec's)
PRELOAD = ("ven.cli", "ven.app", "ven.forecast_service", "ven.history", "ven.http_api", "ven.logs",
           "ven.loop_watchdog", "ven.run_lock", "ven.systemd_notify", "ven.vtn", "ven.vtn_transport",
           "bacnet_api.client", "bacnet_api.meter_target", "bacnet_api.own_address", "forecaster.core", "BAC0")
_LIMITS = [getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")]
# the worker's environment before any test changed it: the zygote's, whichever test first starts a gateway
_ENV_AT_IMPORT = dict(os.environ)


def _import_time(env: dict) -> dict:
    found = {k: v for k, v in env.items() if k.startswith(_IMPORT_TIME)}
    found.setdefault("OPENBLAS_NUM_THREADS", "1")     # ven.cli.main's default, which the zygote takes too
    return found


def _limits() -> list:
    return [resource.getrlimit(n) for n in _LIMITS]


def _die_with_parent(sig: int, parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:      # the parent died before the prctl
        os.kill(os.getpid(), sig)


# --- the zygote process ---

def serve(fd: int, parent: int) -> None:
    # the worker gone, nothing here is worth a clean-up; each child then gets its own SIGTERM (_child)
    _die_with_parent(signal.SIGKILL, parent)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as ven.cli.main sets it before numpy loads
    for name in PRELOAD:
        importlib.import_module(name)
    # what each child's start did again: openleadr's templates compiled (0.16 s of CPU), and a full collection
    # through the imports' objects (freeze_startup_objects); frozen here, the child's walks only what it made
    importlib.import_module("ven.vtn_transport").warm_up()
    gc.collect()
    gc.freeze()
    # its imports only: -m runs ven.cli afresh as __main__, and warns (in the gateway's log) if it is imported
    del sys.modules["ven.cli"]
    del sys.modules["ven"].cli
    sock = socket.socket(fileno=fd)
    # a thread at fork time is missing from the child, and any lock it held stays held there (OpenBLAS's pool
    # would be one: OPENBLAS_NUM_THREADS=1 starts none); refused, the worker execs as before
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        sock.sendall(json.dumps({"refused": f"{threads} threads after the imports"}).encode() + b"\n")
        return
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sock.sendall(b'{"ready": true}\n')
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    buffer, passed = b"", []     # passed: fds sent with requests (run_cli's pipes), in the order they came
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            else:
                data, fds, flags, _ = socket.recv_fds(sock, 65536, 16, socket.MSG_CMSG_CLOEXEC)
                if flags & socket.MSG_CTRUNC:
                    raise RuntimeError("fds passed over the limit")
                if not data:    # the worker closed it or died: the children follow by their PDEATHSIG
                    return
                buffer += data
                passed += fds
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    req = json.loads(line)
                    stdio, passed = passed[:req.get("fds", 0)], passed[req.get("fds", 0):]
                    pid = os.fork()
                    if pid == 0:
                        _child(req, stdio, sock, (wake_r, wake_w, selector, *passed))
                    for fd in stdio:    # the child's now: held here, its pipes would never reach EOF
                        os.close(fd)
                    sock.sendall(json.dumps({"started": pid}).encode() + b"\n")
        # every start's exit status, as Popen's wait would take it
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.sendall(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _child(req: dict, stdio: list[int], sock: socket.socket, zygotes: tuple) -> None:
    """stdio: the child's stdin, stdout and stderr (run_cli's), else it appends both outputs to req["log"].
    zygotes: what the zygote holds open, closed here as an exec's close_fds would."""
    code = 127
    try:
        # as the exec path's preexec_fn: the gateway ends when its parent (the zygote, so the worker) does
        _die_with_parent(signal.SIGTERM, req["zygote"])
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in zygotes:
            if isinstance(fd, int):
                os.close(fd)
            else:
                fd.close()
        if not stdio:
            log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            stdio = [os.open(os.devnull, os.O_RDONLY), log, os.dup(log)]
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio):
            os.close(fd)
        # as the interpreter sets them up at its start: a terminal's stdout is line-buffered, any other's is not
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        if "numpy.random" in sys.modules:   # its global generator, seeded at import: every child's the same
            sys.modules["numpy.random"].seed()
        os.chdir(req["cwd"])
        os.umask(req["umask"])
        os.environ.clear()
        os.environ.update(req["env"])
        time.tzset()
        sys.path[0] = os.getcwd()    # what -m puts first
        sys.argv = ["-m", *req["args"]]
        code = _run_as_main(req["module"])
    except BaseException:  # noqa: BLE001 - into the log, if it was reached
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def _run_as_main(module: str) -> int:
    """`python -m module`, to the exit code the interpreter would give."""
    import runpy

    interrupted = False
    try:
        runpy._run_module_as_main(module)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if not isinstance(exit.code, (int, type(None))):
            print(exit.code, file=sys.stderr)
    except BaseException as error:  # noqa: BLE001 - said as the interpreter says it, from runpy's frame on
        error.__traceback__ = error.__traceback__.tb_next
        sys.excepthook(type(error), error, error.__traceback__)
        code = 1
        # the interpreter's end for it: the traceback, then SIGINT's default
        interrupted = isinstance(error, KeyboardInterrupt)
    # the interpreter's exit: non-daemon threads joined, then atexit (logging's flush), then the streams
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout:    # e.g. a reader gone: "Exception ignored ... BrokenPipeError", exit 120
                sys.unraisablehook(_Unraisable(sys.exc_info()))
                code = code or 120
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code & 0xFF


class _Unraisable:
    def __init__(self, info):
        self.exc_type, self.exc_value, self.exc_traceback = info
        self.err_msg, self.object = "Exception ignored in", sys.stdout


# --- the test worker's side ---

class ForkedProcess:
    """The part of subprocess.Popen the tests use, for a child of the zygote (which reaps it and reports)."""

    def __init__(self, zygote: "Zygote", pid: int):
        self._zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._zygote.pump(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(["ven.cli"], timeout)
            self._zygote.pump(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:     # as Popen: never a signal to a pid already reaped (and maybe reused)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self):
        ours, theirs = socket.socketpair()
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import sys; sys.path.insert(0, {here!r}); import zygote; del sys.path[0]; "
                f"zygote.serve({theirs.fileno()}, {os.getpid()})")
        # BAC0's import makes ~/.BAC0 (its log files', which the gateway drops unopened, bacnet_api.device): in a home
        # of the zygote's own, not the developer's. A forked gateway's test HOME lacks that empty directory
        self.home = tempfile.mkdtemp(prefix="zygote-home-")
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),),
                                     env=dict(_ENV_AT_IMPORT, HOME=self.home),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        self.sock, self.buffer, self.lock = ours, b"", threading.RLock()
        self.children: dict[int, ForkedProcess] = {}
        self.limits = _limits()
        self.env = _import_time(_ENV_AT_IMPORT)
        self.ready = self._message(60.0).get("ready", False)
        atexit.register(self.close)

    def close(self) -> None:
        """At the worker's end: the zygote sees the socket close and leaves, reaped here so that its CPU time (and
        its children's) counts in the run's, as the exec'd gateways' did."""
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.home, ignore_errors=True)

    def _message(self, timeout: float | None) -> dict:
        """The next message, {} if none came within `timeout`; the zygote gone, every child is said killed."""
        while b"\n" not in self.buffer:
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return {}
            if not data:
                self.ready = False
                for child in self.children.values():
                    if child.returncode is None:
                        child.returncode = -signal.SIGKILL
                return {}
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def pump(self, timeout: float | None) -> None:
        """Take the zygote's reports, waiting up to `timeout` for the first."""
        with self.lock:
            while True:
                msg = self._message(timeout)
                if "exited" in msg and msg["exited"] in self.children:
                    self.children.pop(msg["exited"]).returncode = msg["code"]
                if not msg or not self.ready:
                    return
                timeout = 0

    def start(self, module: str, args: list[str], env: dict, *, log_path=None, stdio=(), cwd=None) -> ForkedProcess:
        """Both outputs appended to log_path, or stdio: the child's fds 0, 1 and 2, sent to the zygote with the
        request and closed there once the child has them (the caller closes its own)."""
        req = {"module": module, "args": args, "env": env, "cwd": os.path.abspath(cwd or os.getcwd()),
               "umask": _umask(), "zygote": self.proc.pid}
        req.update({"fds": len(stdio)} if stdio else {"log": str(log_path)})
        with self.lock:
            socket.send_fds(self.sock, [json.dumps(req).encode() + b"\n"], list(stdio))
            while True:
                msg = self._message(30.0)
                if "started" in msg:
                    child = self.children[msg["started"]] = ForkedProcess(self, msg["started"])
                    return child
                if "exited" in msg and msg["exited"] in self.children:
                    self.children.pop(msg["exited"]).returncode = msg["code"]
                if not msg:
                    raise RuntimeError("the zygote did not answer")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_zygote: Zygote | None = None
_refused = False    # once: a zygote that could not serve is not started again for every gateway


def eligible(env: dict, cwd=None, *, any_thread=False) -> bool:
    """Whether a fork from the zygote would be what an exec of `env` (in `cwd`) gives. any_thread: a start whose exec
    would have no PR_SET_PDEATHSIG (run_cli's), from another thread once the main thread has started the zygote
    (which ends with the thread that started it)."""
    here = threading.current_thread() is threading.main_thread() or (
        any_thread and _zygote is not None and _zygote.ready)
    return (os.environ.get("GATEWAY_TESTS_FORK", "1") != "0"
            and not os.path.exists(os.path.join(cwd or "", ".env"))     # BAC0's import loads it into the environment
            and here
            and _import_time(env) == _import_time(_ENV_AT_IMPORT)
            and _limits() == (_zygote.limits if _zygote else _limits()))


def serving(env: dict, cwd=None, *, any_thread=False) -> Zygote | None:
    """This worker's zygote, started if need be, where a fork from it is what an exec would give; else None."""
    global _zygote, _refused
    if _refused or not eligible(env, cwd, any_thread=any_thread):
        return None
    if _zygote is None or not _zygote.ready:
        _zygote = Zygote()
        _refused = not _zygote.ready
        if _refused:
            return None
    return _zygote


def start(args: list[str], env: dict, log_path) -> ForkedProcess | None:
    """`python -m ven.cli *args` forked from this worker's zygote, or None where an exec must do it."""
    zygote = serving(env)
    return zygote.start("ven.cli", args, env, log_path=log_path) if zygote else None
