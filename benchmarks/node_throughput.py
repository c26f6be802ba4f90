"""Node throughput: model downloads over mutual TLS and the encrypted store.

    .venv/bin/python benchmarks/node_throughput.py [--mb 256] [--repeat 3]

1. Model download between two real nodes on loopback, timed from request to
   file in place: node a (a real ``airfed node start`` process) reads a
   ``--mb`` MB model from its encrypted store, decrypts it (AES-256-GCM,
   every chunk authenticated) and serves it over mutual TLS after checking
   that b may process it; b's identity receives it with
   ``NodeClient.download_model``, the code a node runs to fetch a parent
   task's model and ``airfed model download`` runs: it computes the SHA-256,
   writes the plaintext to a file, checks the checksum against the node's
   header and renames the file into place (a node stages it, decrypted, in
   the task's workdir; it does not re-encrypt it).
   The limit: raw TLS socket throughput on loopback between two processes
   with the same certificates (server sends zeros from memory, client
   receives into memory). Target: download >= 0.5x raw TLS.
   Besides wall time, the CPU seconds of both processes are recorded for the
   download and for raw TLS, and their ratio (``download_vs_raw_tls_cpu``):
   on loopback both sides are CPU-bound, so on a quiet machine the wall
   ratio tends to it, and under load it is the figure that holds still.
   Each stage alone on one thread (store decryption, SHA-256, writing the
   file) shows where the download's extra CPU goes.
2. Encrypted store: writing a ``--mb`` MB file into the store (AES-256-GCM,
   SHA-256, fsync, rename) against copying it (copy + fsync); reading it back
   decrypted into a file against copying it. Target: store >= 0.5x copy.

Each figure is the best of ``--repeat`` runs (the machine is shared); the
load average before and after is recorded with the figures.
Results go to benchmarks/results/node_throughput.json and a table.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airfed.node_api._context import NodeContext  # noqa: E402
from airfed.node_api._crypto import FileKeyProvider, ObjectStore  # noqa: E402
from airfed.node_api._db import Model  # noqa: E402
from airfed.sdk.network import (  # noqa: E402
    client_ssl_context,
    init_network,
    load_node_config,
)
from airfed.sdk.node_client import NodeClient  # noqa: E402
from tests.support.nodes import start_node  # noqa: E402
from tests.support.ports import free_port, free_port_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "node_throughput.json"
_MB = 1024 * 1024
_BLOCK = 4 * _MB


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_average() -> list[float]:
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def _best(repeat: int, run: Callable[[], float]) -> float:
    """Best time of ``repeat`` runs, seconds."""
    return min(run() for _ in range(repeat))


def _random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        block = os.urandom(_BLOCK)
        for _ in range(size // _BLOCK):
            out.write(block)
            block = block[1:] + block[:1]
    return path


# -- download between nodes -------------------------------------------------


def _seed_model(config_path: Path, source: Path) -> tuple[str, str]:
    """Store ``source`` as a model of node a that b may process."""
    context = NodeContext.open(load_node_config(config_path))
    stored = context.objects.put_file(source)
    key = str(uuid.uuid4())
    with context.db.session() as session:
        session.add(
            Model(
                key=key,
                owner=context.organization,
                plan_key="benchmark",
                task_key="benchmark",
                identifier="model",
                permissions={"process": {"authorized_ids": ["b"]}},
                transient=False,
                object_id=stored.object_id,
                checksum=stored.checksum,
                size=stored.size,
            )
        )
    context.db.dispose()
    return key, stored.checksum


def measure_download(work: Path, size: int, repeat: int) -> dict[str, float]:
    network = init_network(work / "net", ["a", "b"], base_port=free_port_block(5))
    config = network.root / "a" / "node.yaml"
    source = _random_file(work / "model.bin", size)
    key, checksum = _seed_model(config, source)
    source.unlink()
    runs: list[tuple[float, float, float]] = []
    with start_node(config) as node:
        client = NodeClient(node.url, client_ssl_context(network.root / "b"))

        def once() -> float:
            dest = work / "downloaded.bin"
            node_cpu = _process_cpu_seconds(node.pid)
            client_cpu = time.process_time()
            started = time.perf_counter()
            assert client.download_model(key, dest) == checksum
            elapsed = time.perf_counter() - started
            runs.append(
                (
                    elapsed,
                    time.process_time() - client_cpu,
                    _process_cpu_seconds(node.pid) - node_cpu,
                )
            )
            dest.unlink()
            return elapsed

        once()  # warm up the node and the page cache
        seconds = _best(repeat, once)
        client.close()
    raw_runs = [_raw_tls_seconds(network.root, size) for _ in range(repeat)]
    raw, raw_client_cpu, raw_server_cpu = min(raw_runs)
    _, client_cpu, node_cpu = min(runs[1:])
    return {
        "download_mb_s": size / _MB / seconds,
        "raw_tls_mb_s": size / _MB / raw,
        "download_vs_raw_tls": raw / seconds,
        "download_client_cpu_s": client_cpu,
        "download_node_cpu_s": node_cpu,
        "raw_tls_client_cpu_s": raw_client_cpu,
        "raw_tls_server_cpu_s": raw_server_cpu,
        # Both sides of each are CPU-bound on loopback, so on a quiet machine
        # the wall ratio tends to this; under load it is the steadier figure.
        "download_vs_raw_tls_cpu": (raw_client_cpu + raw_server_cpu)
        / (client_cpu + node_cpu),
        **measure_stages(config, key, size),
    }


def measure_stages(config: Path, key: str, size: int) -> dict[str, float]:
    """Each stage of a download alone, on one thread: MB/s of CPU time."""
    context = NodeContext.open(load_node_config(config))
    with context.db.session() as session:
        object_id = str(session.get(Model, key).object_id)  # type: ignore[union-attr]
    started = time.process_time()
    chunks = list(itertools.islice(context.objects.read(object_id), 64))
    decrypt = time.process_time() - started
    plain = sum(len(chunk) for chunk in chunks)
    context.db.dispose()

    started = time.process_time()
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    sha = time.process_time() - started

    target = config.parent / "stage-write.bin"
    started = time.process_time()
    with target.open("wb", buffering=0) as out:
        for chunk in chunks:
            out.write(chunk)
    write = time.process_time() - started
    target.unlink()
    return {
        "stage_store_decrypt_mb_s": plain / _MB / decrypt,
        "stage_sha256_mb_s": plain / _MB / sha,
        "stage_write_file_mb_s": plain / _MB / write,
    }


_RAW_SERVER = """
import socket, ssl, sys, time
profile, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ca = profile + "/tls/ca.crt"
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
ctx.load_cert_chain(profile + "/tls/tls.crt", profile + "/tls/tls.key")
ctx.verify_mode = ssl.CERT_REQUIRED
block = bytes(4 * 1024 * 1024)
with socket.create_server(("127.0.0.1", port)) as listener:
    print("ready", flush=True)
    conn, _ = listener.accept()
    with ctx.wrap_socket(conn, server_side=True) as tls:
        sent = 0
        cpu = time.process_time()
        while sent < size:
            sent += tls.send(block[: min(len(block), size - sent)])
        tls.recv(1)
        print(time.process_time() - cpu, flush=True)
