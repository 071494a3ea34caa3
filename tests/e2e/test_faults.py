"""Faults and hostile inputs, end to end (issue 5).

* Nacos misbehaving (``faulty_nacos.FaultyNacos`` in place of r-nacos behind the
  ``outbound|8848||nacos.dns`` cluster): error statuses, HTML, truncated or misshapen
  JSON, a 6 MB answer, bad and duplicate hosts, slowness beyond ``nacos.timeoutMs``, a
  connection closed mid-answer, nothing listening. For each: the last good snapshot
  keeps serving, ``poll_failure`` moves, one warning per failure streak, recovery within
  one interval, Envoy's memory bounded. Then staleness after ``maxStaleMs``.
* r-nacos restarted with its data and without it.
* Logins: a wrong password (counter, one clear log line, backoff, no tight loop); tokens
  that die early (a very short ``tokenTtl`` on r-nacos; tokens revoked by the server).
* Request inputs on a guarded route: bad, IPv6, long, repeated and non-UTF-8 pin
  headers; forged routing headers on guarded, ``enabled: false`` and unguarded routes.

Run with ``-s`` to see the tables.
"""

from __future__ import annotations

import collections
import http.client
import re
import time
from pathlib import Path

import pytest

from conftest import Traffic
from faulty_nacos import EchoBackend, FaultyNacos, RoutedEnvoy, host
from harness import ROUTING_HEADER, Backend, Envoy, RNacos, Resp, plugin_config, wait_until
from test_deregistration import assert_rejection

POLL_FAILED = re.compile(r"polling service demo through \S+ failed: (.*?); keeping the last good snapshot")
WORKS_AGAIN = re.compile(r"polling service demo works again after (\d+) failures")
STALE = re.compile(r"Nacos has given no good answer for service demo for more than (\d+) ms")
LOGIN_FAILED = re.compile(r"nacos-instance-guard: login to \S+ failed: (.*?); retrying with backoff")
ORIGINAL_DST_HOST = "x-envoy-original-dst-host"


# ----------------------------------------------------------------------------- rig


