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
import re
import time

import pytest

from testbed.backends import Backend
from testbed.envoy import (
    DEFAULT_ROUTES,
    ORIGINAL_DST_HOST,
    PIN_HEADER,
    ROUTING_HEADER,
    Resp,
    names,
    route,
)
from testbed.faulty_nacos import FaultyNacos, host
from testbed.higress import plugin_config
from testbed.rejections import assert_rejection
from testbed.rnacos import RNacos
from testbed.stack import Stack
from testbed.tables import print_table
from testbed.traffic import Traffic
from testbed.waiting import wait_until

POLL_FAILED = re.compile(r"polling service demo through \S+ failed: (.*?); keeping the last good snapshot")
WORKS_AGAIN = re.compile(r"polling service demo works again after (\d+) failures")
STALE = re.compile(r"Nacos has given no good answer for service demo for more than (\d+) ms")
LOGIN_FAILED = re.compile(r"nacos-instance-guard: login to \S+ failed: (.*?); retrying with backoff")
# the default two routes plus ``default/other``, which no rule of plugin.yaml matches
# (and the global configuration has no ``service``): the plugin must leave it alone
WITH_OTHER_ROUTE = [*DEFAULT_ROUTES, route("default/other", prefix="/other")]


def panic_lines(text: str, *marks: str) -> list:
    return [line for line in text.splitlines() if any(m in line for m in marks)]


# ------------------------------------------------------------ faults of the server

REFRESH_MS = 200
TIMEOUT_MS = 500
RECOVERY_MARGIN_S = 1.0
RSS_GROWTH_KB = 64 * 1024
ADMIN_LOGIN = {"nacos": {"username": "admin", "password": "admin"}}


def bad_hosts(a: Backend, b: Backend) -> list:
    # b is stale-only: in the Envoy cluster, never a good instance. An answer that the
    # plugin misread could send traffic there (e.g. port b.port + 65536 truncated to u16).
    return [
        host("127.0.0.1", b.port + 65536),
        host("127.0.0.1", 0),
        host("127.0.0.1", -1),
        host("127.0.0.1", 70000),
        host("not-an-ip", b.port),
        host("999.0.0.1", b.port),
        host("127.0.0.1.1", b.port),
        host("", b.port),
        host("localhost", b.port),
        host(f"127.0.0.1:{b.port}", b.port),
        host("127.0.0.1", 2**63 - 1),
    ]


def duplicate_hosts(a: Backend, b: Backend) -> list:
    return [
        host("127.0.0.1", a.port, weight=1),
        host("127.0.0.1", a.port, weight=7),
        host("127.0.0.1", a.port, healthy=False),
        host(" 127.0.0.1 ", a.port, weight=3),
    ]


def no_hosts(a: Backend, b: Backend) -> None:
    return None


# (test id, name in the table, FaultyNacos mode, fault hosts of (a, b), expected:
# "failure" or "taken"), run in this order on one gateway
FAULTS = [
    ("http-500", "HTTP 500", "status:500", no_hosts, "failure"),
    ("http-403", "HTTP 403", "status:403", no_hosts, "failure"),
    ("http-404", "HTTP 404", "status:404", no_hosts, "failure"),
    ("http-410", "HTTP 410", "status:410", no_hosts, "failure"),
    ("http-503", "HTTP 503", "status:503", no_hosts, "failure"),
    ("html", "HTML page", "html", no_hosts, "failure"),
    ("truncated-json", "truncated JSON", "truncated", no_hosts, "failure"),
    ("wrong-shape", "wrong shape (v3 envelope)", "wrong_shape", no_hosts, "failure"),
    ("6mb-body", "6 MB body", "huge", no_hosts, "failure"),
    ("only-bad-hosts", "only bad hosts", "hosts", bad_hosts, "failure"),
    (
        "bad-and-good-hosts",
        "bad + good hosts",
        "hosts",
        lambda a, b: [host("127.0.0.1", a.port)] + bad_hosts(a, b),
        "taken",
    ),
    ("duplicate-instances", "duplicate instances", "hosts", duplicate_hosts, "taken"),
    ("slow", "slow > timeoutMs", "slow", no_hosts, "failure"),
    ("reset", "reset, no answer", "reset", no_hosts, "failure"),
    ("closed-mid-answer", "closed mid-answer", "close_mid", no_hosts, "failure"),
    ("stalls-mid-answer", "stalls mid-answer", "stall_mid", no_hosts, "failure"),
    ("not-listening", "not listening", "not_listening", no_hosts, "failure"),
]


