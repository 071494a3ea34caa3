#!/usr/bin/env python3
"""Live demo of scenario 2: r-nacos, Envoy with nacos-instance-guard, backends A and B.

A steady stream of requests (one every 100 ms) goes to the gateway; each second the
timeline prints where they landed. A and B are deregistered one by one through the
Nacos OpenAPI (persistent instances), then B is registered again. The Envoy cluster keeps
listing both backends the whole time, as a Higress gateway does; only the plugin knows.

Env: NIG_ENVOY, NIG_RNACOS, NIG_PLUGIN_WASM (see tests/testbed/paths.py for defaults).
"""

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.envoy import wait_every_worker_routes, wait_first_poll  # noqa: E402
from testbed.higress import plugin_config  # noqa: E402
from testbed.paths import missing_plugin  # noqa: E402
from testbed.stack import Stack  # noqa: E402
from testbed.traffic import Traffic  # noqa: E402

INTERVAL = 0.1


def label(record) -> str:
    """What one answer was: the backend, the rejection's status and code, or the error."""
    _t, _t1, status, body = record
    if status == 200:
        return body
    if status == -1:
        return f"error {body.split('(')[0]}"
    try:
        return f"{status} {json.loads(body).get('code')}"
    except Exception:  # noqa: BLE001
        return f"{status}"


def main() -> int:
    if missing_plugin():
        print(missing_plugin(), file=sys.stderr)
        return 2
    stack = Stack(Path(tempfile.mkdtemp(prefix="nig-demo-")))
    events = []  # (t, text)
    t0 = [time.monotonic()]

    def now():
        return time.monotonic() - t0[0]

    def event(text):
        events.append((now(), text))
        print(f"  t={now():5.1f}s  >>> {text}", flush=True)

    try:
        nacos = stack.start_registry(["backend-a", "backend-b"])
        a, b = stack.be("backend-a"), stack.be("backend-b")
        print(f"r-nacos on 127.0.0.1:{nacos.http_port}; backend-a on {a.addr}; backend-b on {b.addr}")
        envoy = stack.start_gateway(plugin_config())
        print(
            f"Envoy gateway on 127.0.0.1:{envoy.port} (admin {envoy.admin_port}); its cluster lists A and B "
            f"and never changes. Plugin config from plugin.yaml, refreshIntervalMs=1000."
        )
        wait_first_poll(envoy)
        wait_every_worker_routes(envoy, timeout=10)

        t0[0] = time.monotonic()
        traffic = stack.add(Traffic(envoy, "/demo", INTERVAL).start())

        def records():
            return [(r[0] - t0[0], label(r)) for r in list(traffic.records)]

        printed = [0]

        def print_seconds(upto):
            while printed[0] + 1 <= upto:
                s = printed[0]
                c = collections.Counter(lbl for t, lbl in records() if s <= t < s + 1)
                desc = ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "-"
                print(f"  t={s:2d}-{s + 1:2d}s  {desc}", flush=True)
                printed[0] += 1

        def run_until(t):
            while now() < t:
                time.sleep(0.05)
                print_seconds(int(now()))

        def last_hit_after(be, t_ev):
            last = be.last_hit()
            return None if last is None or last - t0[0] < t_ev else last - t0[0]

        print("\nTimeline (requests every 100 ms to GET /demo):")
        run_until(4)

        def deregister_and_watch(be, what):
            nacos.deregister(be.port)
            t_ev = now()
            event(what.format(t=t_ev))
            run_until(t_ev + 4)
            last = last_hit_after(be, t_ev)
            event(
                f"last request reached {be.name} at t={last:.2f}s ({(last - t_ev) * 1000:.0f} ms after deregistration)"
                if last
                else f"no request reached {be.name} after its deregistration"
            )

        deregister_and_watch(a, "deregistered backend-a (persistent) at t={t:.2f}s")
        deregister_and_watch(b, "deregistered backend-b at t={t:.2f}s: Nacos now lists no instance of `demo`")
        r = envoy.request("/demo")
        event(f"gateway now rejects: {r.status} {r.body}")
        nacos.register(b.port)
        t_r = now()
        event(f"re-registered backend-b at t={t_r:.2f}s")
        run_until(t_r + 4)
        first_back = next((t for t, lbl in records() if t >= t_r and lbl == "backend-b"), None)
        if first_back is not None:
            lag_ms = (first_back - t_r) * 1000
            event(f"traffic back on backend-b at t={first_back:.2f}s ({lag_ms:.0f} ms after re-registration)")
        stack.owner.stop(traffic)
        print_seconds(int(now()))
        st = envoy.stats()
        print("\nPlugin metrics:")
        for k in sorted(st):
            if "nacos_guard" in k:
                print(f"  {k} = {st[k]}")
        print(
            "\nWithout the plugin this gateway would keep sending half of the requests to backend-a, "
            "and all of them to A and B after both were deregistered (see tests/e2e/test_testbed.py)."
        )
        return 0
    finally:
        stack.owner.stop_all()


if __name__ == "__main__":
    sys.exit(main())
