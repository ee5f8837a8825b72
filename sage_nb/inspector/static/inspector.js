// sage_nb inspector — the browser side of sage_nb.inspector.Inspector (an anywidget ES module).
//
// The Python model is the truth: it sends ready-made view models (positions, colours,
// labels, percentages) and this file only draws them. Every name coming from the model
// is written with textContent / SVG text nodes, never parsed as markup, so a node called
// "<img src=x onerror=alert(1)>" is shown as text.

const SVG_NS = "http://www.w3.org/2000/svg";
const LIVE = new Set(["RUNNING", "PAUSED"]);
const RATES = [1, 2, 5, 10];

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
  const main = h("div", { class: "sage-main" });
  const wrap = h("div", { class: "sage-graph-wrap" });
  const graph = s("svg", { class: "sage-graph", role: "img" });
  wrap.append(graph);
  const details = h("div", { class: "sage-details", "aria-live": "polite" });
  main.append(wrap, details);
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
  root.append(header, notice, error, main, legend, panels, timeline);
  return { root, title, status, meta, pause, logical, physical, rate, notice, error, graph, details,
           legend, logTable, logHint: logBox.querySelector(".sage-log-hint"), keys, img, timeline };
}

// ------------------------------------------------------------------ graph
const SIDE_PANEL = 310;

function fitLayout(ui, model) {
  const width = (model.get("graph") || {}).width || 300;
  const room = ui.root.clientWidth - 30;
  ui.root.classList.toggle("sage-wide", room - SIDE_PANEL >= 0.9 * width);
}

function drawGraph(ui, model, st) {
  const g = model.get("graph") || {};
  const svg = ui.graph;
  const path = new Set(model.get("path") || []);
  const sel = model.get("selected") || {};
  const [lw, lh] = g.label_size || [150, 34];
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${g.width || 300} ${g.height || 100}`);
  svg.setAttribute("width", g.width || 300);
  svg.setAttribute("height", g.height || 100);
  svg.style.maxWidth = `${g.width || 300}px`;
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
    const cls = `sage-edge${on ? " sage-on-path" : ""}${picked ? " sage-selected" : ""}`;
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
    const e = s("g", { class: `sage-node${picked ? " sage-selected" : ""}`, "data-node": n.id,
                       "data-state": n.state });
    const cx = n.x + n.w / 2;
    e.append(s("rect", { class: "sage-node-box", x: n.x, y: n.y, width: n.w, height: n.h, rx: 9, fill: n.fill }),
             s("text", { class: "sage-node-name", x: cx, y: n.y + 20, fill: n.text }, n.label));
    (n.lines || []).slice(0, 2).forEach((line, i) => {
      e.append(s("text", { class: `sage-node-line${line.startsWith("stop signals") ? " sage-stops" : ""}`,
                           x: cx, y: n.y + 37 + 15 * i, fill: n.text }, line));
    });
    nodes.append(e);
  }
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
  ui.pause.disabled = !live;
  ui.pause.textContent = status === "PAUSED" ? "Resume" : "Pause";
  ui.pause.setAttribute("aria-pressed", status === "PAUSED" ? "true" : "false");
  const view = model.get("view");
  ui.logical.setAttribute("aria-pressed", view === "logical" ? "true" : "false");
  ui.physical.setAttribute("aria-pressed", view === "physical" ? "true" : "false");
  ui.rate.value = String(Math.round(model.get("rate")));
  ui.notice.textContent = model.get("notice") || "";
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
  box.replaceChildren(h("h3", {}, "Key distribution"));
  if (!tables.length) {
    box.append(h("div", { class: "sage-hint" }, "No hash-partitioned operator in this pipeline."));
    return;
  }
  for (const t of tables) {
    const sec = h("div", { class: "sage-keys-op", "data-operator": t.operator });
    const title = h("div");
    title.append(h("strong", {}, `${t.operator} `), h("span", { class: "sage-hint" }, `hash(${t.key_label}) · `),
                 h("span", { class: "sage-skew", "data-level": t.skew_level, title: "max / mean packets per instance" },
                   `skew ${t.skew_text}`));
    const table = h("table", { class: "sage-table" });
    const hr = h("tr");
    for (const c of ["instance", "packets", "share", "top keys"]) hr.append(h("th", {}, c));
    table.append(h("thead"), h("tbody"));
    table.tHead.append(hr);
    const most = Math.max(1, ...t.instances.map((i) => i.packets));
    for (const i of t.instances) {
      const row = h("tr");
      const bar = h("div", { class: "sage-share" });
      const fill = h("span");
      fill.style.width = `${(100 * i.packets) / most}%`;
      bar.append(fill);
      const share = h("td");
      share.append(bar);
      row.append(h("td", {}, i.name), h("td", {}, i.packets), share,
                 h("td", { class: "sage-topkeys" }, i.top_keys.map(([k, n]) => `${k} ×${n}`).join(", ")));
      table.tBodies[0].append(row);
    }
    sec.append(title, table);
    box.append(sec);
  }
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

function wire(ui, model, st, redraw) {
  ui.graph.addEventListener("pointerdown", (ev) => {
    const ref = refOf(ev.target);
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
  const st = { hover: null };
  const redraw = {
    graph: () => { drawGraph(ui, model, st); drawDetails(ui, model, st); },
    details: () => drawDetails(ui, model, st),
    header: () => drawHeader(ui, model),
    error: () => drawError(ui, model),
    legend: () => drawLegend(ui, model),
    log: () => drawLog(ui, model),
    keys: () => drawKeys(ui, model),
    timeline: () => drawTimeline(ui, model),
  };
  const events = [
    ["change:graph change:path change:selected", redraw.graph],
    ["change:status change:summary change:view change:rate change:notice change:title", redraw.header],
    ["change:error", redraw.error],
    ["change:palette", redraw.legend],
    ["change:rows change:packet", redraw.log],
    ["change:keydist", redraw.keys],
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
    for (const [name, fn] of handlers) model.off(name, fn);
    model.off("change:graph", fit);
    resize.disconnect();
  };
}

export default { render };
