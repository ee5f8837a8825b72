// sage_nb inspector — the browser side of sage_nb.inspector.Inspector (an anywidget ES module).
//
// The Python model is the truth: it sends ready-made view models (positions, colours,
// labels, percentages) and this file only draws them. Every name coming from the model
// is written with textContent / SVG text nodes, never parsed as markup, so a node called
// "<img src=x onerror=alert(1)>" is shown as text.
//
// Step mode (a step job or a recording) adds a step bar (Back, Step, Play, a scrubber, the
// quiz toggle), the current event next to the graph, the packets of that event moving along
// their edges, a quiz panel and a breakpoint panel. Buttons only send messages: Python steps
// (Play included) and sends the new view models back. The offline player (player.js) drives
// this same file with a model of its own.

const SVG_NS = "http://www.w3.org/2000/svg";
const LIVE = new Set(["RUNNING", "PAUSED"]);
const RATES = [1, 2, 5, 10];
const MOVE_MS = 750;      // a packet's trip along its edge
const STAGGER_MS = 160;   // between the packets of one step

function h(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function s(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// 8 points: a curve to the label's left side, a line under the label, a curve to the target
function curvePath(p) {
  const pt = (i) => `${p[i][0]},${p[i][1]}`;
  return `M${pt(0)} C${pt(1)} ${pt(2)} ${pt(3)} L${pt(4)} C${pt(5)} ${pt(6)} ${pt(7)}`;
}

// ------------------------------------------------------------------ skeleton
function skeleton(root) {
  root.replaceChildren();
  root.classList.add("sage-inspector");
  root.tabIndex = 0;        // focusable: in step mode → ← and space step, go back, play
  const header = h("div", { class: "sage-header" });
  const title = h("span", { class: "sage-title" });
  const status = h("span", { class: "sage-status" });
  const meta = h("span", { class: "sage-meta" });
  const controls = h("div", { class: "sage-controls" });
  const pause = h("button", { type: "button", class: "sage-pause", title: "pause or resume the job" });
  const toggle = h("span", { class: "sage-toggle", role: "group", "aria-label": "view" });
  const logical = h("button", { type: "button", "data-view": "logical", title: "one node per operator" }, "Logical");
  const physical = h("button", { type: "button", "data-view": "physical", title: "one node per instance" }, "Physical");
  toggle.append(logical, physical);
  const rate = h("select", { class: "sage-rate", title: "updates per second" });
  for (const r of RATES) rate.append(h("option", { value: r }, `${r} update${r > 1 ? "s" : ""}/s`));
  controls.append(pause, toggle, rate);
  header.append(title, status, meta, controls);
  const notice = h("div", { class: "sage-notice" });
  const error = h("div", { class: "sage-error", hidden: "" });
  const step = stepBar();
  const main = h("div", { class: "sage-main" });
  const wrap = h("div", { class: "sage-graph-wrap" });
  const graph = s("svg", { class: "sage-graph", role: "img" });
  wrap.append(graph);
  const side = h("div", { class: "sage-side" });
  const event = h("section", { class: "sage-event", hidden: "", "aria-live": "polite" });
  const quiz = h("section", { class: "sage-quiz", hidden: "" });
  const brk = h("section", { class: "sage-break", hidden: "", role: "alert" });
  const details = h("div", { class: "sage-details", "aria-live": "polite" });
  side.append(brk, event, quiz, details);
  main.append(wrap, side);
  const legend = h("div", { class: "sage-legend" });
  const panels = h("div", { class: "sage-panels" });
  const logBox = h("section", { class: "sage-log" });
  const logWrap = h("div", { class: "sage-log-wrap" });
  const logTable = h("table", { class: "sage-table" });
  logWrap.append(logTable);
  logBox.append(h("h3", {}, "Routing log"), h("div", { class: "sage-hint sage-log-hint" }), logWrap);
  const keys = h("section", { class: "sage-keys" });
  panels.append(logBox, keys);
  const timeline = h("section", { class: "sage-timeline" });
  const img = h("img", { alt: "buffer load per queue over time" });
  timeline.append(h("h3", {}, "Buffer load over time"), img);
  root.append(header, notice, error, step.bar, main, legend, panels, timeline);
  return { root, title, status, meta, pause, logical, physical, toggle, rate, notice, error, graph, details,
           legend, logTable, logHint: logBox.querySelector(".sage-log-hint"), keys, img, timeline,
           step, event, quiz, brk };
}

function stepBar() {
  const bar = h("div", { class: "sage-stepbar", hidden: "", role: "toolbar", "aria-label": "step through the run" });
  const back = h("button", { type: "button", class: "sage-back", title: "one step back (←)" }, "◀ Back");
  const step = h("button", { type: "button", class: "sage-step", title: "move one packet one hop (→)" }, "Step ▶");
  const play = h("button", { type: "button", class: "sage-play", title: "play or pause (space)" }, "▶ Play");
  const scrub = h("input", { type: "range", class: "sage-scrub", min: 0, max: 0, step: 1, value: 0,
                             "aria-label": "position in the run" });
  const position = h("span", { class: "sage-position" });
  const quiz = h("label", { class: "sage-quiz-toggle", title: "ask where each packet goes before it moves" });
  const check = h("input", { type: "checkbox" });
  quiz.append(check, h("span", {}, "Predict first"));
  const note = h("span", { class: "sage-player-note" });
  bar.append(back, step, play, scrub, position, quiz, note);
  return { bar, back, step, play, scrub, position, quiz: check, note };
}

// ------------------------------------------------------------------ graph
const SIDE_PANEL = 350;

function fitLayout(ui, model) {
  const width = ((model.get("graph") || {}).width || 300) * (model.get("offline") ? 1.2 : 1);
  const room = ui.root.clientWidth - 30;
  ui.root.classList.toggle("sage-wide", room - SIDE_PANEL >= 0.9 * width);
}

function stepMarks(model) {
  const ev = model.get("event") || {};
  const stepper = model.get("stepper") || {};
  const brk = model.get("breakpoint_hit") || {};
  const q = model.get("question") || {};
  return {
    moved: ev.node || "", upcoming: stepper.upcoming_node || "", brkNode: brk.node || "",
    brkEdge: brk.edge || "", edges: new Set((ev.moves || []).map((m) => m.edge)),
    candidates: new Set(q.state === "ask" ? (q.candidates || []).map((c) => c.id) : []),
  };
}

function drawGraph(ui, model, st) {
  const g = model.get("graph") || {};
  const svg = ui.graph;
  const path = new Set(model.get("path") || []);
  const sel = model.get("selected") || {};
  const mark = stepMarks(model);
  const [lw, lh] = g.label_size || [150, 34];
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${g.width || 300} ${g.height || 100}`);
  svg.setAttribute("width", g.width || 300);
  svg.setAttribute("height", g.height || 100);
  // a page of its own (the offline player) may enlarge the graph, for a projector
  svg.style.maxWidth = `${Math.round((g.width || 300) * (model.get("offline") ? 1.5 : 1))}px`;
  svg.style.minWidth = `${Math.round(0.7 * (g.width || 300))}px`;
  svg.setAttribute("data-view", g.view || "");
  const layers = ["sage-groups", "sage-edges", "sage-labels", "sage-nodes"].map((c) => s("g", { class: c }));
  svg.append(...layers);
  const [groups, edges, labels, nodes] = layers;
  for (const gr of g.groups || []) {
    const e = s("g", { class: "sage-group", "data-group": gr.id });
    e.append(s("rect", { x: gr.x, y: gr.y, width: gr.w, height: gr.h, rx: 10 }),
             s("text", { x: gr.x + 8, y: gr.y + 15 }, gr.label));
    groups.append(e);
  }
  for (const ed of g.edges || []) {
    const on = path.has(ed.id);
    const picked = sel.kind === "edge" && sel.id === ed.id;
    const cls = `sage-edge${on ? " sage-on-path" : ""}${picked ? " sage-selected" : ""}` +
      `${mark.edges.has(ed.id) ? " sage-step-edge" : ""}${mark.brkEdge === ed.id ? " sage-break-edge" : ""}` +
      `${ed.strategy === "chained" ? " sage-chained" : ""}`;
    const width = { green: 2, amber: 3, red: 4 }[ed.level] || 2;
    const e = s("g", { class: cls, "data-edge": ed.id, "data-pct": ed.pct ?? "", "data-level": ed.level,
                       "data-packets": ed.packets });
    const d = curvePath(ed.curve);
    e.append(s("path", { class: "sage-hit", d }),
             s("path", { class: "sage-line", d, stroke: ed.stroke, "stroke-width": width }),
             s("polygon", { points: ed.arrow.map((p) => p.join(",")).join(" "), fill: ed.stroke }));
    edges.append(e);
    labels.append(edgeLabel(ed, g.view, lw, lh, cls.replace("sage-edge", "sage-edge-label")));
  }
  for (const n of g.nodes || []) {
    const picked = sel.kind === "node" && sel.id === n.id;
    const cls = `sage-node${picked ? " sage-selected" : ""}${mark.moved === n.id ? " sage-moved" : ""}` +
      `${mark.upcoming === n.id ? " sage-upcoming" : ""}${mark.brkNode === n.id ? " sage-break-node" : ""}` +
      `${mark.candidates.has(n.id) ? " sage-candidate" : ""}${n.bottleneck ? " sage-bottleneck" : ""}`;
    const e = s("g", { class: cls, "data-node": n.id, "data-state": n.state });
    const cx = n.x + n.w / 2;
    if (n.bottleneck) e.append(...bottleneckMark(n));
    e.append(s("rect", { class: "sage-node-box", x: n.x, y: n.y, width: n.w, height: n.h, rx: 9, fill: n.fill }),
             s("text", { class: "sage-node-name", x: cx, y: n.y + 20, fill: n.text }, n.label));
    if (n.bottleneck) e.append(...bottleneckBadge(n));
    (n.lines || []).slice(0, 2).forEach((line, i) => {
      e.append(s("text", { class: `sage-node-line${line.startsWith("stop signals") ? " sage-stops" : ""}`,
                           x: cx, y: n.y + 37 + 15 * i, fill: n.text }, line));
    });
    nodes.append(e);
  }
  const packets = s("g", { class: "sage-packets" });
  svg.append(packets);
  drawPackets(ui, model, st, packets);
}

// a likely bottleneck: a dashed ring around the node, and a badge on its top edge
function bottleneckMark(n) {
  return [s("rect", { class: "sage-bottleneck-ring", x: n.x - 5, y: n.y - 5, width: n.w + 10, height: n.h + 10,
                      rx: 12 })];
}

function bottleneckBadge(n) {
  const x = n.x + n.w - 74;
  return [s("rect", { class: "sage-bottleneck-badge", x, y: n.y - 9, width: 70, height: 16, rx: 8 }),
          s("text", { class: "sage-bottleneck-text", x: x + 35, y: n.y + 3 }, "bottleneck")];
}

function edgeLine(svg, id) {
  for (const e of svg.querySelectorAll(".sage-edges .sage-edge")) {
    if (e.getAttribute("data-edge") === id) return e.querySelector("path.sage-line");
  }
  return null;
}

// The packets (and stop signals) of the current event, moving along their edges once per
// event. The trip is timed from the event's arrival: a redraw during it (another trait of
// the same update, a selection) continues it, a later one shows the packets arrived.
function drawPackets(ui, model, st, layer) {
  const ev = model.get("event") || {};
  const stepper = model.get("stepper") || {};
  const key = `${ev.index}:${stepper.position}:${(model.get("graph") || {}).view}`;
  if (st.raf) cancelAnimationFrame(st.raf);
  st.raf = null;
  if (key !== st.anim.key) {
    const still = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    const rate = Math.max(1, Number(model.get("rate")) || 1);
    const playing = !!model.get("playing");
    st.anim = { key, t0: still ? -Infinity : performance.now(), stagger: playing ? 0 : 1,
                dur: playing ? Math.max(120, Math.min(MOVE_MS, 700 / rate)) : MOVE_MS };
  }
  const items = [];
  const queued = {};          // packets already on an edge: the later ones wait behind (FIFO)
  (ev.moves || []).forEach((mv, i) => {
    const line = mv.edge ? edgeLine(ui.graph, mv.edge) : null;
    if (!line) return;
    const behind = (queued[mv.edge] = (queued[mv.edge] ?? -1) + 1);
    const stop = mv.kind === "stop";
    const g = s("g", { class: `sage-packet${stop ? " sage-stop-signal" : ""}`, "data-edge": mv.edge,
                       "data-kind": mv.kind, "data-target": mv.target });
    g.append(stop ? s("rect", { x: -7, y: -7, width: 14, height: 14, rx: 2 }) : s("circle", { r: 8 }),
             s("title", {}, `${stop ? "stop signal" : mv.label} → ${mv.target}`));
    if (!behind) {        // one label per edge: the packets behind the first are listed in the panel
      g.append(s("text", { class: "sage-packet-label", y: -13, "text-anchor": "middle" }, stop ? "stop" : mv.label));
    }
    layer.append(g);
    const len = line.getTotalLength();
    items.push({ g, line, len, delay: i * STAGGER_MS, end: Math.max(0.25, (len - 14 - 30 * behind) / len) });
  });
  const { t0, dur, stagger } = st.anim;
  const ease = (t) => (t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2);
  const frame = (now) => {
    let running = false;
    for (const it of items) {
      const t = Math.max(0, Math.min(1, (now - t0 - it.delay * stagger) / dur));
      running = running || t < 1;
      const p = it.line.getPointAtLength(it.len * it.end * ease(t));
      it.g.setAttribute("transform", `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`);
      it.g.style.opacity = t > 0 || it.delay * stagger === 0 ? "1" : "0";
    }
    st.raf = running ? requestAnimationFrame(frame) : null;
  };
  if (items.length) frame(performance.now());
}

function edgeLabel(ed, view, w, hgt, cls) {
  const left = ed.lx - w / 2;
  let top = ed.ly - hgt / 2;
  const e = s("g", { class: cls, "data-edge": ed.id, "data-pct": ed.pct ?? "" });
  e.append(s("rect", { class: "sage-label-box", x: left, y: top, width: w, height: hgt, rx: 6 }));
  if (view === "logical") {
    e.append(s("text", { class: "sage-strategy", x: ed.lx, y: top + 15, "text-anchor": "middle" }, ed.label));
    top += 16;
  }
  const bar = w - 58;
  const fill = Math.max(0, Math.min(100, ed.pct || 0)) / 100 * bar;
  e.append(s("rect", { class: "sage-bar-bg", x: left + 10, y: top + 6, width: bar, height: 10, rx: 2 }),
           s("rect", { class: "sage-bar", x: left + 10, y: top + 6, width: fill, height: 10, rx: 2, fill: ed.color }),
           s("text", { class: "sage-load", x: left + bar + 16, y: top + 15.5 }, ed.load_text),
           s("text", { class: "sage-count", x: ed.lx, y: top + 29.5, "text-anchor": "middle" }, ed.text));
  return e;
}

function findItem(model, ref) {
  if (!ref || !ref.kind) return null;
  const g = model.get("graph") || {};
  const list = ref.kind === "node" ? g.nodes : g.edges;
  return (list || []).find((x) => x.id === ref.id) || null;
}

function drawDetails(ui, model, st) {
  const box = ui.details;
  const item = findItem(model, st.hover) || findItem(model, model.get("selected"));
  box.replaceChildren();
  if (!item) {
    box.append(h("div", { class: "sage-details-title" }, "Details"),
               h("div", { class: "sage-hint" },
                 "Hover or click a node or an edge to see its queue statistics, counters and last packets."));
    return;
  }
  const det = item.details || {};
  const body = h("div", { class: "sage-details-body" });
  box.append(h("div", { class: "sage-details-title" }, det.title || item.id), body);
  const table = h("table");
  for (const [k, v] of det.rows || []) {
    const tr = h("tr");
    tr.append(h("th", {}, k), h("td", {}, v));
    table.append(tr);
  }
  body.append(table);
  for (const list of det.lists || []) {
    const sec = h("div", { class: "sage-details-list" });
    const ul = h("ul");
    for (const it of list.items) ul.append(h("li", {}, it));
    sec.append(h("h4", {}, list.title), ul);
    body.append(sec);
  }
}

// ------------------------------------------------------------------ header, error, legend
function drawHeader(ui, model) {
  const status = model.get("status") || "";
  const sum = model.get("summary") || {};
  ui.title.textContent = model.get("title") || sum.pipeline || "";
  ui.root.setAttribute("data-pipeline", ui.title.textContent);
  ui.status.textContent = status || "PLAN";
  ui.status.setAttribute("data-status", status);
  ui.meta.textContent = sum.meta || "";
  const live = LIVE.has(status);
  const stepping = isStepping(model);
  ui.pause.disabled = !live;
  ui.pause.textContent = status === "PAUSED" ? "Resume" : "Pause";
  ui.pause.setAttribute("aria-pressed", status === "PAUSED" ? "true" : "false");
  // in step mode nothing runs by itself: the header button only resumes from a breakpoint
  ui.pause.hidden = stepping && status !== "PAUSED";
  const view = model.get("view");
  ui.logical.setAttribute("aria-pressed", view === "logical" ? "true" : "false");
  ui.physical.setAttribute("aria-pressed", view === "physical" ? "true" : "false");
  ui.toggle.hidden = model.get("offline") === true;      // the player holds one view
  for (const opt of ui.rate.options) {
    const r = Number(opt.value);
    opt.textContent = `${r} ${stepping ? "step" : "update"}${r > 1 ? "s" : ""}/s`;
  }
  ui.rate.title = stepping ? "Play speed: steps per second" : "updates per second";
  ui.rate.value = String(Math.round(model.get("rate")));
  // an action that failed, else a stall of the running job (nothing moved, an instance waiting)
  ui.notice.textContent = model.get("notice") || (sum.stall ? `Stalled: ${sum.stall}` : "");
}

// ------------------------------------------------------------------ step mode
function isStepping(model) {
  return "position" in (model.get("stepper") || {});
}

function drawStep(ui, model) {
  const st = model.get("stepper") || {};
  const bar = ui.step;
  bar.bar.hidden = !isStepping(model);
  ui.root.classList.toggle("sage-stepping", !bar.bar.hidden);
  if (bar.bar.hidden) return;
  const playing = !!model.get("playing");
  bar.back.disabled = !st.can_back;
  bar.step.disabled = !st.can_step;
  bar.play.disabled = !playing && !st.can_step;
  bar.play.textContent = playing ? "❚❚ Pause" : "▶ Play";
  bar.play.setAttribute("aria-pressed", playing ? "true" : "false");
  bar.scrub.max = String(st.max || 0);
  bar.scrub.value = String(st.position || 0);
  bar.scrub.disabled = !st.max;
  bar.position.textContent = st.label || "";
  bar.quiz.checked = !!model.get("quiz");
  bar.note.textContent = model.get("note") || (st.readonly ? "recording (read-only)" : `policy ${st.policy || ""}`);
}

function list(cls, items) {
  const ul = h("ul", { class: cls });
  for (const it of items) ul.append(h("li", {}, it));
  return ul;
}

function drawEvent(ui, model) {
  const box = ui.event;
  const ev = model.get("event") || {};
  const st = model.get("stepper") || {};
  box.hidden = !isStepping(model);
  box.replaceChildren();
  if (box.hidden) return;
  box.setAttribute("data-index", ev.index ?? 0);
  box.setAttribute("data-kind", ev.kind || "");
  if (!ev.index) {
    box.append(h("h3", {}, "Before the first step"),
               h("div", { class: "sage-hint" }, "Press Step (or →) to move one packet one hop."));
  } else {
    const head = h("h3", {}, `Step ${ev.index} `);
    head.append(h("span", { class: "sage-event-kind" }, ev.kind));
    box.append(head, h("div", { class: "sage-event-title" }, ev.title));
    if (ev.sends && ev.sends.length) box.append(list("sage-event-sends", ev.sends));
    if (ev.routes && ev.routes.length) {
      box.append(h("div", { class: "sage-event-sub" }, "Why it went there"), list("sage-routes", ev.routes));
    }
    if (ev.error) box.append(h("div", { class: "sage-event-error" }, ev.error));
    box.append(h("div", { class: "sage-event-text", title: "the event, as str(event) prints it" }, ev.text));
  }
  if (st.upcoming) box.append(h("div", { class: "sage-upnext" }, `Next to move: ${st.upcoming}`));
  else if (st.at_end) box.append(h("div", { class: "sage-upnext" }, "End of the run."));
}

function drawQuiz(ui, model) {
  const box = ui.quiz;
  const q = model.get("question") || {};
  box.hidden = !model.get("quiz") || !isStepping(model);
  box.replaceChildren();
  if (box.hidden) return;
  box.setAttribute("data-state", q.state || "idle");
  const score = q.score || { right: 0, answered: 0 };
  const head = h("h3", {}, "Predict ");
  head.append(h("span", { class: "sage-score" }, `score ${score.right} / ${score.answered}`));
  box.append(head);
  if (!q.state) {
    box.append(h("div", { class: "sage-hint" }, "Before each routing decision you will be asked where the packet goes."));
    return;
  }
  box.append(h("div", { class: "sage-quiz-prompt" }, q.prompt), h("div", { class: "sage-quiz-rule" }, q.rule));
  const choices = h("div", { class: "sage-quiz-choices" });
  const answer = new Set(q.answer || []);
  for (const c of q.candidates || []) {
    const b = h("button", { type: "button", "data-instance": c.id }, c.label);
    if (q.state !== "ask") {
      b.disabled = true;
      if (c.id === q.guess) b.classList.add("sage-guess");
      if (answer.has(c.id) || (c.id === "*" && q.strategy === "broadcast" && answer.size)) b.classList.add("sage-answer");
    }
    choices.append(b);
  }
  box.append(choices);
  if (q.state === "ask") {
    box.append(h("div", { class: "sage-hint" }, "Click an instance (here or in the graph); Step skips the question."));
    return;
  }
  const ok = q.correct === true ? "true" : q.correct === false ? "false" : "none";
  const mark = { true: "✔ ", false: "✘ ", none: "– " }[ok];
  box.append(h("div", { class: "sage-quiz-result", "data-correct": ok }, mark + q.verdict));
  if (q.routes && q.routes.length) box.append(list("sage-routes", q.routes));
}

function drawBreak(ui, model) {
  const box = ui.brk;
  const b = model.get("breakpoint_hit") || {};
  box.hidden = !b.reason;
  box.replaceChildren();
  if (box.hidden) return;
  box.append(h("h3", {}, "Breakpoint"), h("div", { class: "sage-break-reason" }, b.reason));
  const facts = [`at ${b.where}`, b.packet, b.step ? `step ${b.step}` : ""].filter(Boolean);
  box.append(h("div", { class: "sage-break-where" }, facts.join(" · ")),
             h("div", { class: "sage-hint" }, isStepping(model) ? "Step or Play to go on (Resume clears it)."
                                                                : "Resume (top right) lets the job go on."));
  box.append(h("h4", {}, b.queue_title || "Input queue"));
  if (!(b.queue || []).length) {
    box.append(h("div", { class: "sage-hint" }, "empty"));
    return;
  }
  const table = h("table", { class: "sage-table sage-queue" });
  const tr = h("tr");
  for (const c of ["#", "packet", "key", "from", "age"]) tr.append(h("th", {}, c));
  table.append(h("thead"), h("tbody"));
  table.tHead.append(tr);
  for (const r of b.queue) {
    const row = h("tr", { "data-kind": r.kind });
    row.append(h("td", {}, r.n), h("td", {}, r.packet), h("td", {}, r.key), h("td", {}, r.sender), h("td", {}, r.age));
    table.tBodies[0].append(row);
  }
  box.append(table);
}

function drawError(ui, model) {
  const err = model.get("error") || {};
  const box = ui.error;
  box.replaceChildren();
  if (!err.message) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.append(h("div", { class: "sage-error-title" },
               `Failed in ${err.instance || "?"} (operator ${err.node || "?"}): ${err.message}`));
  if (err.packet) box.append(h("div", { class: "sage-error-packet" }, `while processing: ${err.packet}`));
  if (err.traceback) box.append(h("pre", {}, err.traceback));
}

function drawLegend(ui, model) {
  const leg = (model.get("palette") || {}).legend || { states: [], levels: [] };
  const box = ui.legend;
  box.replaceChildren();
  for (const st of leg.states) {
    const item = h("span", { class: "sage-legend-item", title: st.meaning });
    const chip = h("span", { class: "sage-chip" });
    chip.style.background = st.fill;
    item.append(chip, h("span", {}, st.state));
    box.append(item);
  }
  box.append(h("span", { class: "sage-legend-sep" }));
  for (const lv of leg.levels) {
    const item = h("span", { class: "sage-legend-item" });
    const chip = h("span", { class: "sage-bar-chip" });
    chip.style.background = lv.color;
    item.append(chip, h("span", {}, lv.label));
    box.append(item);
  }
  const item = h("span", { class: "sage-legend-item" });
  const chip = h("span", { class: "sage-bar-chip" });
  chip.style.background = leg.path;
  item.append(chip, h("span", {}, "packet path (click a log row)"));
  box.append(item);
  if (leg.bottleneck) {
    const bn = h("span", { class: "sage-legend-item", title: leg.bottleneck.meaning });
    bn.append(h("span", { class: "sage-bottleneck-chip" }), h("span", {}, leg.bottleneck.label));
    box.append(bn);
  }
}

// ------------------------------------------------------------------ tables
function drawLog(ui, model) {
  const rows = model.get("rows") || [];
  const chosen = model.get("packet");
  const table = ui.logTable;
  table.replaceChildren();
  const head = h("thead");
  const tr = h("tr");
  for (const c of ["packet", "key", "from", "to", "strategy", "explanation"]) tr.append(h("th", {}, c));
  head.append(tr);
  const body = h("tbody");
  for (const r of rows) {
    const row = h("tr", { "data-seq": r.seq, class: r.seq === chosen ? "sage-row-selected" : "" });
    row.append(h("td", {}, r.packet), h("td", {}, r.key), h("td", {}, r.from), h("td", {}, r.to),
               h("td", {}, r.strategy), h("td", { class: "sage-explain" }, r.explain));
    body.append(row);
  }
  table.append(head, body);
  const skipped = (model.get("summary") || {}).trace_skipped || 0;
  ui.logHint.textContent = rows.length
    ? `Latest ${rows.length} decisions, newest first. Click a row to highlight the packet's path.` +
      (skipped ? ` (${skipped} decisions not sampled under load)` : "")
    : "No routing decision recorded yet.";
}

function drawKeys(ui, model) {
  const tables = model.get("keydist") || [];
  const box = ui.keys;
  // one section per operator, kept while the operators stay the same: only their contents are
  // redrawn, so the "what if" selector is never rebuilt under the user's pointer
  const ops = tables.map((t) => t.operator).join("\u0000");
  if (ui.keyOps !== ops) {
    ui.keyOps = ops;
    ui.keySecs = new Map(tables.map((t) => [t.operator, keySection(model, t)]));
    box.replaceChildren(h("h3", {}, "Key distribution"));
    if (!tables.length) box.append(h("div", { class: "sage-hint" }, "No hash-partitioned operator in this pipeline."));
    for (const sec of ui.keySecs.values()) box.append(sec.el);
  }
  const w = model.get("whatif") || {};
  for (const t of tables) {
    const sec = ui.keySecs.get(t.operator);
    sec.head.replaceChildren(...keyTitle(t));
    sec.table.replaceChildren(keyTable(["instance", "packets", "share", "top keys"], t.instances.map((i) =>
      [i.name, i.packets, i.top_keys.map(([k, n]) => `${k} ×${n}`).join(", ")])));
    const mine = w.operator === t.operator;
    sec.result.replaceChildren(...(mine ? whatIfResult(w) : []));
    if (document.activeElement !== sec.pick) sec.pick.value = mine ? String(w.parallelism) : "";
  }
}

function keySection(model, t) {
  const el = h("div", { class: "sage-keys-op", "data-operator": t.operator });
  const head = h("div");
  const table = h("div");
  const result = h("div", { class: "sage-whatif-result" });
  // "what if": the keys counted so far spread over another parallelism (computed in Python on request)
  const pick = h("select", { class: "sage-whatif-n", title: "spread the keys counted so far over n instances" });
  pick.append(h("option", { value: "" }, "choose n"));
  for (let n = 1; n <= Math.max(16, 2 * t.instances.length); n++) pick.append(h("option", { value: String(n) }, String(n)));
  pick.addEventListener("change", () => {
    if (pick.value) model.send({ type: "what_if", operator: t.operator, parallelism: Number(pick.value) });
  });
  const ask = h("div", { class: "sage-whatif" });
  ask.append(h("span", {}, "what if parallelism were "), pick);
  el.append(head, table, ask, result);
  return { el, head, table, pick, result };
}

function keyTitle(t) {
  return [h("strong", {}, `${t.operator} `), h("span", { class: "sage-hint" }, `hash(${t.key_label}) · `),
          h("span", { class: "sage-skew", "data-level": t.skew_level, title: "max / mean packets per instance" },
            `skew ${t.skew_text}`)];
}

// rows: [name, packets, text]; the share bars are scaled to the largest packet count
function keyTable(columns, rows) {
  const table = h("table", { class: "sage-table" });
  table.append(h("thead"), h("tbody"));
  const hr = h("tr");
  for (const c of columns) hr.append(h("th", {}, c));
  table.tHead.append(hr);
  const most = Math.max(1, ...rows.map((r) => r[1]));
  for (const [name, packets, text] of rows) {
    const bar = h("div", { class: "sage-share" });
    const fill = h("span");
    fill.style.width = `${(100 * packets) / most}%`;
    bar.append(fill);
    const share = h("td");
    share.append(bar);
    const row = h("tr");
    row.append(h("td", {}, name), h("td", {}, packets), share, h("td", { class: "sage-topkeys" }, text));
    table.tBodies[0].append(row);
  }
  return table;
}

function whatIfResult(w) {
  const title = h("div", { class: "sage-whatif-title" });
  title.append(h("strong", {}, `${w.operator} over ${w.parallelism}: `),
               h("span", { class: "sage-skew", "data-level": w.skew_level }, `skew ${w.skew_text}`),
               h("span", { class: "sage-hint" }, ` ${w.at}`));
  const table = keyTable(["instance", "packets", "share", "hottest key"],
                         w.instances.map((i) => [i.name, i.packets, i.hottest]));
  table.classList.add("sage-whatif-table");
  return [title, table];
}

function drawTimeline(ui, model) {
  const src = model.get("timeline") || "";
  ui.timeline.hidden = !src;
  if (src.startsWith("data:image/png;base64,")) ui.img.src = src;
}

// ------------------------------------------------------------------ events
function refOf(target) {
  const node = target.closest("[data-node]");
  if (node) return { kind: "node", id: node.getAttribute("data-node") };
  const edge = target.closest("[data-edge]");
  if (edge) return { kind: "edge", id: edge.getAttribute("data-edge") };
  return null;
}

function wireStep(ui, model) {
  const bar = ui.step;
  const send = (msg) => model.send(msg);
  bar.back.addEventListener("click", () => send({ type: "back" }));
  bar.step.addEventListener("click", () => send({ type: "step" }));
  bar.play.addEventListener("click", () => send({ type: model.get("playing") ? "pause" : "play" }));
  let timer = null;
  const seek = () => {
    clearTimeout(timer);
    timer = null;
    send({ type: "seek", position: Number(bar.scrub.value) });
  };
  bar.scrub.addEventListener("input", () => {
    bar.position.textContent = `step ${bar.scrub.value} / ${bar.scrub.max}`;
    if (!timer) timer = setTimeout(seek, 80);     // at most ~12 seeks a second while dragging
  });
  bar.scrub.addEventListener("change", seek);
  bar.quiz.addEventListener("change", () => {
    model.set("quiz", bar.quiz.checked);
    model.save_changes();
  });
  ui.quiz.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-instance]");
    if (b && !b.disabled) send({ type: "answer", instance: b.getAttribute("data-instance") });
  });
  ui.root.addEventListener("keydown", (ev) => {
    if (!isStepping(model) || ev.target.closest("input, select, textarea")) return;
    const action = { ArrowRight: "step", ArrowLeft: "back", " ": model.get("playing") ? "pause" : "play" }[ev.key];
    if (!action) return;
    ev.preventDefault();
    ev.stopPropagation();             // not a notebook shortcut
    send({ type: action });
  });
}

