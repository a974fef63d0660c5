// nps web admin: a small single-page app on /api/v1, live updates over a WebSocket. No build step.
"use strict";
(function () {
  const MODES = ["tcp", "udp", "socks5", "httpProxy", "secret", "file"];
  const state = { session: null, status: null, clients: [], tunnels: [], hosts: [], socket: null,
                  history: [], modeFilter: "", lastCommand: "" };
  let lang = localStorage.getItem("nps.lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");

  const $ = (sel, root) => (root || document).querySelector(sel);
  const t = (key) => {
    const table = window.NPS_I18N[lang] || {};
    if (key in table) return table[key];
    return key in window.NPS_I18N.en ? window.NPS_I18N.en[key] : key;
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    n = Number(n) || 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
  }

  function translate() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
    document.querySelectorAll("[data-i18n-title]").forEach((n) => { n.title = t(n.dataset.i18nTitle); });
    $("#lang").value = lang;
  }

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.session && method !== "GET") headers["X-CSRF-Token"] = state.session.csrf_token;
    const response = await fetch("api/v1/" + path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (response.status === 401 && path !== "login") { showLogin(); }
    if (!response.ok) throw new Error((data && data.error) || response.statusText);
    return data;
  }

  function flash(message, bad) {
    const node = $("#flash");
    node.textContent = message;
    node.className = bad ? "flash bad" : "flash";
    node.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { node.hidden = true; }, 6000);
  }

  // -- login ------------------------------------------------------------------
  function showLogin() {
    state.session = null;
    if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
    $("#login-view").hidden = false;
    $("#app-view").hidden = true;
    $("#nav").hidden = true;
    $("#logout").hidden = true;
    $("#who").textContent = "";
  }

  async function startApp(session) {
    state.session = session;
    $("#login-view").hidden = true;
    $("#app-view").hidden = false;
    $("#nav").hidden = false;
    $("#logout").hidden = false;
    $("#who").textContent = session.user;
    connectLive();
    await route();
  }

  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    $("#login-error").textContent = "";
    try {
      const session = await api("POST", "login", { username: form.username.value, password: form.password.value });
      form.password.value = "";
      await startApp(session);
    } catch (e) { $("#login-error").textContent = e.message; }
  });

  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "logout", {}); } catch (e) { /* already gone */ }
    showLogin();
  });

  $("#lang").addEventListener("change", (event) => {
    lang = event.target.value;
    localStorage.setItem("nps.lang", lang);
    translate();
    if (state.session) route();
  });

  // -- live updates -----------------------------------------------------------
  function connectLive() {
    if (state.socket) return;
    const url = new URL("api/v1/live", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url.href);
    state.socket = socket;
    socket.onopen = () => { $("#live").classList.add("on"); };
    socket.onclose = () => {
      $("#live").classList.remove("on");
      state.socket = null;
      if (state.session) setTimeout(connectLive, 2000);
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "client") onClientEvent(message);
      else if (message.type === "traffic") onTraffic(message);
      else if (message.type === "changed") {
        // another admin changed something: re-render, unless the user is filling in a form here
        const active = document.activeElement;
        if (!(active && active.closest && active.closest("form"))) refreshData();
      }
    };
  }

  function onClientEvent(m) {
    const client = state.clients.find((c) => c.id === m.id);
    if (client) {
      client.online = m.online;
      if (m.remote_addr) client.remote_addr = m.remote_addr;
      if (m.version) client.version = m.version;
    }
    document.querySelectorAll(`[data-client-status="${m.id}"]`).forEach((n) => setStatus(n, m.online));
    document.querySelectorAll(`[data-client-addr="${m.id}"]`).forEach((n) => { n.textContent = m.remote_addr || ""; });
    document.querySelectorAll(`[data-client-version="${m.id}"]`).forEach((n) => { n.textContent = m.version || ""; });
    if (state.status) {
      state.status.clients_online = state.clients.filter((c) => c.online).length;
      const node = $("[data-stat=online]");
      if (node) node.textContent = state.status.clients_online;
    }
  }

  function onTraffic(m) {
    for (const [kind, values] of [["client", m.clients], ["tunnel", m.tunnels], ["host", m.hosts]]) {
      for (const [id, pair] of Object.entries(values || {})) {
        document.querySelectorAll(`[data-${kind}-in="${id}"]`).forEach((n) => { n.textContent = bytes(pair[0]); });
        document.querySelectorAll(`[data-${kind}-out="${id}"]`).forEach((n) => { n.textContent = bytes(pair[1]); });
      }
    }
    for (const [id, open] of Object.entries(m.open || {})) {
      document.querySelectorAll(`[data-client-conns="${id}"]`).forEach((n) => { n.textContent = open; });
    }
    let total_in = 0, total_out = 0;
    for (const pair of Object.values(m.clients || {})) { total_in += pair[0]; total_out += pair[1]; }
    state.history.push({ t: m.time, in: total_in, out: total_out });
    if (state.history.length > 400) state.history.shift();
    const i = $("[data-stat=in]"), o = $("[data-stat=out]"), on = $("[data-stat=online]");
    if (i) i.textContent = bytes(total_in);
    if (o) o.textContent = bytes(total_out);
    if (on && m.online) on.textContent = m.online.length;
    drawChart();
  }

  function setStatus(node, online) {
    node.textContent = t(online ? "online" : "offline");
    node.className = "badge " + (online ? "online" : "offline");
    node.dataset.online = online ? "1" : "0";
  }

  // -- pages ------------------------------------------------------------------
  async function refreshData() {
    const page = (location.hash || "#dashboard").slice(1);
    if (page === "dashboard") return renderDashboard();
    if (page === "clients") return renderClients();
    if (page === "tunnels") return renderTunnels();
    if (page === "hosts") return renderHosts();
  }

  async function route() {
    const page = (location.hash || "#dashboard").slice(1);
    document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.hash === "#" + page));
    try { await refreshData(); } catch (e) { flash(e.message, true); }
  }
  window.addEventListener("hashchange", () => { if (state.session) route(); });

  function table(columns, rows) {
    if (!rows.length) return el("p", { class: "muted", text: t("none") });
    return el("table", {}, el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: t(c) })))),
      el("tbody", {}, rows));
  }

  function field(key, name, attrs) {
    return el("label", {}, el("span", { text: t(key) }), el("input", Object.assign({ name }, attrs || {})));
  }

  function deleteButton(path, what) {
    return el("button", { class: "danger", "data-action": "delete-" + what, onclick: async () => {
      if (!confirm(t("confirm.delete"))) return;
      try { await api("DELETE", path); await refreshData(); } catch (e) { flash(e.message, true); }
    } }, t("delete"));
  }

  function toggleButton(path, what, enabled) {
    return el("button", { class: "secondary", "data-action": "toggle-" + what, onclick: async () => {
      try { await api("PATCH", path, { enabled: !enabled }); await refreshData(); } catch (e) { flash(e.message, true); }
    } }, t(enabled ? "disable" : "enable"));
  }

  function commandBox(command) {
    const code = el("code", { "data-testid": "npc-command", text: command });
    const button = el("button", { class: "secondary", "data-action": "copy", onclick: async () => {
      try { await navigator.clipboard.writeText(command); }
      catch (e) {
        const range = document.createRange(); range.selectNodeContents(code);
        const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range); document.execCommand("copy");
      }
      button.textContent = t("copied");
      setTimeout(() => { button.textContent = t("copy"); }, 1500);
    } }, t("copy"));
    return el("div", { class: "command" }, code, button);
  }

  async function renderDashboard() {
    const status = await api("GET", "status");
    state.status = status;
    state.clients = await api("GET", "clients");
    state.history = (status.history || []).slice();
    const page = $("#page");
    page.replaceChildren(
      el("h2", { text: t("dash.title") }),
      el("div", { class: "stats" },
        stat("dash.online", status.clients_online, "online"), stat("dash.clients", status.clients, "clients"),
        stat("dash.tunnels", status.tunnels_running, "tunnels"), stat("dash.in", bytes(status.bytes_in), "in"),
        stat("dash.out", bytes(status.bytes_out), "out")),
      el("div", { class: "card" }, el("h2", { text: t("dash.chart") }),
        el("canvas", { id: "chart", width: 1100, height: 240 }),
        el("div", { class: "legend" }, el("i", { class: "in" }), t("dash.in"), el("i", { class: "out" }), t("dash.out"))),
      el("p", { class: "muted" }, `${t("dash.version")}: ${status.version} · ${t("dash.server")}: ${status.server_addr}`));
    drawChart();
  }

  function stat(key, value, name) {
    return el("div", { class: "stat" }, el("b", { "data-stat": name, text: String(value) }), el("span", { text: t(key) }));
  }

  function drawChart() {
    const canvas = $("#chart");
    if (!canvas) return;
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 40;
    ctx.clearRect(0, 0, w, h);
    const pts = state.history.filter((p) => p.t);
    const rates = [];
    for (let i = 1; i < pts.length; i++) {
      const dt = Math.max(pts[i].t - pts[i - 1].t, 0.001);
      rates.push({ t: pts[i].t, in: Math.max(0, (pts[i].in - pts[i - 1].in) / dt),
                   out: Math.max(0, (pts[i].out - pts[i - 1].out) / dt) });
    }
    const max = Math.max(1, ...rates.map((r) => Math.max(r.in, r.out)));
    ctx.strokeStyle = "#e4e7ec"; ctx.fillStyle = "#667085"; ctx.font = "11px sans-serif";
    for (let g = 0; g <= 4; g++) {
      const y = pad / 2 + (h - pad) * g / 4;
      ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 10, y); ctx.stroke();
      ctx.fillText(bytes(max * (4 - g) / 4) + "/s", 2, y + 4);
    }
    if (rates.length < 2) return;
    const t0 = rates[0].t, t1 = rates[rates.length - 1].t, span = Math.max(t1 - t0, 1);
    for (const [key, color] of [["in", "#2563eb"], ["out", "#f97316"]]) {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      rates.forEach((r, i) => {
        const x = pad + (w - pad - 10) * (r.t - t0) / span, y = pad / 2 + (h - pad) * (1 - r[key] / max);
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
  }

  async function renderClients() {
    const clients = await api("GET", "clients");
    state.clients = clients;
    const admin = state.session.role === "admin";
    const rows = clients.map((c) => el("tr", { "data-client-row": c.id },
      el("td", { text: c.id }), el("td", { text: c.remark }), el("td", {}, el("code", { text: c.vkey })),
      el("td", {}, (() => { const b = el("span", { "data-client-status": c.id }); setStatus(b, c.online); return b; })()),
      el("td", { "data-client-addr": c.id, text: c.remote_addr }), el("td", { "data-client-version": c.id, text: c.version }),
      el("td", { "data-client-in": c.id, text: bytes(c.bytes_in) }), el("td", { "data-client-out": c.id, text: bytes(c.bytes_out) }),
      el("td", { "data-client-conns": c.id, text: c.connections_open }),
      el("td", {}, el("button", { class: "secondary", "data-action": "show-command", onclick: () => {
        state.lastCommand = c.command; showCommand(c.command, false);
      } }, t("command")), " ", admin ? toggleButton("clients/" + c.id, "client", c.enabled) : null, " ",
      admin ? deleteButton("clients/" + c.id, "client") : null)));
    const page = $("#page");
    page.replaceChildren(el("h2", { text: t("clients.title") }), el("div", { id: "command-area" }),
      clients.length ? table(["col.id", "col.remark", "col.vkey", "col.status", "col.addr", "col.version", "col.in",
                              "col.out", "col.conns", "col.actions"], rows)
                     : el("p", { class: "muted", text: t("clients.none") }));
    if (admin) {
      const form = el("form", { class: "card inline", id: "add-client" },
        field("clients.remark", "remark"), field("clients.vkey", "vkey"),
        field("clients.flow_limit", "flow_limit", { type: "number", min: 0, value: 0 }),
        field("clients.max_conn", "max_conn", { type: "number", min: 0, value: 0 }),
        field("clients.webuser", "web_username", { autocomplete: "off" }),
        field("clients.webpass", "web_password", { type: "password", autocomplete: "new-password" }),
        el("button", { type: "submit" }, t("clients.add")));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const body = { remark: form.remark.value, flow_limit: Number(form.flow_limit.value) || 0,
                       max_conn: Number(form.max_conn.value) || 0 };
        if (form.vkey.value) body.vkey = form.vkey.value;
        if (form.web_username.value) body.web_username = form.web_username.value;
        if (form.web_password.value) body.web_password = form.web_password.value;
        try {
          const client = await api("POST", "clients", body);
          state.lastCommand = client.command;
          await renderClients();
          showCommand(client.command, true);
        } catch (e) { flash(e.message, true); }
      });
      page.append(el("h2", { text: t("clients.add") }), form);
    }
    if (state.lastCommand) showCommand(state.lastCommand, false);
  }

  function showCommand(command, created) {
    const area = $("#command-area");
    if (!area) return;
    area.replaceChildren(el("div", { class: "card" }, created ? el("p", { text: t("clients.created") }) : null,
      commandBox(command)));
  }

  async function clientOptions(select) {
    if (!state.clients.length) state.clients = await api("GET", "clients");
    select.replaceChildren(...state.clients.map((c) => el("option", { value: c.id, text: `${c.id} ${c.remark}` })));
  }

  async function renderTunnels() {
    const tunnels = await api("GET", "tunnels" + (state.modeFilter ? "?mode=" + state.modeFilter : ""));
    state.clients = await api("GET", "clients");
    const tabs = el("div", { class: "tabs" }, ["", ...MODES].map((m) => el("button", {
      class: state.modeFilter === m ? "active" : "", "data-mode-tab": m || "all",
      onclick: () => { state.modeFilter = m; renderTunnels(); } }, m || t("tunnels.all"))));
    const rows = tunnels.map((x) => el("tr", { "data-tunnel-row": x.id },
      el("td", { text: x.id }), el("td", { text: x.client_id }), el("td", { text: x.mode }),
      el("td", { text: x.server_port ? `${x.server_ip}:${x.server_port}` : "-" }),
      el("td", { text: (x.targets || []).join(", ") || x.local_path }), el("td", { text: x.remark }),
      el("td", { text: x.enabled ? t(x.running ? "yes" : "no") : t("disabled") }),
      el("td", { "data-tunnel-in": x.id, text: bytes(x.bytes_in) }), el("td", { "data-tunnel-out": x.id, text: bytes(x.bytes_out) }),
      el("td", {}, toggleButton("tunnels/" + x.id, "tunnel", x.enabled), " ", deleteButton("tunnels/" + x.id, "tunnel"))));
    const select = el("select", { name: "client_id" });
    await clientOptions(select);
    const mode = el("select", { name: "mode" }, MODES.map((m) => el("option", { value: m, text: m })));
    if (state.modeFilter) mode.value = state.modeFilter;
    const form = el("form", { class: "card inline", id: "add-tunnel" },
      el("label", {}, el("span", { text: t("col.client") }), select),
      el("label", {}, el("span", { text: t("col.mode") }), mode),
      field("tunnels.port", "server_port", { type: "number", min: 1, max: 65535 }),
      field("tunnels.ip", "server_ip", { value: "0.0.0.0" }),
      field("tunnels.target", "targets", { placeholder: "127.0.0.1:22" }),
      field("clients.remark", "remark"), field("tunnels.password", "password"), field("tunnels.path", "local_path"),
      el("button", { type: "submit" }, t("tunnels.add")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { client_id: Number(form.client_id.value), mode: form.mode.value, remark: form.remark.value,
                     server_ip: form.server_ip.value || "0.0.0.0", targets: form.targets.value };
      if (form.server_port.value) body.server_port = Number(form.server_port.value);
      if (form.password.value) body.password = form.password.value;
      if (form.local_path.value) body.local_path = form.local_path.value;
      try { await api("POST", "tunnels", body); flash(t("saved")); await renderTunnels(); }
      catch (e) { flash(e.message, true); }
    });
    $("#page").replaceChildren(el("h2", { text: t("tunnels.title") }), tabs,
      table(["col.id", "col.client", "col.mode", "col.port", "col.target", "col.remark", "col.running", "col.in",
             "col.out", "col.actions"], rows), el("h2", { text: t("tunnels.add") }), form);
  }

  async function renderHosts() {
    const hosts = await api("GET", "hosts");
    const rows = hosts.map((x) => el("tr", { "data-host-row": x.id },
      el("td", { text: x.id }), el("td", { text: x.client_id }), el("td", { text: x.host }), el("td", { text: x.location }),
      el("td", { text: x.scheme }), el("td", { text: (x.targets || []).join(", ") }), el("td", { text: x.remark }),
      el("td", { "data-host-in": x.id, text: bytes(x.bytes_in) }), el("td", { "data-host-out": x.id, text: bytes(x.bytes_out) }),
      el("td", {}, toggleButton("hosts/" + x.id, "host", x.enabled), " ", deleteButton("hosts/" + x.id, "host"))));
    const select = el("select", { name: "client_id" });
    await clientOptions(select);
    const scheme = el("select", { name: "scheme" }, ["all", "http", "https"].map((s) => el("option", { value: s, text: s })));
    const form = el("form", { class: "card inline", id: "add-host" },
      el("label", {}, el("span", { text: t("col.client") }), select),
      field("hosts.host", "host"), field("hosts.location", "location", { value: "/" }),
      el("label", {}, el("span", { text: t("hosts.scheme") }), scheme),
      field("hosts.target", "targets", { placeholder: "127.0.0.1:80" }), field("clients.remark", "remark"),
      el("button", { type: "submit" }, t("hosts.add")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("POST", "hosts", { client_id: Number(form.client_id.value), host: form.host.value,
          location: form.location.value || "/", scheme: form.scheme.value, targets: form.targets.value,
          remark: form.remark.value });
        flash(t("saved")); await renderHosts();
      } catch (e) { flash(e.message, true); }
    });
    $("#page").replaceChildren(el("h2", { text: t("hosts.title") }),
      table(["col.id", "col.client", "col.host", "col.location", "col.scheme", "col.target", "col.remark", "col.in",
             "col.out", "col.actions"], rows), el("h2", { text: t("hosts.add") }), form);
  }

  // -- start ------------------------------------------------------------------
  translate();
  fetch("api/v1/session", { credentials: "same-origin" }).then(async (response) => {
    if (response.ok) { await startApp(await response.json()); } else { showLogin(); }
  }).catch(showLogin);
})();
