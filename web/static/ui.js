// greengate admin UI: writes go to the JSON admin API with fetch(), carrying the session
// cookie and its CSRF token. No framework; every page works from its server-rendered HTML.
"use strict";

function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

async function api(method, url, body) {
  const r = await fetch(url, {
    method, credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await r.json(); } catch (e) { /* empty body */ }
  if (r.status === 401) { location.href = "/ui/login?next=" + encodeURIComponent(location.pathname); }
  if (!r.ok) {
    throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
  }
  return data;
}

function say(id, text, ok) {
  const el = document.getElementById(id);
  if (!el) return;
  el.textContent = text;
  el.className = "status " + (ok ? "ok" : "err");
}

function numberOrNull(v) {
  return v === "" || v === null || v === undefined ? null : Number(v);
}

function syncSlider(rangeId, numberId) {
  const range = document.getElementById(rangeId), num = document.getElementById(numberId);
  if (!range || !num) return;
  range.addEventListener("input", () => { num.value = range.value; });
  num.addEventListener("input", () => { range.value = num.value; });
}

function allToggle(allId, name, form) {
  const all = document.getElementById(allId);
  if (!all) return;
  const boxes = () => form.querySelectorAll('input[name="' + name + '"]');
  all.addEventListener("change", () => { if (all.checked) boxes().forEach((b) => { b.checked = name === "member"; }); });
  boxes().forEach((b) => b.addEventListener("change", () => {
    const picked = [...boxes()].filter((x) => x.checked).length;
    all.checked = name === "member" ? picked === boxes().length : picked === 0;
  }));
}

function policyPage() {
  const form = document.getElementById("policy-form");
  if (!form) return;
  syncSlider("lambda-range", "lambda");
  syncSlider("mu-range", "mu");
  allToggle("all-members", "member", form);
  const current = JSON.parse(document.getElementById("policy-data").textContent);
  const team = form.dataset.team;
  const url = "/admin/policies/" + encodeURIComponent(team);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const members = [...form.querySelectorAll('input[name="member"]:checked')].map((b) => b.value);
    // Fields the form does not show (rules, fallback order) are kept as they are.
    const policy = Object.assign({}, current, {
      lambda: Number(f["lambda"].value), mu: Number(f["mu"].value),
      allowed_members: document.getElementById("all-members").checked ? null : members,
      max_cost_per_request_usd: numberOrNull(f["max_cost_per_request_usd"].value),
      latency_slo_ms: numberOrNull(f["latency_slo_ms"].value),
      min_quality: numberOrNull(f["min_quality"].value),
      max_cost_per_1k_usd: numberOrNull(f["max_cost_per_1k_usd"].value),
      max_energy_j: numberOrNull(f["max_energy_j"].value),
      reference_member: f["reference_member"].value || null,
      exploration: f["exploration"].checked, store_prompts: f["store_prompts"].checked,
      safety: Object.assign({}, current.safety, {
        pii_action: f["pii_action"].value, jailbreak_action: f["jailbreak_action"].value }),
      cache: Object.assign({}, current.cache, {
        enabled: f["cache_enabled"].checked, allow_tools: f["cache_allow_tools"].checked,
        max_temperature: Number(f["cache_max_temperature"].value),
        semantic: f["cache_semantic"].value }),
    });
    try {
      const saved = await api("PUT", url, policy);
      Object.assign(current, saved);
      say("policy-status", "Saved at " + new Date().toLocaleTimeString() +
          ": the next auto request of " + team + " uses lambda " + saved.lambda +
          ", mu " + saved.mu + ".", true);
    } catch (e) { say("policy-status", "Not saved: " + e.message, false); }
  });
  const reset = document.getElementById("reset-policy");
  if (reset) reset.addEventListener("click", async () => {
    if (!confirm("Remove " + team + "'s own policy? It will use the default policy.")) return;
    try { await api("DELETE", url); location.reload(); }
    catch (e) { say("policy-status", e.message, false); }
  });
  const budget = document.getElementById("budget-form");
  if (budget) budget.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = budget.elements;
    try {
      await api("POST", "/admin/budgets", { scope: "team", subject: budget.dataset.team,
        metric: f["metric"].value, period: f["period"].value, limit: Number(f["limit"].value) });
      location.reload();
    } catch (e) { say("budget-status", e.message, false); }
  });
  document.querySelectorAll("[data-delete-budget]").forEach((b) => b.addEventListener("click", async () => {
    try { await api("DELETE", "/admin/budgets/" + b.dataset.deleteBudget); location.reload(); }
    catch (e) { say("budget-status", e.message, false); }
  }));
}

function keysPage() {
  const teamForm = document.getElementById("team-form");
  if (teamForm) teamForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/admin/teams", { name: teamForm.elements["name"].value.trim() });
      say("team-status", "Team " + t.name + " created.", true);
      setTimeout(() => location.reload(), 400);
    } catch (e) { say("team-status", e.message, false); }
  });
  const keyForm = document.getElementById("key-form");
  if (keyForm) {
    allToggle("key-all-models", "model", keyForm);
    keyForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = keyForm.elements;
      const models = [...keyForm.querySelectorAll('input[name="model"]:checked')].map((b) => b.value);
      try {
        const k = await api("POST", "/admin/keys", {
          team: f["team"].value.trim(), name: f["name"].value.trim() || null,
          allowed_models: document.getElementById("key-all-models").checked ? null : models });
        // Shown once, from memory only: never written to storage, gone on close.
        document.getElementById("new-key-secret").textContent = k.key;
        document.getElementById("new-key-dialog").showModal();
      } catch (e) { say("key-status", e.message, false); }
    });
  }
  const dialog = document.getElementById("new-key-dialog");
  if (dialog) {
    document.getElementById("copy-key").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(document.getElementById("new-key-secret").textContent); }
      catch (e) { /* clipboard refused (http): the key is selectable */ }
    });
    const done = () => { document.getElementById("new-key-secret").textContent = ""; location.reload(); };
    document.getElementById("close-key-dialog").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", done);
  }
  document.querySelectorAll("[data-revoke]").forEach((b) => b.addEventListener("click", async () => {
    if (!confirm("Revoke key " + b.dataset.prefix + "…? Clients using it are refused at once.")) return;
    try { await api("DELETE", "/admin/keys/" + b.dataset.revoke); location.reload(); }
    catch (e) { alert(e.message); }
  }));
}

document.addEventListener("DOMContentLoaded", () => { policyPage(); keysPage(); });
