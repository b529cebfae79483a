// Small line charts for the System page: inline SVG (no library, nothing inline that the
// page's CSP forbids), each labelled with its value now and its range.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 240;
const HEIGHT = 60;

const svg = (tag, attrs) => {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
};

// A card titled `title` charting `values` against `times` (seconds, oldest first), from 0 to
// `ceiling` (or the highest value); `format` writes a value as people read it.
export function lineChart({ title, times, values, format, ceiling }) {
  const card = document.createElement("div");
  card.className = "card chart";
  card.dataset.chart = title;
  const heading = document.createElement("h3");
  heading.textContent = title;
  const now = document.createElement("div");
  now.className = "big";
  now.textContent = values.length ? format(values[values.length - 1]) : "–";
  const top = Math.max(ceiling ?? 0, ...values) || 1;
  const start = times[0];
  const span = times[times.length - 1] - start;
  const xy = values.map((v, i) => {
    const x = span > 0 ? ((times[i] - start) / span) * WIDTH : WIDTH;
    return `${x.toFixed(1)},${(HEIGHT - (v / top) * HEIGHT).toFixed(1)}`;
  });
  const plot = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img" });
  plot.setAttribute("aria-label", `${title}: ${now.textContent} now`);
  if (xy.length) {
    const first = xy[0].split(",")[0];
    const last = xy[xy.length - 1].split(",")[0];
    plot.append(
      svg("polygon", { class: "area", points: `${first},${HEIGHT} ${xy.join(" ")} ${last},${HEIGHT}` }),
      svg("polyline", { class: "line", points: xy.join(" ") }),
    );
  }
  const minutes = Math.round(span / 60);
  const range = document.createElement("div");
  range.className = "muted small";
  range.textContent = values.length
    ? `min ${format(Math.min(...values))} · max ${format(Math.max(...values))} · ${minutes ? `last ${minutes} min` : "just now"}`
    : "no data yet";
  card.append(heading, now, plot, range);
  return card;
}
