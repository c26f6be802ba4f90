"""What the ledger's Airflow listener adds to a task: the hook's own time.

The hook only queues the task run; the node's receipt is fetched, the entry
signed and sent on a background thread. This measures the first call in a
process (which starts that thread) and the mean of the following calls, in a
process that has already imported Airflow's task SDK and airfed's operators,
as a task process has. The log is unreachable here on purpose: the hook must
not wait for it.

    .venv/bin/python benchmarks/ledger_listener.py
"""

from __future__ import annotations

import os
import tempfile
import time
import types


def main(calls: int = 1000) -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airfed-bench-"))
    os.environ["AIRFLOW__AIRFED__NETWORK"] = tempfile.mkdtemp(prefix="no-network-")
    import airflow.sdk  # noqa: F401  (a task process has imported it already)

    import airfed.operators  # noqa: F401
    from airfed.plugins import listener

    task = types.SimpleNamespace(task_spec={"key": "t1", "worker": "a"})
    instance = types.SimpleNamespace(
        dag_id="airfed_plan_p1",
        task_id="r0_train_a__t1",
        task=task,
        try_number=1,
        start_date=None,
        end_date=None,
    )
    started = time.perf_counter()
    listener.on_task_instance_running(None, instance)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(calls):
        listener.on_task_instance_success(None, instance)
    each = (time.perf_counter() - started) / calls
    print(f"first call {first * 1e3:.2f} ms; then {each * 1e6:.1f} us per call")


if __name__ == "__main__":
    main()
