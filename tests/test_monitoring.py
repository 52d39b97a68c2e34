"""examples/monitoring/ is part of the product: its alert rules and scrape
configuration pass promtool (and the rules' own unit tests), and every
dashboard query and alert expression, run by a real Prometheus that scrapes
a real pool, is valid and finds the series it is about."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from helpers import (
    ROOT,
    Gearmand,
    LoopbackServer,
    Pool,
    RedisServer,
    free_port,
    heartbeat_up,
    needs_program,
    operator_cli,
    pool_config,
    running,
    submit,
    wait_for,
)

MONITORING = ROOT / "examples/monitoring"
METRIC = re.compile(r"\bgearman_workers_[a-z_]+")


def promtool(*args: str) -> subprocess.CompletedProcess:
    needs_program("promtool", "prometheus")
    return subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_rules_and_config_pass_promtool() -> None:
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml"),
                 ("test", "rules", "alerts.test.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


class Prometheus(LoopbackServer):
    """A Prometheus server of our own, scraping one pool every second."""

    name = "prometheus"

    def __init__(self, workdir: Path, target_port: int) -> None:
        super().__init__(workdir)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gearman-workers", "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}))

    def command(self) -> list[str]:
        return ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def as_prometheus_sees_it(expr: str) -> str:
    """Grafana's variables, as the dashboard's "All" and a 1 s scrape give them."""
    return expr.replace("$__rate_interval", "15s").replace("$host", ".*").replace("$pool", ".*")


def test_every_dashboard_query_and_alert_finds_its_series(gearmand: Gearmand, redis_server: RedisServer,
                                                           tmp_path: Path) -> None:
    needs_program("prometheus", "prometheus")
    metrics_port = free_port()
    pool = Pool(gearmand, tmp_path, processes=2,
                config=pool_config(tmp_path, metrics_port, redis_server.url, autoscale=(1, 2)))
    scraper = Prometheus(tmp_path, metrics_port)
    with running(pool):
        scraper.start()
        try:
            for n in range(20):
                submit(gearmand, "echo", str(n))
            submit(gearmand, "fail", "x")
            submit(gearmand, "nap", "5")
            wait_for(lambda: heartbeat_up(redis_server, pool), what="the control channel")
            told = operator_cli("gm-ctl", "--redis-url", redis_server.url, "--allow-unsigned", "set", "k", "1")
            assert told.returncode == 0, told.stdout + told.stderr  # counted: a row of the dashboard shows it
            wait_for(lambda: scraper.query('gearman_workers_jobs_total{outcome="timeout"} > 0'),
                     what="Prometheus to scrape the counted jobs")
            # Two scrapes after the jobs: rates over them are defined.
            wait_for(lambda: scraper.query('count_over_time(gearman_workers_children_desired[15s]) > 3'),
                     what="a few more scrapes")
            empty = [expr for expr in dashboard_queries() if not scraper.query(as_prometheus_sees_it(expr))]
            for expr in alert_queries():
                scraper.query(expr)  # valid; whether it fires is alerts.test.yml's business
            known = {row["metric"]["__name__"] for row in scraper.query('{__name__=~"gearman_workers_.*"}')}
        finally:
            scraper.stop()
    assert empty == [], "dashboard queries that find nothing"
    used = {name for expr in dashboard_queries() + alert_queries() for name in METRIC.findall(expr)}
    served = known | {f"{name}_bucket" for name in known} | {re.sub(r"_(bucket|sum|count)$", "", n) for n in known}
    assert used <= served, f"queries use metrics the pool does not serve: {used - served}"


def test_the_dashboard_provisions_from_files_and_shows_autoscaling_and_versions() -> None:
    text = (MONITORING / "grafana-dashboard.json").read_text()
    dashboard = json.loads(text)
    assert "__inputs" not in dashboard and "${DS_PROMETHEUS}" not in text  # what file provisioning cannot fill in
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    sources = [p["datasource"] for p in dashboard["panels"] if "datasource" in p]
    assert sources and all(source["uid"] == "${datasource}" for source in sources)
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Autoscaling" in rows and "Versions" in rows
    assert any("gearman_workers_build_info" in expr for expr in dashboard_queries())
    assert any("gearman_workers_children_max" in expr for expr in dashboard_queries())
