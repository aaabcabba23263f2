// orchardd's staff page: alerts first, then orchards, harvest, devices and the quarantine.
// Plain DOM, no framework: it is served from the binary and talks to /api/v1 with the
// signed-in token.
"use strict";

const TEXT = {
  en: {
    title: "orchardd", alerts: "Alerts", overview: "Orchards", lots: "Harvest", devices: "Devices",
    quarantine: "Quarantine", signin: "Sign in", signout: "Sign out", token: "Token", who: "Your name",
    live: "live", offline: "offline", ack: "Acknowledge", resolve: "Resolve", history: "History",
    note: "Note", confirm: "Confirm", cancel: "Cancel", noAlerts: "No open alerts.",
    critical: "Critical", major: "Major", minor: "Minor", warning: "Warning",
    firing: "firing", acknowledged: "acknowledged", resolved: "resolved",
    since: "since", by: "by", badToken: "That token was not accepted.",
    forbidden: "This token's role may not see this.", latest: "Latest readings", health: "Sensor health",
    today: "Today's indices", block: "Block", kind: "Kind", value: "Value", time: "Time", device: "Device",
    silent: "offline", lastSeen: "last seen", deficit: "Irrigation needed", frost: "Frost hours", gdd: "Degree days",
    lot: "Lot", harvested: "Harvested", grade: "Grade", weight: "Net weight", season: "Season report",
    waiting: "Devices waiting to be assigned", reason: "Reason", detail: "Detail", topic: "Topic",
    nothing: "Nothing here.", chart: "Last 7 days", events: "Events", deliveries: "deliveries",
    attention: "Needs attention", messages: "Messages", lowBattery: "battery low:", stuck: "reading stuck",
  },
  zh: {
    title: "果园监测", alerts: "预警", overview: "果园", lots: "采收", devices: "设备",
    quarantine: "隔离区", signin: "登录", signout: "退出", token: "令牌", who: "您的姓名",
    live: "实时", offline: "离线", ack: "确认", resolve: "解除", history: "记录",
    note: "备注", confirm: "提交", cancel: "取消", noAlerts: "没有未处理的预警。",
    critical: "严重", major: "重要", minor: "一般", warning: "提示",
    firing: "触发中", acknowledged: "已确认", resolved: "已解除",
    since: "开始于", by: "处理人", badToken: "令牌无效。",
    forbidden: "此令牌的角色无权查看。", latest: "最新读数", health: "传感器状态",
    today: "今日指标", block: "地块", kind: "类型", value: "数值", time: "时间", device: "设备",
    silent: "离线", lastSeen: "最后上报", deficit: "需灌溉", frost: "霜冻小时", gdd: "积温",
    lot: "批次", harvested: "采收日期", grade: "等级", weight: "净重", season: "产季报告",
    waiting: "待分配设备", reason: "原因", detail: "详情", topic: "主题",
    nothing: "暂无内容。", chart: "最近 7 天", events: "事件", deliveries: "次推送",
    attention: "需要处理", messages: "消息数", lowBattery: "电量低：", stuck: "读数不变",
  },
};
const SEVERITIES = ["critical", "major", "minor", "warning"];

const state = {
  lang: localStorage.getItem("lang") ||
    ((navigator.languages || [navigator.language || "en"])[0].toLowerCase().startsWith("zh") ? "zh" : "en"),
  token: localStorage.getItem("token") || "",
  who: localStorage.getItem("who") || "",
  view: ["overview", "lots", "devices", "quarantine"].includes(location.hash.slice(1)) ? location.hash.slice(1) : "alerts",
  answering: null,
  history: null,
};

const t = (key) => TEXT[state.lang][key] || key;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

class Unauthorized extends Error {}
class Forbidden extends Error {}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) throw new Unauthorized();
  if (r.status === 403) throw new Forbidden();
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
  return body;
}

function when(rfc3339) {
  if (!rfc3339) return "";
  return new Date(rfc3339).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB");
}

function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.getElementById("lang").textContent = state.lang === "zh" ? "English" : "中文";
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  document.title = t("title");
}

function showSignIn(message) {
  document.getElementById("signin").hidden = false;
  document.getElementById("view").hidden = true;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("who").value = state.who;
}