class FaultGateway:
    """One gateway in front of a FaultyNacos for the whole fault sequence; the rows of
    the printed table and Envoy's memory are collected over it."""

    def __init__(self, bed: Stack):
        self.bed = bed
        self.a, self.b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
        self.nacos = bed.nacos = bed.add(FaultyNacos([host("127.0.0.1", self.a.port)]))
        self.nacos.slow_s = 2 * TIMEOUT_MS / 1000
        cfg = plugin_config(
            {"refreshIntervalMs": REFRESH_MS, "maxStaleMs": 120_000, "nacos": {"timeoutMs": TIMEOUT_MS}}
        )
        self.envoy = bed.routing_gateway(cfg, expect={"backend-a"}, backends=[self.a, self.b])
        # warm up a little so that the baseline RSS is not the start-up's
        for _ in range(50):
            self.envoy.request("/demo")
        self.rss_before = self.envoy.rss_kb()
        self.rss_samples = [self.rss_before]
        self.rows: list = []
        self.dead = False


@pytest.fixture(scope="module")
def fault_gateway(tmp_path_factory):
    bed = Stack(tmp_path_factory.mktemp("faults"))
    try:
        gw = FaultGateway(bed)
    except BaseException:
        bed.owner.dump_logs()
        bed.owner.stop_all()
        raise
    yield gw
    print_table(
        f"faults of the Nacos server (refreshIntervalMs={REFRESH_MS}, timeoutMs={TIMEOUT_MS}, maxStaleMs=120000)",
        [
            "fault",
            "polls",
            "poll_failure+",
            "poll_success+",
            "to backend-a",
            "to stale b",
            "warnings",
            "recovery",
            "logged reason",
            "outcome",
        ],
        gw.rows,
    )
    if gw.envoy.proc is not None and gw.envoy.proc.alive():
        rss_after = gw.envoy.rss_kb()
        print(
            f"\nEnvoy VmRSS: before {gw.rss_before / 1024:.1f} MB, peak {max(gw.rss_samples) / 1024:.1f} MB, "
            f"after {rss_after / 1024:.1f} MB (growth {(rss_after - gw.rss_before) / 1024:+.1f} MB)"
        )
    bed.owner.stop_all()


