"""A TCP relay on loopback standing for a poor cellular link between the VEN and the VTN: it can reset a connection in
the middle of an answer, or hold everything without closing (a modem that lost its bearer)."""
from __future__ import annotations

import asyncio
import socket
import struct


class LossyLink:
    def __init__(self, target_port: int, port: int) -> None:
        self.target_port, self.port = target_port, port
        # the next answer holding these bytes is cut half-way and the connection reset
        self.cut_next: bytes | None = None
        self.cuts = 0
        self.black_hole = False     # while set, nothing is passed on either way and nothing is closed
        self.hole_from: bytes | None = None     # the next request holding these bytes sets black_hole, and is held
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, vtn_url: str) -> str:
        return vtn_url.replace(f":{self.target_port}/", f":{self.port}/")

    async def __aenter__(self) -> "LossyLink":
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, answers=False)),
                 asyncio.ensure_future(self._pump(up_reader, writer, answers=True))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.difference_update(pumps)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
        while data := await src.read(65536):
            if not answers and self.hole_from is not None and self.hole_from in data:
                self.hole_from, self.black_hole = None, True
            if self.black_hole:
                continue
            if answers and self.cut_next is not None and self.cut_next in data:
                self.cut_next = None
                self.cuts += 1
                dst.write(data[:len(data) // 2])
                await dst.drain()
                sock = dst.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with RST
                dst.transport.abort()
                return
            dst.write(data)
            await dst.drain()
