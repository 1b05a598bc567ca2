# The cluster checks both nixosTest suites run, written after the Rust rack harness
# (vm-tests/vm-rack/src/rack.rs: check_cluster, scenario_reboot, scenario_leader_loss) so that
# cluster-bootstrap, pxe-boot and the rack prove the same things with the same APIs:
#   - every node reaches cluster-ready.target and has /run/plasmacloud/cluster-ready;
#   - asked on every node, Chainfire and FlareDB (GET /v1/cluster/members) report the
#     contract's number of voters and one leader, the same on all nodes;
#   - IAM logs the bootstrap admin in on the seed (POST /v1/auth/login);
#   - every node's Chainfire, FlareDB and IAM answer /health with "healthy";
#   - reboot: a node power-cycles and comes back as the same member with the data written
#     before;
#   - leader loss: the Chainfire leader powers off, the others keep taking writes (both
#     stores), it comes back, rejoins with the same voters and has the write.
# Prepended to each suite's testScript; the driver provides subtest, retry and the machines.
import json
import shlex
import time

READY_FILE = "/run/plasmacloud/cluster-ready"
STORE_PORTS = {"chainfire": "chainfire_api", "flaredb": "flaredb_api"}


def phase(name):
    """A named phase of the scenario, logged like the rack harness's phases."""
    return subtest(name)  # noqa: F821


class Cluster:
    """The contract's view of the machines: addresses, ports, the seed."""

    def __init__(self, machines, contract, credential):
        self.machines = {m.name: m for m in machines}
        self.contract = contract
        self.credential = credential
        self.nodes = {n["name"]: n for n in contract["nodes"]}
        self.ports = contract["ports"]
        self.voters = contract["initial_voters"]
        self.seed = self.voters[0]

    def url(self, name, port_key):
        return f"http://{self.nodes[name]['ipv4']}:{self.ports[port_key]}"

    def name_of_ip(self, ip):
        return next(n for n, spec in self.nodes.items() if spec["ipv4"] == ip)

    def up(self, exclude=()):
        return [n for n in self.machines if n not in exclude]


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


def check_members(cluster, store, names, timeout=300):
    """Asked on every node in `names`: the contract's number of voters and one leader, the
    same everywhere. Returns (leader id, sorted voter ids, leader's api_addr)."""
    want = len(cluster.voters)
    asker = cluster.machines[names[0]]
    result = {}

    def settled(_last):
        views = []
        for name in names:
            url = cluster.url(name, STORE_PORTS[store]) + "/v1/cluster/members"
            status, out = asker.execute(f"curl -sS --fail --max-time 5 {url}")
            if status != 0:
                print(f"{store} on {name}: no answer yet")
                return False
            m = json.loads(out)
            voters = sorted(x["id"] for x in m["members"] if x["role"] == "voter")
            leader = m.get("leader")
            if len(voters) != want or leader not in voters:
                print(f"{store} on {name}: {len(voters)} voters (want {want}), leader {leader}")
                return False
            addr = next(x["api_addr"] for x in m["members"] if x["id"] == leader)
            views.append((leader, voters, addr))
        if any(v[:2] != views[0][:2] for v in views):
            print(f"{store}: nodes disagree: {views}")
            return False
        result["view"] = views[0]
        return True

    # Positional timeout: the keyword is `timeout` in older drivers, `timeout_seconds` later.
    retry(settled, timeout)  # noqa: F821
    leader, voters, addr = result["view"]
    print(f"{store}: voters {voters}, leader {leader} at {addr} (same on {len(names)} nodes)")
    return leader, voters, addr


def check_health(cluster, names):
    asker = cluster.machines[names[0]]
    for name in names:
        for service, port_key in (
            ("chainfire", "chainfire_api"),
            ("flaredb", "flaredb_api"),
            ("iam", "iam_api"),
        ):
            h = http_json(asker, "GET", cluster.url(name, port_key) + "/health")
            assert h.get("status") == "healthy", f"{name} {service} /health: {h}"