class Rig:
    """Processes of one test, stopped in teardown (logs dumped when the test failed)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.things: list = []
        self.envoys: list = []
        self.nacos = None

    def add(self, thing):
        self.things.append(thing)
        return thing

    def envoy(self, nacos_port: int, backends, cfg: dict, mode: str = "override_host", cls=Envoy) -> Envoy:
        e = cls(self.tmp, nacos_port, [b.port for b in backends], cfg, mode=mode)
        self.envoys.append(e)
        e.start()
        return e

    def teardown(self, failed: bool):
        if failed:
            for e in self.envoys:
                print(f"----- envoy log ({e.config_path.name}) tail -----")
                print(e.log_text()[-5000:])
            if isinstance(self.nacos, RNacos) and self.nacos.proc:
                print("----- r-nacos log tail -----")
                print(self.nacos.proc.log_text()[-2000:])
        for e in self.envoys:
            e.stop()
        for t in reversed(self.things):
            try:
                if isinstance(t, RNacos):
                    if t.proc:
                        t.proc.stop()
                else:
                    t.stop()
            except Exception as ex:  # noqa: BLE001
                print(f"teardown of {t!r}: {ex!r}")


@pytest.fixture
def rig(tmp_path, request):
    r = Rig(tmp_path)
    yield r
    r.teardown(getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed)


def log_since(envoy: Envoy, offset: int) -> str:
    return (envoy.workdir / f"envoy-{envoy.port}.log").read_bytes()[offset:].decode(errors="replace")


def log_size(envoy: Envoy) -> int:
    return (envoy.workdir / f"envoy-{envoy.port}.log").stat().st_size


def rss_kb(envoy: Envoy) -> int:
    for line in Path(f"/proc/{envoy.proc.p.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(envoy: Envoy, expect: str, n: int = 6):
    """Wait until every worker VM routes with the first snapshot (to ``expect``)."""
    def all_routed():
        r0 = envoy.guard_stat("routed")
        got = [envoy.request("/demo").body for _ in range(n)]
        return envoy.guard_stat("routed") - r0 == n and set(got) == {expect}
    wait_until(all_routed, 15, 0.05, "every worker VM routes with the first snapshot")


def raw_request(envoy: Envoy, path: str, headers: list, timeout: float = 5.0) -> Resp:
    """GET with a list of (name, value) pairs: repeated names and raw bytes allowed."""
    c = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=timeout)
    try:
        c.putrequest("GET", path)
        for k, v in headers:
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
    finally:
        c.close()


def print_table(title: str, header: list, rows: list):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(f"\n{title}")
    print(line.format(*header))
    print(line.format(*["-" * w for w in widths]))
    for r in rows:
        print(line.format(*[str(x) for x in r]))


# ------------------------------------------------------------ faults of the server

REFRESH_MS = 200
TIMEOUT_MS = 500
RECOVERY_MARGIN_S = 1.0


def fault_plan(a: Backend, b: Backend):
    """(name, mode, fault hosts, expected: "failure" or "taken")."""
    # b is stale-only: in the Envoy cluster, never a good instance. An answer that the
    # plugin misread could send traffic there (e.g. port b.port + 65536 truncated to u16).
    bad = [host("127.0.0.1", b.port + 65536), host("127.0.0.1", 0), host("127.0.0.1", -1),
           host("127.0.0.1", 70000), host("not-an-ip", b.port), host("999.0.0.1", b.port),
           host("127.0.0.1.1", b.port), host("", b.port), host("localhost", b.port),
           host(f"127.0.0.1:{b.port}", b.port), host("127.0.0.1", 2 ** 63 - 1)]
    dup = [host("127.0.0.1", a.port, weight=1), host("127.0.0.1", a.port, weight=7),
           host("127.0.0.1", a.port, healthy=False), host(" 127.0.0.1 ", a.port, weight=3)]
    return [
        ("HTTP 500", "status:500", None, "failure"),
        ("HTTP 403", "status:403", None, "failure"),
        ("HTTP 404", "status:404", None, "failure"),
        ("HTTP 410", "status:410", None, "failure"),
        ("HTTP 503", "status:503", None, "failure"),
        ("HTML page", "html", None, "failure"),
        ("truncated JSON", "truncated", None, "failure"),
        ("wrong shape (v3 envelope)", "wrong_shape", None, "failure"),
        ("6 MB body", "huge", None, "failure"),
        ("only bad hosts", "hosts", bad, "failure"),
        ("bad + good hosts", "hosts", [host("127.0.0.1", a.port)] + bad, "taken"),
        ("duplicate instances", "hosts", dup, "taken"),
        ("slow > timeoutMs", "slow", None, "failure"),
        ("reset, no answer", "reset", None, "failure"),
        ("closed mid-answer", "close_mid", None, "failure"),
        ("stalls mid-answer", "stall_mid", None, "failure"),
        ("not listening", "not_listening", None, "failure"),
    ]


def test_faults_nacos_misbehaves_snapshot_keeps_serving(rig):
    a, b = rig.add(Backend("backend-a")), rig.add(Backend("backend-b"))
    nacos = rig.add(FaultyNacos([host("127.0.0.1", a.port)]))
    rig.nacos = nacos
    nacos.slow_s = 2 * TIMEOUT_MS / 1000
    cfg = plugin_config({"refreshIntervalMs": REFRESH_MS, "maxStaleMs": 120_000,
                         "nacos": {"timeoutMs": TIMEOUT_MS}})
    envoy = rig.envoy(nacos.port, [a, b], cfg)
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    settle(envoy, "backend-a")
    # warm up a little so that the baseline RSS is not the start-up's
    for _ in range(50):
        envoy.request("/demo")
    rss_before = rss_kb(envoy)
    rss_peak = [rss_before]

    rows = []
    failures = []
    for name, mode, fault_hosts, expected in fault_plan(a, b):
        off = log_size(envoy)
        f0, s0 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
        b0 = b.hits
        t0 = time.monotonic()
        problems = []
        if mode == "not_listening":
            nacos.stop_listening()
        else:
            if fault_hosts is not None:
                nacos.fault_hosts = fault_hosts
            nacos.mode = mode
        got, s_first, usable, recovery = [], None, None, None
        try:
            if expected == "failure":
                wait_until(lambda: envoy.guard_stat("poll_failure") >= f0 + 1, 8, 0.05, "first failure")
                s_first = envoy.guard_stat("poll_success")  # a good poll in flight at the switch may land
                wait_until(lambda: envoy.guard_stat("poll_failure") >= f0 + 4, 10, 0.05, "4 failures")
            else:
                wait_until(lambda: envoy.guard_stat("poll_success") >= s0 + 4, 8, 0.05, "4 polls taken")
        except TimeoutError as e:
            problems.append(str(e))
        got = _names([envoy.request("/demo") for _ in range(20)])
        rss_peak.append(rss_kb(envoy))
        f1, s1 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
        usable = envoy.guard_stat("usable_instances")
        t_good = time.monotonic()
        if mode == "not_listening":
            nacos.start_listening()
        nacos.mode = "good"
        try:
            wait_until(lambda: envoy.guard_stat("poll_success") > s1, 10 if not problems else 2, 0.01, "recovery")
            if expected == "failure":
                recovery = time.monotonic() - t_good
                wait_until(lambda: WORKS_AGAIN.search(log_since(envoy, off)), 5, 0.05, "'works again' line")
        except TimeoutError as e:
            problems.append(str(e))
        got += _names([envoy.request("/demo") for _ in range(10)])
        text = log_since(envoy, off)
        warnings = POLL_FAILED.findall(text)
        again = WORKS_AGAIN.findall(text)
        panics = [l for l in text.splitlines() if "panicked" in l]
        polls = len(nacos.calls(since=t0))

        if panics:
            problems.insert(0, f"VM PANICKED ({len(panics)}x): " + text[text.index("panicked"):].splitlines()[1][:60])
        if any(g != "backend-a" for g in got):
            problems.append(f"requests not all to backend-a: {dict(collections.Counter(got))}")
        if b.hits != b0:
            problems.append("stale-only backend-b got requests")
        bound = REFRESH_MS / 1000 + RECOVERY_MARGIN_S + (TIMEOUT_MS / 1000 if mode in ("slow", "stall_mid") else 0)
        if recovery is not None and recovery > bound:
            problems.append(f"recovery {recovery:.2f}s > {bound:.2f}s")
        if expected == "failure":
            if s_first is not None and s1 != s_first:
                problems.append(f"poll_success moved during the fault ({s_first} -> {s1})")
            if len(warnings) != 1:
                problems.append(f"{len(warnings)} warnings for one failure streak")
            if len(again) != 1 or int(again[0]) < 4:
                problems.append(f"'works again' lines: {again}")
        else:
            if f1 != f0:
                problems.append(f"poll_failure moved ({f0} -> {f1}) for an answer that should be taken")
            if warnings:
                problems.append(f"warnings for a good answer: {warnings}")
            if usable != 1:
                problems.append(f"usable_instances {usable}, expected 1")
        rows.append([name, polls, f1 - f0, s1 - s0, f"{got.count('backend-a')}/{len(got)}", b.hits - b0,
                     len(warnings), f"{recovery * 1000:.0f} ms" if recovery is not None else "-",
                     (warnings[0] if warnings else "-")[:44], "ok" if not problems else problems[0][:70]])
        if problems:
            failures.append((name, problems))
        if panics:
            break  # the VMs are gone: later faults would only time out

    rss_after = rss_kb(envoy)
    print_table("faults of the Nacos server (refreshIntervalMs=200, timeoutMs=500, maxStaleMs=120000)",
                ["fault", "polls", "poll_failure+", "poll_success+", "to backend-a", "to stale b", "warnings",
                 "recovery", "logged reason", "outcome"], rows)
    print(f"\nEnvoy VmRSS: before {rss_before / 1024:.1f} MB, peak {max(rss_peak) / 1024:.1f} MB, "
          f"after {rss_after / 1024:.1f} MB (growth {(rss_after - rss_before) / 1024:+.1f} MB)")
    assert envoy.proc.alive()
    assert not failures, failures
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
    assert max(rss_peak) - rss_before < 64 * 1024, (rss_before, rss_peak)


MAX_STALE_MS = 1500


def test_faults_stale_after_max_stale_ms_then_on_stale_applies(rig):
    a, b = rig.add(Backend("backend-a")), rig.add(Backend("backend-b"))
    nacos = rig.add(FaultyNacos([host("127.0.0.1", a.port)]))
    rig.nacos = nacos
    cfg = plugin_config({"refreshIntervalMs": REFRESH_MS, "maxStaleMs": MAX_STALE_MS, "onStale": "fail_closed",
                         "nacos": {"timeoutMs": TIMEOUT_MS}})
    envoy = rig.envoy(nacos.port, [a, b], cfg)
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    settle(envoy, "backend-a")
    off = log_size(envoy)
    with Traffic(envoy, interval=0.01) as tr:
        time.sleep(0.3)
        nacos.mode = "status:500"
        t_fault = time.monotonic()
        time.sleep(MAX_STALE_MS / 1000 + 1.5)
        t_good = time.monotonic()
        nacos.mode = "good"
        time.sleep(REFRESH_MS / 1000 + RECOVERY_MARGIN_S + 0.5)
    last_good = max(t for t, _, path, mode, st in nacos.log if mode == "good" and st == 200 and t < t_good)
    during = [r for r in tr.records if r[0] >= t_fault and r[1] < t_good]
    first_stale = next(r for r in during if not (r[2] == 200 and r[3] == "backend-a"))
    served_for = first_stale[0] - last_good
    stale = [r for r in during if r[0] > first_stale[0]]
    recovered = next((r[0] for r in tr.records if r[0] > t_good and r[2] == 200), None)
    text = log_since(envoy, off)
    print(f"\n[stale] last good answer -> first registry_unavailable: {served_for * 1000:.0f} ms "
          f"(maxStaleMs={MAX_STALE_MS}); {len(stale)} requests rejected while stale; "
          f"recovered {(recovered - t_good) * 1000 if recovered else -1:.0f} ms after Nacos was good again; "
          f"stale warnings: {len(STALE.findall(text))}, poll warnings: {len(POLL_FAILED.findall(text))}")
    assert MAX_STALE_MS / 1000 - 0.1 <= served_for <= MAX_STALE_MS / 1000 + REFRESH_MS / 1000 + 0.3, served_for
    assert all(r[0] < first_stale[0] + 0.001 or r[2] == 503 for r in during), \
        collections.Counter((r[2], r[3][:40]) for r in during)
    assert first_stale[2] == 503 and '"registry_unavailable"' in first_stale[3], first_stale
    assert len(stale) > 10
    assert recovered is not None and recovered - t_good <= REFRESH_MS / 1000 + RECOVERY_MARGIN_S
    late = [r for r in tr.records if r[0] > t_good + REFRESH_MS / 1000 + RECOVERY_MARGIN_S]
    assert late and all(r[2] == 200 and r[3] == "backend-a" for r in late)
    assert b.hits == 0
    assert len(STALE.findall(text)) == 1, STALE.findall(text)
    assert len(POLL_FAILED.findall(text)) == 1
    assert_rejection(Resp(first_stale[2], {"content-type": "application/json"}, first_stale[3]),
                     code="registry_unavailable")


# --------------------------------------------------------------- r-nacos restarts


def test_faults_rnacos_restart_with_and_without_its_data(rig, tmp_path):
    nacos = rig.add(RNacos(tmp_path))
    rig.nacos = nacos
    nacos.start()
    a, b = rig.add(Backend("backend-a")), rig.add(Backend("backend-b"))
    nacos.register(a.port)
    envoy = rig.envoy(nacos.http_port, [a, b], plugin_config({"refreshIntervalMs": 300}))
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    settle(envoy, "backend-a")
    f0 = envoy.guard_stat("poll_failure")

    # 1. restart with its data: the persistent instance is still there, routing goes on
    with Traffic(envoy, interval=0.01) as tr:
        time.sleep(0.2)
        t0 = time.monotonic()
        nacos.stop()
        time.sleep(0.5)
        nacos.start()
        t_up = time.monotonic()
        hosts = nacos.list()["hosts"]
        s_up = envoy.guard_stat("poll_success")
        wait_until(lambda: envoy.guard_stat("poll_success") >= s_up + 2, 10, 0.02, "polls after restart")
        t_polled = time.monotonic()
        time.sleep(0.3)
    during = tr.since(t0)
    f1 = envoy.guard_stat("poll_failure")
    print(f"\n[r-nacos restart with data] down {t_up - t0:.2f} s, {len(during)} requests, "
          f"{collections.Counter((r[2], r[3]) for r in during)}, poll_failure +{f1 - f0}, "
          f"polling again {(t_polled - t_up) * 1000:.0f} ms after start")
    assert [h["port"] for h in hosts] == [a.port]
    assert during and all(r[2] == 200 and r[3] == "backend-a" for r in during)
    assert f1 > f0
    assert b.hits == 0

    # 2. restart on a new, empty data dir: every instance is gone, and that is the truth
    nacos.stop()
    nacos.data_dir = tmp_path / "rnacos-data-empty"
    nacos.data_dir.mkdir()
    nacos.start()
    t_up = time.monotonic()
    assert nacos.list()["hosts"] == []
    wait_until(lambda: envoy.request("/demo").status == 503, 300 / 1000 + 2.0, 0.02, "no_healthy_instance")
    detect = time.monotonic() - t_up
    hits = a.hits
    resps = [envoy.request("/demo") for _ in range(20)]
    print(f"[r-nacos restart without data] empty list obeyed {detect * 1000:.0f} ms after RNacos.start() returned "
          f"(it returns 0.6 s after the port opens): {collections.Counter(r.status for r in resps)}")
    for r in resps:
        assert_rejection(r, code="no_healthy_instance")
    assert a.hits == hits and b.hits == 0
    assert envoy.guard_stat("usable_instances") == 0

    # and registering again brings traffic back
    nacos.register(a.port)
    wait_until(lambda: envoy.request("/demo").body == "backend-a", 3, 0.02, "routing again")


# ------------------------------------------------------------------------- logins


def test_faults_login_wrong_password_backs_off(rig, tmp_path):
    nacos = rig.add(RNacos(tmp_path, auth=True))
    rig.nacos = nacos
    nacos.start()
    a = rig.add(Backend("backend-a"))
    nacos.register(a.port)
    secret = "Wr0ng-Pa55word"
    st, text = nacos.raw("POST", "/nacos/v1/auth/login", body={"username": "admin", "password": secret},
                         token=False)
    envoy = rig.envoy(nacos.http_port, [a], plugin_config({"refreshIntervalMs": 200,
                                                           "nacos": {"username": "admin", "password": secret}}))
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 8.0:
        samples.append((round(time.monotonic() - t0, 1), envoy.guard_stat("login_failure", service=None)))
        time.sleep(0.25)
    fails = envoy.guard_stat("login_failure", service=None)
    steps = [t for (t, n), (_, m) in zip(samples, samples[1:]) if m > n]
    text_log = envoy.log_text()
    lines = LOGIN_FAILED.findall(text_log)
    r = envoy.request("/demo")
    print(f"\n[login wrong password] r-nacos answers a wrong password with {st} {text[:60]!r}; "
          f"login_failure={fails} in 8 s (counter rose at ~{steps} s); log lines: {lines}; "
          f"request -> {r.status} {r.body[:40]!r} passed_through={envoy.guard_stat('passed_through')}")
    assert 2 <= fails <= 5, samples
    assert envoy.guard_stat("login_success", service=None) == 0
    assert envoy.guard_stat("poll_success") == 0
    assert len(lines) == 1, lines
    assert secret not in "\n".join(l for l in text_log.splitlines() if "nacos-instance-guard:" in l)
    # no snapshot ever: onStale (fail_open) applies
    assert r.status == 200 and envoy.guard_stat("passed_through") >= 1


def test_faults_token_with_very_short_ttl(rig, tmp_path):
    ttl = 1
    nacos = rig.add(RNacos(tmp_path, auth=True, login_timeout=ttl))
    rig.nacos = nacos
    nacos.start()
    a, b = rig.add(Backend("backend-a")), rig.add(Backend("backend-b"))
    nacos.register(a.port)
    assert int(nacos.login()["tokenTtl"]) == ttl
    envoy = rig.envoy(nacos.http_port, [a, b], plugin_config({"refreshIntervalMs": 200,
                                                              "nacos": {"username": "admin", "password": "admin"}}))
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    settle(envoy, "backend-a")
    f0, s0 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
    l0 = envoy.guard_stat("login_success", service=None)
    with Traffic(envoy, interval=0.02) as tr:
        time.sleep(3)
        nacos.register(b.port)
        nacos.deregister(a.port)
        t_switch = time.monotonic()
        time.sleep(3)
    f1, s1 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
    logins = envoy.guard_stat("login_success", service=None) - l0
    bad = [r for r in tr.records if r[2] != 200]
    late = [r for r in tr.records if r[0] > t_switch + 1.5]
    print(f"\n[tokenTtl={ttl}s] 6 s: logins={logins} poll_success=+{s1 - s0} poll_failure=+{f1 - f0} "
          f"login_failure={envoy.guard_stat('login_failure', service=None)} non-200={len(bad)}")
    assert not bad, bad[:3]
    assert late and all(r[3] == "backend-b" for r in late)
    assert logins >= 4
    assert s1 - s0 >= 15
    assert f1 - f0 <= 2, "poll failures pile up with a short token lifetime"


def test_faults_token_revoked_early_by_the_server(rig):
    a, b = rig.add(Backend("backend-a")), rig.add(Backend("backend-b"))
    nacos = rig.add(FaultyNacos([host("127.0.0.1", a.port)]))
    rig.nacos = nacos
    nacos.auth = True
    nacos.token_ttl_s = 3600  # promised an hour ...
    nacos.revoke_after_s = 1.0  # ... refused after a second
    envoy = rig.envoy(nacos.port, [a, b], plugin_config({"refreshIntervalMs": 200,
                                                         "nacos": {"username": "admin", "password": "admin"}}))
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    settle(envoy, "backend-a")
    off = log_size(envoy)
    t0 = time.monotonic()
    f0 = envoy.guard_stat("poll_failure")
    with Traffic(envoy, interval=0.02) as tr:
        time.sleep(6)
    f1 = envoy.guard_stat("poll_failure")
    calls = nacos.calls(since=t0)
    statuses = [c[4] for c in calls]
    logins = len(nacos.calls("/auth/login", since=t0))
    runs = [len(m.group(0)) for m in re.finditer(r"(F)+", "".join("F" if s == 403 else "." for s in statuses))]
    time.sleep(0.3)
    warnings = POLL_FAILED.findall(log_since(envoy, off))
    print(f"\n[token revoked after 1 s, tokenTtl 3600] 6 s: polls={len(calls)} 403s={statuses.count(403)} "
          f"longest 403 run={max(runs, default=0)} logins={logins} poll_failure=+{f1 - f0} warnings={len(warnings)}")
    assert all(r[2] == 200 and r[3] == "backend-a" for r in tr.records)
    assert b.hits == 0
    assert max(runs, default=0) <= 1, statuses  # a 403 drops the token: the next poll has a new one
    assert 3 <= logins <= statuses.count(403) + 2
    assert statuses.count(200) >= 15
    assert len(warnings) <= statuses.count(403)


# ---------------------------------------------------------------- request inputs


def _names(resps):
    return [r.body if r.status == 200 else r.status for r in resps]


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_faults_request_inputs_pins_and_forged_headers(rig, tmp_path, mode):
    nacos = rig.add(RNacos(tmp_path))
    rig.nacos = nacos
    nacos.start()
    a, b = rig.add(EchoBackend("backend-a")), rig.add(EchoBackend("backend-b"))
    c = rig.add(EchoBackend("backend-c"))  # in the stale Envoy cluster, not in Nacos
    evil = rig.add(EchoBackend("backend-evil"))  # not even in the cluster
    nacos.register(a.port)
    nacos.register(b.port)
    envoy = rig.envoy(nacos.http_port, [a, b, c], plugin_config(), mode=mode, cls=RoutedEnvoy)
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")

    def all_routed():
        r0 = envoy.guard_stat("routed")
        got = [envoy.request("/demo").body for _ in range(6)]
        return envoy.guard_stat("routed") - r0 == 6 and set(got) == {"backend-a", "backend-b"}
    wait_until(all_routed, 15, 0.05, "every VM routes")
    AB = {"backend-a", "backend-b"}
    pin = "x-nacos-instance"

    # ---- pins: (name, header list, expected set of backends or None for "any of A, B")
    pins = [
        ("valid pin A", [(pin, a.addr)], {"backend-a"}),
        ("not ip:port", [(pin, "not-an-endpoint")], AB),
        ("ip only", [(pin, "127.0.0.1")], AB),
        ("port 0", [(pin, "127.0.0.1:0")], AB),
        ("port b+65536", [(pin, f"127.0.0.1:{b.port + 65536}")], AB),
        ("host name", [(pin, f"localhost:{b.port}")], AB),
        ("list a,b", [(pin, f"{a.addr},{b.addr}")], AB),
        ("path suffix", [(pin, f"{b.addr}/x")], AB),
        ("leading zero octet", [(pin, f"127.0.0.01:{b.port}")], None),
        ("padded valid pin", [(pin, f"  {b.addr}  ")], None),
        ("IPv6 [::1]:port", [(pin, f"[::1]:{b.port}")], AB),
        ("IPv6 no brackets", [(pin, f"::1:{b.port}")], AB),
        ("IPv6 no port", [(pin, "[::1]")], AB),
        ("IPv4-mapped IPv6", [(pin, f"[::ffff:127.0.0.1]:{b.port}")], None),
        ("IPv6 zone", [(pin, f"[fe80::1%eth0]:{b.port}")], AB),
        ("8 KB digits", [(pin, "1" * 8192)], AB),
        ("8 KB of b,", [(pin, (b.addr + ",") * (8192 // (len(b.addr) + 1)))], AB),
        ("b + 8 KB spaces", [(pin, b.addr + " " * 8192)], None),
        ("stale c", [(pin, c.addr)], AB),
        ("not in cluster evil", [(pin, evil.addr)], AB),
        ("two pins a, b", [(pin, a.addr), (pin, b.addr)], None),
        ("two pins junk, b", [(pin, "junk"), (pin, b.addr)], None),
    ]
    rows = []
    problems = []
    for name, hdrs, expect in pins:
        try:
            resps = [raw_request(envoy, "/demo", hdrs) for _ in range(6)]
            got = _names(resps)
        except Exception as e:  # noqa: BLE001
            resps, got = [], [repr(e)]
        # the VM must still be alive after each input: plain requests still routed
        r0 = envoy.guard_stat("routed")
        after = _names([envoy.request("/demo") for _ in range(6)])
        routed_after = envoy.guard_stat("routed") - r0
        rows.append([name, dict(collections.Counter(got)), "ok" if routed_after == 6 else f"routed {routed_after}/6"])
        if not all(g in AB for g in got):
            problems.append((name, "not routed to a healthy instance", collections.Counter(got),
                             [r.body[:80] for r in resps if r.status != 200][:2]))
        elif expect is not None and set(got) != expect:
            problems.append((name, f"expected {sorted(expect)}", collections.Counter(got)))
        if routed_after != 6 or set(after) != AB:
            problems.append((name, "plain requests afterwards not routed by the plugin",
                             routed_after, collections.Counter(after)))
    print_table(f"pin headers on the guarded route ({mode})", ["pin", "answers (6 requests)", "VM after"], rows)

    # ---- forged routing headers on guarded, enabled:false and unguarded routes
    for be in (a, b, c, evil):
        be.reset()
    forged = [
        ("routing header = c", [(ROUTING_HEADER, c.addr)]),
        ("routing header = evil", [(ROUTING_HEADER, evil.addr)]),
        ("original-dst = c", [(ORIGINAL_DST_HOST, c.addr)]),
        ("original-dst = evil", [(ORIGINAL_DST_HOST, evil.addr)]),
        ("routing header twice", [(ROUTING_HEADER, c.addr), (ROUTING_HEADER, evil.addr)]),
        ("both + pin to c", [(ROUTING_HEADER, c.addr), (ORIGINAL_DST_HOST, c.addr), (pin, c.addr)]),
        ("Mixed-Case name", [("X-Gateway-Destination-Endpoint", c.addr)]),
    ]
    frows = []
    for path in ("/demo", "/legacy", "/other"):
        routed0 = envoy.guard_stat("routed")
        others0 = sum(envoy.guard_stat(k) for k in ("rejected", "passed_through"))
        for name, hdrs in forged:
            for be in (a, b, c, evil):
                be.reset()
            resps = [raw_request(envoy, path, hdrs) for _ in range(12)]
            got = collections.Counter(_names(resps))
            seen = [h for be in (a, b, c) for h in be.seen_headers]
            leaked = [(k, v) for hs in seen for k, v in hs if k == ORIGINAL_DST_HOST
                      or (k == ROUTING_HEADER and path != "/demo")]
            if path == "/demo":
                # the plugin's own header, naming the instance that got the request
                own = [dict(hs).get(ROUTING_HEADER) for hs in a.seen_headers] + \
                      [dict(hs).get(ROUTING_HEADER) for hs in b.seen_headers]
                if not all(v in (a.addr, b.addr) for v in own) or set(got) - {"backend-a", "backend-b"}:
                    problems.append((path, name, got, own[:3]))
            frows.append([path, name, dict(got), c.hits, evil.hits, leaked[:1] or "-"])
            if path != "/demo" and mode == "original_dst":
                # without the (removed) header ORIGINAL_DST has no destination: Envoy's
                # own 503, not a plugin rejection
                if any(r.status != 503 or r.body != "no healthy upstream" for r in resps):
                    problems.append((path, name, "expected Envoy's own 'no healthy upstream'", got))
            if evil.hits or leaked or (path == "/demo" and c.hits):
                problems.append((path, name, "steered or leaked", got, c.hits, evil.hits, leaked[:2]))
            if path != "/demo" and mode == "override_host" and c.hits == 12:
                problems.append((path, name, "every request went to the forged host c"))
        if path != "/demo":
            if envoy.guard_stat("routed") != routed0 or \
                    sum(envoy.guard_stat(k) for k in ("rejected", "passed_through")) != others0:
                problems.append((path, "the plugin acted on a route it does not guard"))
    print_table(f"forged routing headers ({mode})", ["path", "forged", "answers (12)", "c hits", "evil hits",
                                                     "leaked upstream"], frows)

    # ---- an unguarded route is left alone: the stale cluster's own balancing (override_host)
    if mode == "override_host":
        for be in (a, b, c):
            be.reset()
        got = collections.Counter(_names([envoy.request("/other") for _ in range(30)]))
        print(f"/other without headers: {dict(got)}")
        if set(got) != {"backend-a", "backend-b", "backend-c"}:
            problems.append(("/other", "not left to the cluster's round robin", got))

    log = envoy.log_text()
    panics = [l for l in log.splitlines() if "panicked" in l or "Wasm VM failed" in l or "wasm vm failed" in l.lower()]
    if panics:
        problems.append(("envoy log", panics[:3]))
    assert not problems, problems


def test_faults_non_utf8_pin_header_does_not_kill_the_vm(rig):
    """A header value is bytes, not text: a client may send any octet above 0x7f, and
    Envoy passes it on. The pin must then name no instance; the VM must live on."""
    a, b, c = (rig.add(Backend(n)) for n in ("backend-a", "backend-b", "backend-c"))
    nacos = rig.add(FaultyNacos([host("127.0.0.1", a.port), host("127.0.0.1", b.port)]))
    rig.nacos = nacos
    envoy = rig.envoy(nacos.port, [a, b, c], plugin_config(), cls=RoutedEnvoy)
    wait_until(lambda: envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    AB = {"backend-a", "backend-b"}

    def all_routed():
        r0 = envoy.guard_stat("routed")
        got = [envoy.request("/demo").body for _ in range(6)]
        return envoy.guard_stat("routed") - r0 == 6 and set(got) == AB
    wait_until(all_routed, 15, 0.05, "every VM routes")

    rows, problems = [], []
    for name, value in [("UTF-8 non-ASCII", "é:80".encode()), ("lone 0xff", b"\xff\xfe10.0.0.1:80"),
                        ("bad sequence", f"127.0.0.1:{b.port}\xc3\x28".encode("latin-1"))]:
        first = [raw_request(envoy, "/demo", [("x-nacos-instance", value)]) for _ in range(4)]
        later = {p: _names([envoy.request(p) for _ in range(9)]) for p in ("/demo", "/legacy", "/other")}
        rows.append([name, dict(collections.Counter(_names(first))),
                     *(dict(collections.Counter(later[p])) for p in later)])
        if not set(_names(first)) <= AB:
            problems.append((name, "request with the pin not routed", _names(first), first[0].body[:80]))
        if not set(later["/demo"]) <= AB or not all(x in AB | {"backend-c"} for p in ("/legacy", "/other")
                                                   for x in later[p]):
            problems.append((name, "the gateway fails afterwards", later))
    print_table("non-UTF-8 pin headers, then plain requests on every route",
                ["pin bytes", "with pin (4)", "/demo after (9)", "/legacy after (9)", "/other after (9)"], rows)
    panics = [l for l in envoy.log_text().splitlines() if "panicked" in l or "failed: Uncaught" in l]
    assert not problems and not panics, (problems, panics[:4])