"""


def _raw_tls_seconds(network_root: Path, size: int) -> tuple[float, float, float]:
    """Wall, client CPU and server CPU seconds for ``size`` bytes over one
    mutual-TLS socket on loopback."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _RAW_SERVER,
            str(network_root / "a"),
            str(port),
            str(size),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        context = client_ssl_context(network_root / "b")
        buffer = bytearray(_BLOCK)
        view = memoryview(buffer)
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.do_handshake()
            started = time.perf_counter()
            cpu = time.process_time()
            received = 0
            while received < size:
                count = tls.recv_into(view)
                if count == 0:
                    break
                received += count
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            tls.sendall(b"x")
        assert received == size
        server_cpu = float(server.stdout.readline())
        return elapsed, cpu, server_cpu
    finally:
        server.wait(30)


# -- encrypted store ----------------------------------------------------------


def _copy(source: Path, dest: Path, *, fsync: bool) -> None:
    with source.open("rb", buffering=0) as src, dest.open("wb", buffering=0) as out:
        while chunk := src.read(_BLOCK):
            out.write(chunk)
        if fsync:
            os.fsync(out.fileno())


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure_store(work: Path, size: int, repeat: int) -> dict[str, float]:
    key_file = work / "master.key"
    key_file.write_bytes(os.urandom(32))
    store = ObjectStore(work / "storage", FileKeyProvider(key_file))
    source = _random_file(work / "plain.bin", size)
    copy = work / "copy.bin"
    plain_out = work / "plain-out.bin"

    copy_write = _best(repeat, lambda: _timed(lambda: _copy(source, copy, fsync=True)))
    write_ids: list[str] = []
    store_write = _best(
        repeat,
        lambda: _timed(lambda: write_ids.append(store.put_file(source).object_id)),
    )
    copy_read = _best(
        repeat, lambda: _timed(lambda: _copy(copy, plain_out, fsync=False))
    )
    store_read = _best(
        repeat, lambda: _timed(lambda: store.decrypt_to(write_ids[0], plain_out))
    )
    return {
        "store_write_mb_s": size / _MB / store_write,
        "copy_write_mb_s": size / _MB / copy_write,
        "store_write_vs_copy": copy_write / store_write,
        "store_read_mb_s": size / _MB / store_read,
        "copy_read_mb_s": size / _MB / copy_read,
        "store_read_vs_copy": copy_read / store_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="Size of the model/file.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per figure.")
    args = parser.parse_args()
    size = args.mb * _MB

    with tempfile.TemporaryDirectory(prefix="airfed-bench-") as tmp:
        work = Path(tmp)
        (work / "dl").mkdir()
        (work / "store").mkdir()
        results: dict[str, Any] = {
            "size_mb": args.mb,
            "repeat": args.repeat,
            "load_average_before": _load_average(),
        }
        results.update(measure_download(work / "dl", size, args.repeat))
        shutil.rmtree(work / "dl")
        results.update(measure_store(work / "store", size, args.repeat))
    results["load_average_after"] = _load_average()
    results["targets_met"] = (
        results["download_vs_raw_tls"] >= 0.5
        and results["store_write_vs_copy"] >= 0.5
        and results["store_read_vs_copy"] >= 0.5
    )
    results["command"] = "python benchmarks/node_throughput.py " + " ".join(
        sys.argv[1:]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)


