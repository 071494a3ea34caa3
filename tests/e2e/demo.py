#!/usr/bin/env python3
"""Live demo of scenario 2: r-nacos, Envoy with nacos-instance-guard, backends A and B.

A steady stream of requests (one every 100 ms) goes to the gateway; each second the
timeline prints where they landed. A and B are deregistered one by one through the
Nacos OpenAPI (persistent instances), then B is registered again. The Envoy cluster keeps
listing both backends the whole time, as a Higress gateway does; only the plugin knows.

Env: NIG_ENVOY, NIG_RNACOS, NIG_PLUGIN_WASM (see harness.py for defaults).
"""

import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Backend, Envoy, RNacos, plugin_config, plugin_wasm, wait_until  # noqa: E402

INTERVAL = 0.1


def main() -> int:
    if not os.path.exists(plugin_wasm()):
        print(f"plugin artifact {plugin_wasm()} missing: run `make build` first", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="nig-demo-"))
    started = []
    records = []  # (t, label)
    events = []  # (t, text)
    stop = threading.Event()
    t0 = [time.monotonic()]

    def now():
        return time.monotonic() - t0[0]

    def event(text):
        events.append((now(), text))
        print(f"  t={now():5.1f}s  >>> {text}", flush=True)

    try:
        nacos = RNacos(tmp)
        nacos.start()
        started.append(nacos)
        a, b = Backend("backend-a"), Backend("backend-b")
        started += [a, b]
        print(f"r-nacos on 127.0.0.1:{nacos.http_port}; backend-a on {a.addr}; backend-b on {b.addr}")
        nacos.register(a.port)
        nacos.register(b.port)
        envoy = Envoy(tmp, nacos.http_port, [a.port, b.port], plugin_config())
        envoy.start()
        started.append(envoy)
        print(f"Envoy gateway on 127.0.0.1:{envoy.port} (admin {envoy.admin_port}); its cluster lists A and B "
              f"and never changes. Plugin config from plugin.yaml, refreshIntervalMs=1000.")
        wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")

        envoy.wait_all_workers_route(timeout=10)

        def traffic():
            while not stop.is_set():
                try:
                    r = envoy.request("/demo", timeout=3)
                    if r.status == 200:
                        label = r.body
                    else:
                        try:
                            label = f"{r.status} {r.json().get('code')}"
                        except Exception:  # noqa: BLE001
                            label = f"{r.status}"
                except Exception as e:  # noqa: BLE001
                    label = f"error {type(e).__name__}"
                records.append((now(), label))
                stop.wait(INTERVAL)

        t0[0] = time.monotonic()
        th = threading.Thread(target=traffic, daemon=True)
        th.start()

        printed = [0]

        def print_seconds(upto):
            while printed[0] + 1 <= upto:
                s = printed[0]
                c = collections.Counter(lbl for t, lbl in records if s <= t < s + 1)
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
        nacos.deregister(a.port)
        t_a = now()
        event(f"deregistered backend-a (persistent) at t={t_a:.2f}s")
        run_until(t_a + 4)
        la = last_hit_after(a, t_a)
        event(f"last request reached backend-a at t={la:.2f}s ({(la - t_a) * 1000:.0f} ms after deregistration)"
              if la else "no request reached backend-a after its deregistration")
        nacos.deregister(b.port)
        t_b = now()
        event(f"deregistered backend-b at t={t_b:.2f}s: Nacos now lists no instance of `demo`")
        run_until(t_b + 4)
        lb = last_hit_after(b, t_b)
        event(f"last request reached backend-b at t={lb:.2f}s ({(lb - t_b) * 1000:.0f} ms after deregistration)"
              if lb else "no request reached backend-b after its deregistration")
        r = envoy.request("/demo")
        event(f"gateway now rejects: {r.status} {r.body}")
        nacos.register(b.port)
        t_r = now()
        event(f"re-registered backend-b at t={t_r:.2f}s")
        run_until(t_r + 4)
        first_back = next((t for t, lbl in records if t >= t_r and lbl == "backend-b"), None)
        if first_back is not None:
            event(f"traffic back on backend-b at t={first_back:.2f}s ({(first_back - t_r) * 1000:.0f} ms after re-registration)")
        stop.set()
        th.join(5)
        print_seconds(int(now()))
        st = envoy.stats()
        print("\nPlugin metrics:")
        for k in sorted(st):
            if "nacos_guard" in k:
                print(f"  {k} = {st[k]}")
        print("\nWithout the plugin this gateway would keep sending half of the requests to backend-a, "
              "and all of them to A and B after both were deregistered (see tests/e2e/test_harness.py).")
        return 0
    finally:
        stop.set()
        for p in reversed(started):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                print(f"stopping {p}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
