# The cluster checks both nixosTest suites run, written after the Rust rack harness
# (vm-tests/vm-rack/src/rack/checks.rs and scenarios.rs: check_cluster, scenario_reboot,
# scenario_leader_loss) so that cluster-bootstrap, pxe-boot and the rack prove the same things
# with the same APIs:
#   - every node reaches cluster-ready.target and has /run/plasmacloud/cluster-ready;
#   - asked on every node, Chainfire and FlareDB (GET /v1/cluster/members) report the
#     contract's number of voters and one leader, the same on all nodes;
#   - every node holds its own key (0600, root) and certificate of the cluster CA in
#     <state>/pki/, and every service port speaks TLS only: plain HTTP gets no answer, a
#     guarded route without a client certificate gets 401;
#   - IAM logs the contract's admin in on the seed with the password whose hash the contract
#     carries (POST /v1/auth/login, over TLS, no certificate);
#   - every node's Chainfire, FlareDB and IAM answer /health with "healthy";
#   - reboot: a node power-cycles and comes back as the same member with the data written
#     before;
#   - leader loss: the Chainfire leader powers off, the others keep taking writes (both
#     stores), it comes back, rejoins with the same voters and has the write.
# Every request goes over HTTPS, verified against the node's ca.crt; where a route needs a
# cluster certificate the asking node presents its own (node.crt, node.key).
# Prepended to each suite's testScript; the driver provides subtest, retry and the machines.
import json
import shlex
import time

READY_FILE = "/run/plasmacloud/cluster-ready"
STORE_PORTS = {"chainfire": "chainfire_api", "flaredb": "flaredb_api"}
SERVICE_PORTS = {"chainfire": "chainfire_api", "flaredb": "flaredb_api", "iam": "iam_api"}


def phase(name):
    """A named phase of the scenario, logged like the rack harness's phases."""
    return subtest(name)  # noqa: F821


class Cluster:
    """The contract's view of the machines: addresses, ports, the seed."""

    def __init__(self, machines, contract, login):
        self.machines = {m.name: m for m in machines}
        self.contract = contract
        self.login = login
        self.nodes = {n["name"]: n for n in contract["nodes"]}
        self.ports = contract["ports"]
        self.voters = contract["initial_voters"]
        self.seed = self.voters[0]

    def url(self, name, port_key):
        return f"https://{self.nodes[name]['ipv4']}:{self.ports[port_key]}"

    def pki(self, name):
        """The node's key material on its data disk: <mount point>/pki."""
        return self.nodes[name]["disk"].get("mount_point", "/var/lib/plasmacloud") + "/pki"

    def curl(self, asker, args, client_cert=True):
        """curl on node `asker`, trusting only the cluster CA; with its own certificate
        unless `client_cert` is False."""
        d = self.pki(asker)
        cmd = f"curl -sS --max-time 10 --cacert {d}/ca.crt"
        if client_cert:
            cmd += f" --cert {d}/node.crt --key {d}/node.key"
        return f"{cmd} {args}"

    def name_of_ip(self, ip):
        ip = ip.split("://")[-1]
        return next(n for n, spec in self.nodes.items() if spec["ipv4"] == ip)

    def up(self, exclude=()):
        return [n for n in self.machines if n not in exclude]


def http_json(cluster, asker, method, url, body=None, client_cert=True):
    args = f"--fail-with-body -X {method} {shlex.quote(url)}"
    if body is not None:
        args += f" -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    return json.loads(cluster.machines[asker].succeed(cluster.curl(asker, args, client_cert)))


def wait_cluster_ready(machines, timeout):
    for m in machines:
        m.wait_for_unit("cluster-ready.target", timeout=timeout)
    for m in machines:
        m.succeed(f"test -e {READY_FILE}")


def check_members(cluster, store, names, timeout=300):
    """Asked on every node in `names`: the contract's number of voters and one leader, the
    same everywhere. Returns (leader id, sorted voter ids, leader's api_addr)."""
    want = len(cluster.voters)
    asker = names[0]
    result = {}

    def settled(_last):
        views = []
        for name in names:
            url = cluster.url(name, STORE_PORTS[store]) + "/v1/cluster/members"
            status, out = cluster.machines[asker].execute(cluster.curl(asker, f"--fail {url}"))
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
    """/health is public over TLS: asked without a client certificate."""
    asker = names[0]
    for name in names:
        for service, port_key in SERVICE_PORTS.items():
            h = http_json(cluster, asker, "GET", cluster.url(name, port_key) + "/health",
                          client_cert=False)
            assert h.get("status") == "healthy", f"{name} {service} /health: {h}"


