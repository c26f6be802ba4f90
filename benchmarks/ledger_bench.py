"""Ledger benchmark: durable appends, proofs at scale, replica catch-up.

    .venv/bin/python benchmarks/ledger_bench.py [--entries 1000000]
    .venv/bin/python benchmarks/ledger_bench.py --only catch-up --workdir DIR

``--only`` measures one part (repeatable) and keeps the recorded results of
the others; ``--workdir`` keeps the network and the large log in DIR, so a
second run skips building it.

1. Durable appends per second: clients append signed entries to the log over
   gRPC with mutual TLS and wait until each batch is committed (SQLite,
   synchronous=FULL). Target: at least 1,000 a second.
2. Inclusion proof generation (from the stored tree) and verification at
   ``--entries`` entries. Targets: under 5 ms and under 1 ms.
3. A witness's replica catching up on the whole log over gRPC: fetch, check
   every entry's signature, rebuild the tree, compare with the checkpoint
   and cosign. Target: under 60 s for 1,000,000 entries.

Results go to benchmarks/results/ledger.json and a table. The log and the
replica run in this one process (the replica checks signatures on worker
processes) on a 2-core machine: the CPU seconds of the process and of its
workers (also reported, and divided by the cores) say what an idle machine
would need; wall times depend on what else runs, so the load average is
recorded before and after.
Proof generation reports the CPU time per proof beside the wall time for
the same reason.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nacl.bindings

from airfed.ledger import merkle
from airfed.ledger._network import key_ring
from airfed.ledger.checkpoint import Checkpoint, log_origin, sign_checkpoint
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, EntryKind, make_entry, parse_entry
from airfed.ledger.server import serve_log
from airfed.ledger.store import LedgerStore, StoredEntry
from airfed.ledger.witness import Witness
from airfed.sdk.network import (
    Network,
    init_network,
    load_identity_key,
    load_network,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ledger.json"
_DOMAIN = b"airfed-ledger-entry/v1\n"


def _free_base_port(size: int) -> int:
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size >= 65000:
            continue
        try:
            for offset in range(size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports on 127.0.0.1")


# --------------------------------------------------------------------------
# Entries, signed fast


class _FastSigner:
    """Signs data sample registrations with a template of the canonical bytes.

    The statement's keys are already in RFC 8785 order, so formatting the
    template gives exactly what ``make_entry`` writes (checked on a sample).
    """

    def __init__(self, network: Network, org: str) -> None:
        key = load_identity_key(network.root / org / "identity.key")
        self.org = org
        self._secret = nacl.bindings.crypto_sign_seed_keypair(key.private_bytes_raw())[
            1
        ]
        self._key = key

    def statement(self, i: int) -> bytes:
        org = self.org
        return (
            f'{{"author":"{org}","body":{{"checksum":"{i:064x}",'
            f'"dataset_key":"ds-{i % 97}","owner":"{org}"}},'
            f'"key":"sample-{i:012d}","kind":"data_sample_registered",'
            '"time":"2026-12-03T12:00:00.000Z","v":1}'
        ).encode()

    def entry_bytes(self, i: int) -> bytes:
        statement = self.statement(i)
        signed = nacl.bindings.crypto_sign(_DOMAIN + statement, self._secret)
        return (
            b'{"signature":"'
            + base64.b64encode(signed[:64])
            + b'","statement":'
            + statement
            + b"}"
        )

    def check_template(self) -> None:
        reference = make_entry(
            EntryKind.DATA_SAMPLE_REGISTERED,
            author=self.org,
            key=f"sample-{5:012d}",
            body={"owner": self.org, "dataset_key": "ds-5", "checksum": f"{5:064x}"},
            identity_key=self._key,
            time="2026-12-03T12:00:00.000Z",
        )
        assert self.entry_bytes(5) == reference.data, "template drifted"
        parse_entry(self.entry_bytes(7))


def _entries(signer: _FastSigner, start: int, count: int) -> list[Entry]:
    return [
        parse_entry(signer.entry_bytes(i), canonical=False)
        for i in range(start, start + count)
    ]


# --------------------------------------------------------------------------
# 1. Durable appends


def bench_appends(
    network: Network, url: str, total: int, clients: int
) -> dict[str, Any]:
    signer = _FastSigner(network, "a")
    chunk = 100
    chunks = [
        [signer.entry_bytes(10_000_000 + i) for i in range(start, start + chunk)]
        for start in range(0, total, chunk)
    ]
    server = serve_log(network.root, url)
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(mine: list[list[bytes]]) -> None:
        with LedgerClient(network.ledger_address, network.root / "a") as client:
            for batch in mine:
                began = time.perf_counter()
                outcome = client.append(batch, wait=True)
                assert len(outcome.indices) == len(batch)
                with lock:
                    latencies.append(time.perf_counter() - began)

    threads = [
        threading.Thread(target=client_loop, args=(chunks[i::clients],))
        for i in range(clients)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    size = server.servicer.store.size()
    server.stop()
    assert size == total
    return {
        "entries": total,
        "clients": clients,
        "entries_per_call": chunk,
        "seconds": round(elapsed, 3),
        "durable_appends_per_second": round(total / elapsed, 1),
        "call_latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "target_per_second": 1000,
    }


# --------------------------------------------------------------------------
# 2. A large log, proofs


def build_log(network: Network, url: str, count: int) -> LedgerStore:
    signer = _FastSigner(network, "b")
    signer.check_template()
    store = LedgerStore(url)
    compact = merkle.CompactRange()
    step = 50_000
    for start in range(0, count, step):
        rows, nodes = [], []
        for i in range(start, min(count, start + step)):
            data = signer.entry_bytes(i)
            leaf = merkle.leaf_hash(data)
            rows.append(
                StoredEntry(
                    i, leaf, "data_sample_registered", "b", f"sample-{i:012d}", data
                )
            )
            nodes.extend(compact.append(leaf))
        store.append(rows, nodes, None)
        print(f"  built {compact.size:,} entries", file=sys.stderr)
    log_key = load_identity_key(network.root / "orchestrator" / "log.key")
    store.add_checkpoint(
        sign_checkpoint(
            Checkpoint(log_origin(network.name), count, compact.root()), log_key
        )
    )
    return store


def bench_proofs(store: LedgerStore, count: int, samples: int = 500) -> dict[str, Any]:
    checkpoint = store.checkpoint()
    assert checkpoint is not None
    root = checkpoint.checkpoint.root
    rng = random.Random(7)
    indices = [rng.randrange(count) for _ in range(samples)]
    datas = {i: store.entries(i, i + 1)[0].data for i in indices}
    generate, generate_cpu, verify = [], [], []
    for i in indices:
        began, cpu_began = time.perf_counter(), time.thread_time()
        proof = merkle.inclusion_proof_from(store, i, count)
        generate.append(time.perf_counter() - began)
        generate_cpu.append(time.thread_time() - cpu_began)
        began = time.perf_counter()
        ok = merkle.verify_inclusion(datas[i], i, count, proof, root)
        verify.append(time.perf_counter() - began)
        assert ok
    consistency = []
    for _ in range(100):
        old = rng.randrange(1, count)
        began = time.perf_counter()
        merkle.consistency_proof_from(store, old, count)
        consistency.append(time.perf_counter() - began)

    def ms(values: list[float], q: float) -> float:
        return round(sorted(values)[int(q * (len(values) - 1))] * 1000, 3)

    return {
        "entries": count,
        "samples": samples,
        "inclusion_generate_ms_median": ms(generate, 0.5),
        "inclusion_generate_ms_p95": ms(generate, 0.95),
        "inclusion_generate_cpu_ms_median": ms(generate_cpu, 0.5),
        "inclusion_generate_cpu_ms_p95": ms(generate_cpu, 0.95),
        "inclusion_verify_ms_median": ms(verify, 0.5),
        "inclusion_verify_ms_p95": ms(verify, 0.95),
        "consistency_generate_ms_median": ms(consistency, 0.5),
        "target_generate_ms": 5,
        "target_verify_ms": 1,
    }


# --------------------------------------------------------------------------
# 3. Replica catch-up


def bench_catch_up(
    network: Network, tmp: Path, log_url: str, count: int
) -> dict[str, Any]:
    # The log stores the witness's cosignature: serve a copy, so that a kept
    # log stays unwitnessed for the next run.
    served = tmp / "catch-up-log.db"
    for name in ("catch-up-log.db", "c.db"):
        for suffix in ("", "-wal", "-shm"):
            (tmp / f"{name}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(log_url.removeprefix("sqlite:///"), served)
    server = serve_log(network.root, f"sqlite:///{served}")
    try:
        with LedgerClient(network.ledger_address, network.root / "c") as client:
            witness = Witness(
                network.root / "c", client, database_url=f"sqlite:///{tmp / 'c.db'}"
            )
            load_before = os.getloadavg()
            began, times_began = time.perf_counter(), os.times()
            result = witness.sync()
            elapsed = time.perf_counter() - began
            times = os.times()
            load_after = os.getloadavg()
            witness.close()
    finally:
        server.stop()
    assert result.size == count and result.cosigned
    cpu = times.user + times.system - times_began.user - times_began.system
    workers = (
        times.children_user
        + times.children_system
        - times_began.children_user
        - times_began.children_system
    )
    return {
        "entries": count,
        "seconds": round(elapsed, 2),
        "entries_per_second": round(count / elapsed),
        "signatures_checked": count,
        "cpu_seconds_this_process": round(cpu, 2),
        "cpu_seconds_workers": round(workers, 2),
        "cpu_seconds_total": round(cpu + workers, 2),
        "cpu_seconds_per_core": round((cpu + workers) / (os.cpu_count() or 1), 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "target_seconds": 60,
    }


PARTS = ("appends", "proofs", "catch-up")


def _log_for(network: Network, folder: Path, count: int) -> str:
    """The URL of a log of ``count`` entries in ``folder``, built if needed."""
    url = f"sqlite:///{folder / f'log-{count}.db'}"
    if (folder / f"log-{count}.db").exists():
        store = LedgerStore(url)
        complete = store.size() == count and store.checkpoint() is not None
        store.close()
        if complete:
            print(f"reusing the log of {count:,} entries", file=sys.stderr)
            return url
        (folder / f"log-{count}.db").unlink()
    print(f"building a log of {count:,} entries ...", file=sys.stderr)
    build_log(network, url, count).close()
    return url


def _network(folder: Path) -> Network:
    if (folder / "net" / "network.yaml").exists():
        network = load_network(folder / "net")
    else:
        network = init_network(
            folder / "net", ["a", "b", "c"], base_port=_free_base_port(7)
        )
    key_ring(network)
    return network


def _run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    network = _network(folder)
    measured: dict[str, Any] = {}
    if "appends" in args.only:
        print("appends ...", file=sys.stderr)
        appends_db = folder / "appends.db"
        appends_db.unlink(missing_ok=True)
        measured["appends"] = bench_appends(
            network, f"sqlite:///{appends_db}", args.appends, args.clients
        )
        if args.postgres_url:
            print("appends on PostgreSQL ...", file=sys.stderr)
            measured["appends_postgresql"] = bench_appends(
                network, args.postgres_url, args.appends, args.clients
            )
    if "proofs" in args.only or "catch-up" in args.only:
        log_url = _log_for(network, folder, args.entries)
        if "proofs" in args.only:
            store = LedgerStore(log_url)
            measured["proofs"] = bench_proofs(store, args.entries)
            store.close()
        if "catch-up" in args.only:
            print("replica catch-up ...", file=sys.stderr)
            measured["replica_catch_up"] = bench_catch_up(
                network, folder, log_url, args.entries
            )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--postgres-url",
        help="also measure appends on this (empty) PostgreSQL database",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="measure only this part (repeatable); the others keep their "
        "recorded results",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the network and the large log here and reuse them next time "
        "(default: a temporary folder)",
    )
    args = parser.parse_args()
    args.only = tuple(args.only or PARTS)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        measured = _run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder:
            measured = _run(args, Path(folder))

    machine = {
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, Any] = {"machine": machine}
    if RESULTS.exists() and args.only != PARTS:
        # The machine of the full run stays; each part measured now says its own.
        results = json.loads(RESULTS.read_text())
        for part in measured.values():
            part["machine"] = machine
    results["database"] = "sqlite (WAL, synchronous=FULL)"
    results.update(measured)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results, measured, args.entries)


def machine_load(results: dict[str, Any], measured: dict[str, Any]) -> Any:
    """The load average at the end of this run."""
    for part in measured.values():
        if "machine" in part:
            return part["machine"]["load_average_at_end"]
    return results["machine"]["load_average_at_end"]


def _print_table(
    results: dict[str, Any], measured: dict[str, Any], entries: int
) -> None:
    appends = measured.get("appends")
    appends_pg = measured.get("appends_postgresql")
    proofs = measured.get("proofs")
    catch_up = measured.get("replica_catch_up")
    rows: list[tuple[str, Any, str]] = []
    if appends:
        rows.append(
            (
                "durable appends/s (SQLite)",
                appends["durable_appends_per_second"],
                ">= 1000",
            )
        )
    if appends_pg:
        rows.append(
            (
                "durable appends/s (PostgreSQL)",
                appends_pg["durable_appends_per_second"],
                ">= 1000",
            )
        )
    if proofs:
        rows += [
            (
                "inclusion proof generation (median ms)",
                proofs["inclusion_generate_ms_median"],
                "< 5",
            ),
            (
                "inclusion proof generation (p95 ms)",
                proofs["inclusion_generate_ms_p95"],
                "< 5",
            ),
            (
                "inclusion proof generation, CPU time (p95 ms)",
                proofs["inclusion_generate_cpu_ms_p95"],
                "< 5",
            ),
            (
                "inclusion proof verification (median ms)",
                proofs["inclusion_verify_ms_median"],
                "< 1",
            ),
            (
                "consistency proof generation (median ms)",
                proofs["consistency_generate_ms_median"],
                "",
            ),
        ]
    if catch_up:
        rows += [
            (
                f"replica catch-up on {entries:,} entries (s)",
                catch_up["seconds"],
                "< 60",
            ),
            (
                "replica catch-up, CPU seconds (process + workers)",
                catch_up["cpu_seconds_total"],
                "",
            ),
            (
                "replica catch-up, CPU seconds / cores",
                catch_up["cpu_seconds_per_core"],
                "",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value!s:>10}  {target}")
    print(f"load average: {machine_load(results, measured)}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
