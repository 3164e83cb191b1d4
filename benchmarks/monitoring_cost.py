"""What recording predictions costs the service: the same `bentoml serve` with
serve.monitoring.enabled true and false, started in turn (interleaved rounds, so a slow spell of a
shared machine hits both), each loaded like serve_benchmark.py's single-image /predict.

Per round and setting: requests/s at concurrency 32 after a warm-up, p50 at concurrency 1, and the
CPU time of the server's processes per request. The verdict is on medians over the rounds. Target:
recording costs at most 5% of the throughput. Needs the champion in the BentoML store.

    python benchmarks/monitoring_cost.py [--rounds 5] [--seconds 10]

Prints a table and writes the `monitoring` section of benchmarks/results/<date>-<machine>.json
(harness/results.py), with the served model's SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

from harness.load import Request, Summary, closed_loop
from harness.load_mix import predict_request, sample_images
from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement
from harness.servers import free_port, start_server, stop
from pipeline.core import paths
from pipeline.shared.machine import cpu_model
from pipeline.shared.tracking import tracking_uri
from service import settings

ROOT = Path(__file__).resolve().parents[1]

TARGET_DROP = 0.05


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants so far."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a process that exited meanwhile
            pass
    return total


def measure(port: int, pid: int, request: Request, seconds: float) -> dict:
    url = f"http://127.0.0.1:{port}"
    # warm-up to a steady state
    asyncio.run(closed_loop(url, [request], 32, seconds))
    before = tree_cpu_seconds(pid)
    loaded = Summary.of(asyncio.run(closed_loop(url, [request], 32, seconds)))
    cpu = tree_cpu_seconds(pid) - before
    alone = Summary.of(asyncio.run(closed_loop(url, [request], 1, seconds / 2, warmup=1)))
    return {
        "rps_c32": loaded.requests_per_s,
        "p50_ms_c1": alone.p50_ms,
        "server_cpu_ms_per_request": 1000 * cpu / loaded.requests,
        "errors": loaded.good_not_200 + alone.good_not_200,
    }


def round_line(row: dict) -> str:
    """One round's figures on a line."""
    return (
        f"round {row['round']} recording={row['recording']!s:<5} {row['rps_c32']:7.0f} req/s  "
        f"p50 {row['p50_ms_c1']:.2f} ms  {row['server_cpu_ms_per_request']:.3f} CPU ms/request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / paths.TEST_SPLIT,
        help="test images to send (random pixels if missing)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="directory of the result files (harness/results.py)",
    )
    args = parser.parse_args()
    measurement = Measurement("monitoring")
    (args.results / "logs").mkdir(parents=True, exist_ok=True)
    served = bento_model(settings.model_tag(), tracking_uri())
    request = predict_request(sample_images(1, args.data))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for enabled in (True, False):
            raw = yaml.safe_load((ROOT / "params.yaml").read_text())
            raw["serve"]["monitoring"]["enabled"] = enabled
            (Path(tmp) / f"params-{enabled}.yaml").write_text(yaml.safe_dump(raw))
        for r in range(args.rounds):
            # Alternate which setting goes first, so a trend over time favours neither.
            for enabled in (True, False) if r % 2 == 0 else (False, True):
                port = free_port()
                env = {
                    **os.environ,
                    "FASHION_MNIST_PARAMS": str(Path(tmp) / f"params-{enabled}.yaml"),
                    "FASHION_MNIST_MONITORING_DIR": str(Path(tmp) / "records"),
                }
                cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1"]
                cmd += ["--port", str(port)]
                log = args.results / "logs" / f"monitoring-recording-{enabled}.log"
                proc = start_server(cmd, ROOT, env, log, f"http://127.0.0.1:{port}/readyz", 300)
                try:
                    row = {
                        "round": r,
                        "recording": enabled,
                        **measure(port, proc.pid, request, args.seconds),
                    }
                finally:
                    stop(proc)
                rows.append(row)
                print(round_line(row), flush=True)

    def median(key: str, enabled: bool) -> float:
        return statistics.median(r[key] for r in rows if r["recording"] is enabled)

    keys = ("rps_c32", "p50_ms_c1", "server_cpu_ms_per_request")
    summary = {k: {"on": median(k, True), "off": median(k, False)} for k in keys}
    drop = 1 - summary["rps_c32"]["on"] / summary["rps_c32"]["off"]
    verdict = {"throughput_drop": round(drop, 4), "target": TARGET_DROP, "met": drop <= TARGET_DROP}
    print(f"\nmedians over {args.rounds} rounds    recording on   recording off   on/off")
    for k in keys:
        on, off = summary[k]["on"], summary[k]["off"]
        print(f"{k:<28} {on:>12.3f} {off:>15.3f} {on / off:>8.3f}")
    met = "met" if verdict["met"] else "MISSED"
    print(f"throughput drop {drop:.1%} (target <= {TARGET_DROP:.0%}): {met}")
    print(f"CPU: {cpu_model()}")
    figures = {
        "rounds_run": args.rounds,
        "seconds": args.seconds,
        "rounds": rows,
        "medians": summary,
        "verdict": verdict,
    }
    out = measurement.record([served], figures, args.results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
