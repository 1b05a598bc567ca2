# The cluster checks both nixosTest suites run, in the Rust rack harness's terms (same APIs,
# same verdicts), so cluster-bootstrap, pxe-boot and the rack prove the same thing:
#   - every node reaches cluster-ready.target and has /run/plasmacloud/cluster-ready;
#   - Chainfire and FlareDB each report the contract's voters, all with role "voter", and a
#     leader among them (GET /v1/cluster/members);
#   - IAM logs the bootstrap admin in on the seed (POST /v1/auth/login);
#   - the other nodes' IAM answers /health.
# Prepended to each suite's testScript; `json` and the machines come from the driver.
import json
import shlex

READY_FILE = "/run/plasmacloud/cluster-ready"


def phase(name):
    """A named phase of the scenario, logged like the rack harness's phases."""
    return subtest(name)  # noqa: F821 (the driver provides subtest)


def http_json(machine, method, url, body=None):
    cmd = f"curl -sS --fail-with-body --max-time 10 -X {method} {shlex.quote(url)}"
    if body is not None:
        cmd += f" -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    return json.loads(machine.succeed(cmd))


def wait_cluster_ready(machines, timeout):
    for m in machines:
        m.wait_for_unit("cluster-ready.target", timeout=timeout)
    for m in machines:
        m.succeed(f"test -e {READY_FILE}")


def check_store(machine, service, urls, voters, timeout=300):
    """Every URL reports the same membership: `voters` voters and a leader among them.
    Returns {raft_addr: id}."""
    want = len(voters)

    def settled(_):
        for url in urls:
            out = machine.execute(f"curl -sS --max-time 5 {url}/v1/cluster/members")
            if out[0] != 0:
                print(f"{service}: {url} does not answer yet")
                return False
            m = json.loads(out[1])
            roles = [x["role"] for x in m["members"]]
            ids = [x["id"] for x in m["members"]]
            if roles.count("voter") != want or m.get("leader") not in ids:
                print(f"{service}: {url} reports {m}")
                return False
        return True

    # (positional: the keyword is `timeout` in older drivers, `timeout_seconds` in newer ones)
    retry(settled, timeout)  # noqa: F821 (the driver provides retry)
    m = http_json(machine, "GET", f"{urls[0]}/v1/cluster/members")
    assert len(m["members"]) == want, f"{service}: {len(m['members'])} members, want {want}: {m}"
    assert all(x["role"] == "voter" for x in m["members"]), f"{service}: not all voters: {m}"
    leader = m["leader"]
    assert leader in [x["id"] for x in m["members"]], f"{service}: no leader among members: {m}"
    print(f"{service}: {want} voters, leader {leader}")
    return {x["raft_addr"]: x["id"] for x in m["members"]}


def check_iam(seed, seed_url, other_nodes, credential):
    """Login on the seed; /health on the others."""
    token = http_json(seed, "POST", f"{seed_url}/v1/auth/login", credential)
    assert token.get("token"), f"IAM login returned no token: {token}"
    for machine, url in other_nodes:
        health = http_json(machine, "GET", f"{url}/health")
        assert health.get("status") == "healthy", f"IAM on {machine.name}: {health}"


def check_cluster(machines, contract, credential, timeout=1200):
    """The whole verdict; returns the Raft ids by raft address for each store."""
    nodes = {n["name"]: n for n in contract["nodes"]}
    ports = contract["ports"]
    voters = contract["initial_voters"]
    by_name = {m.name: m for m in machines}
    seed_name = voters[0]
    seed = by_name[seed_name]

    def url(name, port_key):
        return f"http://{nodes[name]['ipv4']}:{ports[port_key]}"

    with phase("every node reaches cluster-ready"):
        wait_cluster_ready(machines, timeout)
    ids = {}
    with phase("Chainfire: the contract's voters and a leader"):
        ids["chainfire"] = check_store(
            seed, "chainfire", [url(v, "chainfire_api") for v in voters], voters
        )
    with phase("FlareDB: the contract's voters and a leader"):
        ids["flaredb"] = check_store(
            seed, "flaredb", [url(v, "flaredb_api") for v in voters], voters
        )
    with phase("IAM: login on the seed, health elsewhere"):
        others = [(m, url(m.name, "iam_api")) for m in machines if m.name != seed_name]
        check_iam(seed, url(seed_name, "iam_api"), others, credential)
    return ids
