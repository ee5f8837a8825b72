// sage_nb step player — replays a recorded step-mode run offline, drawn by the widget's code.
//
// This file is appended to inspector.js inside the page's one <script type="module">: it
// reads the recording (#sage-player-data), rebuilds every position from its patches (the
// rules are in sage_nb/inspector/player.py), and renders inspector.js with a model of its
// own. The buttons send the same messages as in a notebook; here they move a cursor over
// the positions, and Play is a timer at the chosen steps per second. No network, no kernel.

function applyPatch(old, p) {
  if (p === null || typeof p !== "object") return p;
  if ("$" in p) return p.$;
  if ("$l" in p) {
    const out = old.slice();
    for (const [i, q] of p.$l) out[i] = applyPatch(old[i], q);
    return out;
  }
  if ("$p" in p) return p.$p.concat(old.slice(0, p.$n));
  const out = { ...old };
  for (const [k, q] of Object.entries(p.$d || {})) out[k] = applyPatch(old[k], q);
  for (const k of p.$x || []) delete out[k];
  return out;
}

function playerStates(frames) {
  const out = [frames[0]];
  for (let i = 1; i < frames.length; i++) out.push(applyPatch(out[i - 1], frames[i]));
  return out;
}

function playerModel(data) {
  const states = playerStates(data.frames);
  const last = states.length - 1;
  const quizAt = (i) => (data.quiz || {})[String(i)];
  const listeners = {};
  let score = { right: 0, answered: 0 };
  let timer = null;
  let state = {
    title: data.title, palette: data.palette, view: data.view, rate: data.rate || 2, offline: true,
    note: data.note, selected: {}, packet: -1, path: [], timeline: "", notice: "", live: false,
    playing: false, quiz: false, question: {}, breakpoint_hit: {}, ...states[0],
  };
  const update = (changes) => {
    const keys = Object.keys(changes).filter((k) => changes[k] !== state[k]);
    state = { ...state, ...changes };
    for (const k of keys) for (const f of (listeners[`change:${k}`] || []).slice()) f();
  };
  const position = () => state.stepper.position;
  const go = (i) => update(states[Math.max(0, Math.min(last, i))]);
  const stop = () => {
    clearInterval(timer);
    timer = null;
    update({ playing: false });
  };
  const ask = () => {
    const entry = state.quiz ? quizAt(position()) : null;
    update({ question: entry ? { ...entry.ask, score } : state.quiz ? { score } : {} });
    return !!entry;
  };
  const reveal = (guess) => {
    const entry = quizAt(position());
    const v = entry.verdicts[guess || ""];
    if (!v) return;
    if (v.scored) score = { right: score.right + (v.correct ? 1 : 0), answered: score.answered + 1 };
    go(position() + 1);
    update({ question: { ...entry.ask, ...entry.reveal, ...v, state: "revealed", guess: guess || null, score } });
  };
  // one step, quiz first: ask before a routing decision; Step while asked skips the question
  const advance = () => {
    if (state.quiz && state.question.state === "ask") return reveal("");
    if (ask()) return stop();
    go(position() + 1);
  };
  const tick = () => {
    advance();
    if (position() >= last) stop();
  };
  const play = () => {
    if (position() >= last) return;
    clearInterval(timer);
    update({ playing: true });
    timer = setInterval(tick, 1000 / Math.max(1, Number(state.rate) || 1));
  };
  const actions = {
    step: () => { stop(); advance(); },
    back: () => { stop(); go(position() - 1); ask(); },
    seek: (msg) => { stop(); go(Number(msg.position) || 0); ask(); },
    play, pause: stop, resume: () => {},
    answer: (msg) => { if (state.question.state === "ask") reveal(String(msg.instance)); },
  };
  return {
    get: (k) => state[k],
    set: (k, v) => {
      update({ [k]: v });
      if (k === "quiz") ask();
      if (k === "rate" && timer) play();
    },
    save_changes: () => {},
    on: (name, f) => { (listeners[name] = listeners[name] || []).push(f); },
    off: (name, f) => { listeners[name] = (listeners[name] || []).filter((g) => g !== f); },
    send: (msg) => (actions[msg.type] || (() => {}))(msg),
  };
}

function mountPlayer() {
  const data = JSON.parse(document.getElementById("sage-player-data").textContent);
  const model = playerModel(data);
  const el = document.getElementById("sage-player");
  render({ model, el });
  document.addEventListener("keydown", (ev) => {     // keys anywhere on the page step too
    if (ev.target.closest && ev.target.closest("input, select, textarea, button")) return;
    const action = { ArrowRight: "step", ArrowLeft: "back", " ": model.get("playing") ? "pause" : "play" }[ev.key];
    if (!action) return;
    ev.preventDefault();
    model.send({ type: action });
  });
  window.sagePlayer = model;     // for scripts and tests: get(), send({type: "step"})
}

mountPlayer();
