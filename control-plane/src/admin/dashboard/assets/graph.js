// meshd dashboard: the mesh graph as SVG, in a layered layout (callers left of the services
// they call, services left of the workloads serving them), redrawn on every live update.
"use strict";

const MeshGraph = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const COL = 330, ROW = 64, NODE_W = 190, NODE_H = 40, PAD = 24;

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // Longest path from the callers, bounded so a cycle of calls cannot loop forever.
  function layers(nodes, edges) {
    const layer = new Map(nodes.map(n => [n.id, n.kind === "service" ? 1 : 0]));
    for (let round = 0; round < nodes.length * 2; round++) {
      let moved = false;
      for (const e of edges) {
        const want = (layer.get(e.source) ?? 0) + 1;
        if ((layer.get(e.target) ?? 0) < want && want <= nodes.length * 2) {
          layer.set(e.target, want);
          moved = true;
        }
      }
      if (!moved) break;
    }
    return layer;
  }

  function fmt(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
  }

  function edgeLabel(e) {
    if (!e.requests) return "";
    const rps = e.rps === null ? "" : `${fmt(e.rps, 1)} rps `;
    const err = e.error_rate ? ` ${fmt(e.error_rate * 100, 1)}% err` : "";
    const lock = e.mtls === "full" ? " 🔒" : "";
    return `${rps}p99 ${fmt(e.p99_ms, 0)}ms${err}${lock}`;
  }

  function draw(svg, graph, onOpen) {
    const nodes = graph.nodes;
    const byLayer = new Map();
    const layer = layers(nodes, graph.edges);
    for (const n of nodes) {
      const l = layer.get(n.id);
      if (!byLayer.has(l)) byLayer.set(l, []);
      byLayer.get(l).push(n);
    }
    const pos = new Map();
    let rows = 0;
    const columns = [...byLayer.keys()].sort((a, b) => a - b);
    columns.forEach((l, col) => {
      const list = byLayer.get(l).sort((a, b) =>
        (a.namespace + a.name).localeCompare(b.namespace + b.name));
      list.forEach((n, i) => pos.set(n.id, { x: PAD + col * COL, y: PAD + i * ROW }));
      rows = Math.max(rows, list.length);
    });
    const width = PAD * 2 + Math.max(1, columns.length) * COL;
    const height = PAD * 2 + Math.max(1, rows) * ROW;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#667085" }, marker);

    const edgeLayer = el("g", {}, svg);
    for (const e of graph.edges) {
      const a = pos.get(e.source), b = pos.get(e.target);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const back = x2 <= x1;
      const bend = back ? 80 : (x2 - x1) / 2;
      const cls = ["edge"];
      if (e.rps) cls.push("busy");
      if (!e.requests) cls.push("idle");
      if (e.error_rate) cls.push("errors");
      const g = el("g", { class: cls.join(" "), "data-source": e.source, "data-target": e.target,
        "data-requests": e.requests, "data-reporter": e.reporter, "data-mtls": e.mtls }, edgeLayer);
      el("path", { d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)" }, g);
      const t = el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, g);
      t.textContent = edgeLabel(e);
      const title = el("title", {}, g);
      title.textContent = `${e.source} → ${e.target}: ${e.requests} requests (${e.reporter} reporter), mTLS ${e.mtls}`;
    }
    const nodeLayer = el("g", {}, svg);
    for (const n of nodes) {
      const p = pos.get(n.id);
      const cls = ["node", n.kind];
      if (!n.registered) cls.push("unregistered");
      const g = el("g", { class: cls.join(" "), "data-id": n.id, "data-kind": n.kind,
        transform: `translate(${p.x},${p.y})` }, nodeLayer);
      el("rect", { width: NODE_W, height: NODE_H, rx: 6 }, g);
      const name = el("text", { x: 10, y: 17 }, g);
      // A registered service's host is long; its first label names it on the canvas.
      const label = n.kind === "service" && n.registered ? n.name.split(".")[0] : n.name;
      name.textContent = (n.kind === "service" ? "◆ " : "● ") + shorten(label, 26);
      const ns = el("text", { x: 10, y: 32, class: "ns" }, g);
      ns.textContent = `${n.kind} · ${n.namespace}`;
      const title = el("title", {}, g);
      title.textContent = `${n.kind} ${n.name} (${n.namespace})`;
      if (n.kind === "workload" && n.registered) {
        g.addEventListener("click", () => onOpen(n));
      }
    }
  }

  function shorten(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  return { draw, fmt };
})();
