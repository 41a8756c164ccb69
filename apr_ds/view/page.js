"use strict";
// The trace viewer's page: an index of programs, and one program's tree, timeline and text, opened on demand.
// Model text only ever reaches the page through textContent (the `el` helper), never as markup.
(function () {
  const started = performance.now();
  const INDEX = JSON.parse(document.getElementById("index-data").textContent);
  const SOURCES = INDEX.sources, ROWS = INDEX.rows, KINDS = INDEX.kinds;
  const CALL = Object.fromEntries(INDEX.call_fields.map((name, i) => [name, i]));
  const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22", "#e377c2",
                   "#d62728", "#ff7f0e", "#aaaaaa", "#393b79", "#637939", "#8c6d31"];
  const has = (key) => ROWS.some((row) => row[key] !== null && row[key] !== undefined);
  const state = { mode: SOURCES.length > 1 ? "problems" : "programs", sort: null, desc: false,
                  solved: "all", reason: "", spawned: "any", source: "all", agree: "all", search: "" };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }
  const fmt = (value, digits) => value === null || value === undefined ? "-" :
    (typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value));
  const slug = (text) => text.split(":")[0].trim().replace(/[^a-z]+/gi, "-").toLowerCase();

  // ------------------------------------------------------------------ the index

  const COLUMNS = [
    { key: "problem", label: "problem", text: true },
    SOURCES.length > 1 ? { key: "src", label: "source", text: true, show: (r) => SOURCES[r.src].label } : null,
    { key: "method", label: "method", text: true },
    has("T") ? { key: "T", label: "T" } : null,
    has("budget") ? { key: "budget", label: "budget" } : null,
    has("version") ? { key: "version", label: "weights" } : null,
    has("reward") ? { key: "reward", label: "reward", digits: 3 } : null,
    { key: "solved", label: "solved", text: true, cell: solvedCell },
    { key: "threads", label: "threads" },
    { key: "spawns", label: "spawns" },
    { key: "children_per_spawn", label: "children/spawn", digits: 2 },
    { key: "total", label: "total tok" },
    { key: "sequential", label: "sequential tok" },
    { key: "longest", label: "longest thread" },
    { key: "latency", label: "latency s", digits: 2 },
  ].filter(Boolean);

  function solvedCell(row) {
    return row.solved ? el("span", { class: "ok", text: "\u2713 solved" })
                      : el("span", { class: "bad", text: "\u2717 " + (row.reason || "failed"), title: row.reason });
  }

  function passes(row) {
    if (state.solved === "solved" && !row.solved) return false;
    if (state.solved === "failed" && row.solved) return false;
    if (state.reason && row.reason_kind !== state.reason) return false;
    if (state.spawned === "yes" && row.spawns === 0) return false;
    if (state.spawned === "no" && row.spawns > 0) return false;
    if (state.source !== "all" && String(row.src) !== state.source) return false;
    if (state.search && !row.problem.includes(state.search)) return false;
    return true;
  }

  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    return a < b ? -1 : 1;
  }

  function sortedRows(rows, key) {
    if (!key) return rows;
    const out = rows.slice().sort((x, y) => compare(x[key], y[key]));
    return state.desc ? out.reverse() : out;
  }

  function select(name, options, onchange) {
    const box = el("select", { name, onchange: (e) => { onchange(e.target.value); renderIndex(); } });
    for (const [value, label] of options) box.append(el("option", { value, text: label }));
    return box;
  }

  function renderFilters() {
    const reasons = [...new Set(ROWS.filter((r) => !r.solved).map((r) => r.reason_kind))].sort();
    const filters = document.getElementById("filters");
    filters.replaceChildren(...[
      SOURCES.length > 1 ? el("label", {}, "view",
        select("mode", [["problems", "side by side per problem"], ["programs", "one row per program"]],
               (v) => { state.mode = v; state.sort = null; renderFilters(); })) : null,
      el("label", {}, "solved", select("solved", [["all", "all"], ["solved", "solved"], ["failed", "failed"]],
                                       (v) => { state.solved = v; })),
      el("label", {}, "failure reason", select("reason", [["", "any"], ...reasons.map((r) => [r, r])],
                                               (v) => { state.reason = v; })),
      el("label", {}, "spawned", select("spawned", [["any", "any"], ["yes", "spawned at all"], ["no", "never spawned"]],
                                        (v) => { state.spawned = v; })),
      SOURCES.length > 1 && state.mode === "programs" ? el("label", {}, "source",
        select("source", [["all", "all"], ...SOURCES.map((s, i) => [String(i), s.label])], (v) => { state.source = v; })) : null,
      SOURCES.length > 1 && state.mode === "problems" ? el("label", {}, "sources",
        select("agree", [["all", "any"], ["disagree", "solved by some, not all"], ["every", "solved by all"],
                         ["none", "solved by none"]], (v) => { state.agree = v; })) : null,
      el("label", {}, "problem contains",
         el("input", { type: "search", oninput: (e) => { state.search = e.target.value; renderIndex(); } }))
    ].filter(Boolean));
    for (const box of filters.querySelectorAll("select")) box.value = state[box.name];
  }

  function header(columns) {
    const tr = el("tr");
    for (const column of columns) {
      const th = el("th", { text: column.label, "data-key": column.key });
      if (state.sort === column.key) th.className = state.desc ? "sorted-desc" : "sorted-asc";
      th.addEventListener("click", () => {
        state.desc = state.sort === column.key ? !state.desc : false;
        state.sort = column.key;
        renderIndex();
      });
      tr.append(th);
    }
    document.querySelector("#index thead").replaceChildren(tr);
  }

  function renderPrograms() {
    header(COLUMNS);
    const rows = sortedRows(ROWS.map((row, i) => ({ ...row, at: i })).filter(passes), state.sort);
    const body = document.createDocumentFragment();
    for (const row of rows) {
      const tr = el("tr", { "data-program": row.at, onclick: () => open(row.at) });
      for (const column of COLUMNS) {
        const content = column.cell ? column.cell(row) : fmt(column.show ? column.show(row) : row[column.key], column.digits);
        tr.append(el("td", { class: column.text ? "text" : "" }, content));
      }
      body.append(tr);
    }
    document.querySelector("#index tbody").replaceChildren(body);
    return rows.length;
  }

  function problemGroups() {
    const groups = new Map();
    ROWS.forEach((row, i) => {
      if (!groups.has(row.key)) groups.set(row.key, { problem: row.problem, T: row.T, budget: row.budget, cells: {} });
      groups.get(row.key).cells[row.src] = i;
    });
    return [...groups.values()];
  }

  function renderProblems() {
    const columns = [{ key: "problem", label: "problem", text: true }, has("T") ? { key: "T", label: "T" } : null,
                     has("budget") ? { key: "budget", label: "budget" } : null,
                     ...SOURCES.map((s, i) => ({ key: "src" + i, label: s.label, source: i })),
                     { key: "solvedBy", label: "solved by" }].filter(Boolean);
    header(columns);
    let groups = problemGroups().map((g) => {
      const present = Object.values(g.cells).map((i) => ROWS[i]);
      const solvedBy = present.filter((r) => r.solved).length;
      const out = { ...g, solvedBy, present };
      SOURCES.forEach((s, i) => { out["src" + i] = i in g.cells ? ROWS[g.cells[i]].sequential : null; });
      return out;
    });
    groups = groups.filter((g) => g.present.some(passes) &&
      (state.agree === "all" || (state.agree === "every" && g.solvedBy === SOURCES.length) ||
       (state.agree === "none" && g.solvedBy === 0) ||
       (state.agree === "disagree" && g.solvedBy > 0 && g.solvedBy < SOURCES.length)));
    groups = sortedRows(groups, state.sort);
    const body = document.createDocumentFragment();
    for (const g of groups) {
      const tr = el("tr");
      for (const column of columns) {
        if (column.source === undefined) {
          tr.append(el("td", { class: column.text ? "text" : "" }, fmt(g[column.key])));
          continue;
        }
        const at = g.cells[column.source];
        if (at === undefined) { tr.append(el("td", { text: "-" })); continue; }
        const row = ROWS[at];
        tr.append(el("td", {}, el("span", {
          class: "cell-button " + (row.solved ? "ok" : "bad"), "data-program": at, title: row.reason || "solved",
          onclick: () => open(at) }, (row.solved ? "\u2713 " : "\u2717 ") + row.sequential + " seq tok")));
      }
      body.append(tr);
    }
    document.querySelector("#index tbody").replaceChildren(body);
    return groups.length;
  }

  function renderIndex() {
    const shown = state.mode === "problems" ? renderProblems() : renderPrograms();
    const what = state.mode === "problems" ? "problems" : "programs";
    const solved = ROWS.filter((r) => r.solved).length;
    document.getElementById("count").textContent =
      `${shown} ${what} shown; ${ROWS.length} programs in all, ${solved} solved. Click a row to open a program.`;
  }

  // ------------------------------------------------------------------ one program

  function open(at) { location.hash = "#p" + at; }

  function showProgram(at) {
    const row = ROWS[at], data = JSON.parse(document.getElementById("p" + at).textContent);
    const view = document.getElementById("program-view");
    const threads = data.threads;
    view.replaceChildren(
      el("button", { id: "back", onclick: () => { location.hash = ""; } }, "\u2190 all programs"),
      el("h2", { text: `${row.problem} \u00b7 ${SOURCES[row.src].label} \u00b7 program ${row.n + 1}` }),
      el("div", { id: "verdict", class: "verdict " + (data.solved ? "ok" : "bad"),
                  text: data.solved ? "solved: the verifier accepts the answer" : "not solved: " + (data.reason || "no reason given") }),
      el("div", { class: "stats", text: [
        `${threads.length} threads`, `${row.spawns} spawns`, `${row.total} total tokens`,
        `${row.sequential} sequential tokens`, `longest thread ${row.longest}`, `latency ${fmt(data.latency, 2)} s`,
        data.version !== undefined ? `weights v${data.version}` : null,
        data.reward !== undefined ? `reward ${fmt(data.reward, 3)}` : null,
        data.temperature !== undefined ? `T ${data.temperature}` : null].filter(Boolean).join(" \u00b7 ") }),
      el("h3", { text: "spawn/join tree" }), el("div", { id: "tree" }, el("ul", {}, treeItem(threads, 0))),
      el("h3", { text: "timeline (one lane per thread; a bar per generation call; its dark part: prefix-cache hit)" }),
      el("div", { id: "timeline" }, timeline(threads, data.latency)),
      el("h3", { text: "threads" }), legend(), el("div", { id: "threads" }, ...threads.map(threadText)));
    document.getElementById("index-view").hidden = true;
    view.hidden = false;
    window.scrollTo(0, 0);
  }

  function outcomeBadge(thread) {
    return el("span", { class: "outcome " + slug(thread.outcome), text: thread.outcome });
  }

  function treeItem(threads, id) {
    const thread = threads[id];
    const name = id === 0 ? "main thread" : `thread ${id}`;
    const label = el("span", { class: "thread-label", "data-thread": id, onclick: () => jumpTo(id) },
                     `${name} (${thread.sequential} sequential tok, ${thread.calls.length} calls)`);
    const item = el("li", { class: id === 0 ? "root" : "child", "data-thread": id }, label, outcomeBadge(thread));
    if (id !== 0) item.append(el("span", { class: "child-prompt", text: thread.prompt.split("\n")[0] }));
    if (thread.spawns.length) {
      const spawns = el("ul");
      thread.spawns.forEach((children, k) => {
        spawns.append(el("li", { class: "spawn", "data-children": children.length },
          el("span", { class: "spawn-label", text: `spawn ${k + 1}: ${children.length} children` }),
          el("ul", {}, ...children.map((child) => treeItem(threads, child)))));
      });
      item.append(spawns);
    }
    return item;
  }

  function timeline(threads, latency) {
    const width = 900, lane = 22, left = 90, span = Math.max(latency, 1e-6);
    const height = threads.length * lane + 24;
    const x = (t) => left + (width - left - 10) * Math.min(Math.max(t / span, 0), 1);
    const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
    threads.forEach((thread, i) => {
      const y = i * lane + 4;
      const row = svg("g", { class: "lane", "data-thread": thread.id });
      row.append(svg("text", { x: 4, y: y + 14, "font-size": 11 }, document.createTextNode(
        thread.id === 0 ? "main" : `t${thread.id} (d${thread.depth})`)));
      thread.calls.forEach((call, k) => {
        const x0 = x(call[CALL.start]), x1 = Math.max(x(call[CALL.end]), x0 + 2);
        const context = call[CALL.prompt] + call[CALL.output];
        const cachedWidth = context ? (x1 - x0) * Math.min(call[CALL.cached] / context, 1) : 0;
        const tip = `${thread.id === 0 ? "main thread" : "thread " + thread.id}, call ${k + 1}: ` +
          `${call[CALL.start].toFixed(3)}-${call[CALL.end].toFixed(3)} s, prompt ${call[CALL.prompt]} tok ` +
          `(${call[CALL.cached]} from the prefix cache), output ${call[CALL.output]} tok, ` +
          `${call[CALL.new]} new, finish ${call[CALL.finish]}, weights ${call[CALL.weights] || "-"}`;
        const bar = svg("g", { class: "call" }, svg("title", {}, document.createTextNode(tip)),
          svg("rect", { x: x0, y, width: x1 - x0, height: lane - 8, fill: "#8fb3e8", stroke: "#3b6bb5" }),
          svg("rect", { x: x0, y, width: cachedWidth, height: lane - 8, fill: "#2d4f86", class: "cached" }));
        row.append(bar);
      });
      chart.append(row);
    });
    const axis = threads.length * lane + 18;
    chart.append(svg("text", { x: left, y: axis, "font-size": 10 }, document.createTextNode("0 s")));
    chart.append(svg("text", { x: width - 60, y: axis, "font-size": 10 }, document.createTextNode(`${span.toFixed(2)} s`)));
    return chart;
  }

  function legend() {
    return el("div", { id: "legend" }, ...KINDS.map((kind, i) =>
      el("span", {}, swatch(i), kind)), el("span", { class: "bad", text: "\u2717 a per-line check the line fails" }));
  }

  function swatch(i) {
    const box = el("span", { class: "swatch" });
    box.style.background = PALETTE[i % PALETTE.length];
    return box;
  }

  function threadText(thread) {
    const box = el("div", { class: "thread-text" });
    thread.lines.forEach((line, n) => {
      const kind = thread.kinds.charCodeAt(n) - 97;
      const failed = thread.failed[String(n)];
      const div = el("div", { class: "line" + (failed ? " failed" : ""), title: KINDS[kind] || "" },
                     el("span", { class: "ln", text: String(n + 1) }), line);
      div.style.borderLeftColor = PALETTE[kind % PALETTE.length];
      if (failed) div.append(el("span", { class: "badge", text: "\u2717 " + failed.join(", ") }));
      box.append(div);
    });
    const parent = thread.parent === null ? "" : `, spawned by ${thread.parent === 0 ? "the main thread" : "thread " + thread.parent}`;
    return el("section", { class: "thread", id: "thread-" + thread.id, "data-thread": thread.id },
      el("h3", {}, `${thread.id === 0 ? "main thread" : "thread " + thread.id} (depth ${thread.depth}${parent}) `,
         outcomeBadge(thread)), box);
  }

  function jumpTo(id) {
    const target = document.getElementById("thread-" + id);
    for (const old of document.querySelectorAll(".highlight")) old.classList.remove("highlight");
    target.classList.add("highlight");
    target.scrollIntoView({ block: "start" });
  }

  // ------------------------------------------------------------------ routing: #pN opens program N

  function route() {
    const match = /^#p(\d+)$/.exec(location.hash);
    if (match && Number(match[1]) < ROWS.length) {
      showProgram(Number(match[1]));
    } else {
      document.getElementById("program-view").hidden = true;
      document.getElementById("index-view").hidden = false;
    }
  }

  document.getElementById("sources").textContent = SOURCES.map((s) =>
    `${s.label}: ${s.files.join(", ")} (${s.task}; ${s.note})`).join(" | ");
  renderFilters();
  renderIndex();
  window.addEventListener("hashchange", route);
  route();
  void document.body.offsetHeight;  // lay the index out now, so that readyAt counts it
  window.viewer = { scriptMs: performance.now() - started, readyAt: performance.now(), open: showProgram, rows: ROWS.length };
  document.body.dataset.ready = "1";
})();