async function render() {
  applyLanguage();
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.view === state.view);
  const view = document.getElementById("view");
  try {
    const content = await VIEWS[state.view]();
    document.getElementById("signin").hidden = true;
    view.hidden = false;
    view.replaceChildren(content);
  } catch (e) {
    if (e instanceof Unauthorized) return showSignIn(state.token ? t("badToken") : "");
    if (e instanceof Forbidden) return view.replaceChildren(el("p", { class: "error" }, t("forbidden")));
    view.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

// Alerts: open ones by severity, each with its action text, answered with a note.
async function alertsView() {
  const { alerts } = await api("/api/v1/alerts?state=open&limit=500");
  const out = el("div", { id: "alerts" });
  if (!alerts.length) out.append(el("p", { class: "empty", id: "no-alerts" }, t("noAlerts")));
  for (const severity of SEVERITIES) {
    const mine = alerts.filter((a) => a.severity === severity);
    if (!mine.length) continue;
    out.append(el("h2", {}, `${t(severity)} (${mine.length})`));
    for (const a of mine) out.append(alertCard(a));
  }
  return out;
}

function alertCard(a) {
  const card = el("article", { class: "card alert " + a.severity, "data-alert-id": a.id, "data-state": a.state },
    el("div", {}, el("span", { class: "badge " + a.severity }, t(a.severity)),
      el("span", { class: "badge state" }, t(a.state))),
    el("p", { class: "action" }, a.action[state.lang] || a.action.en),
    el("p", { class: "meta" }, `${a.orchard} · ${a.block}${a.device ? " · " + a.device : ""} · ${a.rule} · ${t("since")} ${when(a.since)}`),
    a.acknowledged ? el("p", { class: "meta acked" }, `${t("acknowledged")} ${t("by")} ${a.acknowledged.by}${a.acknowledged.note ? ": " + a.acknowledged.note : ""}`) : null);
  const buttons = el("div", { class: "buttons" });
  if (a.state !== "acknowledged") buttons.append(el("button", { class: "do-ack", on: { click: () => answer(a.id, "ack") } }, t("ack")));
  buttons.append(el("button", { class: "do-resolve", on: { click: () => answer(a.id, "resolve") } }, t("resolve")));
  buttons.append(el("button", { class: "secondary do-history", on: { click: () => showHistory(a.id) } }, t("history")));
  card.append(buttons);
  if (state.answering && state.answering.id === a.id) {
    const note = el("input", { class: "note", type: "text", placeholder: t("note"), "aria-label": t("note") });
    const form = el("form", { class: "answer", on: { submit: (ev) => { ev.preventDefault(); send(a.id, state.answering.action, note.value); } } },
      note, el("button", { type: "submit", class: "confirm" }, t("confirm")),
      el("button", { type: "button", class: "secondary", on: { click: () => { state.answering = null; render(); } } }, t("cancel")));
    card.append(form);
    setTimeout(() => note.focus(), 0);
  }
  if (state.history && state.history.id === a.id) card.append(historyList(state.history.data));
  return card;
}

function answer(id, action) { state.answering = { id, action }; render(); }

async function send(id, action, note) {
  const body = { note: note || undefined };
  if (state.who) body.by = state.who; else if (!state.token) body.by = "dashboard";
  try {
    await api(`/api/v1/alerts/${id}/${action}`, { method: "POST", body: JSON.stringify(body) });
    state.answering = null;
  } catch (e) {
    if (e instanceof Unauthorized) return showSignIn(t("badToken"));
    alert(e instanceof Forbidden ? t("forbidden") : e.message);
  }
  render();
}

async function showHistory(id) {
  if (state.history && state.history.id === id) { state.history = null; return render(); }
  state.history = { id, data: await api(`/api/v1/alerts/${id}`) };
  render();
}

function historyList(a) {
  return el("ul", { class: "history meta" }, (a.events || []).map((e) =>
    el("li", {}, `${when(e.at)} · ${e.event}${e.by ? " · " + e.by : ""}${e.note ? ": " + e.note : ""}` +
      (e.deliveries && e.deliveries.length ? ` · ${e.deliveries.length} ${t("deliveries")}` : ""))));
}

function table(headers, rows) {
  if (!rows.length) return el("p", { class: "empty" }, t("nothing"));
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c ?? "")))))));
}

async function optional(promise) {
  try { return await promise; } catch (e) { if (e instanceof Forbidden) return null; throw e; }
}

