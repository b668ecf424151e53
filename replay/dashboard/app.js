// The tradeledger dashboard: reads the read-only API, draws the equity curve as
// SVG, and refreshes whenever the event stream announces a new record. No
// libraries and no network beyond the server that served this page.
"use strict";

const API = "/api/v1";
const SVG = "http://www.w3.org/2000/svg";
const query = new URLSearchParams(window.location.search);
const startingEquity = query.get("starting_equity") || "0";

const state = {
  position: 0,
  currency: null,
  curves: new Map(),
  refreshing: false,
  again: false,
  timer: null,
  known: new Set(),
  stream: null,
};

// helpers

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(text, digits = 2) {
  if (text === null || text === undefined) return "\u2013";
  const value = Number(text);
  if (!Number.isFinite(value)) return String(text);
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

function price(text) {
  if (text === null || text === undefined) return "\u2013";
  const value = Math.abs(Number(text));
  return number(text, value >= 1000 ? 2 : value >= 1 ? 4 : 6);
}

function percent(text) {
  return text === null || text === undefined ? "\u2013" : `${(Number(text) * 100).toFixed(2)}%`;
}

function sign(text) {
  const value = Number(text);
  return value > 0 ? "up" : value < 0 ? "down" : "";
}

function when(text) {
  return text ? text.replace("T", " ").slice(0, 16) : "\u2013";
}

function amountCell(text, digits = 2) {
  return el("td", { class: `num ${sign(text)}` }, number(text, digits));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function get(path) {
  const response = await fetch(API + path, {
    headers: { Accept: "application/json" },
    cache: "no-store",
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch (_) {
      // not JSON: keep the status
    }
    throw new Error(`${path}: ${message}`);
  }
  const position = Number(response.headers.get("X-Ledger-Position") || 0);
  return { body: await response.json(), position };
}

function problem(message) {
  const box = document.getElementById("problem");
  box.hidden = !message;
  box.textContent = message || "";
}

// rendering

function renderPnl(rows) {
  const box = document.getElementById("pnl");
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No realized PnL yet."));
    return;
  }
  box.replaceChildren(
    ...rows.map((row) =>
      el(
        "div",
        { class: "card", "data-currency": row.currency },
        el("div", { class: "ccy" }, `${row.currency} net`),
        el("div", { class: `net ${sign(row.net)}` }, number(row.net)),
        el(
          "dl",
          {},
          el("dt", {}, "gross"),
          el("dd", {}, number(row.gross)),
          el("dt", {}, "fees"),
          el("dd", {}, number(row.fees)),
          el("dt", {}, "funding"),
          el("dd", {}, number(row.funding)),
          el("dt", {}, "closed trades"),
          el("dd", {}, String(row.closed_trades)),
        ),
      ),
    ),
  );
}

function renderPerformance(figures) {
  const tbody = document.querySelector("#performance tbody");
  const note = document.getElementById("performance-note");
  note.textContent = figures.length
    ? `${figures[0].annualization_days}-day year, starting equity ${number(figures[0].starting_equity)}`
    : "";
  if (!figures.length) {
    fill(tbody, [el("tr", {}, el("td", { class: "muted" }, "No closed trades yet."))]);
    return;
  }
  const lines = [
    ["trades (W/L/BE)", (f) => `${f.trades} (${f.wins}/${f.losses}/${f.breakevens})`],
    ["win rate", (f) => percent(f.win_rate)],
    ["net", (f) => number(f.net), (f) => sign(f.net)],
    ["profit factor", (f) => number(f.profit_factor, 2)],
    ["expectancy", (f) => number(f.expectancy), (f) => sign(f.expectancy)],
    ["average win / loss", (f) => `${number(f.average_win)} / ${number(f.average_loss)}`],
    ["largest win / loss", (f) => `${number(f.largest_win)} / ${number(f.largest_loss)}`],
    ["average R / SQN", (f) => `${number(f.average_r, 2)} / ${number(f.sqn, 2)}`],
    ["ending equity", (f) => number(f.ending_equity)],
    [
      "max drawdown",
      (f) => `-${number(f.max_drawdown)}` + (f.max_drawdown_pct !== null ? ` (${percent(f.max_drawdown_pct)})` : ""),
      () => "down",
    ],
    ["Sharpe / Sortino", (f) => `${number(f.sharpe, 2)} / ${number(f.sortino, 2)}`],
    ["days", (f) => String(f.days)],
    ["longest losing streak", (f) => String(f.longest_losing_streak)],
    [
      "average holding",
      (f) =>
        f.average_holding_seconds === null ? "\u2013" : `${(Number(f.average_holding_seconds) / 3600).toFixed(2)} h`,
    ],
  ];
  const head = el("tr", {}, el("th", {}, ""), ...figures.map((f) => el("th", { class: "num" }, f.currency)));
  fill(tbody, [
    head,
    ...lines.map(([label, show, tone]) =>
      el(
        "tr",
        {},
        el("td", {}, label),
        ...figures.map((f) => el("td", { class: `num ${tone ? tone(f) : ""}` }, show(f))),
      ),
    ),
  ]);
}

function renderPositions(positions) {
  document.getElementById("open-count").textContent = `(${positions.length})`;
  const tbody = document.querySelector("#positions tbody");
  if (!positions.length) {
    fill(tbody, [el("tr", {}, el("td", { colspan: "9", class: "muted" }, "No open positions."))]);
    return;
  }
  const seen = state.known;
  fill(
    tbody,
    positions.map((p) =>
      el(
        "tr",
        { "data-trade-id": p.trade_id, class: seen.size && !seen.has(p.trade_id) ? "fresh" : null },
        el("td", {}, p.trade_id),
        el("td", {}, p.symbol),
        el("td", { class: p.side === "long" ? "up" : "down" }, p.side),
        el("td", { class: "num" }, number(p.quantity, 6)),
        el("td", { class: "num" }, price(p.average_entry)),
        el("td", { class: "num" }, price(p.stop_price)),
        el("td", { class: "num" }, price(p.target_price)),
        amountCell(p.realized_net),
        el("td", {}, when(p.opened_at)),
      ),
    ),
  );
  state.known = new Set(positions.map((p) => p.trade_id));
}

function renderTrades(page) {
  document.getElementById("closed-count").textContent = `(${page.total} in all)`;
  const tbody = document.querySelector("#trades tbody");
  if (!page.trades.length) {
    fill(tbody, [el("tr", {}, el("td", { colspan: "8", class: "muted" }, "No closed trades yet."))]);
    return;
  }
  fill(
    tbody,
    page.trades.map((t) =>
      el(
        "tr",
        { "data-trade-id": t.trade_id },
        el("td", {}, t.trade_id),
        el("td", {}, t.symbol),
        el("td", {}, t.side),
        amountCell(t.net),
        el("td", { class: "num" }, number(t.r, 2)),
        el("td", { class: t.outcome === "win" ? "up" : t.outcome === "loss" ? "down" : "" }, t.outcome),
        el("td", {}, t.close_reason),
        el("td", {}, when(t.closed_at)),
      ),
    ),
  );
}

function addToFeed(record) {
  const feed = document.getElementById("feed");
  feed.querySelector(".waiting")?.remove();
  const item = el(
    "li",
    { "data-position": String(record.position) },
    el("span", { class: "pos" }, `#${record.position}`),
    `${when(record.occurred_at)}  ${record.type}  ${record.stream_id}`,
  );
  feed.prepend(item);
  while (feed.children.length > 14) feed.lastElementChild.remove();
}

// the equity curve, per currency, in close-time order (the figures' own order)

async function closedTrades() {
  const trades = [];
  let offset = 0;
  for (;;) {
    const { body } = await get(`/trades?sort_by=closed_at&sort_order=asc&limit=1000&offset=${offset}`);
    trades.push(...body.trades);
    offset += body.trades.length;
    if (!body.trades.length || offset >= body.total) return trades;
  }
}

function curvesOf(trades) {
  const start = Number(startingEquity);
  const curves = new Map();
  for (const trade of trades) {
    let curve = curves.get(trade.currency);
    if (!curve) {
      curve = { points: [], equity: start, peak: start };
      curve.points.push({ time: Date.parse(trade.opened_at), equity: start, drawdown: 0, trade: null });
      curves.set(trade.currency, curve);
    }
    curve.equity += Number(trade.net);
    curve.peak = Math.max(curve.peak, curve.equity);
    curve.points.push({
      time: Date.parse(trade.closed_at),
      equity: curve.equity,
      drawdown: curve.peak - curve.equity,
      trade,
    });
  }
  return curves;
}

function chooseCurrency(curves) {
  const select = document.getElementById("currency");
  const names = [...curves.keys()].sort();
  if (!names.includes(state.currency)) {
    // the currency with the most closed trades first
    const busiest = [...curves.entries()].sort((a, b) => b[1].points.length - a[1].points.length);
    state.currency = busiest.length ? busiest[0][0] : null;
  }
  select.hidden = names.length < 2;
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  }
  select.value = state.currency || "";
}

function renderChart() {
  const chart = document.getElementById("chart");
  const curve = state.curves.get(state.currency);
  chart.replaceChildren();
  if (!curve) {
    chart.setAttribute("data-points", "0");
    chart.append(svg("text", { x: 500, y: 180, "text-anchor": "middle", class: "empty" }, "No closed trades yet."));
    return;
  }
  const points = curve.points;
  chart.setAttribute("data-points", String(points.length));
  const left = 78, right = 984, top = 22, equityBottom = 232, ddTop = 256, ddBottom = 330;
  let t0 = points[0].time, t1 = points[points.length - 1].time;
  if (t1 <= t0) { t0 -= 3600e3; t1 += 3600e3; }
  let lo = Math.min(...points.map((p) => p.equity));
  let hi = Math.max(...points.map((p) => p.equity));
  const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.01 || 1;
  lo -= pad; hi += pad;
  const deepest = Math.max(...points.map((p) => p.drawdown)) || 1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (right - left);
  const y = (v) => equityBottom - ((v - lo) / (hi - lo)) * (equityBottom - top);
  const yd = (d) => ddTop + (d / deepest) * (ddBottom - ddTop);

  chart.append(svg("text", { x: left, y: 14, class: "title" }, `Equity (${state.currency})`));
  for (let i = 0; i <= 4; i += 1) {
    const value = lo + ((hi - lo) * i) / 4;
    chart.append(svg("line", { x1: left, x2: right, y1: y(value), y2: y(value), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "label" }, number(value, 0)));
  }
  const start = Number(startingEquity);
  if (start >= lo && start <= hi) {
    chart.append(svg("line", { x1: left, x2: right, y1: y(start), y2: y(start), class: "baseline" }));
  }
  const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.time).toFixed(1)},${y(p.equity).toFixed(1)}`).join("");
  chart.append(
    svg("path", {
      d: `${line}L${x(points[points.length - 1].time).toFixed(1)},${equityBottom}L${x(points[0].time).toFixed(1)},${equityBottom}Z`,
      class: "equity-area",
    }),
  );
  chart.append(svg("path", { d: line, class: "equity", id: "equity-line" }));

  chart.append(svg("text", { x: left, y: ddTop - 6, class: "title" }, "Drawdown"));
  chart.append(svg("line", { x1: left, x2: right, y1: ddTop, y2: ddTop, class: "grid" }));
  chart.append(svg("line", { x1: left, x2: right, y1: ddBottom, y2: ddBottom, class: "grid" }));
  chart.append(svg("text", { x: left - 6, y: ddTop + 4, "text-anchor": "end", class: "label" }, "0"));
  chart.append(
    svg("text", { x: left - 6, y: ddBottom + 4, "text-anchor": "end", class: "label" }, `-${number(deepest, 0)}`),
  );
  const under = points.map((p) => `L${x(p.time).toFixed(1)},${yd(p.drawdown).toFixed(1)}`).join("");
  chart.append(
    svg("path", {
      d: `M${x(points[0].time).toFixed(1)},${ddTop}${under}L${x(points[points.length - 1].time).toFixed(1)},${ddTop}Z`,
      class: "drawdown",
      id: "drawdown-area",
    }),
  );
  for (let i = 0; i <= 4; i += 1) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const label = new Date(t).toISOString().replace("T", " ").slice(5, 16);
    chart.append(
      svg("text", { x: x(t), y: 350, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", class: "label" }, label),
    );
  }

  const cursor = svg("line", { y1: top, y2: ddBottom, class: "cursor", visibility: "hidden" });
  const tip = svg("g", { class: "tip", visibility: "hidden" });
  chart.append(cursor, tip);
  const overlay = svg("rect", { x: left, y: top, width: right - left, height: ddBottom - top, fill: "transparent" });
  chart.append(overlay);
  overlay.addEventListener("mousemove", (event) => {
    const box = chart.getBoundingClientRect();
    const at = t0 + (((event.clientX - box.left) * (1000 / box.width) - left) / (right - left)) * (t1 - t0);
    let best = points[0];
    for (const p of points) if (Math.abs(p.time - at) < Math.abs(best.time - at)) best = p;
    const px = x(best.time);
    cursor.setAttribute("x1", px);
    cursor.setAttribute("x2", px);
    cursor.setAttribute("visibility", "visible");
    const lines = [
      best.trade ? `${best.trade.trade_id} ${best.trade.symbol}` : "start",
      new Date(best.time).toISOString().replace("T", " ").slice(0, 16) + " UTC",
      best.trade ? `net ${number(best.trade.net)}` : "",
      `equity ${number(best.equity)}`,
      `drawdown ${number(best.drawdown)}`,
    ].filter(Boolean);
    const width = 190, height = 16 * lines.length + 8;
    const tx = px + width + 12 > right ? px - width - 8 : px + 8;
    tip.replaceChildren(svg("rect", { x: tx, y: top + 4, width, height, rx: 4 }));
    lines.forEach((text, i) => tip.append(svg("text", { x: tx + 8, y: top + 20 + i * 16 }, text)));
    tip.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    tip.setAttribute("visibility", "hidden");
  });
}

// loading and following

async function refresh() {
  if (state.refreshing) {
    state.again = true;
    return;
  }
  state.refreshing = true;
  try {
    const equity = encodeURIComponent(startingEquity);
    const [health, positions, pnl, performance, latest, closed] = await Promise.all([
      get("/health"),
      get("/positions"),
      get("/pnl"),
      get(`/performance?starting_equity=${equity}`),
      get("/trades?sort_by=closed_at&sort_order=desc&limit=10"),
      closedTrades(),
    ]);
    document.getElementById("location").textContent = health.body.location;
    document.getElementById("durability").textContent = `${health.body.store}: ${health.body.durability}`;
    renderPnl(pnl.body);
    renderPerformance(performance.body);
    renderPositions(positions.body);
    renderTrades(latest.body);
    state.curves = curvesOf(closed);
    chooseCurrency(state.curves);
    renderChart();
    state.position = Math.max(state.position, positions.position);
    document.getElementById("position").textContent = String(state.position);
    document.body.setAttribute("data-position", String(positions.position));
    problem(null);
  } catch (error) {
    problem(`Cannot load the book: ${error.message}`);
  } finally {
    state.refreshing = false;
    if (state.again) {
      state.again = false;
      refresh();
    }
  }
}

function soon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, 150);
}

function follow() {
  const live = document.getElementById("live");
  const stream = new EventSource(`${API}/stream?from=${state.position + 1}`);
  stream.onopen = () => {
    live.textContent = "live";
    live.className = "badge on";
  };
  stream.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "badge off";
  };
  stream.onmessage = (event) => {
    const record = JSON.parse(event.data);
    state.position = Math.max(state.position, record.position);
    document.getElementById("position").textContent = String(state.position);
    addToFeed(record);
    soon();
  };
  state.stream = stream;
}

document.getElementById("currency").addEventListener("change", (event) => {
  state.currency = event.target.value;
  renderChart();
});

refresh().then(follow);
