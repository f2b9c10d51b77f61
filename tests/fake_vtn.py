"""A misbehaving OpenADR VTN for fault tests: an aiohttp server on loopback whose answers are chosen by
`mode`, switchable while it runs.

    fake = FakeVtn(port, upstream=real_vtn.url)    # upstream: where "proxy" mode forwards
    await fake.start()
    fake.mode = "malformed_xml"                    # every request now gets broken XML
    ...
    fake.mode = "proxy"                            # behave: forward to the real VTN
    fake.attempts("malformed_xml")                 # how many requests arrived in that mode

Modes:
  proxy          forward the request to `upstream` and relay its status, body and content type
  malformed_xml  200 application/xml, XML that does not parse
  html           200 text/html, an HTML error page (a captive proxy or load balancer answering)
  json           200 application/json
  huge           200 application/xml, `huge_bytes` (default 20 MB) of well-formed but non-OpenADR XML
  gzip_bomb      200 application/xml with Content-Encoding gzip: 0.5 MB that inflate to 512 MB of blanks
  http500        500 with a short text body
  slow           answers (broken XML) only after `slow_seconds`, beyond the VEN's read timeout
  empty          200 application/xml with no body at all
  empty_proxy    as proxy, the VTN's answer replaced by an empty 200 (it took the message, its answer lost or never
                 written); only for the services in `empty_services` when that is set
  slow_proxy     as proxy, the answer after `slow_seconds` (a VTN that stores an update before it answers); only
                 for the services in `slow_services` when that is set
  trickle        starts a 200 answer at once, then sends one byte a second and never finishes
"""
from __future__ import annotations

import asyncio
import functools
import struct
import time
import zlib

import aiohttp
from aiohttp import web

MODES = ("proxy", "malformed_xml", "html", "json", "huge", "gzip_bomb", "http500", "slow", "trickle", "slow_proxy",
         "empty", "empty_proxy")

_MALFORMED = (b'<?xml version="1.0" encoding="utf-8"?>\n'
              b'<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07"><oadr:oadrSignedObject>'
              b'<oadr:oadrResponse><unclosed>')
_HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
_JSON = b'{"error": "not an OpenADR endpoint"}'


class FakeVtn:
    def __init__(self, port: int, host: str = "127.0.0.1", mode: str = "malformed_xml",
                 upstream: str | None = None, slow_seconds: float = 12.0, huge_bytes: int = 20 * 2**20):
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}/OpenADR2/Simple/2.0b"
        self.upstream = upstream.rstrip("/") if upstream else None
        self.slow_seconds = slow_seconds
        self.slow_services: tuple[str, ...] = ()
        self.empty_services: tuple[str, ...] = ()
        self._huge = self._huge_body(huge_bytes)
        self.requests: list[tuple[float, str, str]] = []     # (monotonic time, service, mode)
        self._mode = ""
        self.mode = mode
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {MODES}")
        if value in ("proxy", "slow_proxy", "empty_proxy") and not self.upstream:
            raise ValueError("proxy mode needs an upstream VTN url")
        self._mode = value

    def attempts(self, mode: str | None = None, service: str | None = None) -> int:
        return sum(1 for _, s, m in self.requests
                   if (mode is None or m == mode) and (service is None or s == service))

    @staticmethod
    def _huge_body(size: int) -> bytes:
        head = b'<?xml version="1.0" encoding="utf-8"?>\n<blob>'
        tail = b"</blob>"
        return head + b"x" * max(0, size - len(head) - len(tail)) + tail

    @staticmethod
    @functools.cache
    def _gzip_bomb() -> bytes:
        # Deflating 512 MB took 1.5 s of CPU on the test's loop, 20 s under CI's load, past the test's wait for the
        # refusal. After a sync flush with the window all blanks, each 1 MB of blanks deflates to the same bytes:
        # deflate two, repeat the second, and write the gzip trailer (CRC and length of all 512 MB) by hand.
        head = b'<?xml version="1.0" encoding="utf-8"?>'
        blanks = b" " * 2**20
        gzip = zlib.compressobj(9, zlib.DEFLATED, 31)
        first = gzip.compress(head) + gzip.compress(blanks) + gzip.flush(zlib.Z_SYNC_FLUSH)
        again = gzip.compress(blanks) + gzip.flush(zlib.Z_SYNC_FLUSH)
        crc = zlib.crc32(head)
        for _ in range(512):
            crc = zlib.crc32(blanks, crc)
        last_block = gzip.flush()[:-8]
        trailer = struct.pack("<II", crc, (len(head) + 512 * len(blanks)) & 0xFFFFFFFF)
        return first + again * 511 + last_block + trailer

    async def start(self) -> None:
        app = web.Application(client_max_size=2**20)
        app.router.add_post("/OpenADR2/Simple/2.0b/{service}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=0.5)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "FakeVtn":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        body = await request.read()
        mode = self._mode
        self.requests.append((time.monotonic(), service, mode))
        if mode == "slow_proxy" and (not self.slow_services or service in self.slow_services):
            await asyncio.sleep(self.slow_seconds)
        if mode == "empty_proxy" and self.empty_services and service not in self.empty_services:
            mode = "proxy"
        if mode in ("proxy", "slow_proxy", "empty_proxy"):
            async with self._session.post(f"{self.upstream}/{service}", data=body,
                                          headers={"Content-Type": request.content_type}) as up:
                content = await up.read()
                if mode == "empty_proxy":
                    return web.Response(body=b"", content_type="application/xml")
                return web.Response(status=up.status, body=content,
                                    headers={"Content-Type": up.headers.get("Content-Type", "application/xml")})
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
            return web.Response(body=_MALFORMED, content_type="application/xml")
        if mode == "trickle":
            response = web.StreamResponse(headers={"Content-Type": "application/xml"})
            await response.prepare(request)
            await response.write(b'<?xml version="1.0" encoding="utf-8"?>')
            try:
                while True:             # ends when the client gives up or the server stops
                    await asyncio.sleep(1.0)
                    await response.write(b" ")
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                return response
        if mode == "empty":
            return web.Response(body=b"", content_type="application/xml")
        if mode == "malformed_xml":
            return web.Response(body=_MALFORMED, content_type="application/xml")
        if mode == "html":
            return web.Response(body=_HTML, content_type="text/html")
        if mode == "json":
            return web.Response(body=_JSON, content_type="application/json")
        if mode == "huge":
            return web.Response(body=self._huge, content_type="application/xml")
        if mode == "gzip_bomb":
            return web.Response(body=self._gzip_bomb(), headers={"Content-Type": "application/xml",
                                                                 "Content-Encoding": "gzip"})
        return web.Response(status=500, text="internal error: database unavailable")
