// rstar view: the page. Plain JavaScript, no library, nothing loaded from the network.
// The data comes either embedded (a page written with `rstar view -o`) or from the local server's JSON
// endpoints (`api/index`, `api/tree`), polled so that trees a running search appends show up.
"use strict";
(function () {
  const CONFIG = JSON.parse(document.getElementById("rstar-data").textContent);
  const LIVE = CONFIG.live;
  const POLL_MS = CONFIG.poll_ms || 2000;
  const LIST_LIMIT = 1000; // problems drawn in the list at once
  const LAZY_OVER = 1500; // trees with more nodes open collapsed below a depth...
  const LAZY_SHOW = 1000; // ...chosen so that about this many nodes show
  const LABELS_UP_TO = 3000; // answer labels are drawn when at most this many nodes show
  const COL = 92; // pixels per depth level
  const COL_TEXT = 240; // ... when nodes are labelled with their step's first line
  const ROW = 17; // pixels per leaf row

  const OUTCOMES = {
    correct: "correct answer",
    wrong: "wrong answer",
    answer: "answer, no reference",
    error: "code error",
    cut: "cut: too many steps / no answer",
    open: "open (not expanded)",
    step: "step",
    root: "root",
  };
  const STATUS = { correct: "correct", wrong: "wrong", unanswered: "no answer", unchecked: "no reference" };

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "cls") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : String(x));
  const answerText = (a) => (a === null || a === undefined ? "–" : Array.isArray(a) ? a.join(" | ") : String(a));
  const short = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);

  // --- Python highlighting: keywords, strings, comments, numbers, builtins; the step format's tags --------
  const KEYWORDS = new Set(
    ("False None True and as assert async await break class continue def del elif else except finally for " +
      "from global if import in is lambda nonlocal not or pass raise return try while with yield match case").split(" "),
  );
  const BUILTINS = new Set(
    ("print range len int float str abs round min max sum sorted list dict set tuple enumerate zip map filter " +
      "pow divmod bool any all isinstance reversed math sympy fractions Fraction sqrt").split(" "),
  );
  const TAGS = ["<code>", "<end_of_step>", "<end_of_code>", "<output>", "<end_of_output>", "<answer>", "<end_of_answer>", "<refine>", "<end_of_refine>"];
  const AFTER_TAG = { "<code>": "code", "<end_of_code>": "plain", "<output>": "out", "<end_of_output>": "plain", "<answer>": "ans", "<end_of_answer>": "plain", "<refine>": "code", "<end_of_refine>": "plain" };
  const TAG_RE = new RegExp(TAGS.map((t) => t.replace(/[<>]/g, (c) => "\\" + c)).join("|"), "g");
  const PY_RE = /(#[^\n]*)|((?:[rRbBuUfF]{1,2})?(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?))|(\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?[jJ]?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_]\w*)/g;

  function highlightPython(code, into) {
    let last = 0;
    PY_RE.lastIndex = 0;
    for (let m = PY_RE.exec(code); m; m = PY_RE.exec(code)) {
      if (m.index > last) into.append(code.slice(last, m.index));
      let cls = null;
      if (m[1]) cls = "tok-com";
      else if (m[2]) cls = "tok-str";
      else if (m[3]) cls = "tok-num";
      else if (KEYWORDS.has(m[4])) cls = "tok-kw";
      else if (BUILTINS.has(m[4])) cls = "tok-bi";
      into.append(cls ? el("span", { cls, text: m[0] }) : m[0]);
      last = m.index + m[0].length;
    }
    if (last < code.length) into.append(code.slice(last));
  }

  // The step's text, whole and in order (its textContent is the text), coloured by what each part is:
  // code (until <end_of_code>), the interpreter output block, the answer, and the tags themselves.
  function highlightStep(text, into) {
    let mode = "code";
    let last = 0;
    const part = (s) => {
      if (!s) return;
      if (mode === "code") highlightPython(s, into);
      else if (mode === "out") into.append(el("span", { cls: "tok-out", text: s }));
      else if (mode === "ans") into.append(el("span", { cls: "tok-ans", text: s }));
      else into.append(s);
    };
    TAG_RE.lastIndex = 0;
    for (let m = TAG_RE.exec(text); m; m = TAG_RE.exec(text)) {
      part(text.slice(last, m.index));
      into.append(el("span", { cls: "tok-tag", text: m[0] }));
      if (m[0] in AFTER_TAG) mode = AFTER_TAG[m[0]];
      last = m.index + m[0].length;
    }
    part(text.slice(last));
  }

  // --- data --------------------------------------------------------------------------------------------
  const state = {
    index: { sources: [], problems: [], warnings: [], version: "" },
    labels: new Map(), // source key -> label
    filter: { text: "", status: "all", source: "all", strategy: "all" },
    current: null, // {source, id}
    compare: "",
    showAll: false,
    cache: new Map(),
  };

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return response.json();
  }

  async function loadTree(source, id) {
    const key = source + "\u0000" + id;
    if (state.cache.has(key)) return state.cache.get(key);
    let tree = null;
    if (LIVE) {
      const params = new URLSearchParams({ source, id });
      const response = await fetch("api/tree?" + params, { cache: "no-store" });
      if (response.ok) tree = await response.json();
    } else {
      tree = (CONFIG.trees[source] || {})[id] || null;
    }
    if (tree) state.cache.set(key, tree);
    return tree;
  }

  // --- the tree pane ------------------------------------------------------------------------------------
  class Pane {
    constructor(slot) {
      this.slot = slot;
      this.el = el("section", { cls: "pane", "data-pane": String(slot) });
      this.tree = null;
      this.source = null;
      this.zoom = 1;
      this.sizeBy = "visits";
      this.labels = "answers";
      this.collapsed = new Set();
      this.selected = -1;
      this.empty("Pick a problem on the left.");
    }

    empty(message) {
      this.tree = null;
      this.el.replaceChildren(el("div", { cls: "empty", text: message }));
    }

    async show(source, id, keepView) {
      const request = (this.request = (this.request || 0) + 1);
      const tree = await loadTree(source, id);
      if (request !== this.request) return; // a later click won the race
      if (!tree) {
        this.source = source;
        this.empty(`No tree for problem ${id} in ${state.labels.get(source) || source}.`);
        return;
      }
      const same = Boolean(keepView && this.tree && String(this.tree.id) === String(tree.id) && this.source === source);
      // A poll found new trees somewhere: leave this one alone (view, scroll, selection) unless it changed.
      if (same && this.tree.nodes.length === tree.nodes.length && this.tree.prediction === tree.prediction) return;
      const selectedId = same && this.selected >= 0 ? this.tree.nodes[this.selected].id : null;
      this.source = source;
      this.setTree(tree, same);
      if (selectedId !== null && this.model.byId.has(selectedId)) this.select(this.model.byId.get(selectedId), false);
    }

    setTree(tree, keepCollapsed) {
      const oldCollapsed = keepCollapsed ? new Set([...this.collapsed].map((i) => this.tree.nodes[i].id)) : null;
      this.tree = tree;
      this.model = buildModel(tree);
      this.selected = -1;
      if (oldCollapsed) {
        this.collapsed = new Set();
        for (const nid of oldCollapsed) if (this.model.byId.has(nid)) this.collapsed.add(this.model.byId.get(nid));
      } else {
        this.collapsed = defaultCollapsed(this.model);
      }
      this.build();
      this.draw();
      if (this.model.chosen >= 0) this.select(this.model.chosen, true);
      else this.showDetail(-1);
    }

    build() {
      const t = this.tree;
      const verdict = el("span", { cls: "verdict " + t.status, text: STATUS[t.status] || t.status });
      const usage = t.usage || {};
      const title = el(
        "div",
        { cls: "title" },
        el("b", { text: String(t.id) }),
        el("span", { cls: "dim", text: state.labels.get(this.source) || this.source }),
        el("span", { text: t.strategy }),
        verdict,
        el("span", { text: "answer " }, el("code", { cls: "prediction", text: answerText(t.prediction) })),
        el("span", { text: "reference " }, el("code", { text: answerText(t.answer) })),
        el("span", {
          cls: "dim",
          text: `${fmt(usage.generated_tokens)} tokens · ${fmt(usage.policy_calls)} policy calls · ${fmt(usage.wall_time_s, 2)} s`,
        }),
      );
      const info = el("div", { cls: "info" }, title, el("div", { cls: "question", text: t.question }));

      const sizeSelect = el(
        "select",
        { title: "node size", onchange: (e) => { this.sizeBy = e.target.value; this.draw(); } },
        ...[["visits", "size: visits"], ["q", "size: Q-value"], ["none", "size: same"]].map(([v, l]) => el("option", { value: v, text: l })),
      );
      sizeSelect.value = this.sizeBy;
      const labelSelect = el(
        "select",
        { title: "node labels", onchange: (e) => { this.labels = e.target.value; this.draw(); } },
        ...[["answers", "labels: answers"], ["steps", "labels: step text"], ["none", "labels: none"]].map(([v, l]) => el("option", { value: v, text: l })),
      );
      labelSelect.value = this.labels;
      const depthSelect = el("select", {
        title: "collapse the levels below",
        onchange: (e) => {
          if (e.target.value !== "") this.collapseBelow(Number(e.target.value));
          e.target.value = "";
        },
      });
      depthSelect.append(el("option", { value: "", text: "collapse below…" }));
      for (let d = 0; d < this.model.maxDepth; d++) depthSelect.append(el("option", { value: String(d), text: `depth ${d}` }));
      this.stats = el("span", { cls: "stats" });
      const toolbar = el(
        "div",
        { cls: "toolbar" },
        el("button", { text: "Expand all", cls: "expand-all", onclick: () => { this.collapsed.clear(); this.draw(); } }),
        depthSelect,
        el("button", { text: "Chosen path only", title: "collapse everything off the chosen path", onclick: () => this.pathOnly() }),
        el("button", { text: "−", title: "zoom out", onclick: () => this.setZoom(this.zoom / 1.25) }),
        el("button", { text: "+", title: "zoom in", onclick: () => this.setZoom(this.zoom * 1.25) }),
        el("button", { text: "Fit", onclick: () => this.fit() }),
        sizeSelect,
        labelSelect,
        this.stats,
      );
      this.scroller = el("div", { cls: "scroller" });
      this.scroller.addEventListener("click", (e) => {
        const c = e.target.closest("circle[data-i]");
        if (c) this.select(Number(c.dataset.i), false);
      });
      this.scroller.addEventListener("dblclick", (e) => {
        const c = e.target.closest("circle[data-i]");
        if (c) this.toggle(Number(c.dataset.i));
      });
      this.tip = el("div", { cls: "tip" });
      this.scroller.addEventListener("mouseover", (e) => {
        const c = e.target.closest("circle[data-i]");
        if (c) this.tip.textContent = nodeSummary(this.tree.nodes[Number(c.dataset.i)], this.model, Number(c.dataset.i));
      });
      this.detail = el("div", { cls: "detail" });
      this.el.replaceChildren(info, toolbar, this.scroller, this.tip, this.detail);
    }

    draw() {
      const started = performance.now();
      const m = this.model;
      const layout = layoutTree(m, this.collapsed);
      this.layout = layout;
      const nodes = this.tree.nodes;
      const col = this.col();
      const width = (layout.maxCol + 1) * col + 140;
      const height = Math.max(layout.rows, 1) * ROW + 16;
      const z = this.zoom;
      const parts = [`<svg class="tree" width="${Math.ceil(width * z)}" height="${Math.ceil(height * z)}" viewBox="0 0 ${width} ${height}">`];
      let edges = "";
      let chosenEdges = "";
      const xy = (i) => [layout.x[i] * col + 16, layout.y[i] * ROW + 14];
      for (const i of layout.order) {
        const p = m.parent[i];
        if (p < 0) continue;
        const [x0, y0] = xy(p);
        const [x1, y1] = xy(i);
        const mx = (x0 + x1) / 2;
        const d = `M${x0} ${y0}C${mx} ${y0} ${mx} ${y1} ${x1} ${y1}`;
        if (m.onPath[i]) chosenEdges += d;
        else edges += d;
      }
      parts.push(`<path class="edges" d="${edges}"/>`);
      if (chosenEdges) parts.push(`<path class="edges chosen" d="${chosenEdges}"/>`);
      const radius = this.radius();
      const labels = [];
      const withLabels = this.labels !== "none" && layout.order.length <= LABELS_UP_TO;
      for (const i of layout.order) {
        const n = nodes[i];
        const [x, y] = xy(i);
        const r = radius(n);
        let cls = "o-" + (n.outcome || "step");
        if (m.onPath[i]) cls += " on-path";
        const hidden = this.collapsed.has(i) && m.kids[i].length ? m.size[i] - 1 : 0;
        if (hidden) cls += " collapsed";
        if (i === this.selected) cls += " sel";
        parts.push(`<circle data-i="${i}" class="${cls}" cx="${x}" cy="${y}" r="${r.toFixed(1)}"/>`);
        const lx = (x + r + (i === m.chosen ? 8 : 4)).toFixed(1);
        if (hidden) labels.push(`<text class="more" x="${lx}" y="${y + 4}">+${hidden}</text>`);
        else if (withLabels && this.labels === "steps" && m.parent[i] >= 0) {
          labels.push(`<text x="${lx}" y="${y - 3}">${esc(stepLabel(n))}</text>`);
        } else if (withLabels && n.final_answer !== null && n.final_answer !== undefined && !m.kids[i].length) {
          labels.push(`<text class="ans" x="${lx}" y="${y + 4}">${esc(short(String(n.final_answer), 18))}</text>`);
        }
      }
      if (m.chosen >= 0 && layout.shown[m.chosen]) {
        const [x, y] = xy(m.chosen);
        parts.push(`<circle class="halo" cx="${x}" cy="${y}" r="${(radius(nodes[m.chosen]) + 4).toFixed(1)}"/>`);
      }
      parts.push(labels.join(""), "</svg>");
      this.scroller.innerHTML = parts.join("");
      this.svg = this.scroller.firstChild;
      const ms = performance.now() - started;
      this.stats.textContent = `${nodes.length} nodes · ${layout.order.length} shown · depth ${m.maxDepth}`;
      this.el.dataset.renderMs = ms.toFixed(1);
      this.el.dataset.shown = String(layout.order.length);
      window.dispatchEvent(new CustomEvent("rstar-view-rendered", { detail: { pane: this.slot, source: this.source, id: this.tree.id, nodes: nodes.length, shown: layout.order.length, ms } }));
    }

    col() {
      return this.labels === "steps" ? COL_TEXT : COL;
    }

    radius() {
      const m = this.model;
      if (this.sizeBy === "visits") return (n) => 3 + 6 * Math.sqrt((n.visits || 0) / m.maxVisits);
      if (this.sizeBy === "q") {
        const span = m.maxQ - m.minQ || 1;
        return (n) => 3 + 6 * (((n.q_value || 0) - m.minQ) / span);
      }
      return () => 5;
    }

    select(i, scroll) {
      if (this.svg) {
        const old = this.svg.querySelector("circle.sel");
        if (old) old.classList.remove("sel");
      }
      this.selected = i;
      if (i >= 0 && !this.layout.shown[i]) {
        // Open the collapsed ancestors of a node that is not shown (the chosen one, after "collapse below").
        for (let a = this.model.parent[i]; a >= 0; a = this.model.parent[a]) this.collapsed.delete(a);
        this.draw();
      }
      const c = i >= 0 && this.svg ? this.svg.querySelector(`circle[data-i="${i}"]`) : null;
      if (c) {
        c.classList.add("sel");
        if (scroll) {
          // Only when it is out of sight: centred then.
          const s = this.scroller;
          const x = (this.layout.x[i] * this.col() + 16) * this.zoom;
          const y = (this.layout.y[i] * ROW + 14) * this.zoom;
          if (x < s.scrollLeft + 20 || x > s.scrollLeft + s.clientWidth - 60) s.scrollLeft = Math.max(0, x - s.clientWidth / 2);
          if (y < s.scrollTop + 10 || y > s.scrollTop + s.clientHeight - 20) s.scrollTop = Math.max(0, y - s.clientHeight / 2);
        }
      }
      this.showDetail(i);
    }

    toggle(i) {
      if (!this.model.kids[i].length) return;
      if (this.collapsed.has(i)) this.collapsed.delete(i);
      else this.collapsed.add(i);
      this.draw();
      this.select(i, false);
    }

    expandSubtree(i) {
      const stack = [i];
      while (stack.length) {
        const j = stack.pop();
        this.collapsed.delete(j);
        for (const k of this.model.kids[j]) stack.push(k);
      }
      this.draw();
      this.select(i, false);
    }

    collapseBelow(depth) {
      this.collapsed = new Set();
      this.model.depth.forEach((d, i) => { if (d >= depth && this.model.kids[i].length) this.collapsed.add(i); });
      this.draw();
      if (this.selected >= 0 && this.layout.shown[this.selected]) this.select(this.selected, false);
      else this.showDetail(-1);
    }

    pathOnly() {
      const m = this.model;
      this.collapsed = new Set();
      m.kids.forEach((k, i) => { if (k.length && !m.onPath[i]) this.collapsed.add(i); });
      this.draw();
      if (m.chosen >= 0) this.select(m.chosen, true);
    }

    setZoom(z) {
      this.zoom = Math.min(4, Math.max(0.05, z));
      this.draw();
      if (this.selected >= 0) this.select(this.selected, false);
    }

    fit() {
      const width = (this.layout.maxCol + 1) * this.col() + 140;
      const height = Math.max(this.layout.rows, 1) * ROW + 16;
      this.setZoom(Math.min(this.scroller.clientWidth / width, this.scroller.clientHeight / height, 1.5));
    }

    showDetail(i) {
      if (i < 0) {
        const note = this.tree.prediction === null || this.tree.prediction === undefined
          ? "The search chose no answer."
          : "No node carries the chosen answer.";
        this.detail.replaceChildren(el("div", { cls: "dim", text: `${note} Click a node to see its step; double-click to collapse or expand it.` }));
        return;
      }
      const n = this.tree.nodes[i];
      const m = this.model;
      const facts = [
        ["depth", fmt(n.depth)],
        ["visits", fmt(n.visits)],
        ["Q", fmt(n.q_value)],
        ["value", fmt(n.value)],
        ["terminal", n.terminal ? "yes" : "no"],
        ["answer", n.final_answer === null || n.final_answer === undefined ? "–" : String(n.final_answer)],
        ["correct", n.correct === null || n.correct === undefined ? "–" : n.correct ? "yes" : "no"],
        ["children", String(m.kids[i].length)],
        ["subtree", String(m.size[i])],
      ].map(([k, v]) => el("div", { cls: "fact-" + k }, el("span", { text: k }), el("b", { text: v })));
      const step = el("pre", { cls: "step" });
      highlightStep(n.text || "", step);
      const output = n.output === null || n.output === undefined
        ? el("div", { cls: "dim no-output", text: "(no interpreter output for this step)" })
        : el("pre", { cls: "output" + (n.outcome === "error" ? " err" : ""), text: n.output });
      const head = el(
        "div",
        { cls: "head" },
        el("span", { cls: "nid", text: n.id }),
        el("span", { cls: "key o-" + n.outcome }, el("span", { cls: "dot" }), OUTCOMES[n.outcome] || n.outcome),
        m.onPath[i] ? el("span", { cls: "badge", text: i === m.chosen ? "chosen answer" : "on the chosen path" }) : null,
        m.parent[i] >= 0 ? el("button", { text: "Parent", onclick: () => this.select(m.parent[i], true) }) : null,
        m.kids[i].length ? el("button", { text: this.collapsed.has(i) ? "Expand" : "Collapse", cls: "toggle", onclick: () => this.toggle(i) }) : null,
        m.kids[i].length ? el("button", { text: "Expand subtree", onclick: () => this.expandSubtree(i) }) : null,
      );
      const path = [];
      for (let a = i; a >= 0; a = m.parent[a]) path.push(a);
      const whole = el("pre", { cls: "path" });
      highlightStep(path.reverse().map((j) => this.tree.nodes[j].text || "").join(""), whole);
      this.detail.replaceChildren(
        head,
        el("div", { cls: "facts" }, ...facts),
        el("h4", { text: "Step" }),
        step,
        el("h4", { text: "Interpreter output" }),
        output,
        el("details", {}, el("summary", { text: `The solution up to this step (${path.length - 1} steps)` }), whole),
      );
    }
  }

  // A node's label in "step text" mode: the first line of its step that says something (tags left out).
  function stepLabel(n) {
    if (n.final_answer !== null && n.final_answer !== undefined) return short("→ " + String(n.final_answer), 34);
    const line = (n.text || "").replace(TAG_RE, "\n").split("\n").map((l) => l.trim()).find((l) => l) || "";
    return short(line, 34);
  }

  function nodeSummary(n, m, i) {
    const bits = [n.id, OUTCOMES[n.outcome] || n.outcome, `visits ${fmt(n.visits)}`, `Q ${fmt(n.q_value)}`];
    if (n.final_answer !== null && n.final_answer !== undefined) bits.push(`answer ${n.final_answer}`);
    if (m.kids[i].length) bits.push(`${m.size[i] - 1} below`);
    return bits.join(" · ");
  }

  // Indices, children, depths, subtree sizes and the chosen path, computed once per tree.
  function buildModel(tree) {
    const nodes = tree.nodes;
    const count = nodes.length;
    const byId = new Map();
    nodes.forEach((n, i) => byId.set(n.id, i));
    const parent = new Int32Array(count).fill(-1);
    const kids = Array.from({ length: count }, () => []);
    const roots = [];
    nodes.forEach((n, i) => {
      const p = n.parent === null || n.parent === undefined ? undefined : byId.get(n.parent);
      if (p === undefined || p === i) roots.push(i);
      else { parent[i] = p; kids[p].push(i); }
    });
    // Depth-first order from the roots, iteratively (a deep chain must not overflow the stack).
    const order = [];
    const depth = new Int32Array(count);
    const seen = new Uint8Array(count);
    const stack = roots.slice().reverse();
    while (stack.length) {
      const i = stack.pop();
      if (seen[i]) continue;
      seen[i] = 1;
      order.push(i);
      for (let k = kids[i].length - 1; k >= 0; k--) { depth[kids[i][k]] = depth[i] + 1; stack.push(kids[i][k]); }
    }
    const size = new Int32Array(count).fill(1);
    for (let k = order.length - 1; k >= 0; k--) { const i = order[k]; if (parent[i] >= 0) size[parent[i]] += size[i]; }
    let maxVisits = 1, minQ = Infinity, maxQ = -Infinity, maxDepth = 0;
    for (let i = 0; i < count; i++) {
      maxVisits = Math.max(maxVisits, nodes[i].visits || 0);
      const q = nodes[i].q_value || 0;
      minQ = Math.min(minQ, q); maxQ = Math.max(maxQ, q);
      maxDepth = Math.max(maxDepth, depth[i]);
    }
    const onPath = new Uint8Array(count);
    for (const nid of tree.path || []) if (byId.has(nid)) onPath[byId.get(nid)] = 1;
    const chosen = tree.chosen !== null && tree.chosen !== undefined && byId.has(tree.chosen) ? byId.get(tree.chosen) : -1;
    return { byId, parent, kids, roots, order, depth, size, maxVisits, minQ: isFinite(minQ) ? minQ : 0, maxQ: isFinite(maxQ) ? maxQ : 0, maxDepth, onPath, chosen };
  }

  // Big trees open with deep levels collapsed (the chosen path stays open), so the first draw stays fast.
  function defaultCollapsed(m) {
    const collapsed = new Set();
    if (m.order.length <= LAZY_OVER) return collapsed;
    const perDepth = new Array(m.maxDepth + 1).fill(0);
    for (const d of m.depth) perDepth[d]++;
    let limit = 0;
    for (let total = 0; limit <= m.maxDepth && total + perDepth[limit] <= LAZY_SHOW; limit++) total += perDepth[limit];
    limit = Math.max(limit - 1, 1);
    m.kids.forEach((k, i) => { if (k.length && m.depth[i] >= limit && !m.onPath[i]) collapsed.add(i); });
    return collapsed;
  }

  // Horizontal tidy layout: depth to the right, one row per shown leaf, a parent centred on its children.
  function layoutTree(m, collapsed) {
    const count = m.parent.length;
    const x = new Float64Array(count);
    const y = new Float64Array(count);
    const shown = new Uint8Array(count);
    const order = [];
    let row = 0;
    let maxCol = 0;
    const stack = m.roots.slice().reverse().map((i) => [i, 0]);
    while (stack.length) {
      const [i, phase] = stack.pop();
      if (phase === 0) {
        shown[i] = 1;
        order.push(i);
        x[i] = m.depth[i];
        maxCol = Math.max(maxCol, m.depth[i]);
        const kids = collapsed.has(i) ? [] : m.kids[i];
        if (!kids.length) { y[i] = row++; continue; }
        stack.push([i, 1]);
        for (let k = kids.length - 1; k >= 0; k--) stack.push([kids[k], 0]);
      } else {
        const kids = m.kids[i];
        y[i] = (y[kids[0]] + y[kids[kids.length - 1]]) / 2;
      }
    }
    return { x, y, shown, order, rows: row, maxCol };
  }

  // --- the page ----------------------------------------------------------------------------------------
  const panes = [new Pane(0), new Pane(1)];

  function drawLegend() {
    const legend = $("legend");
    legend.replaceChildren(
      ...["correct", "wrong", "answer", "error", "cut", "open", "step"].map((o) =>
        el("span", { cls: "key o-" + o }, el("span", { cls: "dot" }), OUTCOMES[o]),
      ),
      el("span", { cls: "key" }, el("span", { cls: "chosen-key" }), "chosen answer's path"),
    );
  }

  function setOptions(select, values, first) {
    const current = select.value;
    select.replaceChildren(first, ...values.map(([v, l]) => el("option", { value: v, text: l })));
    select.value = [...select.options].some((o) => o.value === current) ? current : select.options[0].value;
  }

  function applyIndex(index) {
    state.index = index;
    state.labels = new Map(index.sources.map((s) => [s.key, s.label]));
    $("target").textContent = index.target;
    $("target").title = index.target;
    $("report").hidden = !(LIVE && index.report);  // served only: the page written with -o has no server behind it
    document.title = "rstar view · " + index.target;
    const sources = index.sources.map((s) => [s.key, `${s.label} (${s.trees})`]);
    setOptions($("source"), sources, el("option", { value: "all", text: "all sources" }));
    setOptions($("compare"), sources, el("option", { value: "", text: "(none)" }));
    const strategies = [...new Set(index.sources.flatMap((s) => s.strategies))].sort();
    setOptions($("strategy"), strategies.map((s) => [s, s]), el("option", { value: "all", text: "all strategies" }));
    state.filter.source = $("source").value;
    state.filter.strategy = $("strategy").value;
    state.compare = $("compare").value;
    $("warnings").replaceChildren(...(index.warnings || []).slice(0, 20).map((w) => el("div", { text: w })));
    drawList();
  }

  function matches(p) {
    const f = state.filter;
    if (f.source !== "all" && p.source !== f.source) return false;
    if (f.strategy !== "all" && p.strategy !== f.strategy) return false;
    if (f.status === "unsolved" ? !(p.status === "wrong" || p.status === "unanswered") : f.status !== "all" && p.status !== f.status) return false;
    if (f.text) {
      const hay = (String(p.question) + "\n" + String(p.id)).toLowerCase();
      if (!hay.includes(f.text)) return false;
    }
    return true;
  }

  function drawList() {
    const list = $("problems");
    const hits = state.index.problems.filter(matches);
    const showSource = state.filter.source === "all" && state.index.sources.length > 1;
    const limit = state.showAll ? hits.length : Math.min(hits.length, LIST_LIMIT);
    const items = [];
    for (let k = 0; k < limit; k++) {
      const p = hits[k];
      const current = state.current && state.current.source === p.source && state.current.id === p.id;
      items.push(
        el(
          "li",
          { cls: current ? "current" : "", "data-source": p.source, "data-id": String(p.id), "data-status": p.status, title: STATUS[p.status] },
          el(
            "div",
            { cls: "head" },
            el("span", { cls: "st st-" + p.status }),
            el("span", { cls: "pid", text: String(p.id) }),
            el("span", { cls: "dim", text: `${p.nodes} nodes · ${answerText(p.prediction)}` }),
            showSource ? el("span", { cls: "src", text: state.labels.get(p.source) || p.source }) : null,
          ),
          el("div", { cls: "q", text: p.question }),
        ),
      );
    }
    if (limit < hits.length) items.push(el("li", { cls: "more", text: `${hits.length - limit} more: show all`, onclick: () => { state.showAll = true; drawList(); } }));
    list.replaceChildren(...items);
    const total = state.index.problems.length;
    $("count").textContent = `${hits.length} of ${total} trees` + (LIVE ? "" : " (embedded)");
  }

  function updateHash() {
    if (!state.current) return;
    const params = new URLSearchParams({ source: state.current.source, id: state.current.id });
    if (state.compare) params.set("compare", state.compare);
    history.replaceState(null, "", "#" + params);
  }

  async function open(source, id, keepView) {
    state.current = { source, id };
    for (const li of $("problems").querySelectorAll("li.current")) li.classList.remove("current");
    for (const li of $("problems").querySelectorAll("li[data-id]")) {
      if (li.dataset.source === source && li.dataset.id === String(id)) li.classList.add("current");
    }
    layoutPanes();
    await panes[0].show(source, id, keepView);
    if (state.compare) await panes[1].show(state.compare, id, keepView);
    updateHash();
  }

  function layoutPanes() {
    const main = $("panes");
    const two = Boolean(state.compare);
    main.classList.toggle("two", two);
    const wanted = two ? [panes[0].el, panes[1].el] : [panes[0].el];
    if (main.children.length !== wanted.length || [...main.children].some((c, k) => c !== wanted[k])) main.replaceChildren(...wanted);
  }

  function setLive(text, cls) {
    const badge = $("live");
    badge.textContent = text;
    badge.className = "badge " + (cls || "");
  }

  async function poll() {
    try {
      const params = new URLSearchParams({ version: state.index.version || "" });
      const index = await getJSON("api/index?" + params);
      if (!index.unchanged) {
        state.cache.clear();
        applyIndex(index);
        if (state.current) await open(state.current.source, state.current.id, true);
        else openFirst();
      }
      setLive(`live · ${state.index.problems.length} trees · ${new Date().toLocaleTimeString()}`, "live");
    } catch (err) {
      setLive("disconnected: retrying", "down");
    }
    setTimeout(poll, POLL_MS);
  }

  function openFirst() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("compare") && state.labels.has(params.get("compare"))) {
      state.compare = params.get("compare");
      $("compare").value = state.compare;
    }
    const wanted = params.get("source") && params.get("id") !== null
      ? state.index.problems.find((p) => p.source === params.get("source") && String(p.id) === params.get("id"))
      : null;
    const first = wanted || state.index.problems.find(matches);
    if (first) open(first.source, first.id);
    else layoutPanes();
  }

  function wire() {
    $("search").addEventListener("input", (e) => { state.filter.text = e.target.value.trim().toLowerCase(); drawList(); });
    $("status").addEventListener("change", (e) => { state.filter.status = e.target.value; drawList(); });
    $("source").addEventListener("change", (e) => { state.filter.source = e.target.value; drawList(); });
    $("strategy").addEventListener("change", (e) => { state.filter.strategy = e.target.value; drawList(); });
    $("compare").addEventListener("change", (e) => {
      state.compare = e.target.value;
      if (state.current) open(state.current.source, state.current.id);
      else layoutPanes();
    });
    $("problems").addEventListener("click", (e) => {
      const li = e.target.closest("li[data-id]");
      if (li) open(li.dataset.source, li.dataset.id);
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "/" && document.activeElement !== $("search")) { e.preventDefault(); $("search").focus(); }
    });
  }

  drawLegend();
  wire();
  window.rstarView = { panes, state, open };
  if (LIVE) {
    setLive("live · loading", "live");
    poll();
  } else {
    setLive("static page", "");
    applyIndex(CONFIG.index);
    openFirst();
  }
})();
