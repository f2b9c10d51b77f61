"""SIGTERM stops the gateway at any moment, start-up included (a lost cancellation kept it running
until SIGKILL: systemd's stop timeout on every restart)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from gateway_process import GatewayProcess, write_config

pytestmark = pytest.mark.timeout(120)


def test_sigterm_during_start_up_stops_the_gateway(tmp_path, free_udp_port, free_tcp_port):
    # The moment that lost it moves with the machine: sweep the start-up.
    for i, delay in enumerate((0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8)):
        config = tmp_path / f"gw{i}.toml"
        write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(),
                     storage=tmp_path / f"gw{i}.sqlite", ven_name="signals")
        gateway = GatewayProcess(config, tmp_path / f"gw{i}.log")
        gateway.start()
        try:
            time.sleep(delay)
            gateway.proc.send_signal(signal.SIGTERM)
            try:
                gateway.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 10 s after SIGTERM at +{delay} s:\n{gateway.log()[-2000:]}")
        finally:
            if gateway.alive:
                gateway.kill()
        assert "Traceback" not in gateway.log(), gateway.log()


def test_a_second_signal_ends_a_task_that_swallowed_the_first():
    script = textwrap.dedent("""
        import asyncio, os, signal
        from ven.cli import serve_until_signalled

        async def stubborn():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # as asyncio.wait_for on 3.11 can
            await asyncio.sleep(60)

        async def main():
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
            loop.call_later(0.6, os.kill, os.getpid(), signal.SIGTERM)
            await serve_until_signalled(stubborn())
            print("stopped")

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out
