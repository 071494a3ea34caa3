"""The report: one table of every measure with its goal and verdict, the details of
every run, written to bench/results.md."""

from __future__ import annotations

import sys
import time

from gateways import HERE
from higress_path import GOAL, HOST_COUNTS
from instructions import MINIMAL_HOST_CALLS, MINIMAL_PLAIN, PLUGIN_GUARDED
from measure import fmt_kb, fmt_profile, median
from overhead import AGREE, BASES, MINIMAL, NO_FILTER, ROUTE_FLOOR, agreement, fmt_ratio, goals, ratio
from scale import FLOOR, FLOOR_CALLS, fmt_rest

RESULTS_MD = HERE / "results.md"


def build_report(res: dict, args) -> tuple:
    """(table, details) as markdown."""
    rows = []  # (measure, result, goal, verdict)

    def row(measure, result, goal="", verdict=""):
        rows.append((measure, result, goal, verdict))

    if "sizes" in res:
        for k, v in res["sizes"].items():
            goal = "< 300 KB" if k.startswith("build/") else ""
            verdict = ("met" if v is not None and v < 300_000 else "missed") if goal else ""
            row(f"size of {k}", f"{v / 1000:.1f} KB" if v else "missing", goal, verdict)
    if "criterion" in res:
        for n, t in res["criterion"]:
            row(f"native: {n}", t)
    if "overhead" in res:
        overhead_rows(res["overhead"], row)
    if "instructions" in res:
        instruction_rows(res["instructions"], row)
    if "higress" in res:
        higress_rows(res["higress"], row)
    if "detection" in res:
        for iv, d in res["detection"].items():
            goal = iv + 100
            row(
                f"detection at {iv} ms ({d['trials']} trials)",
                f"p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, max {d['max']:.0f} ms",
                f"p99 < {goal} ms",
                "met" if d["p99"] < goal else f"missed by {d['p99'] - goal:.0f} ms",
            )
            row(
                f"detection at {iv} ms, split: deregistration -> next poll answer; poll answer -> last request "
                f"(followers adopting, requests in flight)",
                f"p50 {d['to_poll_p50']:.0f}, max {d['to_poll_max']:.0f} ms; p50 {d['after_poll_p50']:.0f}, "
                f"p99 {d['after_poll_p99']:.0f}, max {d['after_poll_max']:.0f} ms",
            )
    if "detection_push" in res:
        detection_push_rows(res["detection_push"], row)
    if "learned" in res:
        learned = res["learned"]
        row(
            f"guardNacosRoutes: first request to a new service -> its first poll done "
            f"({len(learned['first_poll_ms'])} services)",
            f"p50 {learned['first_poll_p50_ms']:.0f} ms, max {max(learned['first_poll_ms']):.0f} ms",
        )
        known = {name: median([r["cpu_us_per_request"] for r in runs]) for name, runs in learned["runs"].items()}
        rps = {name: median([r["rps"] for r in runs]) for name, runs in learned["runs"].items()}
        configured, learned_name = list(known)
        row(
            "guardNacosRoutes: once known, learned / configured (same gateway, alternating rounds)",
            f"gateway CPU per request {known[learned_name]:.1f} / {known[configured]:.1f} us = "
            f"{known[learned_name] / known[configured]:.3f}; throughput {rps[learned_name] / rps[configured]:.3f}",
        )
    if "load" in res:
        for conc, load in res["load"].items():
            row(
                f"Nacos requests per service per interval, concurrency {conc} ({load['vms']} VMs)",
                f"{load['per_interval']:.2f}",
                "1",
                "met" if load["per_interval"] <= 1.15 else "missed",
            )
    if "load_push" in res:
        load_push_rows(res["load_push"], res.get("load", {}), row)
    if "registration" in res:
        r = res["registration"]
        row(
            "registering instances in r-nacos (16 threads, keep-alive)",
            f"{r['count']} in {r['seconds']:.1f} s, {r['failed']} failed",
        )
    if "scale" in res:
        sc = res["scale"]
        first = min(sc)
        base = sc[first]
        for n, o in sc.items():
            ok_round = o["first_round_s"] <= 1.0 and o["per_service_interval"] <= 1.12 and o["active_max"] <= 32
            row(
                f"scale {n} services: first poll round (all due at once) / steady round; "
                f"polls per service per interval; Nacos calls in flight (max of {o['active_samples']} samples)",
                f"{o['first_round_s']:.2f} s / {o['steady_round_s']:.2f} s; {o['per_service_interval']:.2f}; "
                f"{o['active_max']} (pending overflow {o['pending_overflow']}, poll failures {o['poll_failures']})",
                "round < 1 s, 1 poll, <= 32 in flight",
                "met" if ok_round else "missed",
            )
            grow = (o["rss_kb"] - o["bare_rss_kb"]) - (base["rss_kb"] - base["bare_rss_kb"])
            row(
                f"scale {n}: Envoy RSS ({o['vms']} VMs); Envoy CPU at rest",
                f"{fmt_kb(o['rss_kb'])} (without plugin {fmt_kb(o['bare_rss_kb'])}; plugin growth vs {first}: "
                f"{fmt_kb(grow)} = {fmt_kb(grow / max(o['vms'], 1))} per VM); {o['idle_cpu'] * 100:.1f}% of a core",
            )
            if n >= 1000:
                row(
                    f"scale {n}: Envoy CPU at rest, concurrency 1",
                    f"{o['idle_cpu'] * 100:.1f}% of a core; {fmt_profile(o.get('idle_profile'))}",
                    f"<= {REST_GOALS[1]:.0%} of a core",
                    "met" if o["idle_cpu"] <= REST_GOALS[1] else "missed",
                )
            w = o["wrk"]
            rel = w["rps"] / base["wrk"]["rps"]
            paired = o.get("paired")
            if paired:
                row(
                    f"scale {n}: requests on the last rule's route, CPU per request of the one-service gateway "
                    "over this one's (loaded at the same time, net of the CPU at rest measured before each "
                    f"round; median, min-max of {paired['rounds']} rounds); alone: rps, p50, p99",
                    f"{paired['ratio']:.3f} ({paired['min']:.3f}-{paired['max']:.3f}): {paired['cpu_us']:.1f} against "
                    f"{paired['reference_cpu_us']:.1f} us{fmt_paired_rest(paired)}; alone {w['rps']:.0f} rps "
                    f"({rel:.2f} of {first}), p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms",
                    f">= {ROUTE_GOAL:.2f} of one service",
                    "met" if paired["ratio"] >= ROUTE_GOAL else "missed",
                )
            if w.get("profile"):
                row(f"scale {n}: perf profile during wrk", fmt_profile(w["profile"]))
    for conc, o in res.get("rest_floor", {}).items():
        plugin, floor, calls = o["plugin"], o[FLOOR], o[FLOOR_CALLS]
        row(
            f"scale {o['count']} at rest, concurrency {conc}, next to the polling floor (the minimal filter sending "
            f"the same list calls on the same schedule) and the floor that also makes the plugin's host calls per "
            f"answer, all three on the gateway CPU at once, {o['windows']} windows: CPU, calls, ratio to the floor "
            "(median, min-max); the three share one CPU (the plugin alone: above)",
            f"plugin {fmt_rest(plugin)}; floor {fmt_rest(floor)}; with the answer calls {fmt_rest(calls)}; "
            f"the floor alone afterwards {o['floor_alone'] * 100:.1f}% of a core",
        )
    floor = res.get("floor_under_load")
    if floor and "scale" in res:
        top = max(res["scale"])
        plugin = res["scale"][top].get("paired")
        row(
            f"scale {top}: the polling floor under load: requests through the minimal filter sending the "
            f"plugin's list calls for {top} services on its schedule, CPU per request of the same filter polling "
            "nothing over it, paired as the plugin is with its one-service gateway; the plugin's figure over it",
            f"{floor['ratio']:.3f} ({floor['min']:.3f}-{floor['max']:.3f}): {floor['cpu_us']:.1f} against "
            f"{floor['reference_cpu_us']:.1f} us{fmt_paired_rest(floor)}"
            + (f"; the plugin {plugin['ratio'] / floor['ratio']:.3f} of it" if plugin else ""),
        )
    for name, o in res.get("scale_extra", {}).items():
        w = o.get("wrk")
        paired = o.get("paired")
        goal = REST_GOALS.get(o["concurrency"]) if name.startswith("concurrency") else None
        row(
            f"scale {o['count']}, {name}: Envoy CPU at rest ({o['vms']} VMs)"
            + ("; requests on the last rule's route, paired as above" if w else ""),
            f"{o['idle_cpu'] * 100:.1f}% of a core, {o['per_service_interval']:.2f} polls per service per interval"
            + (
                f"; {paired['ratio']:.3f} ({paired['min']:.3f}-{paired['max']:.3f}) of one service"
                + fmt_paired_rest(paired)
                if paired
                else ""
            )
            + (f"; alone {w['rps']:.0f} rps, p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms" if w else ""),
            f"<= {goal:.0%} of a core" if goal else "",
            ("met" if o["idle_cpu"] <= goal else "missed") if goal else "",
        )
        if w and w.get("profile"):
            row(f"scale {o['count']}, {name}: perf profile during wrk", fmt_profile(w["profile"]))
    table = ["| measure | result | goal | verdict |", "|---|---|---|---|"]
    table += [f"| {m} | {r} | {g} | {v} |" for m, r, g, v in rows]

    details = []
    if "overhead" in res:
        details += overhead_details(res["overhead"])
    if "higress" in res:
        details += higress_details(res["higress"])
    if "detection" in res:
        details.append("### Detection, every trial (ms)\n")
        for iv, d in res["detection"].items():
            details.append(
                f"- {iv} ms, deregistration -> poll answer: " + ", ".join(f"{x:.0f}" for x in d["to_poll_ms"])
            )
            details.append(
                f"- {iv} ms, poll answer -> last request: " + ", ".join(f"{x:.0f}" for x in d["after_poll_ms"])
            )
            details.append(
                f"- {iv} ms: "
                + ", ".join(f"{x:.0f}" for x in d["lags_ms"])
                + f" (stream of {d['requests']} requests, {d['errors']} errors; "
                f"{d['censored']} trials hit the watch window; {d['no_traffic']} without recent traffic; "
                f"poll failures {d['poll_failure']})"
            )
        details.append("")
    if "detection_push" in res:
        d = res["detection_push"]
        details.append("### Detection by push, every valid trial (ms)\n")
        details.append("- deregistration -> last request: " + ", ".join(f"{x:.0f}" for x in d["lags_ms"]))
        details.append("- r-nacos push delay (its log): " + ", ".join(f"{x:.0f}" for x in d["delays_ms"]))
        details.append(
            "- DELETE answered -> gateway's pushes counter: " + ", ".join(f"{x:.0f}" for x in d["to_push_ms"])
        )
        details.append(
            f"- {len(d['all_trials'])} trials: {d['invalid']} invalid (poll_success moved), {d['no_push']} without a "
            f"push; {d['censored']} hit the watch window; {d['no_traffic']} without recent traffic; pushed on "
            f"bi-stream(s) {d['streams']}; stream of {d['requests']} requests, {d['errors']} errors; "
            f"{d['reconnects']} reconnects, {d['push_failures']} push failures"
        )
        details.append("")
    return "\n".join(table), "\n".join(details)