def _print_table(results: dict[str, Any]) -> None:
    rows = [
        ("model download, node to node (mTLS)", "download_mb_s", None),
        ("raw TLS socket on loopback (limit)", "raw_tls_mb_s", None),
        ("  download / raw TLS (target >= 0.5)", None, "download_vs_raw_tls"),
        ("encrypted store write", "store_write_mb_s", None),
        ("plain copy + fsync", "copy_write_mb_s", None),
        ("  store write / copy (target >= 0.5)", None, "store_write_vs_copy"),
        ("encrypted store read (decrypt to file)", "store_read_mb_s", None),
        ("plain copy", "copy_read_mb_s", None),
        ("  store read / copy (target >= 0.5)", None, "store_read_vs_copy"),
    ]
    print(f"{'measure':<42} {'MB/s':>9} {'ratio':>7}")
    for label, speed, ratio in rows:
        speed_text = f"{results[speed]:9.0f}" if speed else " " * 9
        ratio_text = f"{results[ratio]:7.2f}" if ratio else ""
        print(f"{label:<42} {speed_text} {ratio_text}")
    print(
        f"download CPU s: client {results['download_client_cpu_s']:.2f}, "
        f"node {results['download_node_cpu_s']:.2f}; raw TLS CPU s: "
        f"client {results['raw_tls_client_cpu_s']:.2f}, "
        f"server {results['raw_tls_server_cpu_s']:.2f}; "
        f"CPU ratio {results['download_vs_raw_tls_cpu']:.2f}"
    )
    print(
        "stages alone, MB/s of CPU time: "
        f"store decrypt {results['stage_store_decrypt_mb_s']:.0f}, "
        f"SHA-256 {results['stage_sha256_mb_s']:.0f}, "
        f"file write {results['stage_write_file_mb_s']:.0f}"
    )
    print(
        f"size {results['size_mb']} MB, best of {results['repeat']}; "
        f"load average {results['load_average_before']} -> "
        f"{results['load_average_after']}; targets met: {results['targets_met']}"
    )


if __name__ == "__main__":
    main()
