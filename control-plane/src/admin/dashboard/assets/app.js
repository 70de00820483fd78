// meshd dashboard: routing between the pages (#/graph, #/workload/NS/NAME, #/config) and the
// live connection (server-sent events) that feeds the page shown.
"use strict";

(() => {
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  let source = null;

  function setStatus(text, cls) {
    status.textContent = text;
    status.className = `status ${cls}`;
  }

  function route() {
    if (source) source.close();
    while (main.firstChild) main.removeChild(main.firstChild);
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    let page, query;
    if (parts[0] === "workload" && parts.length >= 3) {
      page = Pages.workload(main, parts[1], parts[2]);
      query = `topics=&workload=${encodeURIComponent(parts[1] + "/" + parts[2])}`;
    } else if (parts[0] === "config") {
      page = Pages.config(main);
      query = "topics=config";
    } else {
      page = Pages.graph(main);
      query = "topics=graph";
    }
    for (const a of document.querySelectorAll("header nav a")) {
      a.classList.toggle("active", a.dataset.page === (parts[0] || "graph"));
    }
    source = new EventSource(`events?${query}`);
    setStatus("connecting…", "");
    source.onopen = () => setStatus("live", "live");
    source.onerror = () => setStatus("reconnecting…", "down");
    for (const kind of ["graph", "config", "workload"]) {
      source.addEventListener(kind, ev => {
        setStatus(`live · ${new Date().toLocaleTimeString()}`, "live");
        page.update(JSON.parse(ev.data));
      });
    }
  }

  window.addEventListener("hashchange", route);
  route();
})();
