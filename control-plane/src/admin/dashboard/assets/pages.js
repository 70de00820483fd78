// meshd dashboard: the pages (graph, workload, config) as DOM built from the live JSON. Every
// value from the server is set as text, never parsed as HTML: config names are user input.
"use strict";

const Pages = (() => {
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function table(id, headers, rows) {
    const head = h("tr", {}, ...headers.map(x => h("th", {}, x)));
    const body = h("tbody");
    for (const r of rows) body.appendChild(h("tr", {}, ...r.map(c =>
      c instanceof Node ? h("td", {}, c) :
        typeof c === "number" ? h("td", { class: "num" }, c) : h("td", {}, c ?? "–"))));
    return h("table", { id }, h("thead", {}, head), body);
  }

  function badge(text) {
    return h("span", { class: `badge ${text}` }, text);
  }

  function replace(container, child) {
    while (container.firstChild) container.removeChild(container.firstChild);
    container.appendChild(child);
  }

  function graph(main) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.id = "graph";
    const edges = h("div", { id: "edge-table" });
    const note = h("p", { class: "muted" }, "Waiting for the first update…");
    main.append(h("h1", {}, "Mesh graph"), note, h("div", { id: "graph-wrap" }, svg),
      h("h2", {}, "Edges"), edges);
    const name = id => id.replace(/^(workload|service):/, "");
    return {
      update(g) {
        MeshGraph.draw(svg, g, n => { location.hash = `#/workload/${n.namespace}/${n.name}`; });
        note.textContent = `${g.nodes.length} nodes, ${g.edges.length} edges; rates over the last ` +
          `${Math.round(g.window_seconds)} s. Click a workload for its proxies, certificate and policies.`;
        const f = MeshGraph.fmt;
        replace(edges, table("edges", ["from", "to", "requests", "req/s", "errors", "p50 ms", "p99 ms", "mTLS", "reporter"],
          g.edges.filter(e => e.requests > 0).map(e => [name(e.source), name(e.target), e.requests, f(e.rps, 2),
            e.error_rate === null ? "–" : `${f(e.error_rate * 100, 1)}%`, f(e.p50_ms, 1), f(e.p99_ms, 1),
            badge(e.mtls), e.reporter])));
      },
    };
  }

  function policies(list) {
    return table(null, ["kind", "name", "applies", "hosts", "source"],
      list.map(p => [p.kind, `${p.namespace}/${p.name}`, p.scope, (p.hosts || []).join(", "),
        `${p.file.split("/").pop()}:${p.line}`]));
  }

  function workload(main, namespace, name) {
    const body = h("div", { id: "workload" }, h("p", { class: "muted" }, "Loading…"));
    main.append(h("h1", {}, `Workload ${name}.${namespace}`), body);
    return {
      update(w) {
        if (!w) {
          replace(body, h("p", { class: "error" }, `No workload ${name}.${namespace} in the registry.`));
          return;
        }
        const proxies = h("div", { id: "proxies" });
        if (w.proxies.length === 0) proxies.appendChild(h("p", { class: "muted" }, "No connected proxy."));
        for (const p of w.proxies) {
          proxies.appendChild(h("p", {}, h("code", {}, p.proxy_id), ` (${p.protocol}, connected ${p.connected_at})`));
          proxies.appendChild(table(null, ["type", "status", "sent", "acked", "error"],
            Object.entries(p.types).map(([t, s]) => [t, badge(s.status), s.sent_version, s.acked_version, s.error])));
        }
        const labels = Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(", ");
        const content = h("div", {},
          table("facts", ["address", "service account", "principal", "labels", "services"],
            [[w.address, w.service_account, w.principal, labels, w.services.join(", ")]]),
          h("h2", {}, "Proxies and xDS sync"), proxies,
          h("h2", {}, "Certificate"),
          table("certificates", ["serial", "not before", "not after"],
            w.certificates.map(c => [h("code", {}, c.serial), c.not_before, c.not_after])),
          h("div", { class: "grid" },
            h("div", {}, h("h2", {}, "Inbound policies"), policies(w.inbound)),
            h("div", {}, h("h2", {}, "Outbound policies"), policies(w.outbound))),
          h("h2", {}, "Rejected config in its namespace"),
          table("rejected", ["object", "where", "message"],
            w.rejected.map(r => [`${r.kind ?? "?"} ${r.namespace ?? ""}/${r.name ?? ""}`, `${r.file}:${r.line}`, r.message])));
        replace(body, content);
      },
    };
  }

  function config(main) {
    const body = h("div", { id: "config" }, h("p", { class: "muted" }, "Loading…"));
    main.append(h("h1", {}, "Mesh config"), body);
    return {
      update(c) {
        const where = o => `${o.file}:${o.line}`;
        replace(body, h("div", {},
          h("p", { class: "muted" }, `Config version ${c.version}: ${c.accepted.length} accepted, ` +
            `${c.rejected.length} rejected, ${c.warnings.length} with warnings.`),
          h("h2", {}, "Rejected"),
          table("rejected", ["kind", "object", "where", "message"],
            c.rejected.map(r => [r.kind ?? "?", `${r.namespace ?? ""}/${r.name ?? ""}`, where(r), h("span", { class: "error" }, r.message)])),
          h("h2", {}, "Warnings"),
          table("warnings", ["kind", "object", "where", "message"],
            c.warnings.map(r => [r.kind ?? "?", `${r.namespace ?? ""}/${r.name ?? ""}`, where(r), r.message])),
          h("h2", {}, "Accepted"),
          table("accepted", ["kind", "object", "api version", "where"],
            c.accepted.map(o => [o.kind, `${o.namespace}/${o.name}`, o.api_version, where(o)]))));
      },
    };
  }

  return { graph, workload, config };
})();