def fmt_paired_rest(paired: dict) -> str:
    """The CPU at rest taken off a paired scale figure, round by round."""
    rest = paired.get("at_rest")
    if not rest:
        return ""
    return (
        f" (at rest {rest['median'] * 100:.1f}%, {rest['min'] * 100:.1f}-{rest['max'] * 100:.1f}% of a core before the "
        f"rounds; the reference {paired['reference_at_rest'] * 100:.1f}%)"
    )


def fmt_ms(x) -> str:
    return "n/a" if x != x else f"{x:.0f}"  # NaN


def detection_push_rows(d: dict, row) -> None:
    row(
        f"detection by push ({d['trials']} valid trials of {len(d['all_trials'])}; safety poll "
        f"{d['safety_ms'] // 1000} s, {d['invalid']} trials with a poll left out, {d['no_push']} without a push)",
        f"p50 {fmt_ms(d['p50'])} ms, p99 {fmt_ms(d['p99'])} ms, max {fmt_ms(d['max'])} ms",
        f"p99 <= push delay p99 + 100 = {fmt_ms(d['goal_ms'])} ms",
        "met" if d["met"] else "missed" + (f" by {d['p99'] - d['goal_ms']:.0f} ms" if d["p99"] == d["p99"] else ""),
    )
    row(
        "r-nacos push delay: DELETE answered -> the pushed frame sent (r-nacos's log, us timestamps)",
        f"p50 {fmt_ms(d['delay_p50'])}, p99 {fmt_ms(d['delay_p99'])}, max {fmt_ms(d['delay_max'])} ms"
        + (f" ({d['delay_missing']} trials without it)" if d["delay_missing"] else ""),
    )
    row(
        "detection by push, split: DELETE answered -> gateway's pushes counter (admin, ~2 ms samples); push -> "
        "last request; per trial detection - push delay (the gateway's own part)",
        f"p50 {fmt_ms(d['to_push_p50'])}, p99 {fmt_ms(d['to_push_p99'])} ms; p50 {fmt_ms(d['after_push_p50'])}, "
        f"p99 {fmt_ms(d['after_push_p99'])} ms; p50 {fmt_ms(d['excess_p50'])}, p99 {fmt_ms(d['excess_p99'])} ms",
    )


