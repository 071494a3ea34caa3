"""Prometheus: its text format, as Envoy's ``/stats/prometheus`` writes it, and a real
Prometheus server scraping an Envoy."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from testbed.processes import Proc
from testbed.waiting import Fatal, free_port, wait_until


def parse_prometheus(text: str) -> dict:
    """{(metric_name, frozenset(labels.items())): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
        except ValueError:
            continue
        labels = {}
        name = name_labels
        if "{" in name_labels:
            name, rest = name_labels.split("{", 1)
            rest = rest.rstrip("}")
            for part in rest.split('",'):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k.strip()] = v.strip().strip('"')
        try:
            out[(name, frozenset(labels.items()))] = float(value)
        except ValueError:
            pass
    return out


def guard_metric(prom: dict, name: str, service: str | None = "demo") -> float | None:
    """The plugin's metric ``name``: ``nacos_guard_service_<name>{nacos_service=<service>}``,
    or with ``service=None`` the gateway-wide ``nacos_guard_<name>``; None when absent."""
    for (n, labels), v in prom.items():
        if service is None and n == f"nacos_guard_{name}":
            return v
        if service is not None and n == f"nacos_guard_service_{name}" and dict(labels).get("nacos_service") == service:
            return v
    return None


class Prometheus:
    """A real Prometheus (Debian's package) scraping an Envoy's /stats/prometheus every
    second, with ``rule_files`` loaded; asked through its HTTP query API."""

    log_name = "prometheus"
    LOG_TAIL = 3000

    def __init__(self, workdir: Path, envoy_admin_port: int, rule_files: list):
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: `make e2e` installs Debian's package"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(f) for f in rule_files],
                    "scrape_configs": [
                        {
                            "job_name": "envoy",
                            "metrics_path": "/stats/prometheus",
                            "static_configs": [{"targets": [f"127.0.0.1:{envoy_admin_port}"]}],
                        }
                    ],
                }
            )
        )
        self.log_path = workdir / "prometheus.log"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = Proc("prometheus", argv, dict(os.environ), self.log_path)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        return answer["data"]

    def wait(self, what: str, predicate, timeout: float = 30.0):
        """``wait_until`` for ``predicate``, retrying only while Prometheus is not
        listening yet; any other error, or Prometheus exiting, fails at once."""

        def ready():
            if not self.proc.alive():
                raise Fatal("prometheus exited:\n" + self.log_text()[-self.LOG_TAIL :])
            try:
                return predicate()
            except OSError:  # not listening yet
                return None
            except Exception as e:
                raise Fatal(repr(e)) from e

        return wait_until(ready, timeout, 0.2, what)

    def log_text(self) -> str:
        return self.proc.log_text()

    def stop(self) -> None:
        self.proc.stop(timeout=10)