// Orchards: the latest value per block and kind, sensor health, today's indices.
async function overviewView() {
  const { readings } = await api("/api/v1/latest");
  // One row a block: each kind's latest value, the mean over the block's devices.
  const kindsShown = [...new Set(readings.map((r) => r.kind))].sort();
  const perBlock = {};
  for (const r of readings) {
    const b = (perBlock[`${r.orchard} · ${r.block}`] = perBlock[`${r.orchard} · ${r.block}`] || { kinds: {}, newest: "" });
    (b.kinds[r.kind] = b.kinds[r.kind] || []).push(r.value);
    if (r.ts > b.newest) b.newest = r.ts;
  }
  const mean = (vs) => vs ? +(vs.reduce((a, v) => a + v, 0) / vs.length).toFixed(2) : "–";
  const out = el("div", { id: "overview" }, el("h2", {}, t("latest")),
    table([t("block"), ...kindsShown, t("time")],
      Object.entries(perBlock).map(([name, b]) => [name, ...kindsShown.map((k) => mean(b.kinds[k])), when(b.newest)])));
  const devices = await optional(api("/api/v1/devices"));
  if (devices) {
    out.append(el("h2", {}, t("health")), table([t("device"), t("block"), t("lastSeen"), ""],
      devices.devices.map((d) => [d.id, `${d.orchard} · ${d.block}`, when(d.last_seen), d.silent ? t("silent") : ""])));
  }
  // Low batteries from the latest readings; stuck sensors from their open alerts.
  const low = readings.filter((r) => r.kind === "battery_v" && r.value < 3.5);
  const stuck = await optional(api("/api/v1/alerts?state=open&limit=500"));
  const stuckRows = (stuck ? stuck.alerts : []).filter((a) => a.rule.startsWith("sensor-stuck"));
  if (low.length || stuckRows.length) {
    out.append(el("h3", {}, t("attention")), table([t("device"), t("block"), ""],
      [...low.map((r) => [r.device, `${r.orchard} · ${r.block}`, `${t("lowBattery")} ${r.value} V`]),
       ...stuckRows.map((a) => [a.device, `${a.orchard} · ${a.block}`, t("stuck")])]));
  }
  const blocks = [...new Set(readings.map((r) => `${r.orchard}/${r.block}`))];
  const today = new Date().toISOString().slice(0, 10);
  const rows = [];
  for (const b of blocks) {
    const [orchard, block] = b.split("/");
    const idx = await optional(api(`/api/v1/indices?orchard=${encodeURIComponent(orchard)}&block=${encodeURIComponent(block)}&from=${today}`));
    if (!idx) break;
    const d = idx.days[idx.days.length - 1] || {};
    rows.push([`${orchard} · ${block}`, d.irrigation_needed_mm?.toFixed(1) ?? "–", d.frost_hours?.toFixed(1) ?? "–", d.gdd_season?.toFixed(0) ?? "–"]);
  }
  if (rows.length) out.append(el("h2", {}, t("today")), table([t("block"), t("deficit") + " (mm)", t("frost"), t("gdd")], rows));
  const kinds = [...new Set(readings.map((r) => r.kind))].sort();
  if (blocks.length && kinds.length) out.append(await chartSection(blocks, kinds));
  return out;
}

// A kind over the last week in a block, from the hourly rollups, one line per device, with
// the block's alert windows shaded.
async function chartSection(blocks, kinds) {
  state.chart = state.chart || { block: blocks[0], kind: kinds.includes("air_temperature") ? "air_temperature" : kinds[0] };
  const pick = (name, options, value) => el("select", { class: "chart-" + name, on: { change: (ev) => { state.chart[name] = ev.target.value; render(); } } },
    options.map((o) => el("option", { value: o, selected: o === value }, o.replace("/", " · "))));
  const box = el("div", { id: "chart" }, el("h2", {}, t("chart")),
    el("div", { class: "buttons" }, pick("block", blocks, state.chart.block), pick("kind", kinds, state.chart.kind)));
  const [orchard, block] = state.chart.block.split("/");
  const from = new Date(Date.now() - 7 * 86400000).toISOString();
  const q = `orchard=${encodeURIComponent(orchard)}&block=${encodeURIComponent(block)}`;
  const data = await optional(api(`/api/v1/rollups?period=1h&${q}&kind=${encodeURIComponent(state.chart.kind)}&from=${from}&limit=10000`));
  if (!data) { box.append(el("p", { class: "empty" }, t("forbidden"))); return box; }
  if (!data.rollups.length) { box.append(el("p", { class: "empty" }, t("nothing"))); return box; }
  const alerts = (await optional(api(`/api/v1/alerts?${q}&limit=200`))) || { alerts: [] };
  box.append(drawChart(data.rollups, alerts.alerts, Date.parse(from)));
  return box;
}

