// gpumod's dashboard: plain JS, no dependencies. Every piece of text from the daemon (preset
// names, step descriptions, log lines) is put into the page with textContent, never as HTML.
"use strict";
(() => {
  const KEY = "gpumod-api-key";
  let apiKey = localStorage.getItem(KEY) || "";
  let keyWaiter = null;
  let pending = null; // the action whose dry run is shown, waiting for Run
  let liveId = null; // the action whose steps are shown
  let logService = null;
  let lastState = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else if (k === "style") Object.assign(e.style, v); // CSSOM: the page's CSP forbids style attributes
      else e[k] = v;
    }
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function color(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) % 360;
    return `hsl(${h}, 55%, 62%)`;
  }

  function duration(s) {
    if (s === null || s === undefined || s < 0) return "-";
    s = Math.floor(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  // -- the key ------------------------------------------------------------------------------
  function auth() {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  function needKey(message) {
    $("key-form").hidden = false;
    $("key-msg").textContent = message;
    $("key-input").focus();
    if (!keyWaiter) {
      let resolve;
      const p = new Promise((r) => { resolve = r; });
      keyWaiter = { p, resolve };
    }
    return keyWaiter.p;
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("key-input").value.trim();
    if (apiKey) localStorage.setItem(KEY, apiKey); else localStorage.removeItem(KEY);
    $("key-form").hidden = true;
    $("key-msg").textContent = "";
    if (keyWaiter) { keyWaiter.resolve(); keyWaiter = null; }
    if (streamAbort) streamAbort.abort();
  });
  $("key-btn").addEventListener("click", () => needKey(""));

  async function api(path, body) {
    const init = { headers: { ...auth() }, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      needKey(apiKey ? "the daemon refused this API key" : "this daemon needs an API key");
    }
    return r;
  }

  async function errorText(r) {
    try {
      const d = await r.json();
      return (d.error && d.error.message) || `HTTP ${r.status}`;
    } catch (e) {
      return `HTTP ${r.status}`;
    }
  }

  // -- the event stream -----------------------------------------------------------------------
  let streamAbort = null;

  function setConn(what, text) {
    const c = $("conn");
    c.dataset.conn = what;
    c.textContent = text || what;
  }

  function dispatch(chunk) {
    let event = "message";
    let data = "";
    for (const line of chunk.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (!data) return;
    const d = JSON.parse(data);
    if (event === "state") renderState(d);
    else if (event === "history") renderHistory(d);
    else if (event === "action") onAction(d);
  }

  async function readStream(r, onChunk) {
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        onChunk(chunk);
      }
    }
  }

  async function listen() {
    for (;;) {
      streamAbort = new AbortController();
      try {
        const r = await fetch("api/events", { headers: auth(), cache: "no-store", signal: streamAbort.signal });
        if (r.status === 401) {
          setConn("locked", "API key needed");
          await needKey(apiKey ? "the daemon refused this API key" : "this daemon needs an API key");
          continue;
        }
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        setConn("live");
        await readStream(r, dispatch);
      } catch (e) {
        if (e.name !== "AbortError") {
          setConn("reconnecting", "reconnecting…");
          await new Promise((res) => setTimeout(res, 1000));
        }
      }
    }
  }

  // -- rendering the state ----------------------------------------------------------------
  function renderState(s) {
    lastState = s;
    $("host").textContent = s.header || s.host || "";
    let mode = `mode: ${s.mode || "(none)"}`;
    if (s.since) mode += ` · for ${duration(Date.now() / 1000 - s.since)}`;
    if (s.busy) mode += ` · running: ${s.busy.title}`;
    else if (s.switching) mode += " · switching";
    $("mode").textContent = mode;
    renderGpus(s);
    renderServices(s);
    renderModes(s);
  }

  function bar(kind, gpu, field) {
    const total = gpu.total_mb || 1;
    const b = el("div", { class: `bar ${kind}`, "data-kind": kind, title: `${kind} VRAM` });
    for (const seg of gpu.segments) {
      const mb = seg[field];
      if (!mb) continue;
      const pct = Math.min(100, (100 * mb) / total);
      b.append(el("div", { class: "seg", "data-service": seg.service, "data-mb": mb, title: `${seg.service}: ${mb} MB`,
                           style: { width: `${pct.toFixed(3)}%`, background: color(seg.service) } }, seg.service));
    }
    if (kind === "measured" && gpu.other_mb) {
      b.append(el("div", { class: "seg other", "data-service": "(other)", "data-mb": gpu.other_mb,
                           title: `other processes: ${gpu.other_mb} MB`,
                           style: { width: `${((100 * gpu.other_mb) / total).toFixed(3)}%` } }, "other"));
    }
    return b;
  }

  function renderGpus(s) {
    const box = $("gpus");
    const out = [];
    if (s.gpu_error) out.push(el("p", { class: "warn" }, s.gpu_error));
    for (const g of s.gpus) {
      const measured = g.segments.reduce((a, x) => a + x.measured_mb, 0);
      const declared = g.segments.reduce((a, x) => a + x.declared_mb, 0);
      const legend = el("div", { class: "legend" });
      for (const seg of g.segments) {
        legend.append(el("span", { "data-service": seg.service },
          el("span", { class: "swatch", style: { background: color(seg.service) } }),
          `${seg.service} ${seg.measured_mb} MB measured / ${seg.declared_mb} MB declared`));
      }
      out.push(el("div", { class: "gpu", "data-index": g.index, "data-used": g.used_mb, "data-total": g.total_mb },
        el("h3", {}, `GPU ${g.index}: ${g.name} — ${g.used_mb} / ${g.total_mb} MB used`),
        el("div", { class: "bar-label" }, `measured (nvidia-smi): ${measured} MB by services${g.other_mb ? `, ${g.other_mb} MB other` : ""}`),
        bar("measured", g, "measured_mb"),
        el("div", { class: "bar-label" }, `declared (presets): ${declared} MB`),
        bar("declared", g, "declared_mb"),
        legend));
    }
    if (!out.length) out.push(el("p", { class: "muted" }, "no GPU observed yet"));
    box.replaceChildren(...out);
  }

  function renderServices(s) {
    const rows = [];
    const busy = Boolean(s.busy);
    for (const v of s.services) {
      const acts = el("td", { class: "acts", "data-label": "" });
      for (const a of v.actions) {
        acts.append(el("button", { type: "button", class: "small", "data-action": a, disabled: busy,
                                   onclick: () => openAction({ kind: "service", action: a, service: v.id }) }, a));
      }
      acts.append(el("button", { type: "button", class: "small", "data-action": "log", onclick: () => openLog(v.id) }, "log"));
      const state = el("td", { class: "state", "data-label": "state" },
        el("span", { class: "pill", "data-state": v.state }, v.state + (v.leaving ? " (leaving)" : "")));
      if (v.detail) state.append(el("span", { class: "sub" }, v.detail));
      rows.push(el("tr", { "data-service": v.id, "data-state": v.state },
        el("td", { class: "sid", "data-label": "service" }, v.id, el("span", { class: "sub" }, `${v.name} · ${v.driver}`)),
        state,
        el("td", { class: "num port", "data-label": "port" }, v.port),
        el("td", { class: "gpus", "data-label": "GPUs",
                   title: Object.entries(v.gpu_mb || {}).map(([i, mb]) => `GPU ${i}: ${mb} MB`).join(", ") },
          v.gpus.length ? v.gpus.join(",") : "-"),
        el("td", { class: "num inflight", "data-label": "in flight" }, v.in_flight),
        el("td", { class: "num queued", "data-label": "queued" }, v.waiting),
        el("td", { class: "num vram", "data-label": "VRAM MB" }, v.vram_mb),
        el("td", { class: "num declared", "data-label": "declared MB" }, v.preset_vram_mb),
        el("td", { class: "num uptime", "data-label": "uptime", "data-started": v.started_at ?? "" },
          v.started_at ? duration(Date.now() / 1000 - v.started_at) : "-"),
        acts));
    }
    $("services").tBodies[0].replaceChildren(...rows);
  }

  function renderModes(s) {
    const items = [];
    for (const m of s.modes) {
      const fits = m.fits === null ? "fit unknown" : m.fits ? "fits now" : "does not fit";
      items.push(el("li", { "data-mode": m.id, "data-current": m.current, "data-fits": m.fits },
        el("span", { class: "mname" }, m.name),
        el("span", { class: "total", "data-mb": m.total_mb }, `${m.total_mb} MB`),
        el("span", { class: "fits", "data-fits": m.fits, title: m.why }, fits),
        el("span", { class: "sub" }, m.services.join(", ") || "(no services)"),
        el("button", { type: "button", class: "small switch", disabled: Boolean(s.busy),
                       onclick: () => openAction({ kind: "switch", mode: m.id }) }, "switch")));
    }
    $("modes").replaceChildren(...items);
  }

  setInterval(() => {
    for (const td of document.querySelectorAll("td.uptime")) {
      const t = parseFloat(td.dataset.started);
      if (t) td.textContent = duration(Date.now() / 1000 - t);
    }
  }, 1000);

  // -- actions: the dry run, then the live steps ---------------------------------------------
  function showPanel(title) {
    $("action").hidden = false;
    $("action-title").textContent = title;
  }

  function refusal(d) {
    return el("div", { class: "refused" },
      el("p", {}, `refused: ${d.message}`),
      d.reasons && d.reasons.length ? el("ul", { class: "reasons" }, ...d.reasons.map((r) => el("li", {}, r))) : null,
      d.alternatives && d.alternatives.length
        ? el("div", {}, el("p", {}, "alternatives:"), el("ul", { class: "alternatives" }, ...d.alternatives.map((r) => el("li", {}, r))))
        : null);
  }

  async function openAction(what) {
    pending = what;
    liveId = null;
    showPanel(what.kind === "switch" ? `switch to ${what.mode}` : `${what.action} ${what.service}`);
    $("plan").replaceChildren(el("p", { class: "muted" }, "planning (dry run)…"));
    $("live").replaceChildren();
    $("result").textContent = "";
    delete $("result").dataset.ok;
    $("run").disabled = true;
    const r = await api("api/plan", what);
    if (!r.ok) {
      $("plan").replaceChildren(el("p", { class: "refused" }, `refused: ${await errorText(r)}`));
      return;
    }
    const d = await r.json();
    if (d.refused) {
      $("plan").replaceChildren(refusal(d));
      return;
    }
    const list = el("ol", { class: "plan-steps" }, ...d.steps.map((s) => el("li", { class: "step", "data-kind": s.kind }, s.step)));
    const notes = (d.notes || []).map((n) => el("p", { class: "muted note" }, n));
    const gpus = (d.gpus || []).length > 1
      ? [el("ul", { class: "plan-gpus" }, ...d.gpus.map((g) => el("li", { "data-index": g.index },
          `GPU ${g.index}: ${g.projected_mb} / ${g.total_mb} MB (budget ${g.budget_mb} MB)` +
          (Object.keys(g.services).length
            ? " — " + Object.entries(g.services).map(([sid, mb]) => `${sid} ${mb} MB`).join(", ") : ""))))]
      : [];
    $("plan").replaceChildren(el("p", {}, d.converged ? "nothing to do:" : "plan (dry run):"), list, ...gpus, ...notes);
    $("run").disabled = d.converged || Boolean(lastState && lastState.busy);
  }

  $("run").addEventListener("click", async () => {
    if (!pending) return;
    const what = pending;
    pending = null;
    $("run").disabled = true;
    $("result").textContent = "starting…";
    delete $("result").dataset.ok;
    const r = await api("api/run", what);
    if (!r.ok) {
      $("result").dataset.ok = "false";
      $("result").textContent = `refused: ${await errorText(r)}`;
      return;
    }
    // the steps arrive on the dashboard's event stream too (every open page sees them); this
    // response ends with the action
    await readStream(r, () => {});
  });

  $("close").addEventListener("click", () => {
    $("action").hidden = true;
    pending = null;
  });

  function liveStep(d) {
    const items = [...$("live").children];
    let li = items.find((x) => x.dataset.index === String(d.index));
    if (!li) li = items.find((x) => x.dataset.status === "pending" && x.dataset.step === d.step);
    if (!li) {
      li = el("li", { class: "step", "data-step": d.step }, el("span", { class: "text" }, d.step), el("span", { class: "secs" }));
      $("live").append(li);
    }
    li.dataset.index = String(d.index);
    return li;
  }

  function onAction(d) {
    if (d.phase === "plan") {
      liveId = d.id;
      pending = null;
      showPanel(d.title);
      $("plan").replaceChildren();
      $("result").textContent = "running…";
      delete $("result").dataset.ok;
      $("live").replaceChildren(...d.steps.map((s) => el("li", { class: "step", "data-status": "pending", "data-step": s.step },
        el("span", { class: "text" }, s.step), el("span", { class: "secs" }))));
      return;
    }
    if (liveId !== null && d.id !== liveId && d.phase !== "refused") return;
    if (d.phase === "refused") {
      liveId = d.id;
      showPanel(d.title || "refused");
      $("plan").replaceChildren(refusal(d));
      return;
    }
    if (d.phase === "start") {
      liveStep(d).dataset.status = "running";
    } else if (d.phase === "done" || d.phase === "fail") {
      const li = liveStep(d);
      li.dataset.status = d.phase === "done" ? "done" : "failed";
      li.querySelector(".secs").textContent = `${d.seconds.toFixed(2)}s${d.detail ? ` · ${d.detail}` : ""}`;
    } else if (d.phase === "end") {
      const res = $("result");
      res.dataset.ok = String(d.ok);
      const lines = [d.ok ? `done in ${(d.duration_s || 0).toFixed(2)}s: ${d.message || ""}` : `failed: ${d.error}`];
      if (!d.ok && d.state) lines.push(...d.state);
      res.textContent = lines.join("\n");
    }
  }

  // -- history and logs ---------------------------------------------------------------------
  function renderHistory(rows) {
    const items = rows.map((r) => {
      const total = Math.max(r.duration_s, 0.001);
      const steps = r.steps.map((s) => el("div", { class: "hstep", "data-status": s.status },
        el("span", { class: "label", title: s.step }, s.step),
        el("div", { class: "hbar", style: { width: `${Math.min(100, (100 * s.seconds) / total).toFixed(1)}%` } }),
        el("span", { class: "secs" }, `${Number(s.seconds).toFixed(2)}s`)));
      const when = new Date(r.started * 1000).toLocaleString();
      return el("li", { class: "entry", "data-kind": r.kind, "data-ok": r.ok },
        el("div", { class: "head" }, el("strong", { class: "title" }, r.title), el("span", { class: "muted" }, `${r.kind} · ${when}`),
          el("span", { class: "took" }, `${r.duration_s.toFixed(2)}s`), el("span", { class: r.ok ? "" : "warn" }, r.ok ? "ok" : `failed: ${r.error}`)),
        ...steps);
    });
    if (!items.length) items.push(el("li", { class: "muted" }, "no switches recorded yet"));
    $("history").replaceChildren(...items);
  }

  async function openLog(sid) {
    logService = sid;
    $("log-sec").hidden = false;
    $("log-title").textContent = `log of ${sid}`;
    $("log").textContent = "loading…";
    const r = await api(`api/logs?service=${encodeURIComponent(sid)}&n=200`);
    if (!r.ok) {
      $("log").textContent = await errorText(r);
      return;
    }
    const d = await r.json();
    $("log-title").textContent = `log of ${sid} (${d.unit}, ${d.manager}, last 200 lines)`;
    $("log").textContent = d.text || "(empty)";
  }
  $("log-refresh").addEventListener("click", () => logService && openLog(logService));
  $("log-close").addEventListener("click", () => { $("log-sec").hidden = true; logService = null; });

  listen();
})();
