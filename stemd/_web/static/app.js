// stemd dashboard: live updates (server-sent events) and actions (through the JSON API).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function toast(text, bad) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = bad ? "bad" : "ok";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function setLive(text) {
  const el = document.getElementById("live");
  if (el) el.textContent = text;
}

async function api(path, body) {
  const reply = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error ? data.error.message : reply.statusText);
  return data;
}

function follow(url, onChange) {
  if (!window.EventSource) return null;
  const source = new EventSource(url);
  source.addEventListener("open", () => setLive("● live"));
  source.addEventListener("error", () => setLive("○ reconnecting"));
  source.addEventListener("changed", onChange);
  return source;
}

async function refreshList() {
  const reply = await fetch(location.href, { credentials: "same-origin" });
  if (!reply.ok) return;
  const doc = new DOMParser().parseFromString(await reply.text(), "text/html");
  for (const sel of ["[data-live-list]", "[data-count]"]) {
    const fresh = doc.querySelectorAll(sel);
    document.querySelectorAll(sel).forEach((el, i) => {
      if (fresh[i]) el.innerHTML = fresh[i].innerHTML;
    });
  }
}

async function refreshRun(box) {
  if (box.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
    box.dataset.stale = "true";
    return;
  }
  const reply = await fetch(`/runs/${encodeURIComponent(box.dataset.runId)}?partial=1`, {
    credentials: "same-origin",
  });
  if (!reply.ok) return;
  box.innerHTML = await reply.text();
  box.dataset.stale = "false";
}

function payloadOf(form) {
  const raw = form.elements.payload ? form.elements.payload.value.trim() : "";
  return raw === "" ? null : JSON.parse(raw);
}

async function act(target, runId) {
  const verb = target.dataset.action;
  if (!window.confirm(target.dataset.confirm || `${verb}?`)) return;
  try {
    let reply;
    if (verb === "cancel") {
      reply = await api(`/api/runs/${encodeURIComponent(runId)}/cancel`, { reason: "cancelled from the dashboard" });
      toast(reply.cancelled ? "Cancelled." : "Not cancelled: the run has ended.");
    } else if (verb === "rewind") {
      reply = await api(`/api/runs/${encodeURIComponent(runId)}/rewind`, { step: target.elements.step.value });
      toast(reply.rewound ? "Rewound." : "Not rewound.");
    } else if (verb === "send") {
      reply = await api(`/api/runs/${encodeURIComponent(runId)}/send`, {
        topic: target.elements.topic.value, payload: payloadOf(target),
      });
      toast(reply.accepted ? "Sent." : "Already sent (same key).");
    } else if (verb === "emit") {
      reply = await api("/api/emit", { topic: target.elements.topic.value, payload: payloadOf(target) });
      toast(`Emitted: ${reply.resumed} run(s) resumed.`);
    }
  } catch (err) {
    toast(`${verb} failed: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("run");
  if (box) {
    follow(`/events/runs/${encodeURIComponent(box.dataset.runId)}`, () => refreshRun(box));
    box.addEventListener("focusout", () => { if (box.dataset.stale === "true") refreshRun(box); });
    box.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (button) { ev.preventDefault(); act(button, box.dataset.runId); }
    });
    box.addEventListener("submit", (ev) => {
      const form = ev.target.closest("form[data-action]");
      if (form) { ev.preventDefault(); act(form, box.dataset.runId); }
    });
  } else if (document.querySelector("[data-live-list]")) {
    let busy = false;
    follow("/events/runs", async () => {
      if (busy) return;
      busy = true;
      try { await refreshList(); } finally { busy = false; }
    });
  }
});
