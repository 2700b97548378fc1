"""An asyncio server and client (non-blocking connect, epoll): the client opens N connections
at once with asyncio.open_connection and prints a JSON summary of what came back.

    aio.py server PORT
    aio.py client HOST PORT N
    aio.py hold HOST PORT N     N connections open at the same time, then all closed
"""

import asyncio
import json
import os
import socket
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    peer = writer.get_extra_info("peername")
    writer.write(f"{line.decode().strip()} {peer[0]} {socket.gethostname()}\n".encode())
    await writer.drain()
    if line.startswith(b"hold"):
        await reader.read()  # until the client closes: the connection stays open meanwhile
    writer.close()
    await writer.wait_closed()


async def server(port: int) -> None:
    srv = await asyncio.start_server(handle, port=port, backlog=int(os.environ.get("BACKLOG", "100")))
    async with srv:
        await srv.serve_forever()


OWN: set[str] = set()


async def one(host: str, port: int, i: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    OWN.add(writer.get_extra_info("sockname")[0])
    writer.write(f"msg{i}\n".encode())
    await writer.drain()
    answer = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return answer


async def client(host: str, port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.gather(*(one(host, port, i) for i in range(n)), return_exceptions=True)
    answers = [r for r in results if isinstance(r, str)]
    errors = [repr(r) for r in results if not isinstance(r, str)]
    try:
        await asyncio.wait_for(asyncio.open_connection(host, port + 1), 10)
        refused = None
    except OSError as exc:
        refused = exc.errno
    print(json.dumps({"answers": answers, "errors": errors, "seconds": loop.time() - t0,
                      "refused_errno": refused, "own": ",".join(sorted(OWN))}))


async def hold(host: str, port: int, n: int) -> None:
    # Connections are opened 50 at a time (all stay open): the point is how many are open at
    # once, not how many punches run at once.
    opening = asyncio.Semaphore(50)

    async def open_one(i: int):
        async with opening:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        writer.write(f"hold{i}\n".encode())
        await writer.drain()
        answer = (await asyncio.wait_for(reader.readline(), 30)).decode()
        return writer, answer.startswith(f"hold{i} ")

    results = await asyncio.gather(*(open_one(i) for i in range(n)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(json.dumps({"open": len(opened), "answered": sum(ok for _, ok in opened), "errors": errors[:5]}),
          flush=True)
    sys.stdin.readline()  # the test says when to close: all connections are open until then
    for writer, _ in opened:
        writer.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(int(sys.argv[2])))
    elif sys.argv[1] == "hold":
        asyncio.run(hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
