// Line and bar charts on <canvas>, small enough to read in one go.
//
// A chart is drawn into a container element: the container gets a <canvas>, a
// legend, and a `data-series` attribute holding exactly the numbers drawn (JSON),
// so tests and curious people can read the plotted values back from the page.

const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
  "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

// Round numbers for axis ticks: about `count` of them between lo and hi.
function ticks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw)))
    .find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function label(v) {
  return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0)
    ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// A canvas sized to its container, sharp on high-density screens.
function canvasIn(container, height) {
  let canvas = container.querySelector("canvas");
  if (!canvas) {
    canvas = document.createElement("canvas");
    container.prepend(canvas);
  }
  const width = Math.max(container.clientWidth, 300);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function legend(container, names, styles) {
  let box = container.querySelector(".legend");
  if (!box) {
    box = document.createElement("div");
    box.className = "legend";
    container.append(box);
  }
  box.replaceChildren(...names.map((name, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = styles[i].color;
    if (styles[i].dashed) swatch.className = "dashed";
    item.append(swatch, name);
    return item;
  }));
}

function axes(ctx, box, xs, ys, xTitle) {
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  ctx.font = "11px sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of ticks(ys.lo, ys.hi, 5)) {
    const y = box.y(v);
    ctx.beginPath();
    ctx.moveTo(box.left, y);
    ctx.lineTo(box.right, y);
    ctx.stroke();
    ctx.fillText(label(v), box.left - 4, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const v of ticks(xs.lo, xs.hi, 8)) {
    ctx.fillText(label(v), box.x(v), box.bottom + 4);
  }
  if (xTitle) ctx.fillText(xTitle, (box.left + box.right) / 2, box.bottom + 18);
  ctx.strokeStyle = "#888";
  ctx.strokeRect(box.left, box.top, box.right - box.left, box.bottom - box.top);
}

// Lines over time. `series`: [{name, values: [number...], dashed?}], each value
// at x = its index (+ `xOffset`). `yRange` fixes the axis (e.g. [0, 1] for
// probabilities); `xMax` keeps the axis still while a stream fills it.
export function lineChart(container, series, options = {}) {
  const { height = 260, yRange = null, xMax = null, xTitle = "timestep" } = options;
  const { ctx, width } = canvasIn(container, height);
  const all = series.flatMap((s) => s.values).filter(Number.isFinite);
  let lo = yRange ? yRange[0] : Math.min(...all);
  let hi = yRange ? yRange[1] : Math.max(...all);
  if (!all.length && !yRange) [lo, hi] = [0, 1];
  if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
  const pad = yRange ? 0 : (hi - lo) * 0.05;
  const ys = { lo: lo - pad, hi: hi + pad };
  const longest = Math.max(1, ...series.map((s) => s.values.length));
  const xs = { lo: 0, hi: Math.max(1, (xMax ?? longest) - 1) };
  const box = { left: 48, right: width - 10, top: 10, bottom: height - 34 };
  box.x = (v) => box.left + ((v - xs.lo) / (xs.hi - xs.lo)) * (box.right - box.left);
  box.y = (v) => box.bottom - ((v - ys.lo) / (ys.hi - ys.lo)) * (box.bottom - box.top);
  axes(ctx, box, xs, ys, xTitle);
  const styles = series.map((s, i) => ({ color: s.color || color(i), dashed: !!s.dashed }));
  series.forEach((s, i) => {
    ctx.strokeStyle = styles[i].color;
    ctx.lineWidth = s.dashed ? 1 : 1.75;
    ctx.setLineDash(s.dashed ? [4, 3] : []);
    ctx.beginPath();
    let penDown = false;  // a gap (NaN) lifts the pen; a lone point gets a dot
    s.values.forEach((v, t) => {
      if (!Number.isFinite(v)) { penDown = false; return; }
      const lone = !Number.isFinite(s.values[t - 1]) && !Number.isFinite(s.values[t + 1]);
      if (lone) {
        ctx.moveTo(box.x(t) + 2.5, box.y(v));
        ctx.arc(box.x(t), box.y(v), 2.5, 0, 2 * Math.PI);
      } else if (penDown) {
        ctx.lineTo(box.x(t), box.y(v));
      } else {
        ctx.moveTo(box.x(t), box.y(v));
      }
      penDown = true;
    });
    ctx.stroke();
  });
  ctx.setLineDash([]);
  legend(container, series.map((s) => s.name), styles);
  const plotted = { kind: "lines", series: series.map((s) => ({ name: s.name, values: s.values })) };
  container.dataset.series = JSON.stringify(plotted);
  return plotted;
}

// Horizontal bars, one per label (final class probabilities), values in [0, 1].
export function barChart(container, labels, values, options = {}) {
  const { highlight = -1 } = options;
  const rowHeight = 26;
  const height = labels.length * rowHeight + 12;
  const { ctx, width } = canvasIn(container, height);
  const left = 110;
  const right = width - 70;
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "middle";
  labels.forEach((name, i) => {
    const y = 6 + i * rowHeight;
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.fillText(name, left - 8, y + rowHeight / 2);
    ctx.fillStyle = i === highlight ? color(i) : "#bbb";
    ctx.fillRect(left, y + 4, Math.max(1, (right - left) * values[i]), rowHeight - 8);
    ctx.fillStyle = "#333";
    ctx.textAlign = "left";
    ctx.fillText(values[i].toFixed(4), right + 6, y + rowHeight / 2);
  });
  container.querySelector(".legend")?.remove();
  const plotted = { kind: "bars", labels, values };
  container.dataset.series = JSON.stringify(plotted);
  return plotted;
}

export function clearChart(container) {
  container.querySelector("canvas")?.remove();
  container.querySelector(".legend")?.remove();
  delete container.dataset.series;
}