function wire(ui, model, st, redraw) {
  wireStep(ui, model);
  ui.graph.addEventListener("pointerdown", (ev) => {
    const ref = refOf(ev.target);
    const q = model.get("question") || {};
    if (ref && ref.kind === "node" && q.state === "ask" && (q.candidates || []).some((c) => c.id === ref.id)) {
      model.send({ type: "answer", instance: ref.id });     // a click on a candidate answers
      return;
    }
    const cur = model.get("selected") || {};
    const same = ref && cur.kind === ref.kind && cur.id === ref.id;
    model.set("selected", ref && !same ? ref : {});
    model.save_changes();
  });
  ui.graph.addEventListener("pointerover", (ev) => {
    st.hover = refOf(ev.target);
    redraw.details();
  });
  ui.graph.addEventListener("pointerleave", () => {
    st.hover = null;
    redraw.details();
  });
  ui.logTable.addEventListener("click", (ev) => {
    const row = ev.target.closest("tr[data-seq]");
    if (!row) return;
    const seq = Number(row.getAttribute("data-seq"));
    model.set("packet", model.get("packet") === seq ? -1 : seq);
    model.save_changes();
  });
  ui.pause.addEventListener("click", () => {
    model.send({ type: model.get("status") === "PAUSED" ? "resume" : "pause" });
  });
  for (const b of [ui.logical, ui.physical]) {
    b.addEventListener("click", () => {
      model.set("view", b.getAttribute("data-view"));
      model.save_changes();
    });
  }
  ui.rate.addEventListener("change", () => {
    model.set("rate", Number(ui.rate.value));
    model.save_changes();
  });
}

