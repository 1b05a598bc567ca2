// The rack page: reads GET /v1/events/stream (server-sent events) and keeps the DOM current
// without a reload. `rack` replaces everything (on connect, and after falling behind);
// `node` replaces one node's row and timeline; `unknown` one unknown MAC's row; `boot` adds a
// line to the recent events. Every text goes in through textContent (never HTML).
"use strict";

(function () {
  const LABELS = {
    dhcp: "DHCP", ipxe: "iPXE", kernel: "kernel", enroll: "enroll", disk: "disk",
    configure: "configure", chainfire: "chainfire", flaredb: "flaredb", iam: "iam",
    health: "health", "cluster-ready": "ready",
  };
  const SHORT = {
    dhcp: "dhcp", ipxe: "ipxe", kernel: "krnl", enroll: "enrl", disk: "disk", configure: "conf",
    chainfire: "cf", flaredb: "fdb", iam: "iam", health: "hlth", "cluster-ready": "rdy",
  };
  const RECENT = 40;
  const TIMELINE_COLUMNS = 64;
  const view = { rack: null, order: [], nodes: new Map(), unknown: new Map(), recent: [], skew: 0 };

  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  const now = () => Date.now() - view.skew;
  function clock(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function ago(ms) {
    if (!ms) return "";
    const s = Math.max(0, Math.round((now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  const shortVersion = (v) => (v ? v.slice(0, 12) : "");
  const pad = (s, n) => (s.length >= n ? s : " ".repeat(n - s.length) + s);

  function stageCell(n) {
    const bar = h("div", { class: "stages" });
    for (const st of n.stages) {
      const title = LABELS[st.stage] + ": " + st.state + (st.at_ms ? " at " + clock(st.at_ms) : "");
      bar.append(h("span", { class: "stage " + st.state, title, "data-stage": st.stage }));
    }
    return h("td", {}, bar);
  }

  function phaseCell(n) {
    const p = n.phase;
    if (!p) return h("td", { class: "phase" }, h("span", { class: "muted", text: "not seen yet" }));
    let cls = "phase";
    if (p.stage === "cluster-ready" && p.status === "ok") cls += " ready";
    else if (p.status === "failed" || p.status === "security") cls += " failed";
    else if (p.status === "started") cls += " running";
    const what = p.stage === "cluster-ready" && p.status === "ok" ? "cluster-ready" : p.phase + " " + p.status;
    return h("td", { class: cls },
      h("span", { class: "what", text: what }),
      h("span", { class: "when", "data-ago": String(p.at_ms), title: p.at, text: clock(p.at_ms) + " · " + ago(p.at_ms) }),
      p.status === "failed" && p.detail ? h("span", { class: "detail", title: p.detail, text: p.detail }) : null);
  }

  function serviceCell(n, service) {
    const s = n.health && n.health.services.find((x) => x.service === service);
    if (!s) return h("td", {}, h("span", { class: "badge unreachable", text: "—" }));
    let cls = "badge " + s.result;
    let text = s.result === "ok" ? "healthy" : s.result;
    if (s.role && s.result !== "unreachable") {
      text = s.role;
      if (s.role === "leader") cls += " leader";
      if (s.result !== "ok") text += " · unhealthy";
    }
    const title = service + ": " + s.result + (s.role ? " (" + s.role + ")" : "") + (s.detail ? " — " + s.detail : "") +
      " · checked " + clock(n.health.checked_at_ms);
    return h("td", { "data-service": service, "data-result": s.result, "data-role": s.role || "" },
      h("span", { class: cls, title, text }),
      s.result !== "ok" && s.detail ? h("span", { class: "why", title: s.detail, text: s.detail }) : null);
  }

  function bootTime(n) {
    if (n.ready_seconds !== null && n.ready_seconds !== undefined) return n.ready_seconds.toFixed(1) + " s";
    if (n.boot_started_ms) return h("span", { class: "muted", "data-since": String(n.boot_started_ms), text: Math.round((now() - n.boot_started_ms) / 1000) + " s…" });
    return "";
  }

  function nodeRow(n) {
    const stage = n.phase ? n.phase.stage : "none";
    const status = n.phase ? n.phase.status : "";
    const addr = [h("span", { class: "mono", text: n.ipv4 })];
    if (n.dhcp_ip && n.dhcp_ip !== n.ipv4) addr.push(h("span", { class: "muted", text: " (dhcp " + n.dhcp_ip + ")" }));
    return h("tr", { class: "node", "data-node": n.name, "data-stage": stage, "data-status": status },
      h("td", { class: "name" }, n.name, h("span", { class: "roles", text: n.roles.join(", ") + (n.voter ? " · voter" : "") })),
      h("td", { class: "mono", text: n.mac }),
      h("td", {}, addr),
      h("td", {}, n.bundle ? h("code", { title: n.bundle.version + " (kernel at " + n.bundle.at + ")", text: shortVersion(n.bundle.version) }) : h("span", { class: "muted", text: "—" })),
      stageCell(n),
      phaseCell(n),
      serviceCell(n, "chainfire"),
      serviceCell(n, "flaredb"),
      serviceCell(n, "iam"),
      h("td", { class: "boot-time" }, bootTime(n)));
  }

  function timelineCard(n) {
    const lines = h("pre", {});
    if (n.timeline_dropped) lines.append(h("span", { class: "muted", text: "  … " + n.timeline_dropped + " earlier lines\n" }));
    for (const t of n.timeline) {
      let cls = t.source === "node" ? "l-node" : "l-server";
      if (t.status === "failed" || t.status === "security") cls = "l-failed";
      if (t.phase === "cluster-ready" && t.status === "ok") cls = "l-ready";
      const head = pad(t.t.toFixed(2), 7) + " s  (+" + pad(t.dt.toFixed(2), 5) + ")  " + t.text;
      // The detail fills what is left of a 64-column line; the whole of it is the tooltip.
      const room = Math.max(12, TIMELINE_COLUMNS - head.length - 2);
      const detail = t.detail ? "  " + (t.detail.length > room ? t.detail.slice(0, room - 1) + "…" : t.detail) : "";
      lines.append(h("span", { class: cls, title: t.phase + " " + t.status + (t.detail ? ": " + t.detail : "") },
        head, h("span", { class: "muted", text: detail }), "\n"));
    }
    if (!n.timeline.length) lines.append(h("span", { class: "muted", text: "no boot seen yet" }));
    const sub = [];
    if (n.boots > 1) sub.push("boot " + n.boots);
    if (n.boot_started_ms) sub.push("began " + clock(n.boot_started_ms));
    if (n.ready_seconds !== null && n.ready_seconds !== undefined) sub.push("cluster-ready in " + n.ready_seconds.toFixed(1) + " s");
    return h("div", { class: "timeline", "data-node": n.name },
      h("h3", {}, "timeline " + n.name + " ", h("span", { class: "muted", text: sub.join(" · ") })), lines);
  }

  function unknownRow(u) {
    const e = u.last;
    return h("tr", { class: "unknown", "data-mac": u.mac },
      h("td", { class: "mono", text: u.mac }),
      h("td", { class: "mono", text: u.ip || "—" }),
      h("td", { title: e.detail }, e.phase + " " + e.status, h("span", { class: "why", text: e.detail })),
      h("td", { text: String(u.count) }),
      h("td", { "data-ago": String(u.first_ms), text: ago(u.first_ms) }),
      h("td", { "data-ago": String(u.last_ms), text: ago(u.last_ms) }));
  }

  function replace(container, selector, fresh, sortKeyList) {
    const old = container.querySelector(selector);
    if (old) { old.replaceWith(fresh); return; }
    container.append(fresh);
    if (sortKeyList) sortKeyList();
  }

  function renderNode(n) {
    const tbody = document.querySelector("#nodes tbody");
    replace(tbody, 'tr.node[data-node="' + CSS.escape(n.name) + '"]', nodeRow(n));
    replace(document.getElementById("timelines"), '.timeline[data-node="' + CSS.escape(n.name) + '"]', timelineCard(n));
  }

  function renderUnknown() {
    const tbody = document.querySelector("#unknown tbody");
    const list = [...view.unknown.values()].sort((a, b) => b.last_ms - a.last_ms);
    tbody.replaceChildren(...list.map(unknownRow));
    document.getElementById("empty-unknown").hidden = list.length > 0;
    document.getElementById("unknown-count").textContent = list.length ? "(" + list.length + ")" : "";
  }

  function renderSummary() {
    const all = view.order.length;
    const ready = view.order.filter((name) => {
      const n = view.nodes.get(name);
      return n && n.phase && n.phase.stage === "cluster-ready" && n.phase.status === "ok";
    }).length;
    const c = document.getElementById("ready-count");
    c.textContent = ready + "/" + all + " cluster-ready";
    c.className = "count" + (all && ready === all ? " all" : "");
  }

  function recentLine(e) {
    const who = e.node || e.mac || "";
    const cls = e.status === "failed" || e.status === "security" ? "l-failed" : e.source === "node" ? "l-node" : "l-server";
    return h("li", { class: cls, title: e.at + " " + e.detail },
      h("span", { class: "seq", text: "#" + e.seq }), clock(e.at_ms) + "  " + who + "  " + (e.source === "node" ? "" : "server: ") + e.phase + " " + e.status,
      e.detail ? h("span", { class: "muted", text: "  " + e.detail }) : null);
  }

  function renderRecent() {
    document.getElementById("recent").replaceChildren(...view.recent.map(recentLine));
  }

  function renderAll() {
    const r = view.rack;
    document.getElementById("cluster").textContent = r.cluster;
    document.getElementById("cluster-id").textContent = r.cluster_id;
    document.getElementById("mode").textContent = r.mode;
    const b = document.getElementById("bundle");
    b.textContent = shortVersion(r.bundle.version);
    b.title = r.bundle.version + " loaded " + r.bundle.loaded_at;
    document.getElementById("poll").textContent = Math.round(r.health_poll_ms / 1000) + " s";
    const legend = document.getElementById("stage-legend");
    legend.replaceChildren(h("span", { class: "stage-names" }, r.stages.map((s) => h("span", { title: LABELS[s], text: SHORT[s] }))));
    document.querySelector("#nodes tbody").replaceChildren(...view.order.map((name) => nodeRow(view.nodes.get(name))));
    document.getElementById("timelines").replaceChildren(...view.order.map((name) => timelineCard(view.nodes.get(name))));
    document.getElementById("empty-nodes").hidden = view.order.length > 0;
    renderUnknown();
    renderSummary();
    renderRecent();
  }

  function setLive(on, text) {
    const l = document.getElementById("live");
    l.className = "live " + (on ? "on" : "off");
    document.getElementById("live-text").textContent = text;
  }

  function tick() {
    for (const e of document.querySelectorAll("[data-ago]")) {
      const ms = Number(e.getAttribute("data-ago"));
      const t = e.classList.contains("when") ? clock(ms) + " · " + ago(ms) : ago(ms);
      if (e.textContent !== t) e.textContent = t;
    }
    for (const e of document.querySelectorAll("[data-since]")) {
      e.textContent = Math.round((now() - Number(e.getAttribute("data-since"))) / 1000) + " s…";
    }
  }

  function connect() {
    const es = new EventSource("/v1/events/stream");
    es.addEventListener("open", () => setLive(true, "live"));
    es.addEventListener("error", () => setLive(false, es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…"));
    es.addEventListener("rack", (m) => {
      const r = JSON.parse(m.data);
      view.rack = r;
      view.skew = Date.now() - r.server_time_ms;
      view.order = r.nodes.map((n) => n.name);
      view.nodes = new Map(r.nodes.map((n) => [n.name, n]));
      view.unknown = new Map(r.unknown.map((u) => [u.mac, u]));
      renderAll();
      setLive(true, "live");
    });
    es.addEventListener("node", (m) => {
      const n = JSON.parse(m.data);
      if (!view.nodes.has(n.name)) view.order.push(n.name);
      view.nodes.set(n.name, n);
      renderNode(n);
      renderSummary();
    });
    es.addEventListener("unknown", (m) => {
      const u = JSON.parse(m.data);
      view.unknown.set(u.mac, u);
      renderUnknown();
    });
    es.addEventListener("boot", (m) => {
      view.recent.unshift(JSON.parse(m.data));
      view.recent.length = Math.min(view.recent.length, RECENT);
      renderRecent();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    connect();
    setInterval(tick, 1000);
  });
})();
