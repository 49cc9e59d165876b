// The operator console's live view: follows /console/live (a Channels WebSocket) and
// updates the deployments table, the counters, the map's colours and the health
// timeline in place. No framework, no CDN; the page works without it (it is rendered
// on the server), this only keeps it current. Reconnects with a back-off.
(() => {
  "use strict";
  const script = document.currentScript;
  const path = (script && script.dataset.livePath) || "/console/live";
  const status = document.getElementById("live-status");
  const table = document.querySelector("#deployments tbody");
  const timeline = document.getElementById("health-timeline");
  const HEALTH = ["healthy", "degraded", "down"];
  let delay = 1000;

  const dash = (v) => (v === null || v === undefined ? "–" : String(v));
  const say = (text, ok) => {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("ok", !!ok);
  };

  function setField(tr, name, text, cls) {
    const td = tr.querySelector(`[data-field="${name}"]`);
    if (!td) return;
    if (td.textContent !== text) td.textContent = text;
    if (cls !== undefined) td.className = cls;
  }

  function updateRow(d) {
    if (!table) return;
    const tr = Array.from(table.rows).find((r) => r.dataset.slug === d.slug);
    if (!tr) return;
    HEALTH.forEach((h) => tr.classList.toggle(`health-${h}`, d.health === h));
    tr.classList.toggle("drained", !!d.drained);
    setField(tr, "health", d.health, "health");
    setField(tr, "loaded", d.loaded ? "yes" : "no");
    setField(tr, "load", `${dash(d.running)} / ${dash(d.waiting)} · ${d.inflight} / ${d.slots}`);
    setField(tr, "ttft", `${dash(d.ttft_observed_ms)} (${d.ttft_profile_ms})`, d.ttft_ratio > 2 ? "over" : "");
    setField(tr, "decode", `${dash(d.decode_observed_tps)} (${d.decode_profile_tps})`,
      d.decode_ratio !== null && d.decode_ratio < 0.5 ? "over" : "");
    setField(tr, "rtt", dash(d.rtt_ms));
  }

  function updateCounters(counters) {
    Object.entries(counters || {}).forEach(([name, value]) => {
      const dd = document.querySelector(`[data-counter="${name}"]`);
      if (dd && dd.textContent !== String(value)) dd.textContent = String(value);
    });
  }

  function updateRegions(regions) {
    Object.entries(regions || {}).forEach(([region, css]) => {
      const circle = document.querySelector(`#mesh-map circle[data-key="${CSS.escape(region)}"]`);
      if (!circle) return;
      ["healthy", "degraded", "down", "drained"].forEach((h) => circle.classList.toggle(`health-${h}`, css === h));
    });
  }

  function addHealthChange(m) {
    if (!timeline) return;
    const empty = timeline.querySelector(".empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = "fresh";
    const at = new Date(m.at * 1000);
    const time = document.createElement("time");
    time.dateTime = at.toISOString();
    time.textContent = at.toISOString().slice(11, 19);
    const strong = document.createElement("strong");
    strong.className = `health-${m.health}`;
    strong.textContent = m.health;
    li.append(time, ` ${m.slug}: now `, strong, " ");
    const note = document.createElement("span");
    note.className = "muted";
    note.textContent = "(live)";
    li.append(note);
    timeline.prepend(li);
    while (timeline.children.length > 60) timeline.lastElementChild.remove();
  }

  function handle(m) {
    if (m.type === "deployments") {
      m.rows.forEach(updateRow);
      updateCounters(m.counters);
      updateRegions(m.regions);
    } else if (m.type === "counters") {
      updateCounters(m.counters);
    } else if (m.type === "health") {
      addHealthChange(m);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${path}`);
    let opened = false;
    socket.addEventListener("open", () => { opened = true; delay = 1000; say("live", true); });
    socket.addEventListener("message", (event) => {
      try { handle(JSON.parse(event.data)); } catch (err) { console.error("console live:", err); }
    });
    socket.addEventListener("close", (event) => {
      // A refused handshake (signed out, or no second factor) never opens: the server
      // answers 403 before the socket exists, so the browser reports 1006.
      const why = opened ? "live updates lost" : "live updates unavailable (signed out?)";
      say(`${why}; retrying in ${Math.round(delay / 1000)} s`);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }

  // Fault switches post in the background so the page (and its socket) stays.
  document.querySelectorAll("form.js-fault").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await fetch(form.action, { method: "POST", body: new FormData(form) });
      form.classList.toggle("failed", !response.ok);
    });
  });

  if ("WebSocket" in window) connect(); else say("live updates need WebSockets");
})();