@pytest.mark.parametrize(
    ("name", "mode", "fault_hosts", "expected"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_faults_nacos_misbehaves_snapshot_keeps_serving(fault_gateway, name, mode, fault_hosts, expected):
    gw = fault_gateway
    if gw.dead:
        pytest.fail("an earlier fault killed the Wasm VMs")
    envoy, nacos, b = gw.envoy, gw.nacos, gw.b
    off = envoy.log_size()
    f0, s0 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
    b0 = b.hits
    t0 = time.monotonic()
    problems = []
    nacos.set_fault(mode, fault_hosts(gw.a, b))
    s_first, recovery = None, None
    try:
        if expected == "failure":
            wait_until(lambda: envoy.guard_stat("poll_failure") >= f0 + 1, 8, 0.05, "first failure")
            s_first = envoy.guard_stat("poll_success")  # a good poll in flight at the switch may land
            wait_until(lambda: envoy.guard_stat("poll_failure") >= f0 + 4, 10, 0.05, "4 failures")
        else:
            wait_until(lambda: envoy.guard_stat("poll_success") >= s0 + 4, 8, 0.05, "4 polls taken")
    except TimeoutError as e:
        problems.append(str(e))
    got = names(envoy.send(20))
    gw.rss_samples.append(envoy.rss_kb())
    f1, s1 = envoy.guard_stat("poll_failure"), envoy.guard_stat("poll_success")
    usable = envoy.guard_stat("usable_instances")
    t_good = time.monotonic()
    nacos.heal()
    try:
        wait_until(lambda: envoy.guard_stat("poll_success") > s1, 10 if not problems else 2, 0.01, "recovery")
        if expected == "failure":
            recovery = time.monotonic() - t_good
            wait_until(lambda: WORKS_AGAIN.search(envoy.log_since(off)), 5, 0.05, "'works again' line")
    except TimeoutError as e:
        problems.append(str(e))
    got += names(envoy.send(10))
    text = envoy.log_since(off)
    warnings = POLL_FAILED.findall(text)
    again = WORKS_AGAIN.findall(text)
    panics = panic_lines(text, "panicked")
    polls = len(nacos.calls(since=t0))

    if panics:
        gw.dead = True  # the VMs are gone: later faults would only time out
        problems.insert(0, f"VM PANICKED ({len(panics)}x): " + text[text.index("panicked") :].splitlines()[1][:60])
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
    gw.rows.append(
        [
            name,
            polls,
            f1 - f0,
            s1 - s0,
            f"{got.count('backend-a')}/{len(got)}",
            b.hits - b0,
            len(warnings),
            f"{recovery * 1000:.0f} ms" if recovery is not None else "-",
            (warnings[0] if warnings else "-")[:44],
            "ok" if not problems else problems[0][:70],
        ]
    )
    if problems:
        print(f"----- envoy log during {name} (tail) -----\n{text[-6000:]}")
    rss_now = envoy.rss_kb()
    assert envoy.proc.alive()
    assert not problems, (name, problems)
    assert max(gw.rss_samples) - gw.rss_before < RSS_GROWTH_KB, (gw.rss_before, gw.rss_samples)
    assert rss_now - gw.rss_before < RSS_GROWTH_KB, (gw.rss_before, rss_now)


MAX_STALE_MS = 1500


def test_faults_stale_after_max_stale_ms_then_on_stale_applies(bed):
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    nacos = bed.add(FaultyNacos([host("127.0.0.1", a.port)]))
    bed.nacos = nacos
    cfg = plugin_config(
        {
            "refreshIntervalMs": REFRESH_MS,
            "maxStaleMs": MAX_STALE_MS,
            "onStale": "fail_closed",
            "nacos": {"timeoutMs": TIMEOUT_MS},
        }
    )
    envoy = bed.routing_gateway(nacos_port=nacos.port, backends=[a, b], plugin_cfg=cfg, expect={"backend-a"})
    off = envoy.log_size()
    with Traffic(envoy, interval=0.01) as tr:
        time.sleep(0.3)
        nacos.set_fault("status:500")
        t_fault = time.monotonic()
        time.sleep(MAX_STALE_MS / 1000 + 1.5)
        t_good = time.monotonic()
        nacos.heal()
        time.sleep(REFRESH_MS / 1000 + RECOVERY_MARGIN_S + 0.5)
    last_good = nacos.last_good_answer(before=t_good)
    during = [r for r in tr.records if r[0] >= t_fault and r[1] < t_good]
    first_stale = next(r for r in during if not (r[2] == 200 and r[3] == "backend-a"))
    served_for = first_stale[0] - last_good
    stale = [r for r in during if r[0] > first_stale[0]]
    recovered = next((r[0] for r in tr.records if r[0] > t_good and r[2] == 200), None)
    text = envoy.log_since(off)
    print(
        f"\n[stale] last good answer -> first registry_unavailable: {served_for * 1000:.0f} ms "
        f"(maxStaleMs={MAX_STALE_MS}); {len(stale)} requests rejected while stale; "
        f"recovered {(recovered - t_good) * 1000 if recovered else -1:.0f} ms after Nacos was good again; "
        f"stale warnings: {len(STALE.findall(text))}, poll warnings: {len(POLL_FAILED.findall(text))}"
    )
    assert MAX_STALE_MS / 1000 - 0.1 <= served_for <= MAX_STALE_MS / 1000 + REFRESH_MS / 1000 + 0.3, served_for
    assert all(r[0] < first_stale[0] + 0.001 or r[2] == 503 for r in during), collections.Counter(
        (r[2], r[3][:40]) for r in during
    )
    assert first_stale[2] == 503 and '"registry_unavailable"' in first_stale[3], first_stale
    assert len(stale) > 10
    assert recovered is not None and recovered - t_good <= REFRESH_MS / 1000 + RECOVERY_MARGIN_S
    late = [r for r in tr.records if r[0] > t_good + REFRESH_MS / 1000 + RECOVERY_MARGIN_S]
    assert late and all(r[2] == 200 and r[3] == "backend-a" for r in late)
    assert b.hits == 0
    assert len(STALE.findall(text)) == 1, STALE.findall(text)
    assert len(POLL_FAILED.findall(text)) == 1
    assert_rejection(
        Resp(first_stale[2], {"content-type": "application/json"}, first_stale[3]), code="registry_unavailable"
    )


# --------------------------------------------------------------- r-nacos restarts


def test_faults_rnacos_restart_with_and_without_its_data(bed):
    nacos = bed.add(RNacos(bed.workdir))
    bed.nacos = nacos
    nacos.start()
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    nacos.register(a.port)
    envoy = bed.routing_gateway(
        nacos_port=nacos.http_port,
        backends=[a, b],
        plugin_cfg=plugin_config({"refreshIntervalMs": 300}),
        expect={"backend-a"},
    )
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
    print(
        f"\n[r-nacos restart with data] down {t_up - t0:.2f} s, {len(during)} requests, "
        f"{collections.Counter((r[2], r[3]) for r in during)}, poll_failure +{f1 - f0}, "
        f"polling again {(t_polled - t_up) * 1000:.0f} ms after start"
    )
    assert [h["port"] for h in hosts] == [a.port]
    assert during and all(r[2] == 200 and r[3] == "backend-a" for r in during)
    assert f1 > f0
    assert b.hits == 0

    # 2. restart on a new, empty data dir: every instance is gone, and that is the truth
    nacos.stop()
    nacos.data_dir = bed.workdir / "rnacos-data-empty"
    nacos.data_dir.mkdir()
    nacos.start()
    t_up = time.monotonic()
    assert nacos.list()["hosts"] == []
    wait_until(lambda: envoy.request("/demo").status == 503, 300 / 1000 + 2.0, 0.02, "no_healthy_instance")
    detect = time.monotonic() - t_up
    hits = a.hits
    resps = [envoy.request("/demo") for _ in range(20)]
    print(
        f"[r-nacos restart without data] empty list obeyed {detect * 1000:.0f} ms after RNacos.start() returned "
        f"(it returns 0.6 s after the port opens): {collections.Counter(r.status for r in resps)}"
    )
    for r in resps:
        assert_rejection(r, code="no_healthy_instance")
    assert a.hits == hits and b.hits == 0
    assert envoy.guard_stat("usable_instances") == 0

    # and registering again brings traffic back
    nacos.register(a.port)
    wait_until(lambda: envoy.request("/demo").body == "backend-a", 3, 0.02, "routing again")


# ------------------------------------------------------------------------- logins


def test_faults_login_wrong_password_backs_off(bed):
    nacos = bed.add(RNacos(bed.workdir, auth=True))
    bed.nacos = nacos
    nacos.start()
    a = bed.add(Backend("backend-a"))
    nacos.register(a.port)
    secret = "Wr0ng-Pa55word"
    st, text = nacos.raw("POST", "/nacos/v1/auth/login", body={"username": "admin", "password": secret}, token=False)
    envoy = bed.gateway(
        nacos_port=nacos.http_port,
        backends=[a],
        plugin_cfg=plugin_config({"refreshIntervalMs": 200, "nacos": {"username": "admin", "password": secret}}),
    )
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 8.0:
        samples.append((round(time.monotonic() - t0, 1), envoy.guard_stat("login_failure", service=None)))
        time.sleep(0.25)
    fails = envoy.guard_stat("login_failure", service=None)
    steps = [t for (t, n), (_, m) in zip(samples, samples[1:], strict=False) if m > n]
    text_log = envoy.log_text()
    lines = LOGIN_FAILED.findall(text_log)
    r = envoy.request("/demo")
    print(
        f"\n[login wrong password] r-nacos answers a wrong password with {st} {text[:60]!r}; "
        f"login_failure={fails} in 8 s (counter rose at ~{steps} s); log lines: {lines}; "
        f"request -> {r.status} {r.body[:40]!r} passed_through={envoy.guard_stat('passed_through')}"
    )
    assert 2 <= fails <= 5, samples
    assert envoy.guard_stat("login_success", service=None) == 0
    assert envoy.guard_stat("poll_success") == 0
    assert len(lines) == 1, lines
    assert secret not in "\n".join(line for line in text_log.splitlines() if "nacos-instance-guard:" in line)
    # no snapshot ever: onStale (fail_open) applies
    assert r.status == 200 and envoy.guard_stat("passed_through") >= 1


def test_faults_token_with_very_short_ttl(bed):
    ttl = 1
    nacos = bed.add(RNacos(bed.workdir, auth=True, login_timeout=ttl))
    bed.nacos = nacos
    nacos.start()
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    nacos.register(a.port)
    assert int(nacos.login()["tokenTtl"]) == ttl
    envoy = bed.routing_gateway(
        nacos_port=nacos.http_port,
        backends=[a, b],
        plugin_cfg=plugin_config({"refreshIntervalMs": 200, **ADMIN_LOGIN}),
        expect={"backend-a"},
    )
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
    print(
        f"\n[tokenTtl={ttl}s] 6 s: logins={logins} poll_success=+{s1 - s0} poll_failure=+{f1 - f0} "
        f"login_failure={envoy.guard_stat('login_failure', service=None)} non-200={len(bad)}"
    )
    assert not bad, bad[:3]
    assert late and all(r[3] == "backend-b" for r in late)
    assert logins >= 4
    assert s1 - s0 >= 15
    assert f1 - f0 <= 2, "poll failures pile up with a short token lifetime"


def test_faults_token_revoked_early_by_the_server(bed):
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    nacos = bed.add(FaultyNacos([host("127.0.0.1", a.port)]))
    bed.nacos = nacos
    nacos.auth = True
    nacos.token_ttl_s = 3600  # promised an hour ...
    nacos.revoke_after_s = 1.0  # ... refused after a second
    envoy = bed.routing_gateway(
        nacos_port=nacos.port,
        backends=[a, b],
        plugin_cfg=plugin_config({"refreshIntervalMs": 200, **ADMIN_LOGIN}),
        expect={"backend-a"},
    )
    off = envoy.log_size()
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
    warnings = POLL_FAILED.findall(envoy.log_since(off))
    print(
        f"\n[token revoked after 1 s, tokenTtl 3600] 6 s: polls={len(calls)} 403s={statuses.count(403)} "
        f"longest 403 run={max(runs, default=0)} logins={logins} poll_failure=+{f1 - f0} warnings={len(warnings)}"
    )
    assert all(r[2] == 200 and r[3] == "backend-a" for r in tr.records)
    assert b.hits == 0
    assert max(runs, default=0) <= 1, statuses  # a 403 drops the token: the next poll has a new one
    assert 3 <= logins <= statuses.count(403) + 2
    assert statuses.count(200) >= 15
    assert len(warnings) <= statuses.count(403)


# ---------------------------------------------------------------- request inputs


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_faults_request_inputs_pins_and_forged_headers(bed, mode):
    nacos = bed.add(RNacos(bed.workdir))
    bed.nacos = nacos
    nacos.start()
    a, b = bed.add(Backend("backend-a", record_headers=True)), bed.add(Backend("backend-b", record_headers=True))
    c = bed.add(Backend("backend-c", record_headers=True))  # in the stale Envoy cluster, not in Nacos
    evil = bed.add(Backend("backend-evil", record_headers=True))  # not even in the cluster
    nacos.register(a.port)
    nacos.register(b.port)
    AB = {"backend-a", "backend-b"}
    envoy = bed.routing_gateway(
        nacos_port=nacos.http_port,
        backends=[a, b, c],
        plugin_cfg=plugin_config(),
        mode=mode,
        routes=WITH_OTHER_ROUTE,
        expect=AB,
    )
    pin = PIN_HEADER

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
            resps = [envoy.raw_request("/demo", hdrs) for _ in range(6)]
            got = names(resps)
        except Exception as e:  # noqa: BLE001
            resps, got = [], [repr(e)]
        # the VM must still be alive after each input: plain requests still routed
        r0 = envoy.guard_stat("routed")
        after = names([envoy.request("/demo") for _ in range(6)])
        routed_after = envoy.guard_stat("routed") - r0
        rows.append([name, dict(collections.Counter(got)), "ok" if routed_after == 6 else f"routed {routed_after}/6"])
        if not all(g in AB for g in got):
            problems.append(
                (
                    name,
                    "not routed to a healthy instance",
                    collections.Counter(got),
                    [r.body[:80] for r in resps if r.status != 200][:2],
                )
            )
        elif expect is not None and set(got) != expect:
            problems.append((name, f"expected {sorted(expect)}", collections.Counter(got)))
        if routed_after != 6 or set(after) != AB:
            problems.append(
                (name, "plain requests afterwards not routed by the plugin", routed_after, collections.Counter(after))
            )
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
            resps = [envoy.raw_request(path, hdrs) for _ in range(12)]
            got = collections.Counter(names(resps))
            seen = [h for be in (a, b, c) for h in be.seen_headers]
            leaked = [
                (k, v)
                for hs in seen
                for k, v in hs
                if k == ORIGINAL_DST_HOST or (k == ROUTING_HEADER and path != "/demo")
            ]
            if path == "/demo":
                # the plugin's own header, naming the instance that got the request
                own = [dict(hs).get(ROUTING_HEADER) for hs in a.seen_headers] + [
                    dict(hs).get(ROUTING_HEADER) for hs in b.seen_headers
                ]
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
            if (
                envoy.guard_stat("routed") != routed0
                or sum(envoy.guard_stat(k) for k in ("rejected", "passed_through")) != others0
            ):
                problems.append((path, "the plugin acted on a route it does not guard"))
    print_table(
        f"forged routing headers ({mode})",
        ["path", "forged", "answers (12)", "c hits", "evil hits", "leaked upstream"],
        frows,
    )

    # ---- an unguarded route is left alone: the stale cluster's own balancing (override_host)
    if mode == "override_host":
        for be in (a, b, c):
            be.reset()
        got = collections.Counter(names([envoy.request("/other") for _ in range(30)]))
        print(f"/other without headers: {dict(got)}")
        if set(got) != {"backend-a", "backend-b", "backend-c"}:
            problems.append(("/other", "not left to the cluster's round robin", got))

    log = envoy.log_text()
    panics = [
        line
        for line in log.splitlines()
        if "panicked" in line or "Wasm VM failed" in line or "wasm vm failed" in line.lower()
    ]
    if panics:
        problems.append(("envoy log", panics[:3]))
    assert not problems, problems


def test_faults_non_utf8_pin_header_does_not_kill_the_vm(bed):
    """A header value is bytes, not text: a client may send any octet above 0x7f, and
    Envoy passes it on. The pin must then name no instance; the VM must live on."""
    a, b, c = (bed.add(Backend(n)) for n in ("backend-a", "backend-b", "backend-c"))
    nacos = bed.add(FaultyNacos([host("127.0.0.1", a.port), host("127.0.0.1", b.port)]))
    bed.nacos = nacos
    AB = {"backend-a", "backend-b"}
    envoy = bed.routing_gateway(
        nacos_port=nacos.port, backends=[a, b, c], plugin_cfg=plugin_config(), routes=WITH_OTHER_ROUTE, expect=AB
    )

    rows, problems = [], []
    for name, value in [
        ("UTF-8 non-ASCII", "é:80".encode()),
        ("lone 0xff", b"\xff\xfe10.0.0.1:80"),
        ("bad sequence", f"127.0.0.1:{b.port}\xc3\x28".encode("latin-1")),
    ]:
        first = [envoy.raw_request("/demo", [(PIN_HEADER, value)]) for _ in range(4)]
        later = {p: names([envoy.request(p) for _ in range(9)]) for p in ("/demo", "/legacy", "/other")}
        rows.append(
            [name, dict(collections.Counter(names(first))), *(dict(collections.Counter(later[p])) for p in later)]
        )
        if not set(names(first)) <= AB:
            problems.append((name, "request with the pin not routed", names(first), first[0].body[:80]))
        if not set(later["/demo"]) <= AB or not all(
            x in AB | {"backend-c"} for p in ("/legacy", "/other") for x in later[p]
        ):
            problems.append((name, "the gateway fails afterwards", later))
    print_table(
        "non-UTF-8 pin headers, then plain requests on every route",
        ["pin bytes", "with pin (4)", "/demo after (9)", "/legacy after (9)", "/other after (9)"],
        rows,
    )
    panics = panic_lines(envoy.log_text(), "panicked", "failed: Uncaught")
    assert not problems and not panics, (problems, panics[:4])
