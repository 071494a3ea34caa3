"""Safety-poll spread with push at 1,000 services (issue 26): one gateway
(--concurrency 1) guarding ``--services`` services with push on at the default
``safetyIntervalMs``, against r-nacos 0.8.8 and against the Java-semantics gRPC server
(``tests/testbed/java_grpc_nacos.py``; HTTP polls go to r-nacos in both runs). Once every
subscription is answered, the HTTP list calls to the Nacos cluster
(``upstream_rq_total``) are sampled every 0.1 s over one safety interval plus 5 s and
counted per second: the busiest second against the mean. Goal: busiest <= 2 x mean, and
at most one list call per service per minute.

    make push-spread     # or: NIG_... python bench/push_spread.py [--services N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gateways import NACOS_STAT, OWNER, gateway  # noqa: E402
from measure import log  # noqa: E402
from push import push_settings, wait_subscribed  # noqa: E402
from scale import scale_routes  # noqa: E402

from testbed.backends import Backend  # noqa: E402
from testbed.higress import deep_merge  # noqa: E402
from testbed.java_grpc_nacos import JavaGrpcNacos, JavaRules  # noqa: E402
from testbed.rnacos import RNacos  # noqa: E402
from testbed.waiting import wait_until  # noqa: E402

POLL_STAT = r"^wasmcustom\.nacos_guard\.service\.public\.DEFAULT_GROUP\.svc-\d+\.poll_success$"


def settle(e, count: int) -> None:
    """Every service polled once, then every subscription pushed its list."""
    wait_until(
        lambda: sum(v >= 1 for v in e.stats(POLL_STAT).values()) == count, 180, 0.2, f"first poll of {count} services"
    )
    wait_subscribed(e, count)


def spread(e, seconds: float) -> dict:
    """List calls per second over ``seconds``, from samples every 0.1 s."""
    samples = []
    t0 = time.monotonic()
    while time.monotonic() < t0 + seconds:
        samples.append((time.monotonic() - t0, e.stat(f"{NACOS_STAT}.upstream_rq_total")))
        time.sleep(0.1)
    bins = [0] * int(seconds)
    for (_, before), (t, after) in zip(samples, samples[1:], strict=False):
        if int(t) < len(bins):
            bins[int(t)] += after - before
    total = sum(bins)
    mean = total / len(bins)
    return {"seconds": len(bins), "calls": total, "mean": mean, "busiest": max(bins), "ratio": max(bins) / mean}


def run(name: str, work: Path, nacos: RNacos, grpc_port: int, count: int, backend: Backend) -> dict:
    routes, rules_cfg = scale_routes(count)
    cfg = deep_merge(rules_cfg, push_settings())
    safety_s = cfg["nacos"]["push"].get("safetyIntervalMs", 60_000) / 1000
    e = gateway(work, nacos.http_port, [backend.port], cfg, 1, routes=routes, nacos_grpc_port=grpc_port)
    settle(e, count)
    out = spread(e, safety_s + 5)
    out["per_service_per_minute"] = out["calls"] / count / out["seconds"] * 60
    out["push_failures"] = e.guard_stat("push_failures", service=None)
    log(
        f"{name}: {count} services, safety {safety_s:.0f} s: {out['calls']} list calls in {out['seconds']} s, "
        f"mean {out['mean']:.1f}/s, busiest second {out['busiest']} ({out['ratio']:.2f} x the mean), "
        f"{out['per_service_per_minute']:.2f} per service per minute, {out['push_failures']} push failures"
    )
    OWNER.stop(e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nig-push-spread-"))
    try:
        nacos = OWNER.add(RNacos(work))
        nacos.start()
        backend = OWNER.add(Backend("backend-a"))
        jobs = [(f"svc-{s}", f"10.{s // 250}.{s % 250}.1", 8080) for s in range(args.services)]
        secs, failed = nacos.register_many(jobs)
        log(f"registered {len(jobs)} services in r-nacos in {secs:.1f} s, {failed} failed")
        java = OWNER.add(JavaGrpcNacos(JavaRules()))
        for service, ip, port in jobs:
            java.register(port, ip=ip, service=service)
        results = {
            "r-nacos 0.8.8": run("r-nacos 0.8.8", work, nacos, nacos.grpc_port, args.services, backend),
            "Java-semantics server": run("Java-semantics server", work, nacos, java.port, args.services, backend),
        }
    finally:
        OWNER.stop_all()
    met = all(r["ratio"] <= 2 and r["per_service_per_minute"] <= 1.0 for r in results.values())
    print(f"goal (busiest second <= 2 x mean, <= 1 list call per service per minute): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
