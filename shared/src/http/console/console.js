// The tenantai console. An operator signs in with an admin token, a tenant
// with an API key (scope `usage`); every figure shown comes from the API,
// called with that token in the Authorization header. The token lives in one
// variable of this script: never in storage, a cookie, a URL or a log.
// Every number shown is also in data-* attributes, exactly as the API gave it.
"use strict";

(function () {
  let token = null;
  let role = null; // "operator" or "tenant"
  let current = null; // the detail view's API paths
  let generation = 0; // bumped on every view change: late answers are dropped
  let shownKeys = [];
  const FINAL = new Set(["failed", "completed", "expired", "cancelled"]);
  const METRICS = ["requests", "tokens", "cost"];

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function camel(key) {
    return key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
  }

  // An element: props are attributes, except class, text, data (dataset) and on (listeners).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = String(dv);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  // Every number of an API object as data-* attributes (cost_micros -> data-cost-micros).
  function numbers(obj) {
    const out = {};
    for (const [k, v] of Object.entries(obj || {})) {
      if (typeof v === "number") out[camel(k)] = v;
    }
    return out;
  }

  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  // Micro-dollars as dollars, exactly (480 -> $0.00048).
  function usd(micros) {
    const m = Math.floor(Number(micros) || 0);
    let frac = String(m % 1000000).padStart(6, "0");
    while (frac.length > 2 && frac.endsWith("0")) frac = frac.slice(0, -1);
    return "$" + count(Math.floor(m / 1000000)) + "." + frac;
  }

  function when(secs) {
    if (secs === null || secs === undefined) return "never";
    return new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  function say(text) {
    $("status").textContent = text;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = false;
  }

  function clearError() {
    const box = $("error");
    box.textContent = "";
    box.hidden = true;
  }

  function fail(err) {
    if (err instanceof ApiError && err.status === 401 && token) {
      signOut("The credentials were refused (" + err.message + "); sign in again.");
      return;
    }
    showError(err instanceof ApiError ? err.message + " (HTTP " + err.status + ")" : String(err.message || err));
  }

  async function call(method, path) {
    const resp = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!resp.ok) {
      let message = resp.status + " " + resp.statusText;
      try {
        const body = await resp.json();
        if (body && body.error && body.error.message) message = body.error.message;
      } catch (_) {
        // not JSON: keep the status line
      }
      throw new ApiError(resp.status, message);
    }
    return resp;
  }

  async function getJson(path) {
    return (await call("GET", path)).json();
  }

  function withParam(path, name, value) {
    return path + (path.includes("?") ? "&" : "?") + name + "=" + encodeURIComponent(value);
  }

  // Every item of a paged list (`next` cursors), at most 100 pages.
  async function everything(path) {
    const items = [];
    let page = await getJson(path);
    items.push(...page.data);
    for (let i = 0; page.has_more && page.next && i < 100; i++) {
      page = await getJson(withParam(path, "after", page.next));
      items.push(...page.data);
    }
    return items;
  }

  function range() {
    let q = "";
    if ($("range-from").value) q += "&from=" + encodeURIComponent($("range-from").value);
    if ($("range-to").value) q += "&to=" + encodeURIComponent($("range-to").value);
    return q;
  }

  function fill(tbody, rows, columns, empty) {
    if (rows.length === 0) {
      rows = [el("tr", { class: "empty" }, el("td", { colspan: columns, text: empty }))];
    }
    tbody.replaceChildren(...rows);
  }

  // ---- the budget gauge ----

  function gauge(budget, id) {
    const spent = budget.month_to_date_cost_micros;
    const max = budget.monthly_budget_micros;
    const box = el("div", {
      class: "gauge",
      data: {
        month: budget.month,
        monthlyBudgetMicros: max,
        monthToDateCostMicros: spent,
        hardCap: budget.hard_cap,
      },
    });
    if (!max) {
      box.append(el("span", { text: usd(spent) + " spent in " + budget.month + "; no monthly budget" }));
      return box;
    }
    const pct = ((spent * 100) / max).toFixed(1);
    const th = (budget.alert_thresholds || []).slice().sort((a, b) => a - b);
    const low = (max * (th[0] !== undefined ? th[0] : 80)) / 100;
    const high = Math.max(low, (max * (th[1] !== undefined ? th[1] : 100)) / 100);
    box.append(
      el("label", { for: id, text: usd(spent) + " of " + usd(max) + " (" + pct + " %) in " + budget.month }),
      el("meter", { id, min: 0, max, low, high, optimum: 0, value: Math.min(spent, max) }),
      el("span", { class: "help", text: budget.hard_cap ? "Hard cap: requests stop at the budget." : "No hard cap." }),
    );
    return box;
  }

  // ---- the operator's tenant list ----

  async function showOperator() {
    const tenants = await everything("/admin/v1/tenants?limit=100");
    const budgets = await Promise.all(
      tenants.map((t) =>
        getJson("/admin/v1/tenants/" + encodeURIComponent(t.id) + "/usage?group_by=model&limit=1").then((u) => u.budget),
      ),
    );
    const rows = tenants.map((t, i) =>
      el(
        "tr",
        { data: { tenantId: t.id } },
        el("th", { scope: "row", text: t.name }),
        el("td", {}, el("code", { text: t.id })),
        el("td", { text: t.tier }),
        el("td", { text: t.status }),
        el("td", {}, gauge(budgets[i], "gauge-" + t.id)),
        el("td", {}, el("button", { type: "button", "aria-label": "Open tenant " + t.name, text: "Open", on: { click: () => openTenant(t) } })),
      ),
    );
    fill($("tenants").tBodies[0], rows, 6, "No tenants yet.");
    $("detail").hidden = true;
    $("operator").hidden = false;
  }

  function openTenant(t) {
    const base = "/admin/v1/tenants/" + encodeURIComponent(t.id);
    const source = {
      usage: base + "/usage",
      chart: base + "/usage/chart",
      batches: base + "/batches",
      alerts: base + "/alerts",
      keys: base + "/keys",
    };
    openDetail(source, t.name, "Tenant " + t.id + ", tier " + t.tier + ", " + t.status).catch(fail);
  }

  // ---- one tenant's detail (the operator's chosen tenant, or the tenant itself) ----

  async function openDetail(source, title, sub) {
    clearError();
    current = source;
    const gen = ++generation;
    $("detail-title").textContent = title;
    $("detail-sub").textContent = sub;
    $("alerts-section").hidden = !source.alerts;
    $("keys-section").hidden = !source.keys;
    $("back").hidden = role !== "operator";
    $("operator").hidden = true;
    $("detail").hidden = false;
    $("detail-title").focus();
    await loadDetail(gen);
  }

  async function loadDetail(gen) {
    const s = current;
    const tasks = [loadUsage(s, gen), loadCharts(s, gen), loadBatches(s, gen)];
    if (s.alerts) tasks.push(loadAlerts(s, gen));
    if (s.keys) tasks.push(loadKeys(s, gen));
    say("Loading…");
    await Promise.all(tasks);
    if (gen === generation) say("Up to date at " + new Date().toISOString().slice(11, 19) + " UTC.");
  }

  async function loadUsage(s, gen) {
    const path = s.usage + "?group_by=day,model&limit=1000" + range();
    const first = await getJson(path);
    const buckets = first.data.slice();
    for (let page = first, i = 0; page.has_more && page.next && i < 100; i++) {
      page = await getJson(withParam(path, "after", page.next));
      buckets.push(...page.data);
    }
    if (gen !== generation) return;
    $("budget").replaceChildren(gauge(first.budget, "budget-meter"));
    const t = first.totals;
    const dl = $("usage-totals");
    dl.replaceChildren();
    for (const [k, v] of Object.entries({ from: first.from, to: first.to, ...numbers(t) })) dl.dataset[k] = String(v);
    const items = [
      ["Range", first.from + " to " + first.to],
      ["Requests", count(t.requests)],
      ["Tokens", count(t.tokens) + " (" + count(t.prompt_tokens) + " prompt, " + count(t.completion_tokens) + " completion)"],
      ["Cost", usd(t.cost_micros)],
      ["Of which batch", count(t.batch_requests) + " requests, " + usd(t.batch_cost_micros)],
      ["Cache hits", count(t.cache_hits)],
    ];
    for (const [name, value] of items) dl.append(el("dt", { text: name }), el("dd", { text: value }));
    const rows = buckets.map((b) =>
      el(
        "tr",
        { data: { day: b.day, model: b.model, ...numbers(b) } },
        el("td", { text: b.day }),
        el("td", { text: b.model }),
        el("td", { class: "num", text: count(b.requests) }),
        el("td", { class: "num", text: count(b.tokens) }),
        el("td", { class: "num", text: usd(b.cost_micros) }),
        el("td", { class: "num", text: count(b.batch_requests) }),
        el("td", { class: "num", text: count(b.batch_tokens + b.batch_completion_tokens) }),
        el("td", { class: "num", text: usd(b.batch_cost_micros) }),
      ),
    );
    fill($("usage-table").tBodies[0], rows, 8, "No usage in this range.");
  }

  async function chart(s, metric) {
    const resp = await call("GET", s.chart + "?metric=" + metric + range());
    const doc = new DOMParser().parseFromString(await resp.text(), "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") throw new Error("the " + metric + " chart could not be read");
    return el("figure", { class: "chart", data: { metric } }, document.importNode(svg, true));
  }

  async function loadCharts(s, gen) {
    const figures = await Promise.all(METRICS.map((m) => chart(s, m)));
    if (gen !== generation) return;
    $("charts").replaceChildren(...figures);
  }

  async function loadAlerts(s, gen) {
    const alerts = await everything(s.alerts + "?limit=100");
    if (gen !== generation) return;
    const rows = alerts.map((a) =>
      el(
        "tr",
        { data: { alertId: a.alert_id, status: a.status, ...numbers(a) } },
        el("td", { text: a.month }),
        el("td", { class: "num", text: a.threshold_percent + " %" }),
        el("td", { text: a.kind }),
        el("td", { text: a.status }),
        el("td", { class: "num", text: usd(a.spend_micros) }),
        el("td", { text: when(a.sent_at) }),
      ),
    );
    fill($("alerts").tBodies[0], rows, 6, "No alerts sent.");
  }

  // ---- keys (operator) ----

  async function loadKeys(s, gen) {
    const keys = await everything(s.keys + "?limit=100");
    if (gen !== generation) return;
    shownKeys = keys;
    renderKeys();
  }

  function keyState(k) {
    if (k.revoked_at) return "revoked " + when(k.revoked_at);
    if (k.expires_at && k.expires_at * 1000 <= Date.now()) return "expired " + when(k.expires_at);
    return k.expires_at ? "active until " + when(k.expires_at) : "active";
  }

  function renderKeys(focusKey) {
    let focus = null;
    const rows = shownKeys.map((k) => {
      const actions = el("td");
      if (!k.revoked_at) {
        const button = el("button", {
          type: "button",
          class: "danger",
          "aria-label": "Revoke key " + k.prefix,
          text: "Revoke",
          on: { click: () => askRevoke(k, actions) },
        });
        actions.append(button);
        if (k.key_id === focusKey) focus = button;
      }
      return el(
        "tr",
        { data: { keyId: k.key_id, prefix: k.prefix, revoked: !!k.revoked_at, lastUsedAt: k.last_used_at == null ? "" : k.last_used_at } },
        el("td", {}, el("code", { text: k.prefix + "…" })),
        el("td", { text: k.name || "" }),
        el("td", { text: k.scopes.join(", ") }),
        el("td", { text: when(k.created_at) }),
        el("td", { text: when(k.last_used_at) }),
        el("td", { text: keyState(k) }),
        actions,
      );
    });
    fill($("keys").tBodies[0], rows, 7, "No keys.");
    if (focus) focus.focus();
  }

  function askRevoke(k, cell) {
    const confirm = el("button", {
      type: "button",
      class: "danger",
      text: "Confirm revoke",
      "aria-label": "Confirm: revoke key " + k.prefix,
      on: { click: () => revoke(k) },
    });
    const cancel = el("button", { type: "button", text: "Cancel", on: { click: () => renderKeys(k.key_id) } });
    cell.replaceChildren(el("span", { text: "Revoke " + k.prefix + "…? It stops working at once. " }), confirm, " ", cancel);
    confirm.focus();
  }

  async function revoke(k) {
    clearError();
    try {
      await call("DELETE", current.keys + "/" + encodeURIComponent(k.key_id));
      await loadKeys(current, generation);
      say("Key " + k.prefix + "… revoked.");
      $("keys-title").focus();
    } catch (err) {
      fail(err);
    }
  }

  // ---- batches ----

  function batchRow(b) {
    const n = b.request_counts;
    const done = n.completed + n.failed;
    return el(
      "tr",
      { data: { batchId: b.id, status: b.status, total: n.total, completed: n.completed, failed: n.failed } },
      el("td", {}, el("code", { text: b.id })),
      el("td", { text: b.endpoint }),
      el("td", { text: b.model || "" }),
      el("td", { text: b.status }),
      el(
        "td",
        {},
        el("progress", { max: Math.max(n.total, 1), value: done, "aria-label": "Progress of " + b.id }),
        " " + count(n.completed) + " done, " + count(n.failed) + " failed of " + count(n.total),
      ),
      el("td", { text: when(b.created_at) }),
    );
  }

  async function loadBatches(s, gen) {
    const page = await getJson(s.batches + "?limit=100");
    if (gen !== generation) return;
    const active = page.data.filter((b) => !FINAL.has(b.status));
    const done = page.data.filter((b) => FINAL.has(b.status));
    fill($("batches-active").tBodies[0], active.map(batchRow), 6, "No batch in flight.");
    fill($("batches-done").tBodies[0], done.map(batchRow), 6, "No finished batch.");
  }

  // ---- signing in and out ----

  async function signIn(ev) {
    ev.preventDefault();
    clearError();
    const input = $("token");
    const value = input.value.trim();
    input.value = "";
    const chosen = $("role-tenant").checked ? "tenant" : "operator";
    if (!value) {
      showError("Enter a token.");
      input.focus();
      return;
    }
    token = value;
    role = chosen;
    say("Signing in…");
    try {
      if (role === "operator") {
        await showOperator();
      } else {
        await getJson("/v1/usage?limit=1");
      }
    } catch (err) {
      token = null;
      role = null;
      say("");
      showError(
        err instanceof ApiError && (err.status === 401 || err.status === 403)
          ? "Not signed in: " + err.message
          : "Not signed in: " + String(err.message || err),
      );
      input.focus();
      return;
    }
    $("sign-in").hidden = true;
    $("who").textContent = role === "operator" ? "Signed in as an operator" : "Signed in as a tenant";
    $("who").hidden = false;
    $("sign-out").hidden = false;
    document.body.dataset.role = role;
    if (role === "operator") {
      say("Signed in.");
      $("tenants-title").focus();
    } else {
      const source = { usage: "/v1/usage", chart: "/v1/usage/chart", batches: "/v1/batches" };
      await openDetail(source, "Your usage", "Usage, budget and batches of the tenant this key belongs to.").catch(fail);
    }
  }

  function signOut(message) {
    token = null;
    role = null;
    current = null;
    shownKeys = [];
    generation++;
    for (const id of ["tenants", "usage-table", "alerts", "keys", "batches-active", "batches-done"]) {
      $(id).tBodies[0].replaceChildren();
    }
    for (const id of ["budget", "usage-totals", "charts"]) $(id).replaceChildren();
    $("detail-title").textContent = "";
    $("detail-sub").textContent = "";
    $("operator").hidden = true;
    $("detail").hidden = true;
    $("who").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    delete document.body.dataset.role;
    clearError();
    say(message || "Signed out.");
    $("token").focus();
  }

  $("sign-in-form").addEventListener("submit", (ev) => {
    signIn(ev).catch(fail);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("back").addEventListener("click", () => {
    generation++;
    current = null;
    showOperator()
      .then(() => {
        say("");
        $("tenants-title").focus();
      })
      .catch(fail);
  });
  $("range-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!current) return;
    clearError();
    loadDetail(++generation).catch(fail);
  });
  $("token").focus();
})();
