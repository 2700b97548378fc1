"""An asyncio server and client (non-blocking connect, epoll): the client opens N connections
at once with asyncio.open_connection and prints a JSON summary of what came back.

    aio.py server PORT
    aio.py client HOST PORT N
"""

import asyncio
import json
import socket
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    peer = writer.get_extra_info("peername")
    writer.write(f"{line.decode().strip()} {peer[0]} {socket.gethostname()}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def server(port: int) -> None:
    srv = await asyncio.start_server(handle, port=port)
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


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(int(sys.argv[2])))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
