"""The service's targets (issue 5); updates BENCHMARKS.md and bench/results/service.png.

In one run, on this machine's Postgres (a fresh database) and Redis, with the API and two Celery
workers started as users start them (`heartvec serve`, `heartvec worker`):
1. faults: N jobs (default 20) submitted at once while one worker is SIGKILLed twice (each time
   while it runs a job, then started again): how many succeeded, were lost (never finished) or
   were duplicated (a job whose results were published more than once);
2. polling latency: `GET /jobs/{id}` at a fixed rate (default 200/s, open loop) while a job runs:
   p50/p99/max;
3. a large upload (default 300 MB, an uncompressed NIfTI) accepted: the API's memory growth
   (resident set sampled every 20 ms) and the time to 202;
4. submission load: 100 uploads from 10 concurrent clients (each validated before its 202).

Usage: .venv/bin/python bench/service.py [--jobs 20] [--rate 200] [--upload-mb 300]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import re
import secrets
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from benchmarks_md import write_section

from heartvec.phantom import make_phantom
from heartvec_testing.services import (  # the tests' harness: it starts the real processes
    FAST_RECOVERY,
    Service,
    postgres_database,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]

QUICK = {"resolution": 40, "refine_steps": 0}


def fault_run(service: Service, phantom: Path, jobs: int) -> dict[str, Any]:
    """Submit `jobs` at once; SIGKILL worker 0 while it runs a job, restart it, do it again."""
    started = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        responses = list(pool.map(lambda _: service.submit(phantom, **QUICK), range(jobs)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    ids = [r.json()["id"] for r in responses]
    victim = 0
    kills = []
    for _ in range(2):
        prefix = f"test{victim}@"  # the harness names worker i test<i>@<host>

        def busy(prefix: str = prefix) -> str | None:
            for job_id in ids:
                job = service.job(job_id)
                if job["status"] == "running" and (job["worker"] or "").startswith(prefix):
                    return job_id
            return None

        job_id = wait_for(busy, 300, f"a job running on {prefix}", every_s=0.1)
        service.workers[victim].kill()
        kills.append({"job": job_id, "worker": prefix, "at_s": time.perf_counter() - started})
        victim = len(service.workers)
        service.start_worker()

    def finished() -> list[dict[str, Any]] | None:
        states = [service.job(i) for i in ids]
        done = all(s["status"] in ("succeeded", "failed", "cancelled") for s in states)
        return states if done else None

    states = wait_for(finished, 1200, "every job to finish", every_s=1.0)
    elapsed = time.perf_counter() - started
    logs = "".join(w.output() for w in service.workers)
    published = Counter(re.findall(r"job (\S+): succeeded \(attempt", logs))
    result_dirs = sorted(p.name for p in (service.folder / "storage" / "results").iterdir())
    return {
        "jobs": jobs,
        "succeeded": sum(s["status"] == "succeeded" for s in states),
        "failed": sum(s["status"] == "failed" for s in states),
        "lost": sum(s["status"] not in ("succeeded", "failed", "cancelled") for s in states),
        "duplicated": sum(n > 1 for n in published.values()),
        "published": sum(published.values()),
        "result_folders": len(result_dirs),
        "attempts": dict(sorted(Counter(s["attempts"] for s in states).items())),
        "kills": kills,
        "elapsed_s": round(elapsed, 1),
    }


async def _poll(port: int, path: str, rate: float, seconds: float) -> list[float]:
    """Open loop: request i is due at i / rate s whatever the earlier ones are doing, and its
    latency counts from then (waiting for a free connection included). A bare HTTP/1.1
    keep-alive client, so that the load generator's own CPU use stays small next to the API's."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []

    async def one(due: float) -> None:
        reader, writer = await idle.get()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {head[:40]!r}")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        await reader.readexactly(int(length.group(1)) if length else 0)
        latencies.append(time.perf_counter() - due)
        idle.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait()[1].close()
    return latencies


def latency_run(service: Service, phantom: Path, rate: float, seconds: float) -> dict[str, Any]:
    """GET /jobs/{id} at `rate` per second while a long job runs."""
    job_id = service.submit(phantom, resolution=128, refine_steps=0).json()["id"]
    wait_for(lambda: service.job(job_id)["stage"] == "decode", 120, "the job to be decoding")
    latencies = asyncio.run(_poll(service.port, f"/jobs/{job_id}", rate, seconds))
    still = service.job(job_id)["status"]
    ms = np.array(latencies) * 1000
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "job_status_after": still,
        "latencies_ms": ms.tolist(),
    }


