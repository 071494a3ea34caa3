"""Prometheus text format, as Envoy's ``/stats/prometheus`` writes it."""

from __future__ import annotations


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
