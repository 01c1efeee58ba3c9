"""The admin listener's status page (`GET /`) as a browser shows it: routes, clusters and their
health, filter chains with trap and VM restart counts, the configuration generation and the
shared-data backend; names from the configuration stay text, never markup."""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from typing import Any

import pytest
import requests
from harness.browser import rendered_dom
from harness.echo_upstream import EchoServer
from harness.gateway import Gateway, built_filter, cluster

HOSTILE_NAME = '<img src=x onerror="document.title=1">'


def cell_text(cell: str) -> str:
    """A rendered table cell's text, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", cell)).split())


def table(dom: str, table_id: str) -> list[list[str]]:
    """The text of each cell of the rendered table `table_id`, row by row (header row left out)."""
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', dom, re.S)
    assert found, f"no table {table_id} in {dom[:2000]}"
    rows = re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)[1:]
    return [[cell_text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]


def test_the_status_page_shows_routes_clusters_and_filter_failures(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer]
) -> None:
    misbehaving = {
        "name": "misbehaving",
        "wasm": str(built_filter("misbehaving_filter")),
        "failure_policy": "fail_open",
    }
    proxy = gateway(
        {
            "server": {"threads": 1},
            "filter_chains": [{"name": "guarded", "filters": [misbehaving]}],
            "routes": [
                {"name": HOSTILE_NAME, "match": {"path": {"prefix": "/x/"}, "methods": ["GET"]}, "cluster": "app"},
                {"name": "all", "cluster": "app", "filter_chain": "guarded"},
            ],
            "clusters": [
                cluster("app", upstreams("app")),
                {
                    "name": "gone",
                    "endpoints": ["127.0.0.1:9"],
                    "health_check": {"path": "/healthz", "interval": "100ms"},
                },
            ],
        }
    )
    assert requests.get(proxy.url + "/panic", timeout=5).status_code == 200  # fail_open: served without it
    assert requests.get(proxy.url + "/fine", timeout=5).status_code == 200  # on a fresh VM

    dom = rendered_dom(proxy.admin_url + "/")

    assert "<img" not in dom, "a name from the file became markup"
    routes = table(dom, "routes")
    assert routes[0] == [HOSTILE_NAME, "path prefix /x/; methods GET", "app", "none"]
    assert routes[1] == ["all", "every request", "app", "guarded"]
    clusters = {row[0]: row for row in table(dom, "clusters")}
    assert clusters["app"][1] == "1 of 1"
    assert clusters["gone"][1] == "0 of 1" and "unhealthy" in clusters["gone"][2]
    assert table(dom, "filter-chains") == [["guarded", "misbehaving", "1", "1"]]
    assert re.search(r"generation <b>1</b>", dom)
    assert "Shared data: <b>memory</b>" in dom


def test_the_status_page_needs_the_admin_token_when_one_is_set(
    gateway: Callable[[dict[str, Any]], Gateway], upstreams: Callable[..., EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUS_TEST_ADMIN_TOKEN", "s3cret-admin-token")
    proxy = gateway(
        {
            "admin": {"bearer_token_env": "STATUS_TEST_ADMIN_TOKEN"},
            "routes": [{"name": "all", "cluster": "app"}],
            "clusters": [cluster("app", upstreams("app"))],
        }
    )
    assert requests.get(proxy.admin_url + "/", timeout=5).status_code == 401
    page = requests.get(proxy.admin_url + "/", headers={"authorization": "Bearer s3cret-admin-token"}, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
