"""The chat page in a real Chromium through stage 3's public entry point: a proxy on loopback
that routes as the cluster's Gateway does (tests/helpers/entry_proxy.py, from the rendered
HTTPRoute), in front of real stage-2 nodes. The lesson's "scale up and watch": the navbar's
`nodes:` must follow the cluster while the page only has what the route lets through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from stage3_k8s.deploy.clusters import ANY_HOST_PATCHES, gateway_network_patch
from tests.helpers.browser import ChatPages
from tests.helpers.cluster import Cluster
from tests.helpers.entry_proxy import EntryProxy, kind_route

pytestmark = pytest.mark.browser

NAVBAR_DEADLINE_MS = 15_000  # the navbar polls every 3 s; a new node is connected within a few


@pytest.fixture
def route() -> Iterator[tuple[dict, dict]]:
    """The route of kind off Linux: any Host, as a browser at http://localhost:<port> sends."""
    yield kind_route([gateway_network_patch(["172.18.0.0/16"]), *ANY_HOST_PATCHES])


def test_the_navbar_follows_a_node_joining_through_the_entry_point(
    cluster: Cluster, pages: ChatPages, route: tuple[dict, dict]
) -> None:
    a, b = cluster.start("a", "b")
    cluster.connected("a", "b")
    gateway, http_route = route
    with EntryProxy.for_route(gateway, http_route, [(a.host, a.port), (b.host, b.port)]) as proxy:
        url = f"http://localhost:{proxy.port}/"
        page = pages.open(url, "watcher")
        expect(page.locator("#nodes")).to_have_text(re.compile(r"^\[[ab]@localhost, [ab]@localhost\]$"))
        expect(page.locator("#redis")).to_have_text(f"connected (127.0.0.1:{cluster.redis.port})")
        page.evaluate("window.__sameDocument = true")

        # A third node joins the cluster (not behind the proxy): both nodes the page polls list it.
        cluster.start("c")
        cluster.connected("a", "b", "c")
        expect(page.locator("#nodes")).to_contain_text("c@localhost", timeout=NAVBAR_DEADLINE_MS)
        assert page.evaluate("window.__sameDocument") is True, "updated in place, not reloaded"
        assert pages.errors == []
        assert page.evaluate("fetch('/metrics').then((r) => r.status)") == 404

    polls = [seen for seen in proxy.requests if seen.path in ("/api/nodes", "/readyz")]
    assert polls and all(seen.status == 0 and seen.method == "GET" for seen in polls), "routed, read only"
    assert all(seen.headers["host"] == f"localhost:{proxy.port}" for seen in proxy.requests)
    refused = [seen for seen in proxy.requests if seen.status == 404]
    assert [seen.path for seen in refused] == ["/metrics"], json.dumps([s.path for s in refused])