def load_push_rows(lp: dict, polling: dict, row) -> None:
    safety = lp["safety_ms"] / 1000

    def rows(name, o, polled):
        per_min = o["per_service_per_minute"]
        row(
            f"HTTP list calls per service per minute at steady state, push (safety {safety:.0f} s), {name} "
            f"({o['seconds']:.0f} s window)",
            f"{per_min:.2f} ({o['list_calls']} calls; {o['pushes']} pushes)"
            + (" (window shorter than the safety interval: a reduced run)" if o["seconds"] < safety else "")
            + (f"; polling at 1 s in this run: {polled:.1f}" if polled is not None else ""),
            "<= 2 (polling at 1 s: 60)",
            "met" if per_min <= 2.0 else "missed",
        )
        ok = o["grpc_cx_min"] == o["grpc_cx_max"] == 1
        row(
            f"gRPC connections per gateway, push, {name} ({o['vms']} VMs)",
            f"{o['grpc_cx_min']}..{o['grpc_cx_max']} active ({o['grpc_cx_samples']} samples), {o['grpc_cx_new']} "
            f"opened in the window, {o['reconnects']} reconnects",
            "1 per Nacos server (1 here)",
            "met" if ok else "missed",
        )

    for conc, o in lp["by_concurrency"].items():
        p = polling.get(conc)
        rows(f"concurrency {conc}", o, p["per_interval"] * 60 if p else None)
    o = lp["services"]
    rows(f"{o['services']} services, concurrency {o['concurrency']}", o, None)
    if "cpu_at_rest" in o:
        goal = REST_GOALS[1]
        row(
            f"{o['services']} services taken by push (safety poll {safety:.0f} s), concurrency {o['concurrency']}: "
            "Envoy CPU at rest over the same window",
            f"{o['cpu_at_rest'] * 100:.1f}% of a core",
            f"<= {goal:.0%} of a core (the goal polls at 1 s)",
            "met" if o["cpu_at_rest"] <= goal else "missed",
        )
    ms = o.get("last_service_push_ms")
    row(
        f"{o['services']} services: a change to the last service afterwards (its subscription holds)",
        f"pushed after {ms:.0f} ms" if ms is not None else "no push within 5 s",
        "pushed",
        "met" if ms is not None else "missed",
    )


