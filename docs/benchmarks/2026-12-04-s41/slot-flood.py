import asyncio, sys, time
HOST, PORT = '127.0.0.1', int(sys.argv[1])
F = int(sys.argv[2]); DURATION = float(sys.argv[3])
stop = False
async def silent():
    while not stop:
        try:
            r, w = await asyncio.open_connection(HOST, PORT)
            w.write(b'P'); await w.drain()
            await r.read(100)  # until the server closes it
            w.close()
        except Exception:
            await asyncio.sleep(0.01)
async def honest():
    t = time.monotonic()
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(b'GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'); await w.drain()
    data = await asyncio.wait_for(r.read(1000), 120)
    w.close()
    return time.monotonic() - t, data[:12]
async def main():
    global stop
    tasks = [asyncio.create_task(silent()) for _ in range(F)]
    await asyncio.sleep(6)  # past one head budget: the flood is in its steady state
    waits = []
    t_end = time.monotonic() + DURATION
    while time.monotonic() < t_end and len(waits) < 8:
        d, head = await honest()
        waits.append(d)
    stop = True
    for t in tasks: t.cancel()
    waits.sort()
    print(f"flood {F} sockets: {len(waits)} honest /healthz, wait s min {waits[0]:.2f} median {waits[len(waits)//2]:.2f} max {waits[-1]:.2f}", head)
asyncio.run(main())
