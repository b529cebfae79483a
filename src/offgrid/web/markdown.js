// Markdown to DOM nodes, safely: model output only ever becomes text nodes and a fixed set
// of elements built here (never innerHTML), so "<script>" or "<img onerror=…>" in a reply
// shows as those characters. Covers what chat models write: fenced code, inline code,
// headings, lists, quotes, bold, italics and http(s) links.

const el = (tag, cls) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
};

const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_(?![A-Za-z0-9])|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;

function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[1]) {
      const code = el("code");
      code.textContent = m[2];
      parent.append(code);
    } else if (m[3] || m[4]) {
      const b = el("strong");
      inline(b, m[3] || m[4]);
      parent.append(b);
    } else if (m[5] || m[6]) {
      const i = el("em");
      inline(i, m[5] || m[6]);
      parent.append(i);
    } else {
      const a = el("a");
      a.href = m[8];
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      a.textContent = m[7];
      parent.append(a);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function paragraph(parent, lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    inline(p, line);
  });
  parent.append(p);
}

// Render `text` into `root` (its children are replaced).
export function renderMarkdown(root, text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) paragraph(out, para);
    para = [];
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)/);
    if (fence) {
      flush();
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      const pre = el("pre", "code-block");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    const quote = line.match(/^>\s?(.*)$/);
    if (!line.trim()) {
      if (para.length) paragraph(out, para);
      para = []; // a list goes on across blank lines
    } else if (heading) {
      flush();
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);
      inline(h, heading[2]);
      out.append(h);
    } else if (item) {
      if (para.length) {
        paragraph(out, para);
        para = [];
        list = null;
      }
      const ordered = /\d/.test(item[1]);
      if (!list || list.ordered !== ordered) {
        list = { node: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && parseInt(item[1], 10) !== 1) list.node.start = parseInt(item[1], 10);
        out.append(list.node);
      }
      const li = el("li");
      inline(li, item[2]);
      list.node.append(li);
    } else if (quote) {
      flush();
      const q = el("blockquote");
      inline(q, quote[1]);
      out.append(q);
    } else {
      list = null;
      para.push(line);
    }
  }
  flush();
  root.replaceChildren(out);
}
