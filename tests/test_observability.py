"""A live run's figures reach Ray's metrics endpoint while it runs (a test scrapes it)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from tests.test_reliability import tiny_jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_metrics_endpoint_serves_attnsched_gauges_during_a_live_run(tmp_path) -> None:
    import ray

    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live

    port = free_port()
    # Export every half second, not Ray's default 10 s, so a short run shows up.
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1",
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 500})
    seen: dict[str, set[str]] = {}
    running = threading.Event()
    running.set()

    def scrape() -> None:
        while running.is_set():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=2).read().decode()
            except OSError:
                text = ""
            for line in text.splitlines():
                if line.startswith("ray_attnsched_"):
                    seen.setdefault(line.split("{")[0], set()).add(line)
            time.sleep(0.3)

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        scraper.start()
        out = tmp_path / "run"
        result = run_live(tiny_jobs(150, seed=2, rate=20.0), load_policy("adaptive"),
                          "adaptive", out, LiveConfig(emulate_gpus=2, speed=1.0,
                                                      telemetry_interval=0.25))
        during = {k: " ".join(v) for k, v in seen.items()}  # served before the run returned
    finally:
        running.clear()
        scraper.join(timeout=10)
        ray.shutdown()
    assert result.exit_code == 0
    for name in ("ray_attnsched_queue_jobs", "ray_attnsched_device_utilization",
                 "ray_attnsched_device_up", "ray_attnsched_decisions_total",
                 "ray_attnsched_jobs_finished_total"):
        assert name in during, sorted(during)
    assert 'device="head/gpu0"' in during["ray_attnsched_device_up"]
    assert any(k.startswith("ray_attnsched_job_latency_seconds") for k in during)
    info = json.loads((out / "run.json").read_text())
    assert f"http://127.0.0.1:{port}/metrics" in info["metrics_endpoints"]
