"""The titus-node Grafana dashboard, generated with grafana-foundation-sdk (never hand-edited JSON).

    python packaging/monitoring/dashboard.py            # rewrite titus-node.json beside this file
    python packaging/monitoring/dashboard.py --check    # exit 1 if titus-node.json is stale

Panels follow rules.yml: the seed's three SLOs from its recording rules (availability, platform
crashes vs user failures, launch latency p50/p99), then the cell (queue age, hosts not Ready) and
the hosts (unknown containers, metadata 5xx, STS errors, unit restarts). Every query names a
recording rule of rules.yml or a series the daemons export (tests/packaging/test_monitoring.py
checks both and has promtool parse every expression). Needs the `monitoring` extra.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).with_name("titus-node.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Graph:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    stat: bool = False  # a single current value rather than a time series


ROWS: tuple[tuple[str, tuple[Graph, ...]], ...] = (
    ("SLOs", (
        Graph("Availability", "Started tasks / active (not Finished) tasks; alert below 95 %.", "percentunit",
              (Query("titus:tasks_availability:ratio", "available"),), stat=True),
        Graph("Active tasks by state", "Tasks the scheduler holds, by state.", "short",
              (Query('sum by (state) (titus_scheduler_tasks{state!="Finished"})', "{{state}}"),
               Query("titus:tasks_active:sum", "active"))),
        Graph("Platform fault share", "Crashed / (crashed + failed) finishes over 5 m: the platform's share "
              "of bad endings (user failures are the rest); alert above 5 %.", "percentunit",
              (Query("titus:platform_fault_share:ratio5m", "crashed share"),)),
        Graph("Finishes by reason", "Finished tasks per second, by reason (normal, failed, crashed, killed, lost).",
              "ops", (Query("titus:tasks_finished:rate5m", "{{reason}}"),)),
        Graph("Crash-looping jobs", "Jobs whose tasks keep crashing.", "short",
              (Query("titus_scheduler_crash_looping_jobs", "jobs"),), stat=True),
        Graph("Launch latency", "Accepted → Started, p50 and p99 over 5 m; alert when p99 > 60 s.", "s",
              (Query("titus:launch_latency_seconds:p50_5m", "p50"),
               Query("titus:launch_latency_seconds:p99_5m", "p99"))),
    )),
    ("Cell", (
        Graph("Queue", "Accepted tasks waiting for a host, by why they wait.", "short",
              (Query("sum by (reason) (titus_scheduler_pending_tasks)", "{{reason}}"),)),
        Graph("Queue age", "Accepted tasks waiting longer than each bound.", "short",
              (Query("titus_scheduler_pending_tasks_older_than", "> {{seconds}} s"),)),
        Graph("Accepted → placed p99", "The queue's own latency (Accepted → Launched).", "s",
              (Query("histogram_quantile(0.99, sum by (le) "
                     "(rate(titus_scheduler_accepted_to_launched_seconds_bucket[5m])))", "p99"),)),
        Graph("Hosts by status", "Agents by status; anything but Ready gets no work.", "short",
              (Query("sum by (status) (titus_scheduler_nodes)", "{{status}}"),)),
        Graph("Tainted hosts", "Ready agents taking no new work, by taint.", "short",
              (Query("sum by (taint) (titus_scheduler_nodes_tainted)", "{{taint}}"),)),
    )),
    ("Hosts", (
        Graph("Unknown containers", "Containers on a host that no task owns.", "short",
              (Query("titus_agent_unknown_containers", "{{instance}}"),)),
        Graph("Metadata 5xx", "Metadata proxy 5xx responses per second, by host.", "ops",
              (Query('sum by (instance) (rate(titus_imds_requests_total{code=~"5.."}[5m]))', "{{instance}}"),)),
        Graph("STS errors", "Failed AssumeRole calls per second, by host.", "ops",
              (Query("sum by (instance) (rate(titus_imds_sts_errors_total[5m]))", "{{instance}}"),)),
        Graph("Unit restarts (watchdog, crashes)", "Restarts of titus-agent / titus-scheduler in the last hour "
              "(node_exporter --collector.systemd).", "short",
              (Query('increase(node_systemd_service_restart_total{name=~"titus-(agent|scheduler).service"}[1h])',
                     "{{instance}} {{name}}"),)),
        Graph("Sync errors", "Failed agent → scheduler calls per second, by call.", "ops",
              (Query("sum by (call) (rate(titus_agent_sync_errors_total[5m]))", "{{call}}"),)),
    )),
)


def queries() -> list[str]:
    """Every PromQL expression on the dashboard (for the tests)."""
    return [q.expr for _, graphs in ROWS for g in graphs for q in g.queries]


def build() -> str:
    dash = (
        Dashboard("titus-node")
        .uid("titus-node")
        .description("The seed's SLOs, the cell and its hosts (packaging/monitoring/rules.yml)")
        .tags(["titus"])
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
    )
    ids = iter(range(1, 1000))
    for row, graphs in ROWS:
        dash = dash.with_row(Row(row).id(next(ids)))
        for g in graphs:
            panel = (Stat() if g.stat else Timeseries()).id(next(ids)).title(g.title).description(g.description)
            panel = panel.unit(g.unit).datasource(DATASOURCE).height(8).span(8)
            for ref, q in zip("ABCDEFGH", g.queries):
                panel = panel.with_target(
                    Dataquery().ref_id(ref).expr(q.expr).legend_format(q.legend).datasource(DATASOURCE))
            dash = dash.with_panel(panel)
    doc = json.loads(json.dumps(dash.build(), cls=JSONEncoder))
    # a datasource variable, so the dashboard imports into any Grafana with a Prometheus source
    doc.setdefault("templating", {})["list"] = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
    ]
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = build()
    if argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(queries())} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
