"""Load test of `detector serve`: start a real server process, drive it with N concurrent clients
for T seconds sending good photos mixed with bad files, and report what a user would ask about.

    python tools/load_test.py --weights runs/demo/weights/best.pt --clients 1 4 16 --seconds 60

For each client count (a fresh server each time) it prints:
  - latency p50 / p95 / p99 of the good photos, throughput (good photos answered per second);
  - errors on good photos (anything but 200: must be 0) and whether bad files got their 4xx;
  - /health latency p99, probed every 50 ms by one more client while the load runs;
  - the server's RSS before, after the first 100 requests and at the end;
  - before the load: the decompression bomb (a valid 875 KB PNG of 30000 x 30000 px): its
    answer, the time to it and the server's peak RSS (VmHWM) before and after.
Then one Markdown table of all runs (docs/serve.md's). Linux only (/proc for the RSS).
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BAD_EVERY = 5  # one request in five sends a bad file


def photos() -> list[tuple[str, bytes]]:
    """Four real photos (scikit-image's, offline) as JPEG files."""
    from skimage import data

    named = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    return [(f"{name}.jpg", cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
            for name, image in named.items()]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A complete, valid grayscale PNG of side x side black pixels (30000: 875 KB, 900 Mpx)."""
    compressor = zlib.compressobj(9)
    rows = (b"\x00" * (side + 1)) * 100
    stream = b"".join(compressor.compress(rows) for _ in range(side // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def bad_files(good: bytes) -> list[tuple[str, bytes, int]]:
    """(name, content, the status it must get)."""
    strip = cv2.imencode(".png", np.zeros((1, 2000, 3), np.uint8))[1].tobytes()
    return [("notes.txt", b"this is not an image", 415), ("cut.jpg", good[: len(good) // 2], 415),
            ("empty.jpg", b"", 400), ("strip.png", strip, 422)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """`detector serve` in a subprocess on a free port, until `stop`."""

    def __init__(self, weights: str, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--weights", weights,
                                         "--port", str(self.port), *extra], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit(f"the server did not start:\n{self.process.stdout.read()}")
            time.sleep(0.3)

    def rss(self, field: str = "VmRSS") -> float:
        return rss_mib(self.process.pid, field)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def probe_bomb(server: Server, bomb: bytes) -> dict:
    peak_before = server.rss("VmHWM")
    started = time.perf_counter()
    reply = httpx.post(f"{server.url}/predict", files={"file": ("bomb.png", bomb, "image/png")}, timeout=120)
    return {"status": reply.status_code, "seconds": time.perf_counter() - started,
            "peak_before": peak_before, "peak_after": server.rss("VmHWM")}


def run_load(server: Server, clients: int, seconds: float, good: list, bad: list) -> dict:
    latencies, good_errors, bad_wrong, health = [], [], [], []
    count, rss_at_100 = itertools.count(1), [None]
    lock, stop = threading.Lock(), threading.Event()

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as session:
            for turn in itertools.count(index):
                if stop.is_set():
                    return
                is_bad = turn % BAD_EVERY == BAD_EVERY - 1
                name, content, expected = bad[turn % len(bad)] if is_bad else (*good[turn % len(good)], 200)
                started = time.perf_counter()
                try:
                    status = session.post(f"{server.url}/predict", files={"file": (name, content)}).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    if next(count) == 100:
                        rss_at_100[0] = server.rss()
                    if not is_bad:
                        (latencies if status == 200 else good_errors).append(elapsed if status == 200 else status)
                    elif status != expected:
                        bad_wrong.append((name, status))

    def prober() -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                started = time.perf_counter()
                session.get(f"{server.url}/health")
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    rss_before, load_before = server.rss(), os.getloadavg()[0]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=prober)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started  # the requests in flight at the stop are counted, and their time
    return {"clients": clients, "seconds": seconds, "requests": next(count) - 1, "good": len(latencies),
            "throughput": len(latencies) / elapsed, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99), "good_errors": good_errors, "bad_wrong": bad_wrong,
            "health_p99": percentile(health, 99), "health_max": max(health, default=float("nan")),
            "rss_before": rss_before, "rss_at_100": rss_at_100[0], "rss_after": server.rss(),
            "load": (load_before, os.getloadavg()[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint (.pt) or export (.onnx) to serve")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per client count")
    parser.add_argument("--server-arg", action="append", default=[], help="passed to `detector serve` (repeatable), "
                                                                          "e.g. --server-arg=--max-batch=8")
    args = parser.parse_args()
    good = photos()
    bad = bad_files(good[0][1])
    bomb = bomb_png()
    rows = []
    for clients in args.clients:
        server = Server(args.weights, args.server_arg)
        try:
            httpx.post(f"{server.url}/predict", files={"file": good[0]}, timeout=120)  # warm up: first-call costs
            bomb_result = probe_bomb(server, bomb)
            result = run_load(server, clients, args.seconds, good, bad)
        finally:
            server.stop()
        result["bomb"] = bomb_result
        rows.append(result)
        print(f"{clients:>3} clients, {args.seconds:g} s: {result['requests']} requests, {result['good']} good photos "
              f"answered, {result['throughput']:.2f}/s; latency p50 {result['p50']:.3f} p95 {result['p95']:.3f} "
              f"p99 {result['p99']:.3f} s; errors on good photos {len(result['good_errors'])} "
              f"{result['good_errors'][:5]}; bad files with the wrong status {result['bad_wrong'][:5]}; /health p99 "
              f"{result['health_p99'] * 1000:.1f} ms (max {result['health_max'] * 1000:.1f}); RSS {result['rss_before']:.0f}"
              f" -> {result['rss_at_100'] or float('nan'):.0f} (after 100) -> {result['rss_after']:.0f} MiB; bomb: "
              f"{bomb_result['status']} in {bomb_result['seconds']:.3f} s, peak RSS {bomb_result['peak_before']:.0f} -> "
              f"{bomb_result['peak_after']:.0f} MiB; machine load average {result['load'][0]:.1f} -> "
              f"{result['load'][1]:.1f} on {os.cpu_count()} cores", flush=True)
    print("\n| clients | requests | good photos/s | p50 s | p95 s | p99 s | errors on good | /health p99 ms "
          "| RSS MiB: start / after 100 / end | bomb: status, s, peak RSS MiB before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["bomb"]
        print(f"| {r['clients']} | {r['requests']} | {r['throughput']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['p99']:.3f} | {len(r['good_errors'])} | {r['health_p99'] * 1000:.1f} | {r['rss_before']:.0f} / "
              f"{r['rss_at_100'] or float('nan'):.0f} / {r['rss_after']:.0f} | {b['status']}, {b['seconds']:.3f}, "
              f"{b['peak_before']:.0f} -> {b['peak_after']:.0f} |")
    return 0 if all(not r["good_errors"] and not r["bad_wrong"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
