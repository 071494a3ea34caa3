"""Section ``detection``: from r-nacos answering a deregistration to the last request
reaching the instance, at refreshIntervalMs 1000 and 200 and by push (bench/push.py),
under a steady request stream."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from gateways import OWNER, gateway, start_nacos, wait_first_snapshot
from measure import log, pct
from push import detection_push

from testbed.backends import Backend
from testbed.higress import plugin_config
from testbed.traffic import Traffic
from testbed.waiting import wait_until


def section_detection(args, res: dict, work: Path) -> None:
    """Deregister instance A of {A, B} under a steady stream; the detection time is from
    the moment r-nacos answered the DELETE to the last request that reached A."""
    out = {}
    for interval_ms, trials in ((1000, args.trials_1000), (200, args.trials_200)):
        nacos = start_nacos(work / f"detect-{interval_ms}-nacos")
        a = OWNER.add(Backend("backend-a", single_write=True))
        b = OWNER.add(Backend("backend-b", single_write=True))
        for be in (a, b):
            nacos.register(be.port)
        envoy = gateway(
            work,
            nacos.http_port,
            [a.port, b.port],
            plugin_config({"refreshIntervalMs": interval_ms}),
            concurrency=args.detect_concurrency,
        )
        wait_first_snapshot(envoy, "/demo", "demo")
        interval = interval_ms / 1000.0
        window = interval + 1.0  # watch for late requests this long after the deregistration
        stream = Traffic(envoy, "/demo", args.stream_period, fixed_rate=True).start()
        lags, censored, no_traffic = [], 0, 0
        to_poll, after_poll = [], []  # deregistration -> poll answer; poll answer -> last request
        polled = "wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"
        rng = random.Random(interval_ms)
        try:
            for _trial in range(trials):
                t_reg = time.monotonic()
                wait_until(
                    lambda a=a, t_reg=t_reg: (a.last_hit() or 0) > t_reg, interval + 5, 0.005, "A receives traffic"
                )
                time.sleep(rng.uniform(0, interval))  # a random phase against the polls
                if (a.last_hit() or 0) < time.monotonic() - 0.1:
                    no_traffic += 1
                polls0 = envoy.stat(polled)
                nacos.deregister(a.port)
                t_answer = time.monotonic()  # r-nacos answered the DELETE
                # When did the poller take in the first answer after that? (admin stats
                # sampled every ~2 ms; the answer may, rarely, be to a call sent before)
                # An answer within 3 ms of the DELETE's may be to a call sent before it:
                # then the next answer is the one that can see the deregistration.
                t_poll = None
                while time.monotonic() < t_answer + window:
                    now = time.monotonic()
                    if t_poll is None:
                        polls = envoy.stat(polled)
                        if polls > polls0:
                            if now - t_answer < 0.003:
                                polls0 = polls
                            else:
                                t_poll = now
                    time.sleep(0.002 if t_poll is None else 0.05)
                last = a.last_hit() or 0
                lag = max(0.0, last - t_answer)
                if lag >= window - 0.05:
                    censored += 1
                lags.append(lag * 1000)
                if t_poll is not None:
                    to_poll.append((t_poll - t_answer) * 1000)
                    after_poll.append(max(0.0, last - t_poll) * 1000)
                nacos.register(a.port)
        finally:
            stream.stop()
        o = {
            "trials": len(lags),
            "lags_ms": lags,
            "p50": pct(lags, 50),
            "p99": pct(lags, 99),
            "max": max(lags),
            "mean": statistics.mean(lags),
            "requests": stream.answered,
            "errors": stream.errors,
            "censored": censored,
            "no_traffic": no_traffic,
            "to_poll_p50": pct(to_poll, 50),
            "to_poll_max": max(to_poll, default=float("nan")),
            "after_poll_p50": pct(after_poll, 50),
            "after_poll_p99": pct(after_poll, 99),
            "after_poll_max": max(after_poll, default=float("nan")),
            "to_poll_ms": to_poll,
            "after_poll_ms": after_poll,
            "poll_failure": envoy.stat("wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.demo.poll_failure"),
        }
        out[interval_ms] = o
        log(
            f"detection at {interval_ms} ms: {o['trials']} trials, p50 {o['p50']:.0f} ms, p99 {o['p99']:.0f} ms, "
            f"max {o['max']:.0f} ms (stream: {o['requests']} requests, {o['errors']} errors); "
            f"to the next poll answer p50 {o['to_poll_p50']:.0f} max {o['to_poll_max']:.0f} ms, from it to the last "
            f"request p50 {o['after_poll_p50']:.0f} p99 {o['after_poll_p99']:.0f} max {o['after_poll_max']:.0f} ms"
        )
        for item in (envoy, a, b, nacos):
            OWNER.stop(item)
    res["detection"] = out
    if args.trials_push:
        res["detection_push"] = detection_push(args, work)
