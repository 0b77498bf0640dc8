// The usage page: asks GET /v2/usage with the pasted API key and draws what it answers; the
// billing button asks POST /v2/billing/setup and goes to the Stripe page it names. The key is
// kept in this tab's sessionStorage only, so the page still knows it on the way back from
// Stripe; nothing is sent anywhere but this API.
"use strict";

const KEY_SLOT = "intent-embed-api-key";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function count(n) {
  return Number(n).toLocaleString("en-US");
}

// Exact dollars from integer nano-dollars (no float arithmetic): 940000 -> "$0.00094".
function usd(nanodollars) {
  const n = BigInt(nanodollars);
  const whole = n / 1000000000n;
  const fraction = (n % 1000000000n).toString().padStart(9, "0").replace(/0+$/, "");
  return "$" + count(whole) + "." + fraction.padEnd(2, "0");
}

// Short form for cards and tables: 4 decimals from a cent up (cut, not rounded), exact below;
// the exact amount is the element's tooltip.
function usdShort(nanodollars) {
  const exact = usd(nanodollars);
  if (BigInt(nanodollars) < 10000000n) return exact;
  const [whole, fraction] = exact.split(".");
  return whole + "." + fraction.slice(0, 4).padEnd(4, "0");
}

function money(element, nanodollars) {
  element.textContent = usdShort(nanodollars);
  element.title = usd(nanodollars);
}

function dollars(n) {
  return "$" + count(n);
}

const compact = new Intl.NumberFormat("en-US", { notation: "compact" });
const STATES = { ok: "OK", no_payment_method: "No payment method", past_due: "Past due" };

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(method, path, key) {
  const reply = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + key, Accept: "application/json" },
  });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    const message = body.error && body.error.message ? body.error.message : reply.statusText;
    throw new Error(message);
  }
  return body;
}

function svg(tag, attributes, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  parent.appendChild(node);
  return node;
}

function drawChart(days) {
  const chart = $("chart");
  chart.replaceChildren();
  const width = 860, height = 240, left = 48, bottom = 28, top = 12;
  const plot = { w: width - left - 8, h: height - bottom - top };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "tokens per day" }, chart);
  const max = Math.max(1, ...days.map((d) => d.tokens));
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plot.h * (1 - fraction);
    svg("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }, root);
    const label = svg("text", { x: left - 8, y: y + 4, class: "axis", "text-anchor": "end" }, root);
    label.textContent = compact.format(Math.round(max * fraction));
  }
  const slot = plot.w / Math.max(1, days.length);
  days.forEach((day, i) => {
    const h = (plot.h * day.tokens) / max;
    const bar = svg("rect", {
      x: left + i * slot + slot * 0.15, y: top + plot.h - h, width: Math.max(1, slot * 0.7),
      height: h, class: "bar", "data-day": day.day, "data-tokens": day.tokens,
    }, root);
    svg("title", {}, bar).textContent =
      `${day.day}: ${count(day.tokens)} tokens, ${count(day.requests)} requests, ` +
      usd(day.cost_nanodollars);
  });
  const last = days.length - 1;
  for (const i of new Set([0, Math.floor(last / 2), last])) {
    if (!days[i]) continue;
    const anchor = i === 0 && last > 0 ? "start" : i === last && last > 0 ? "end" : "middle";
    const x = anchor === "start" ? left + i * slot : anchor === "end"
      ? left + (i + 1) * slot : left + i * slot + slot / 2;
    const label = svg("text", { x, y: height - 8, class: "axis", "text-anchor": anchor }, root);
    label.textContent = days[i].day;
  }
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fillProjects(projects) {
  const body = $("projects").tBodies[0];
  body.replaceChildren();
  for (const p of projects) {
    const row = body.insertRow();
    row.dataset.projectId = p.project_id || "";
    cell(row, p.project_id ? p.name : "(no project)");
    cell(row, p.project_id || "–", "id");
    cell(row, count(p.tokens), "num tokens");
    cell(row, count(p.requests), "num requests");
    money(cell(row, "", "num cost"), p.cost_nanodollars);
  }
}

function show(report) {
  const billing = report.billing;
  $("billing-state").textContent = STATES[billing.state] || billing.state;
  $("billing-state").className = "badge " + (billing.state === "ok" ? "ok" : "refused");
  $("billing-message").textContent = billing.message || "Embedding requests are accepted.";
  $("setup").textContent = billing.has_payment_method
    ? "Manage payment method" : "Add a payment method";
  money($("period-cost"), report.period.cost_nanodollars);
  $("period-tokens").textContent = count(report.period.tokens);
  $("period-requests").textContent = count(report.period.requests);
  $("period-range").textContent = `${report.start} to ${report.end} (UTC)`;
  money($("total-cost"), report.total.cost_nanodollars);
  $("total-tokens").textContent = count(report.total.tokens);
  $("total-requests").textContent = count(report.total.requests);
  $("owed").textContent = dollars(report.total.owed_dollars);
  $("charged").textContent = dollars(report.total.charged_dollars);
  $("pending").textContent = dollars(report.total.pending_dollars);
  drawChart(report.days);
  fillProjects(report.projects);
  $("report").hidden = false;
}

async function load(event) {
  if (event) event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_SLOT, key);
  const query = new URLSearchParams();
  if ($("start").value) query.set("start", $("start").value);
  if ($("end").value) query.set("end", $("end").value);
  setStatus("Loading…", false);
  try {
    const report = await api("GET", "/v2/usage?" + query, key);
    show(report);
    setStatus(`Organization ${report.org_name} (${report.org_id})`, false);
  } catch (error) {
    $("report").hidden = true;
    setStatus(error.message, true);
  }
}

async function setup() {
  const key = sessionStorage.getItem(KEY_SLOT) || $("api-key").value.trim();
  $("setup").disabled = true;
  setStatus("Opening Stripe…", false);
  try {
    const answer = await api("POST", "/v2/billing/setup", key);
    window.location.assign(answer.url);
  } catch (error) {
    setStatus(error.message, true);
    $("setup").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", load);
  $("load").disabled = false; // the page's form only submits through load() from here on
  $("setup").addEventListener("click", setup);
  const saved = sessionStorage.getItem(KEY_SLOT);
  if (saved) {
    $("api-key").value = saved;
    load();
  }
});
