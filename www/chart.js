// A line chart on a canvas, drawn by hand (no chart library, no CDN): used for the page's
// loss curve and the dashboard's panels.

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 3 });

/** `x` short: 3 significant digits, thousands as K, M, B. */
function number(x) {
  return Math.abs(x) >= 1000 ? compact.format(x) : String(Number(x.toPrecision(3)));
}

/** Draws `points` ([x, y] pairs) on `canvas`, with the axes' ranges as labels. */
export function drawLine(canvas, points, { color = "#1f5fbf", label = "" } = {}) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const style = getComputedStyle(canvas);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = style.color;
  if (points.length === 0) {
    ctx.fillText("no data yet", 12, height / 2);
    return;
  }
  const pad = { left: 48, right: 12, top: 12, bottom: 24 };
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = style.color;
  ctx.globalAlpha = 0.4;
  ctx.beginPath();
  ctx.moveTo(pad.left, pad.top);
  ctx.lineTo(pad.left, height - pad.bottom);
  ctx.lineTo(width - pad.right, height - pad.bottom);
  ctx.stroke();
  ctx.globalAlpha = 1;
  ctx.fillText(number(y1), 4, pad.top + 8);
  ctx.fillText(number(y0), 4, height - pad.bottom);
  ctx.fillText(number(x0), pad.left, height - 6);
  const right = `${number(x1)}${label ? ` ${label}` : ""}`;
  ctx.fillText(right, width - pad.right - ctx.measureText(right).width, height - 6);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(sx(x), sy(y)) : ctx.lineTo(sx(x), sy(y))));
  ctx.stroke();
  if (points.length === 1) {
    ctx.fillStyle = color;
    ctx.fillRect(sx(points[0][0]) - 2, sy(points[0][1]) - 2, 4, 4);
  }
}