def check_iam_login(cluster):
    seed = cluster.machines[cluster.seed]
    token = http_json(seed, "POST", cluster.url(cluster.seed, "iam_api") + "/v1/auth/login",
                      cluster.credential)
    assert token.get("token"), f"IAM admin login on the seed returned no token: {token}"


def check_cluster(cluster, timeout=1200):
    """The rack's verdict after a cold boot. Returns {store: sorted voter ids}."""
    names = list(cluster.machines)
    with phase("every node reaches cluster-ready"):
        wait_cluster_ready(cluster.machines.values(), timeout)
    voters = {}
    with phase("Chainfire and FlareDB: the contract's voters and one leader, seen alike"):
        for store in STORE_PORTS:
            voters[store] = check_members(cluster, store, names)[1]
    with phase("IAM: the admin logs in on the seed"):
        check_iam_login(cluster)
    with phase("every node's services are healthy"):
        check_health(cluster, names)
    return voters


def put_any(cluster, store, names, key, value, deadline):
    """PUT key=value through any of `names` (following redirects to the leader) until it
    sticks; returns the node it went through."""
    asker = cluster.machines[names[0]]
    until = time.monotonic() + deadline
    last = ""
    while True:
        for name in names:
            url = f"{cluster.url(name, STORE_PORTS[store])}/v1/kv/{key}"
            status, out = asker.execute(
                f"curl -sS -L --fail --max-time 5 -X PUT --data-binary {shlex.quote(value)} {url}"
            )
            if status == 0:
                return name
            last = f"{url}: {out.strip()}"
        assert time.monotonic() < until, f"no {store} write of {key} within {deadline} s: {last}"
        time.sleep(0.5)


def get_value(cluster, store, asker, name, key):
    url = f"{cluster.url(name, STORE_PORTS[store])}/v1/kv/{key}"
    return cluster.machines[asker].succeed(f"curl -sS --fail --max-time 5 {url}")


def scenario_reboot(cluster, victim, timeout=1200):
    """The rack's `reboot`: power-cycle `victim`; it comes back as the same member with its data."""
    names = list(cluster.machines)
    before = {s: check_members(cluster, s, names)[1] for s in STORE_PORTS}
    value = f"written-before-reboot-{int(time.time() * 1000)}"
    for store in STORE_PORTS:
        put_any(cluster, store, names, "nixos-test/reboot", value, 30)
    m = cluster.machines[victim]
    m.crash()
    m.start()
    wait_cluster_ready([m], timeout)
    after = {s: check_members(cluster, s, names)[1] for s in STORE_PORTS}
    assert before == after, f"membership changed across the reboot: {before} -> {after}"
    for store in STORE_PORTS:
        got = get_value(cluster, store, victim, victim, "nixos-test/reboot")
        assert got == value, f"after the reboot {victim} has {store} nixos-test/reboot = {got!r}"


def scenario_leader_loss(cluster, timeout=1200):
    """The rack's `leader-loss`: the Chainfire leader powers off; the rest keep taking writes;
    it comes back, rejoins with the same voters and has the write."""
    names = list(cluster.machines)
    leader, voters, addr = check_members(cluster, "chainfire", names)
    victim = cluster.name_of_ip(addr.rsplit(":", 1)[0])
    print(f"leader-loss: powering off {victim} (Chainfire leader {leader})")
    cluster.machines[victim].crash()
    rest = cluster.up(exclude=(victim,))
    value = f"written-without-{victim}-{int(time.time() * 1000)}"
    for store in STORE_PORTS:
        via = put_any(cluster, store, rest, "nixos-test/leader-loss", value, 60)
        print(f"leader-loss: {store} took the write via {via} without {victim}")
    cluster.machines[victim].start()
    wait_cluster_ready([cluster.machines[victim]], timeout)
    _, voters_after, _ = check_members(cluster, "chainfire", names)
    check_members(cluster, "flaredb", names)
    assert voters_after == voters, f"Chainfire voters changed: {voters} -> {voters_after}"
    for store in STORE_PORTS:
        got = get_value(cluster, store, victim, victim, "nixos-test/leader-loss")
        assert got == value, f"{victim} rejoined without the write made in its absence ({store}: {got!r})"
