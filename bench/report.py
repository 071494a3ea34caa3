"""The report: one table of every measure with its goal and verdict, the details of
every run, written to bench/results.md."""

from __future__ import annotations

import sys
import time

from gateways import HERE
from measure import fmt_kb, fmt_profile, median

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
        ov = res["overhead"]
        # Medians over the rounds: other work on the machine only ever slows a run down.
        agg = {
            n: {
                "rps": median([r["rps"] for r in runs]),
                "p50": median([r["p50"] for r in runs]),
                "p99": median([r["p99"] for r in runs]),
            }
            for n, runs in ov.items()
        }
        np_rps = agg.get("no plugin", {}).get("rps")
        for n, a in agg.items():
            rel = f" ({a['rps'] / np_rps:.3f} of no plugin)" if np_rps and n != "no plugin" else ""
            row(
                f"requests: {n} (wrk -t1 -c{args.connections}, median of {len(ov[n])} x {args.duration} s)",
                f"{a['rps']:.0f} rps{rel}, p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms",
            )
        if "no plugin" in agg and "plugin" in agg:
            np_, pl = agg["no plugin"], agg["plugin"]
            rr = pl["rps"] / np_["rps"]
            row(
                "throughput plugin / no plugin",
                f"{rr:.3f}",
                ">= 0.90",
                "met" if rr >= 0.90 else f"missed by {0.90 - rr:.3f}",
            )
            p99r = pl["p99"] / np_["p99"]
            row(
                "p99 plugin / no plugin",
                f"{p99r:.3f}",
                "<= 1.15",
                "met" if p99r <= 1.15 else f"missed by {p99r - 1.15:.3f}",
            )
            row("p50 plugin / no plugin", f"{pl['p50'] / np_['p50']:.3f}")
        hdr = agg.get("no plugin, client sets the routing header")
        if hdr and "plugin" in agg:
            row(
                "throughput plugin / no plugin with the client setting the routing header (same routing work)",
                f"{agg['plugin']['rps'] / hdr['rps']:.3f}",
            )
        if "minimal filter" in agg and "plugin" in agg:
            mn, pl = agg["minimal filter"], agg["plugin"]
            row(
                "throughput minimal filter / no plugin",
                f"{mn['rps'] / agg['no plugin']['rps']:.3f}",
                "(floor of any Wasm filter)",
            )
            row("throughput plugin / minimal filter", f"{pl['rps'] / mn['rps']:.3f}")
            row("p99 plugin / minimal filter", f"{pl['p99'] / mn['p99']:.3f}")
    for name, prof in res.get("overhead_profile", {}).items():
        row(f"perf profile of the gateway during wrk: {name}", fmt_profile(prof))
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
            w = o["wrk"]
            rel = w["rps"] / base["wrk"]["rps"]
            row(
                f"scale {n}: requests on the last rule's route",
                f"{w['rps']:.0f} rps ({rel:.2f} of {first}; runs {', '.join(f'{x:.0f}' for x in w['all_rps'])}), "
                f"p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms",
                "not growing with services",
                "met" if rel >= 0.9 else f"missed ({rel:.2f} of {first})",
            )
            if w.get("profile"):
                row(f"scale {n}: perf profile during wrk", fmt_profile(w["profile"]))
    for name, o in res.get("scale_extra", {}).items():
        w = o.get("wrk")
        row(
            f"scale {o['count']}, {name}: Envoy CPU at rest ({o['vms']} VMs)"
            + ("; requests on the last rule's route" if w else ""),
            f"{o['idle_cpu'] * 100:.1f}% of a core, {o['per_service_interval']:.2f} polls per service per interval"
            + (f"; {w['rps']:.0f} rps, p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms" if w else ""),
        )
        if w and w.get("profile"):
            row(f"scale {o['count']}, {name}: perf profile during wrk", fmt_profile(w["profile"]))
    table = ["| measure | result | goal | verdict |", "|---|---|---|---|"]
    table += [f"| {m} | {r} | {g} | {v} |" for m, r, g, v in rows]

    details = []
    if "overhead" in res:
        details.append("### Request overhead, every run\n")
        details.append("| round | variant | rps | p50 ms | p99 ms | non-2xx | socket errors | decided by plugin |")
        details.append("|---|---|---|---|---|---|---|---|")
        for n, runs in res["overhead"].items():
            for i, r in enumerate(runs):
                details.append(
                    f"| {i + 1} | {n} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['non2xx']} | "
                    f"{r['socket_errors']} | {r.get('decided', '')} |"
                )
        details.append("")
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
    return "\n".join(table), "\n".join(details)


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
        "- Overhead: one gateway per variant, all running; wrk runs them in turn, the order rotating each "
        "round; medians over the rounds, because other work on the machine only ever slows a run down. "
        '"Decided by the plugin" is the plugin\'s `routed` counter over the run.',
        "- Detection: instance A of {A, B} is deregistered at a random phase against the polls while a "
        "client sends a request every ~5 ms on a new connection (so over every worker; concurrency "
        f"{args.detect_concurrency}); the time runs from r-nacos answering the DELETE to the last request "
        "that reached A (its own timestamp). The split uses the `poll_success` counter sampled every ~2 ms.",
        "- Nacos load and scale: `cluster.outbound|8848||nacos.dns.upstream_rq_total` over a window; calls "
        "in flight: that cluster's `upstream_rq_active` gauge sampled every ~5 ms during the first and the "
        'steady round. Memory: the process\'s RSS after the rounds; "without plugin" is the same Envoy '
        "configuration (routes included) without the filter. CPU at rest: the process's user+system time "
        "over a window without requests. The measured route is Envoy's first but the plugin's last rule.",
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
