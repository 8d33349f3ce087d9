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
  // Connected (or connected again): what changed since the page was rendered, or while the
  // stream was away, told no stream; fetch it once, then say live.
  source.addEventListener("open", async () => {
    try { await onChange(); } finally { setLive("● live"); }
  });
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

const runPath = (runId, verb) => `/api/runs/${encodeURIComponent(runId)}/${verb}`;
const plural = (n) => `${n} run${n === 1 ? "" : "s"}`;

// One run's actions (run page): what each verb posts, and what its reply says.
const RUN_ACTIONS = {
  cancel: async (runId) => {
    const reply = await api(runPath(runId, "cancel"), { reason: "cancelled from the dashboard" });
    return reply.cancelled ? "Cancelled." : "Not cancelled: the run has ended.";
  },
  pause: async (runId) => {
    const reply = await api("/api/pause", { run_ids: [runId] });
    return reply.count ? "Paused." : "Not paused: the run has ended or was paused.";
  },
  resume: async (runId) => {
    const reply = await api("/api/resume", { run_ids: [runId] });
    return reply.count ? "Resumed." : "Not resumed: the run was not paused.";
  },
  rewind: async (runId, form) => {
    const reply = await api(runPath(runId, "rewind"), { step: form.elements.step.value });
    return reply.rewound ? "Rewound." : "Not rewound.";
  },
  fork: async (runId, form) => {
    const reply = await api(runPath(runId, "fork"), { step: form.elements.step.value });
    location.assign(`/runs/${encodeURIComponent(reply.run_id)}`);
    return `Forked: run ${reply.run_id}.`;
  },
  send: async (runId, form) => {
    const reply = await api(runPath(runId, "send"), {
      topic: form.elements.topic.value, payload: payloadOf(form),
    });
    return reply.accepted ? "Sent." : "Already sent (same key).";
  },
  emit: async (runId, form) => {
    const reply = await api("/api/emit", { topic: form.elements.topic.value, payload: payloadOf(form) });
    return `Emitted: ${plural(reply.resumed)} resumed.`;
  },
};

// The runs list's group actions: a dry run first, whose count the confirmation shows.
const GROUP_ACTIONS = {
  "group-pause": { verb: "pause", what: "Pause", done: "Paused" },
  "group-resume": { verb: "resume", what: "Resume", done: "Resumed" },
  "group-cancel": { verb: "cancel_many", what: "Cancel", done: "Cancelled" },
};

// A schedule's actions (schedules page).
const SCHEDULE_ACTIONS = {
  pause_schedule: (reply) => `Paused schedule ${reply.schedule.name}.`,
  resume_schedule: (reply) => `Resumed schedule ${reply.schedule.name}.`,
  trigger_schedule: (reply) => `Started run ${reply.run_id}.`,
};

async function act(target, runId) {
  const verb = target.dataset.action;
  if (!window.confirm(target.dataset.confirm || `${verb}?`)) return;
  try {
    toast(await RUN_ACTIONS[verb](runId, target));
  } catch (err) {
    toast(`${verb} failed: ${err.message}`, true);
  }
}

function describe(filters) {
  return Object.entries(filters).map(([k, v]) => `${k} ${v}`).join(", ");
}

async function actOnGroup(button) {
  const { verb, what, done } = GROUP_ACTIONS[button.dataset.action];
  const filters = JSON.parse(button.closest("[data-filters]").dataset.filters);
  try {
    const preview = await api(`/api/${verb}`, { ...filters, dry_run: true });
    if (!preview.count) { toast(`No run to ${what.toLowerCase()} (${describe(filters)}).`); return; }
    if (!window.confirm(`${what} ${plural(preview.count)} (${describe(filters)})?`)) return;
    const body = verb === "cancel_many" ? { ...filters, reason: "cancelled from the dashboard" } : filters;
    const reply = await api(`/api/${verb}`, body);
    toast(`${done} ${plural(reply.count)}.`);
    await refreshList();
  } catch (err) {
    toast(`${what} failed: ${err.message}`, true);
  }
}

async function actOnSchedule(button) {
  const verb = button.dataset.action;
  const name = button.closest("[data-schedule]").dataset.schedule;
  if (!window.confirm(button.dataset.confirm || `${verb} ${name}?`)) return;
  try {
    toast(SCHEDULE_ACTIONS[verb](await api(`/api/${verb}`, { name })));
    await refreshList();
  } catch (err) {
    toast(`${verb} failed: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("run");
  if (box) {
    follow(`/events/runs/${encodeURIComponent(box.dataset.runId)}`, () => refreshRun(box));
    box.addEventListener("focusout", () => { if (box.dataset.stale === "true") refreshRun(box); });
    const done = async (target) => { await act(target, box.dataset.runId); await refreshRun(box); };
    box.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (button) { ev.preventDefault(); done(button); }
    });
    box.addEventListener("submit", (ev) => {
      const form = ev.target.closest("form[data-action]");
      if (form) { ev.preventDefault(); done(form); }
    });
  } else if (document.querySelector("[data-live-list]")) {
    document.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button) return;
      ev.preventDefault();
      if (button.dataset.action in GROUP_ACTIONS) actOnGroup(button);
      else if (button.closest("[data-schedule]")) actOnSchedule(button);
    });
    let busy = false;
    follow("/events/runs", async () => {
      if (busy) return;
      busy = true;
      try { await refreshList(); } finally { busy = false; }
    });
  }
});