def check_pki(cluster, names):
    """Each node's own key (0600, root, in a 0700 directory) and certificate on its data disk."""
    for name in names:
        m = cluster.machines[name]
        d = cluster.pki(name)
        m.succeed(f"test -s {d}/node.crt && test -s {d}/ca.crt")
        got = m.succeed(f"stat -c '%a %U' {d} {d}/node.key").split()
        assert got == ["700", "root", "600", "root"], f"{name}: {d} and its key: {got}"


def check_tls_only(cluster, names):
    """No plaintext on any service port; a guarded route needs a cluster certificate."""
    asker = names[0]
    m = cluster.machines[asker]
    for name in names:
        for service, port_key in SERVICE_PORTS.items():
            plain = cluster.url(name, port_key).replace("https://", "http://", 1) + "/health"
            m.fail(f"curl -sS --fail --max-time 5 {plain}")
        for store in STORE_PORTS:
            url = cluster.url(name, STORE_PORTS[store]) + "/v1/cluster/members"
            code = m.succeed(cluster.curl(asker, f"-o /dev/null -w '%{{http_code}}' {url}",
                                          client_cert=False)).strip()
            assert code == "401", f"{store} on {name}: {url} without a certificate gave {code}"


def check_iam_login(cluster):
    """The admin the contract names logs in with the password behind its hash (no certificate:
    login is open to anyone over TLS), and IAM knows the token."""
    iam = cluster.url(cluster.seed, "iam_api")
    token = http_json(cluster, cluster.seed, "POST", iam + "/v1/auth/login", cluster.login,
                      client_cert=False)
    assert token.get("token"), f"IAM admin login on the seed returned no token: {token}"
    bearer = shlex.quote(f"Authorization: Bearer {token['token']}")
    who = json.loads(cluster.machines[cluster.seed].succeed(
        cluster.curl(cluster.seed, f"--fail-with-body -H {bearer} {iam}/v1/auth/whoami",
                     client_cert=False)))
    assert who.get("subject") == cluster.login["username"], f"whoami with the admin's token: {who}"


def check_cluster(cluster, timeout=1200):
    """The rack's verdict after a cold boot. Returns {store: sorted voter ids}."""
    names = list(cluster.machines)
    with phase("every node reaches cluster-ready"):
        wait_cluster_ready(cluster.machines.values(), timeout)
    with phase("every node holds its own key and certificate of the cluster CA"):
        check_pki(cluster, names)
    voters = {}
    with phase("Chainfire and FlareDB: the contract's voters and one leader, seen alike"):
        for store in STORE_PORTS:
            voters[store] = check_members(cluster, store, names)[1]
    with phase("TLS only: no plaintext on any service port, guarded routes need a certificate"):
        check_tls_only(cluster, names)
    with phase("IAM: the admin logs in on the seed with the password behind the contract's hash"):
        check_iam_login(cluster)
    with phase("every node's services are healthy"):
        check_health(cluster, names)
    return voters


def put_any(cluster, store, names, key, value, deadline):
    """PUT key=value through any of `names` (following redirects to the leader) until it
    sticks; returns the node it went through."""
    asker = names[0]
    until = time.monotonic() + deadline
    last = ""
    while True:
        for name in names:
            url = f"{cluster.url(name, STORE_PORTS[store])}/v1/kv/{key}"
            status, out = cluster.machines[asker].execute(cluster.curl(
                asker, f"-L --fail -X PUT --data-binary {shlex.quote(value)} {url}"
            ))
            if status == 0:
                return name
            last = f"{url}: {out.strip()}"
        assert time.monotonic() < until, f"no {store} write of {key} within {deadline} s: {last}"
        time.sleep(0.5)


def get_value(cluster, store, asker, name, key):
    url = f"{cluster.url(name, STORE_PORTS[store])}/v1/kv/{key}"
    return cluster.machines[asker].succeed(cluster.curl(asker, f"--fail {url}"))


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
