"""`python -m ven.cli ARGS` run to its end, as subprocess.run runs it, forked from the worker's zygote where that gives
what the exec would (tests/zygote.py): 0.07 s of CPU a check-config instead of 1.2 s for the interpreter and its
imports.

The child gets its stdin, stdout and stderr as fds passed over the zygote's socket (SCM_RIGHTS), so its output
reaches the test through pipes read here as subprocess.run reads them, its exit code is the interpreter's (sys.exit,
an uncaught exception, a signal), and a timeout kills it and raises TimeoutExpired. Elsewhere (GATEWAY_TESTS_FORK=0,
an import-time variable or a limit unlike the zygote's, a .env in cwd) it is subprocess.run itself."""
from __future__ import annotations

import asyncio
import io
import os
import select
import selectors
import subprocess
import sys
import time

import zygote

PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL


def run_cli(args, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run([sys.executable, "-m", "ven.cli", *args], ...) with run_module's arguments."""
    return run_module("ven.cli", args, timeout=timeout, **kwargs)


def run_module(module: str, args, *, timeout: float, env: dict | None = None, cwd=None, input=None, stdin=None,
               stdout=PIPE, stderr=PIPE, text: bool = True) -> subprocess.CompletedProcess:
    """subprocess.run([sys.executable, "-m", module, *args], ...) with these arguments' meanings; capture_output
    is the default (stdout and stderr PIPE), and text."""
    argv = [sys.executable, "-m", module, *map(str, args)]
    env = dict(os.environ) if env is None else dict(env)
    server = zygote.serving(env, cwd, any_thread=True)
    if server is None:
        return subprocess.run(argv, timeout=timeout, env=env, cwd=cwd, input=input, stdin=stdin, stdout=stdout,
                              stderr=stderr, text=text)
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        stdin = PIPE
    ours: dict[int, int] = {}       # the parent's end of each pipe: the child's fd -> ours
    theirs: list[int] = []          # fds to close once the zygote has them
    try:
        child_fds = []
        for target, how in enumerate((stdin, stdout, stderr)):
            if how == PIPE:
                r, w = os.pipe()
                ours[target], fd = (w, r) if target == 0 else (r, w)
                theirs.append(fd)
            elif how == DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                theirs.append(fd)
            elif how == STDOUT and target == 2:
                fd = child_fds[1]
            elif how is None:
                fd = target     # the worker's own, as an exec inherits it
            else:
                fd = how if isinstance(how, int) else how.fileno()
            child_fds.append(fd)
        proc = server.start(module, argv[3:], env, stdio=child_fds, cwd=cwd)
    except BaseException:
        for fd in ours.values():
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    try:
        out, err = _communicate(proc, ours, input, text, argv, timeout)
    except BaseException:   # the timeout, or the test interrupted: as subprocess.run, the child does not outlive it
        proc.kill()
        proc.wait()
        raise
    finally:
        for fd in ours.values():
            os.close(fd)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _communicate(proc, ours: dict[int, int], input, text: bool, argv, timeout: float):
    """Popen.communicate's loop: `input` written (stdin then closed), both outputs read to their end, the child's exit
    awaited. Closes the fds of `ours` it is done with, taking them out."""
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {1: [], 2: []}
    captured = [target in ours for target in (1, 2)]
    pending = memoryview(input.encode(_encoding()) if text and input is not None else input or b"")
    if 0 in ours and not pending:
        os.close(ours.pop(0))
    with selectors.DefaultSelector() as selector:
        for target, fd in ours.items():
            selector.register(fd, selectors.EVENT_WRITE if target == 0 else selectors.EVENT_READ, target)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise _expired(argv, timeout, chunks, captured)
            for key, _ in selector.select(left):
                if key.data == 0:
                    try:
                        pending = pending[os.write(key.fd, pending[:select.PIPE_BUF]):]
                    except BrokenPipeError:     # as communicate: a child that does not read its input is no error
                        pending = pending[len(pending):]
                    if not pending:
                        selector.unregister(key.fd)
                        os.close(ours.pop(0))
                else:
                    data = os.read(key.fd, 32768)
                    if data:
                        chunks[key.data].append(data)
                    else:
                        selector.unregister(key.fd)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise _expired(argv, timeout, chunks, captured) from None
    return tuple(_output(chunks[target], text) if captured[target - 1] else None for target in (1, 2))


def _encoding() -> str:
    # Popen's text mode: a TextIOWrapper of its default encoding (the locale's, or UTF-8 in UTF-8 mode)
    return io.TextIOWrapper(io.BytesIO()).encoding


def _output(chunks: list[bytes], text: bool):
    data = b"".join(chunks)
    # as Popen's text mode reads it: decoded, with universal newlines
    return io.TextIOWrapper(io.BytesIO(data)).read() if text else data


def _expired(argv, timeout, chunks, captured) -> subprocess.TimeoutExpired:
    # as communicate's: what was read so far, as bytes
    return subprocess.TimeoutExpired(argv, timeout, output=b"".join(chunks[1]) if captured[0] else None,
                                     stderr=b"".join(chunks[2]) if captured[1] else None)


async def run_cli_async(args, **kwargs) -> subprocess.CompletedProcess:
    """run_cli from a test's event loop, which keeps running (e.g. the peer the command talks to) meanwhile."""
    # the zygote started here, in the main thread, if need be: it ends with the thread that starts it
    zygote.serving(dict(os.environ) if kwargs.get("env") is None else kwargs["env"], kwargs.get("cwd"))
    return await asyncio.to_thread(run_cli, args, **kwargs)