def submission_run(service: Service, phantom: Path, jobs: int, clients: int) -> dict[str, Any]:
    """`jobs` uploads from `clients` concurrent clients: POST latency and accepted per second.
    The jobs are cancelled afterwards (only accepting them is measured)."""

    def submit(_: int) -> tuple[float, str]:
        sent = time.perf_counter()
        response = service.submit(phantom, **QUICK)
        assert response.status_code == 202, response.text
        return time.perf_counter() - sent, response.json()["id"]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(submit, range(jobs)))
    elapsed = time.perf_counter() - started
    for _, job_id in answers:
        service.client.delete(f"/jobs/{job_id}")
    ms = np.array([seconds for seconds, _ in answers]) * 1000
    return {
        "jobs": jobs,
        "clients": clients,
        "upload_bytes": phantom.stat().st_size,
        "accepted_per_s": round(jobs / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def large_upload(service: Service, folder: Path, megabytes: int) -> dict[str, Any]:
    """An uncompressed int16 NIfTI of about `megabytes` MB with a phantom inside."""
    side = 512
    depth = max(64, int(megabytes * 1e6 / (side * side * 2)))
    labels = np.zeros((side, side, depth), dtype=np.int16)
    heart, _ = make_phantom(21, size=160, spacing=1.25)
    z0 = (depth - 160) // 2 if depth >= 160 else 0
    labels[176:336, 176:336, z0 : z0 + min(160, depth)] = heart[:, :, : min(160, depth)]
    path = folder / "large.nii"
    nib.save(nib.Nifti1Image(labels, np.diag([0.5, 0.5, 0.5, 1.0])), path)
    del labels, heart
    assert service.api is not None
    pid = service.api.handle.pid
    before = _rss_mb(pid)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - start, _rss_mb(pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    response = service.submit(path, **QUICK)
    answered = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert response.status_code == 202, response.text
    service.client.delete(f"/jobs/{response.json()['id']}")  # not the point: don't run it
    peak = max(rss for _, rss in samples)
    return {
        "bytes": path.stat().st_size,
        "shape": [side, side, depth],
        "status": response.status_code,
        "seconds_to_202": round(answered, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "growth_mb": round(peak - before, 1),
        "samples": samples,
    }


def plot(fault: dict[str, Any], latency: dict[str, Any], upload: dict[str, Any], out: Path):
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    left.bar(["succeeded", "failed", "lost", "duplicated"],
             [fault[k] for k in ("succeeded", "failed", "lost", "duplicated")],
             color=["tab:green", "tab:red", "tab:gray", "tab:orange"])  # fmt: skip
    left.set_title(f"{fault['jobs']} jobs, one worker SIGKILLed twice")
    middle.hist(latency["latencies_ms"], bins=60, color="tab:blue")
    middle.axvline(latency["p99_ms"], color="k", linestyle="--", label=f"p99 {latency['p99_ms']}")
    middle.axvline(50, color="tab:red", label="target 50 ms")
    middle.set(title=f"GET /jobs/{{id}} at {latency['rate_per_s']:g}/s during a job",
               xlabel="latency (ms)", ylabel="requests")  # fmt: skip
    middle.legend()
    t, rss = zip(*upload["samples"], strict=True)
    right.plot(t, np.array(rss) - upload["rss_before_mb"], color="tab:purple")
    right.axhline(50, color="tab:red", label="target 50 MB")
    right.set(title=f"API memory during a {upload['bytes'] / 1e6:.0f} MB upload",
              xlabel="seconds", ylabel="RSS growth (MB)")  # fmt: skip
    right.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--upload-mb", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="heartvec-bench-service-"))
    labels, affine = make_phantom(11, size=72, spacing=2.8)
    phantom = folder / "heart.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), phantom)
    redis_db = 1 + secrets.randbelow(15)
    with postgres_database() as database_url:
        env = {
            "HEARTVEC_DATABASE_URL": database_url,
            "HEARTVEC_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
            **FAST_RECOVERY,
            "HEARTVEC_STALE_AFTER_S": "10",
        }
        service = Service(folder / "service", env, embedded=False)
        service.folder.mkdir()
        try:
            service.start_api()
            service.start_worker()
            service.start_worker()
            fault = fault_run(service, phantom, args.jobs)
            print("faults:", fault)
            latency = latency_run(service, phantom, args.rate, args.seconds)
            print("latency:", {k: v for k, v in latency.items() if k != "latencies_ms"})
            upload = large_upload(service, folder, args.upload_mb)
            print("upload:", {k: v for k, v in upload.items() if k != "samples"})
            submissions = submission_run(service, phantom, 100, 10)
            print("submissions:", submissions)
        finally:
            service.stop()
    picture = REPO / "bench" / "results" / "service.png"
    picture.parent.mkdir(exist_ok=True)
    plot(fault, latency, upload, picture)
    today = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores"
    lines = [
        f"`bench/service.py` on {today} ({machine}; Postgres 15 and Redis 7 of this machine; "
        "API and two Celery workers on the CPU). Picture: `bench/results/service.png`.",
        "",
        "| target | measured | goal |",
        "|---|---|---|",
        f"| {fault['jobs']} jobs at once, one worker SIGKILLed twice mid-job | "
        f"{fault['succeeded']} succeeded, {fault['lost']} lost, {fault['duplicated']} duplicated "
        f"({fault['failed']} failed; attempts {fault['attempts']}; {fault['elapsed_s']} s) | "
        f"{fault['jobs']} succeeded, 0 lost, 0 duplicated |",
        f"| `GET /jobs/{{id}}` at {latency['rate_per_s']:g}/s for {latency['seconds']:g} s "
        f"while a job runs | p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, "
        f"max {latency['max_ms']} ms ({latency['requests']} requests) | p99 < 50 ms |",
        f"| {upload['bytes'] / 1e6:.0f} MB upload (uncompressed NIfTI {upload['shape']}) | "
        f"{upload['status']} after {upload['seconds_to_202']} s (streamed and validated); API "
        f"memory +{upload['growth_mb']} MB (RSS {upload['rss_before_mb']} -> peak "
        f"{upload['rss_peak_mb']} MB) | accepted, growth < 50 MB |",
        f"| {submissions['jobs']} uploads ({submissions['upload_bytes'] / 1e3:.0f} kB .nii.gz) "
        f"from {submissions['clients']} clients at once (load, no target) | "
        f"{submissions['accepted_per_s']} accepted/s, POST p50 {submissions['p50_ms']} ms, "
        f"p99 {submissions['p99_ms']} ms | - |",
    ]
    write_section("service", "Service", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
