"""The test toolkit: one of each helper the suites share. Test modules import from these
modules, never from each other; the fixtures built on them are in tests/conftest.py.

    paths.py         ROOT, RESULTS (test-results/)
    ports.py         free_port (TCP or UDP), free_ports, port_open
    waits.py         wait_until, async_wait_until, run_async
    node.py          NodeProcess, running_node: a real node process on a real port
    redis_server.py  RedisServer, redis_server_binary: a real redis-server, to stop, kill,
                     pause and restart
    cluster.py       Cluster: stage-2 nodes sharing a Redis, and the node API
    phoenix.py       PhoenixClient (shared/client.py), and Push, parse_ids, unique
    metrics.py       metric (one sample of /metrics), memory_mb (/proc)
    results.py       record, report_timing: numbers kept under test-results/
    views.py         steady publishing, and what clients saw against the room's stream
    raw_websocket.py RawWebSocket: frames no library would send
    phoenix_js.py    the official phoenix JS client under Node.js
    dns.py           a headless Service and pods on loopback addresses (DNS discovery)
    netns.py         a private network of Linux network namespaces, and scripts to run there
    browser.py       Chromium pages driven by Playwright
    containers.py    the Docker engine and stand-in base images
    docs_runner.py   the verifiable blocks of the markdown pages
    make.py          recipe_line: what `make -n` prints for a target
    requirements.py  what a suite needs beyond Python (root, Docker, Chromium, Node.js)
    skip_rule.py     the rule: skip outside CI, fail under CI=true (a pytest plugin)
"""
