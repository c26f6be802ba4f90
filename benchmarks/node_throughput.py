"""Node throughput: model downloads over mutual TLS and the encrypted store.

    .venv/bin/python benchmarks/node_throughput.py [--mb 256] [--repeat 3]

1. Model download between two real nodes on loopback: node a (a real
   ``airfed node start`` process) serves a model of ``--mb`` MB that b may
   process; b's identity downloads it with the node client, the code a node
   runs to fetch a task's input (stream, SHA-256 check, write to disk).
   The limit: raw TLS socket throughput on loopback between two processes
   with the same certificates (server sends from memory, client receives
   into memory). Target: download >= 0.5x raw TLS.
2. Encrypted store: writing a ``--mb`` MB file into the store (AES-256-GCM,
   SHA-256, fsync, rename) against copying it (copy + fsync); reading it back
   decrypted into a file against copying it. Target: store >= 0.5x copy.

Each figure is the best of ``--repeat`` runs (the machine is shared).
Results go to benchmarks/results/node_throughput.json and a table.
"""

from __future__ import annotations

import argparse
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
    with start_node(config) as node:
        client = NodeClient(node.url, client_ssl_context(network.root / "b"))

        def once() -> float:
            dest = work / "downloaded.bin"
            started = time.perf_counter()
            assert client.download_model(key, dest) == checksum
            elapsed = time.perf_counter() - started
            dest.unlink()
            return elapsed

        once()  # warm up the connection and the page cache
        seconds = _best(repeat, once)
        client.close()
    raw = _best(repeat, lambda: _raw_tls_seconds(network.root, size))
    return {
        "download_mb_s": size / _MB / seconds,
        "raw_tls_mb_s": size / _MB / raw,
        "download_vs_raw_tls": raw / seconds,
    }


_RAW_SERVER = """
import socket, ssl, sys
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
        while sent < size:
            sent += tls.send(block[: min(len(block), size - sent)])
        tls.recv(1)
"""


def _raw_tls_seconds(network_root: Path, size: int) -> float:
    """Seconds for ``size`` bytes over one mutual-TLS socket on loopback."""
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
            received = 0
            while received < size:
                count = tls.recv_into(view)
                if count == 0:
                    break
                received += count
            elapsed = time.perf_counter() - started
            tls.sendall(b"x")
        assert received == size
        return elapsed
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
        results: dict[str, Any] = {"size_mb": args.mb, "repeat": args.repeat}
        results.update(measure_download(work / "dl", size, args.repeat))
        shutil.rmtree(work / "dl")
        results.update(measure_store(work / "store", size, args.repeat))
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
        f"size {results['size_mb']} MB, best of {results['repeat']}; "
        f"targets met: {results['targets_met']}"
    )


if __name__ == "__main__":
    main()