function drawChart(rollups, alerts, from) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const W = 800, H = 240, P = 36, to = Date.now();
  const values = rollups.map((r) => r.mean);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x = (ms) => P + (W - 2 * P) * (ms - from) / (to - from);
  const y = (v) => H - P + (2 * P - H) * (v - lo) / (hi - lo);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const a of alerts) {
    const start = Math.max(Date.parse(a.since), from), end = a.resolved_at ? Date.parse(a.resolved_at) : to;
    if (end < from) continue;
    chart.append(svg("rect", { class: "alert-window", x: x(start), y: P / 2, width: Math.max(2, x(end) - x(start)), height: H - P * 1.5, fill: "#b3261e22" }));
  }
  const label = (attrs, text) => { const e = svg("text", attrs); e.textContent = text; chart.append(e); };
  for (const v of [lo, hi]) label({ x: 2, y: y(v) + 4, "font-size": 11, fill: "#5d6b60" }, v.toFixed(1));
  const byDevice = {};
  for (const r of rollups) (byDevice[r.device] = byDevice[r.device] || []).push(r);
  const colours = ["#2f4f2f", "#e67e22", "#1565c0", "#8e24aa", "#00897b"];
  Object.entries(byDevice).forEach(([device, rs], i) => {
    const points = rs.map((r) => `${x(Date.parse(r.start)).toFixed(1)},${y(r.mean).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: colours[i % colours.length], "stroke-width": 2, "data-device": device }));
    label({ x: W - P, y: 14 + 13 * i, "text-anchor": "end", "font-size": 11, fill: colours[i % colours.length] }, device);
  });
  return chart;
}

async function lotsView() {
  const { lots } = await api("/api/v1/lots?limit=200");
  const out = el("div", { id: "lots" }, el("h2", {}, t("lots")),
    table([t("lot"), t("block"), t("harvested"), t("grade"), t("weight")],
      lots.map((l) => [l.lot_id, `${l.orchard} · ${l.block}`, l.harvest_date, l.grading.grade || "–", `${l.net_weight_kg} kg`])));
  // The season report of each orchard with lots, for roles that may read it.
  const year = new Date().getFullYear();
  for (const orchard of [...new Set(lots.map((l) => l.orchard))]) {
    const report = await optional(api(`/api/v1/reports/season?orchard=${encodeURIComponent(orchard)}&season=${year}`));
    if (!report) break;
    out.append(el("h2", {}, `${t("season")} ${orchard} ${year}`), table(
      [t("block"), t("weight"), "kg/tree", "t/ha", "°Brix", "TSS/acid", t("gdd"), t("frost")],
      report.blocks.map((b) => [b.block, `${b.net_weight_kg} kg`, b.kg_per_tree ?? "–", b.t_per_ha ?? "–",
        b.mean_tss_brix ?? "–", b.mean_ratio ?? "–", b.season.gdd, b.season.frost_hours])));
  }
  return out;
}

async function devicesView() {
  const { unassigned } = await api("/api/v1/devices?unassigned=true");
  return el("div", { id: "devices" }, el("h2", {}, t("waiting")),
    table([t("device"), t("topic"), t("messages"), t("lastSeen")],
      unassigned.map((d) => [d.id, d.last_topic, d.messages, when(d.last_seen)])));
}

async function quarantineView() {
  const { quarantine } = await api("/api/v1/quarantine?limit=100");
  return el("div", { id: "quarantine" }, el("h2", {}, t("quarantine")),
    table([t("time"), t("reason"), t("topic"), t("detail")], quarantine.map((q) => [when(q.received_at), q.reason, q.topic, q.detail])));
}

const VIEWS = { alerts: alertsView, overview: overviewView, lots: lotsView, devices: devicesView, quarantine: quarantineView };

// The alert stream, read with fetch so that it carries the token (EventSource cannot).
// Signing in aborts the stream, which reconnects at once with the new token.
async function follow() {
  const live = document.getElementById("live");
  for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
    try {
      const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
      state.stream = new AbortController();
      const r = await fetch("/api/v1/alerts/stream", { headers, signal: state.stream.signal });
      if (!r.ok) throw new Error(r.status);
      live.className = "live on"; live.dataset.t = "live"; live.textContent = t("live");
      delay = 1000;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          if (event.split("\n").some((l) => l.startsWith("data:")) && !state.answering) render();
        }
      }
    } catch (_) { /* reconnect below */ }
    live.className = "live off"; live.dataset.t = "offline"; live.textContent = t("offline");
    if (state.stream.signal.aborted) delay = 500;
    else await new Promise((ok) => { state.wake = ok; setTimeout(ok, delay); });
  }
}

function reconnect() {
  if (state.stream) state.stream.abort();
  if (state.wake) state.wake();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("lang", state.lang);
    render();
  });
  document.getElementById("signout").addEventListener("click", () => {
    state.token = ""; localStorage.removeItem("token"); showSignIn();
  });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => {
      state.view = b.dataset.view; state.answering = null; state.history = null;
      history.replaceState(null, "", "#" + state.view);
      render();
    });
  }
  document.getElementById("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = document.getElementById("token").value.trim();
    state.who = document.getElementById("who").value.trim();
    localStorage.setItem("token", state.token);
    localStorage.setItem("who", state.who);
    reconnect();
    render();
  });
  applyLanguage();
  render();
  follow();
});