function render({ model, el }) {
  const ui = skeleton(el);
  const st = { hover: null, anim: { key: null }, raf: null };
  const redraw = {
    graph: () => { drawGraph(ui, model, st); drawDetails(ui, model, st); },
    step: () => { drawStep(ui, model); drawHeader(ui, model); },
    event: () => drawEvent(ui, model),
    quiz: () => drawQuiz(ui, model),
    brk: () => drawBreak(ui, model),
    details: () => drawDetails(ui, model, st),
    header: () => drawHeader(ui, model),
    error: () => drawError(ui, model),
    legend: () => drawLegend(ui, model),
    log: () => drawLog(ui, model),
    keys: () => drawKeys(ui, model),
    timeline: () => drawTimeline(ui, model),
  };
  const events = [
    ["change:graph change:path change:selected change:event change:breakpoint_hit change:question", redraw.graph],
    ["change:stepper change:playing change:quiz change:note", redraw.step],
    ["change:event change:stepper", redraw.event],
    ["change:question change:quiz change:stepper", redraw.quiz],
    ["change:breakpoint_hit change:stepper", redraw.brk],
    ["change:status change:summary change:view change:rate change:notice change:title", redraw.header],
    ["change:error", redraw.error],
    ["change:palette", redraw.legend],
    ["change:rows change:packet", redraw.log],
    ["change:keydist change:whatif", redraw.keys],
    ["change:timeline", redraw.timeline],
  ];
  const handlers = [];
  for (const [names, fn] of events) {
    for (const name of names.split(" ")) {
      model.on(name, fn);
      handlers.push([name, fn]);
    }
  }
  wire(ui, model, st, redraw);
  for (const fn of Object.values(redraw)) fn();
  const fit = () => fitLayout(ui, model);
  model.on("change:graph", fit);
  const resize = new ResizeObserver(fit);
  resize.observe(el);
  fit();
  return () => {
    if (st.raf) cancelAnimationFrame(st.raf);
    for (const [name, fn] of handlers) model.off(name, fn);
    model.off("change:graph", fit);
    resize.disconnect();
  };
}

export default { render };