# Issue 15, part 3: Envoy CPU at rest with 1,000 services, by --concurrency; the last
# rule's route at 1,000 services against one service, on CPU per request.
REST_GOALS = {1: 0.03, 4: 0.06}
ROUTE_GOAL = 0.95


def overhead_rows(ov: dict, row) -> None:
    """Per run: every variant's CPU per request, throughput and p99 (medians over the
    rounds) with its ratios to the minimal filter and to no filter (median and min-max of
    the per-round ratios); the goals of issue 15 met or missed; the runs' agreement."""
    runs = ov["runs"]
    row(
        "overhead set-up",
        f"{len(runs)} run(s) x {ov['rounds']} rounds; in each round every variant for {ov['seconds']} s at the "
        f"same time as the minimal filter, each gateway with its own wrk -t1 -c{ov['connections']}; "
        + ("gateways pinned to CPU 0, the rest to CPU 1" if ov.get("pinned") else "NOT pinned (fewer than 2 CPUs)")
        + "; CPU net of each gateway's CPU at rest; figures: medians over the rounds; ratios: median (min-max) "
        "of the per-round ratios",
    )
    for k, run in enumerate(runs, start=1):
        tag = f"run {k}: " if len(runs) > 1 else ""
        rounds = run["rounds"]
        for v, rs in rounds.items():
            cpu, worker = median([r["cpu_us"] for r in rs]), median([r["worker_us"] for r in rs])
            rps, p99 = median([r["rps"] for r in rs]), median([r["p99"] for r in rs])
            rel = "; ".join(f"{fmt_ratio(ratio(run, v, b))} of {b}" for b in BASES if b != v and v != NO_FILTER)
            row(
                f"{tag}gateway CPU per request: {v}",
                f"{cpu:.1f} us (worker thread {worker:.1f} us){'; ' + rel if rel else ''}; "
                f"{rps:.0f} rps, p99 {p99:.2f} ms; at rest {run['at_rest'].get(v, 0) * 100:.1f}% of a core",
            )
        mn_rps, mn_p99 = ratio(run, MINIMAL, NO_FILTER, "rps"), ratio(run, MINIMAL, NO_FILTER, "p99")
        row(
            f"{tag}minimal filter / no filter: throughput; p99 (the price of Wasm itself)",
            f"{fmt_ratio(mn_rps)}; {fmt_ratio(mn_p99)}",
        )
        for v, measure, r, goal, met in goals(run):
            key = {"CPU per request": "cpu_us", "throughput": "rps", "p99": "p99"}[measure]
            base = ratio(run, v, NO_FILTER, key)
            floor = (
                f"; {ratio(run, v, ROUTE_FLOOR, key)['median']:.3f} of the {ROUTE_FLOOR}"
                if ROUTE_FLOOR in rounds
                else ""
            )
            row(
                f"{tag}{measure} / minimal filter: {v}",
                f"{fmt_ratio(r)}; {base['median']:.3f} of no filter{floor}",
                goal,
                "met" if met else "missed",
            )
    if len(runs) > 1:
        ok, lines = agreement(runs)
        row(
            f"{len(runs)} back-to-back runs agree on the CPU-per-request ratios",
            "<br>".join(lines),
            f"within +-{AGREE:.0%}",
            "met" if ok else "missed",
        )
    for name, prof in runs[0].get("profiles", {}).items():
        row(f"perf profile of the gateway during wrk: {name}", fmt_profile(prof))


