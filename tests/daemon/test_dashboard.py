"""The Grafana dashboard is one Grafana can import, and shows what an operator watches.

Whether each metric it reads is one syncd serves is checked against a running daemon in
``test_monitoring.py``; whether each query parses, by promtool in ``test_alert_rules.py``.
"""

from __future__ import annotations

import json
from typing import Any

from monitoring_files import DASHBOARD, dashboard_expressions, metric_names


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])


def test_metric_names_finds_the_metrics_and_only_them() -> None:
    expr = (
        'sum by (target, le) (rate(a_bucket{target=~"$target", x="y{z}"}[$__rate_interval]))'
        " / on (instance) group_left max by (instance) (b_total offset 5m) > 1e9"
        " and absent(c == 1) unless time() - d > bool 3 * inf"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert metric_names("label_values(syncd_cycles_total, target)") == {"syncd_cycles_total"}


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    for metric in (
        "syncd_cycles_total",
        "syncd_cycle_duration_seconds_bucket",
        "syncd_rows_total",
        "syncd_rejected_rows_total",
        "syncd_open_conflicts",
        "syncd_inbox_waiting_files",
        "syncd_lease_held",
        "syncd_last_complete_export_timestamp_seconds",
        "syncd_last_success_timestamp_seconds",
    ):
        assert metric in used, metric


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    seen: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        assert panel["id"] not in seen, panel["title"]
        seen.add(panel["id"])
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_the_chosen_data_source_and_says_what_it_shows() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