def overhead_details(ov: dict) -> list:
    out = ["### Gateway CPU per request, every round\n"]
    out.append(
        "| run | round | variant | served | CPU ms | us/request | worker us/request | rps | p99 ms | "
        "non-2xx | socket errors | routed by plugin | worker preempted | beside it, the minimal filter: "
        "us/request, rps |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k, run in enumerate(ov["runs"], start=1):
        for v, rs in run["rounds"].items():
            for i, r in enumerate(rs, start=1):
                out.append(
                    f"| {k} | {i} | {v} | {r['served']} | {r['cpu_s'] * 1000:.0f} | {r['cpu_us']:.2f} | "
                    f"{r['worker_us']:.2f} | {r['rps']:.0f} | {r['p99']:.3f} | {r['non2xx']} | "
                    f"{r['socket_errors']} | {r.get('decided', '')} | {r.get('preempted', '')} | "
                    + (f"{r['pair']['cpu_us']:.2f}, {r['pair']['rps']:.0f} |" if "pair" in r else "(itself) |")
                )
    out.append("")
    return out


def instruction_rows(ins: dict, row) -> None:
    figures = ins["figures"]
    plugin, mirror, minimal = (figures[name]["total"] for name in (PLUGIN_GUARDED, MINIMAL_HOST_CALLS, MINIMAL_PLAIN))
    for name, f in figures.items():
        callbacks = ", ".join(f"{k.removeprefix('proxy_on_')} {v:.0f}" for k, v in f["callbacks"].items())
        row(
            f"request path in Wasm instructions (host tier, wasmtime fuel, {ins['requests']} requests), {name}",
            f"{f['total']:.0f} per request: {callbacks}",
        )
    row(
        "request path in Wasm instructions: the plugin's own work over the same host calls (plugin - "
        "minimal filter making them); two passes " + ("agree" if ins["passes_agree"] else "DISAGREE"),
        f"{plugin - mirror:.0f} per request ({plugin / mirror:.2f}x the host-call filter, "
        f"{plugin / minimal:.2f}x the one-header filter)",
    )


def higress_rows(hg: dict, row) -> None:
    small, big = HOST_COUNTS
    rs, ratios = hg["rounds"], hg["ratios"]
    for n in HOST_COUNTS:
        a = rs[n] if n in rs else rs[str(n)]
        calls = hg["calls_per_request"].get(n) or hg["calls_per_request"].get(str(n), {})
        calls_text = ", ".join(f"{k.removeprefix('proxy_')} {v}" for k, v in calls.items())
        row(
            f"Higress path in the host tier, {n} hosts in the routed cluster: the plugin's work per request "
            f"({hg['requests']} requests x {len(a)} rounds at {hg['rps']} requests/s per VM, tick {hg['tick_ms']} ms)",
            f"{median([r['instructions'] for r in a]):.0f} Wasm instructions (a request that asks the host for "
            f"its hosts {median([r['asked_instructions'] for r in a]):.0f}, the others "
            f"{median([r['kept_instructions'] for r in a]):.0f}); tier time: VM calls "
            f"{median([r['vm_us'] for r in a]):.0f} us, host imports {median([r['host_us'] for r in a]):.0f} us; "
            f"host calls {calls_text}",
        )
    r = ratios["instructions"]
    row(
        f"Higress path: Wasm instructions per request, {big} / {small} hosts (median, min-max over rounds)",
        fmt_ratio(r) + f"; asking the host {ratios['asked_instructions']['median']:.1f}x, the others "
        f"{ratios['kept_instructions']['median']:.3f}x; tier CPU {fmt_ratio(ratios['tier_cpu_us'])}",
        f"<= {GOAL:.2f} (not growing with hosts)",
        "met" if r["median"] <= GOAL else "missed",
    )


def higress_details(hg: dict) -> list:
    out = ["### Higress path in the host tier, every round\n"]
    out.append(
        "| round | hosts | requests | asked the host | instructions/request | asking | others | "
        "VM calls us | host imports us | tier CPU us | routed |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, rs in hg["rounds"].items():
        for i, r in enumerate(rs, start=1):
            out.append(
                f"| {i} | {n} | {r['requests']} | {r['asked']} | {r['instructions']:.0f} | "
                f"{r['asked_instructions']:.0f} | {r['kept_instructions']:.0f} | {r['vm_us']:.1f} | "
                f"{r['host_us']:.1f} | {r['tier_cpu_us']:.1f} | {r['routed']} |"
            )
    out.append("")
    return out


def write_results(res: dict, args, mach: dict, errors: dict, started: float) -> str:
    table, details = build_report(res, args)
    lines = [
        "# nacos-instance-guard benchmarks",
        "",
        f"Produced by `make bench` (`bench/run.py{(' ' + ' '.join(sys.argv[1:])) if sys.argv[1:] else ''}`) "
        f"on {mach['date']}, in {(time.monotonic() - started) / 60:.1f} min.",
        "",
        f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem']} RAM, Linux {mach['kernel']}; "
        f"Envoy {mach['envoy']} (V8), r-nacos 0.8.8, {mach['wrk']}.",
        "",
        "Gateway: Envoy `--concurrency 1` (overhead, scale), the backend cluster with the `override_host` "
        "load-balancing policy; the backend for the throughput runs is a second Envoy answering with "
        "`direct_response`; `wrk` runs beside them on the same "
        f"{mach['nproc']} CPUs, so absolute numbers are low and the ratios are what counts.",
        "",
        table,
        "",
        "How the numbers are taken:",
        "",
        "- Overhead: the primary figure is the gateway's CPU time per request: the time every thread of the "
        "Envoy process ran on a CPU (`/proc/<pid>/task/*/schedstat`, nanoseconds; its worker thread's beside it) "
        "over one wrk run, less the gateway's CPU at rest over as long (measured once per run without requests: "
        "the plugin's polling), divided by the requests Envoy served in it (`http.gateway.downstream_rq_total` "
        "before and after, from the admin port). Every gateway runs `--concurrency 1` pinned to CPU 0; wrk, "
        "the backend Envoy, r-nacos and the bench script run on CPU 1. All gateways start once and stay up, one "
        "per variant. This machine's speed per CPU-second drifts by up to +-25 % from one second to the next "
        "(a spin loop pinned to one CPU shows it), so variants measured one after the other cannot be told "
        "apart within 3 %: in every round each variant is loaded at the same time as the minimal filter, each "
        "by its own wrk, the two sharing CPU 0, and its ratio to the minimal filter is taken from that pair; "
        "a ratio to no filter is the pair ratios' quotient in the same round. The A/A control (a second "
        "minimal-filter gateway, paired the same way) shows what the measurement cannot tell apart. Rounds "
        "rotate the order of the pairs; the report gives each ratio's median and min-max over the rounds. "
        "Throughput and p99 are from the same wrk runs (so each is about half of a lone gateway's). "
        "`--repeat N` makes N whole runs (fresh processes) back to back. The plugin polls at its default "
        "interval throughout, but for the 100-rule gateway (`refreshIntervalMs` 600000: it prices rule "
        "matching, its 100 polls a second would be most of what is subtracted as CPU at rest, and the scale "
        'section prices polling). "Routed by the plugin" is the '
        'plugin\'s `routed` counter; "worker preempted" counts the involuntary context switches of the '
        "gateway's worker thread in the round.",
        "- Higress path: tests/hosttier's proxy-wasm host on wasmtime runs build/plugin.wasm as one Higress "
        "worker; the plugin's work per request is counted in Wasm instructions (wasmtime fuel), exact and "
        "independent of the machine's load; the times are the Python host's and only indicative.",
        "- Detection: instance A of {A, B} is deregistered at a random phase against the polls while a "
        "client sends a request every ~5 ms on a new connection (so over every worker; concurrency "
        f"{args.detect_concurrency}); the time runs from r-nacos answering the DELETE to the last request "
        "that reached A (its own timestamp). The split uses the `poll_success` counter sampled every ~2 ms.",
        "- Detection by push: the same stream and trial, the gateway taking lists by push with the safety poll at "
        "600 s; a trial in which the service's `poll_success` moved is left out (invalid). Each trial waits for "
        "A's re-registration to be pushed, then a random phase of 0-1 s (two of r-nacos's 500 ms push checks) "
        "before the DELETE. The push delay is r-nacos's own, from its log (`RUST_LOG` with "
        "`actix_web::middleware::logger=info,h2::codec::framed_write=debug,h2::codec::framed_read=debug`): "
        "from the log line of the DELETE's answer to the first HTTP/2 DATA frame r-nacos sent unprompted "
        "(on a stream it had received no DATA on since: the bi-stream) after it.",
        "- Nacos load with push: the safety poll at its default; three gateways (--concurrency 1, 2, 4) run "
        "side by side against one r-nacos, each counting its own `upstream_rq_total` of the Nacos HTTP "
        "cluster over one common window at steady state (after polling settled), and sampling "
        "`cluster.outbound|9848||nacos.dns.upstream_cx_active` every ~0.5 s; then one gateway guarding "
        "1,000 services (one rule each, as in scale; one instance each).",
        "- Nacos load and scale: `cluster.outbound|8848||nacos.dns.upstream_rq_total` over a window; calls "
        "in flight: that cluster's `upstream_rq_active` gauge sampled every ~5 ms during the first and the "
        'steady round. Memory: the process\'s RSS after the rounds; "without plugin" is the same Envoy '
        "configuration (routes included) without the filter. CPU at rest: the time the process's threads "
        "ran (schedstat) over a window without requests. The measured route is Envoy's first but the "
        "plugin's last rule; paired with the one-service gateway, each round takes off both gateways' CPU "
        "at rest measured just before it.",
        "- Profiles: `perf record -F 499` of the gateway during a wrk run; Wasm is V8's JIT code, Envoy "
        "its own code including the host-call implementations.",
        "",
    ]
    if errors:
        lines.append("### Sections that failed\n")
        for k, v in errors.items():
            lines.append(f"- {k}: `{v.strip().splitlines()[-1]}`")
        lines.append("")
    lines.append(details)
    text = "\n".join(lines)
    RESULTS_MD.write_text(text + "\n")
    return table
