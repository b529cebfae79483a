// OffGrid's dashboard: chat, models, system. Plain modules, no build step, no outside
// resources: everything comes from this server's own API.
import { lineChart } from "/ui/static/charts.js";
import { renderMarkdown } from "/ui/static/markdown.js";

const $ = (sel, root = document) => root.querySelector(sel);
const make = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
};

function size(bytes) {
  if (bytes == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let n = bytes;
  let u = 0;
  while (n >= 1000 && u < units.length - 1) (n /= 1000), u++;
  return `${n.toFixed(u ? 1 : 0)} ${units[u]}`;
}

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function failure(resp) {
  let message = `HTTP ${resp.status}`;
  try {
    const body = await resp.json();
    message = body?.error?.message || message;
  } catch {}
  return new ApiError(resp.status, message, resp.headers.get("retry-after"));
}

// API keys: when the server asks for one (401), the page asks the person for it once and
// keeps it in this tab's sessionStorage (gone when the tab closes), sent with every call.
const KEY = "offgrid-api-key";
let asking = null; // one dialog for every call that was refused at the same time

function withKey(init) {
  const key = sessionStorage.getItem(KEY);
  if (!key) return init;
  return { ...init, headers: { ...(init.headers || {}), authorization: `Bearer ${key}` } };
}

function askKey(message) {
  asking ??= new Promise((resolve) => {
    const dialog = $("#key-dialog");
    $("#key-note").textContent = message;
    $("#api-key").value = "";
    dialog.addEventListener(
      "close",
      () => {
        asking = null;
        resolve($("#api-key").value.trim());
      },
      { once: true },
    );
    dialog.showModal();
  });
  return asking;
}

// fetch() with the key; asks for a key (again) while the server refuses the one it has.
async function call(path, init = {}) {
  let resp = await fetch(path, withKey(init));
  while (resp.status === 401) {
    const had = sessionStorage.getItem(KEY);
    const key = await askKey(had ? "That key was refused. Enter a valid API key." : "This server needs an API key.");
    if (!key) return resp;
    sessionStorage.setItem(KEY, key);
    resp = await fetch(path, withKey(init));
  }
  return resp;
}

async function api(path, options = {}) {
  const init = { ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "content-type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const resp = await call(path, init);
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

// Server-sent events from a fetch response: yields each parsed `data:` payload.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        try {
          yield JSON.parse(data);
        } catch {}
      }
    }
  }
}

function humanError(err) {
  if (err.status === 429) return `The model is busy and its queue is full. Try again${err.retryAfter ? ` in ${err.retryAfter} s` : " shortly"}. (${err.message})`;
  if (err.status === 503) return `The model is not available right now: ${err.message}`;
  if (err.status === 404) return err.message;
  if (err.status >= 500) return `The engine failed: ${err.message}`;
  if (err instanceof TypeError) return "The OffGrid server cannot be reached. Is it running?";
  return err.message;
}

// ---- theme ------------------------------------------------------------------------------
const THEME_KEY = "offgrid.theme";
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
}
applyTheme(localStorage.getItem(THEME_KEY) || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
$("#theme").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});

// ---- pages ------------------------------------------------------------------------------
const pages = { chat: () => chat.show(), models: () => models.show(), system: () => system.show() };
function route() {
  const name = location.hash.slice(1) in pages ? location.hash.slice(1) : "chat";
  for (const page of Object.keys(pages)) {
    $(`#page-${page}`).hidden = page !== name;
    $(`nav a[data-page=${page}]`).setAttribute("aria-current", page === name ? "page" : "false");
  }
  system.active = name === "system";
  document.body.classList.toggle("chat-page", name === "chat");
  pages[name]();
}
addEventListener("hashchange", route);

// ---- chat -------------------------------------------------------------------------------
const STORE = "offgrid.conversations";
const chat = {
  conversations: JSON.parse(localStorage.getItem(STORE) || "[]"),
  current: null,
  controller: null,
  modelIds: [],
  models: {}, // id → its /api/models row (capabilities, kind), where the server gives one
  image: null, // the data: URL of the image to send with the next message

  save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(this.conversations));
    } catch {
      // images can outgrow the storage quota: keep the conversations without them
      localStorage.setItem(STORE, JSON.stringify(this.conversations, (key, value) => (key === "image" ? undefined : value)));
    }
  },

  get conv() {
    return this.conversations.find((c) => c.id === this.current);
  },

  async show() {
    await this.loadModels();
    if (!this.conv) this.conversations.length ? this.open(this.conversations[0].id) : this.create();
    $("#prompt").focus();
  },

  async loadModels() {
    try {
      const [data, installed] = await Promise.all([api("/v1/models"), api("/api/models").catch(() => ({ models: [] }))]);
      this.models = Object.fromEntries(installed.models.map((m) => [m.id, m]));
      // embedding and rerank models do not chat
      this.modelIds = data.data.map((m) => m.id).filter((id) => !["embedding", "rerank"].includes(this.models[id]?.kind));
    } catch (err) {
      $("#model-state").textContent = humanError(err);
    }
    const select = $("#model");
    const keep = this.conv?.model || select.value;
    select.replaceChildren(...this.modelIds.map((id) => Object.assign(make("option", id), { value: id })));
    if (this.modelIds.includes(keep)) select.value = keep;
    if (!this.modelIds.length) $("#model-state").textContent = "No model installed: see the Models page.";
    this.offerAttach();
  },

  // The attach button, for a model that sees images.
  offerAttach() {
    const capabilities = this.models[$("#model").value]?.capabilities;
    const vision = Array.isArray(capabilities) && capabilities.includes("vision");
    $("#attach").hidden = !vision;
    if (!vision) this.attach(null);
  },

  attach(url) {
    this.image = url;
    $("#attachment").hidden = !url;
    $("#attachment img")?.remove();
    if (url) $("#attachment").prepend(Object.assign(make("img"), { src: url, alt: "Image to send" }));
    else $("#image-input").value = "";
  },

  create() {
    const conv = {
      id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()),
      title: "New chat",
      model: $("#model").value,
      system: "",
      temperature: 0.7,
      maxTokens: 512,
      messages: [],
    };
    this.conversations.unshift(conv);
    this.save();
    this.open(conv.id);
  },

  open(id) {
    this.current = id;
    const conv = this.conv;
    if (conv.model && this.modelIds.includes(conv.model)) $("#model").value = conv.model;
    this.offerAttach();
    $("#system-prompt").value = conv.system || "";
    $("#temperature").value = conv.temperature ?? 0.7;
    $("#max-tokens").value = conv.maxTokens ?? 512;
    this.renderList();
    this.renderMessages();
    document.body.classList.remove("sidebar-open");
  },

  renderList() {
    const list = $("#conversations");
    list.replaceChildren();
    for (const conv of this.conversations) {
      const li = make("li", undefined, conv.id === this.current ? "current" : "");
      const open = make("button", conv.title, "link title");
      open.addEventListener("click", () => this.open(conv.id));
      const rename = make("button", "✎", "icon small");
      rename.setAttribute("aria-label", `Rename ${conv.title}`);
      rename.addEventListener("click", () => this.rename(li, conv));
      const remove = make("button", "✕", "icon small");
      remove.setAttribute("aria-label", `Delete ${conv.title}`);
      remove.addEventListener("click", () => this.remove(conv.id));
      li.append(open, rename, remove);
      list.append(li);
    }
  },

  rename(li, conv) {
    const input = make("input");
    input.value = conv.title;
    input.setAttribute("aria-label", "Conversation name");
    const done = () => {
      conv.title = input.value.trim() || conv.title;
      this.save();
      this.renderList();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") done();
      if (e.key === "Escape") this.renderList();
    });
    input.addEventListener("blur", done);
    li.replaceChildren(input);
    input.focus();
    input.select();
  },

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    this.save();
    if (this.current === id) {
      this.current = null;
      this.conversations.length ? this.open(this.conversations[0].id) : this.create();
    } else this.renderList();
  },

  renderMessages() {
    const list = $("#messages");
    list.replaceChildren(...this.conv.messages.map((m) => this.messageNode(m)));
    list.scrollTop = list.scrollHeight;
  },

  messageNode(message) {
    const node = $("#message-template").content.firstElementChild.cloneNode(true);
    node.classList.add(message.role);
    if (message.error) node.classList.add("error");
    if (message.image) $(".bubble", node).prepend(Object.assign(make("img", undefined, "thumb"), { src: message.image, alt: "Attached image" }));
    $(".thinking", node).open = Boolean(message.streaming);
    this.fill(node, message);
    $(".copy", node).addEventListener("click", () => copy(message.content, $(".copy", node)));
    return node;
  },

  fill(node, message) {
    const content = $(".content", node);
    if (message.error) content.textContent = message.error;
    else if (message.role === "assistant") {
      if (message.content) renderMarkdown(content, message.content);
      else content.textContent = message.waiting || "…";
    } else content.textContent = message.content;
    $(".thinking", node).hidden = !message.reasoning;
    $(".reasoning", node).textContent = message.reasoning || "";
    $(".stats", node).textContent = message.stats || "";
    node.classList.toggle("streaming", Boolean(message.streaming));
  },

  settings() {
    const conv = this.conv;
    conv.model = $("#model").value;
    conv.system = $("#system-prompt").value;
    conv.temperature = Number($("#temperature").value);
    conv.maxTokens = Number($("#max-tokens").value);
    this.save();
  },

  async send(text) {
    const conv = this.conv;
    this.settings();
    if (!conv.model) return;
    if (!conv.messages.length) conv.title = text.slice(0, 40);
    conv.messages.push(this.image ? { role: "user", content: text, image: this.image } : { role: "user", content: text });
    this.attach(null);
    // OpenAI's shape: an image goes as an image_url part beside the text; reasoning stays out
    const wire = ({ role, content, image }) => ({
      role,
      content: image ? [{ type: "text", text: content }, { type: "image_url", image_url: { url: image } }] : content,
    });
    const history = conv.messages.filter((m) => !m.error).map(wire);
    const reply = { role: "assistant", content: "", streaming: true };
    conv.messages.push(reply);
    this.save();
    this.renderList();
    this.renderMessages();
    const node = $("#messages").lastElementChild;
    const body = {
      model: conv.model,
      messages: conv.system ? [{ role: "system", content: conv.system }, ...history] : history,
      temperature: conv.temperature,
      max_tokens: conv.maxTokens,
      stream: true,
      stream_options: { include_usage: true },
    };
    this.busy(true);
    this.controller = new AbortController();
    const began = performance.now();
    let first = null;
    let usage = null;
    let timings = null;
    let frame = 0;
    const paint = () => {
      frame = 0;
      this.fill(node, reply);
      const list = $("#messages");
      list.scrollTop = list.scrollHeight;
    };
    try {
      const loaded = await api("/api/ps").catch(() => ({ models: [] }));
      if (!loaded.models.some((m) => m.id === conv.model && m.state === "ready")) {
        reply.waiting = `Loading ${conv.model}… (the first request loads it into memory)`;
        paint();
      }
      const resp = await call("/v1/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: this.controller.signal,
      });
      if (!resp.ok) throw await failure(resp);
      for await (const event of events(resp)) {
        if (event.error) throw new ApiError(500, event.error.message);
        const delta = event.choices?.[0]?.delta || {};
        if (delta.content || delta.reasoning_content) {
          first ??= performance.now();
          reply.content += delta.content || "";
          if (delta.reasoning_content) reply.reasoning = (reply.reasoning || "") + delta.reasoning_content;
          frame ||= requestAnimationFrame(paint);
        }
        usage = event.usage || usage;
        timings = event.timings || timings;
      }
      reply.stats = this.stats(began, first, usage, timings);
    } catch (err) {
      if (err.name === "AbortError") {
        reply.stats = `${this.stats(began, first, usage, timings)} · stopped`;
      } else {
        reply.error = humanError(err);
      }
    } finally {
      cancelAnimationFrame(frame);
      delete reply.streaming;
      delete reply.waiting;
      if (!reply.content && !reply.error) reply.content = "";
      this.controller = null;
      this.busy(false);
      this.save();
      node.replaceWith(this.messageNode(reply));
      $("#messages").scrollTop = $("#messages").scrollHeight;
    }
  },

  stats(began, first, usage, timings) {
    if (first === null) return "no tokens";
    const end = performance.now();
    const tokens = usage?.completion_tokens ?? timings?.predicted_n;
    const perSecond = timings?.predicted_per_second ?? (tokens ? (tokens * 1000) / Math.max(1, end - first) : null);
    const parts = [];
    if (tokens != null) parts.push(`${tokens} tokens`);
    if (perSecond) parts.push(`${perSecond.toFixed(1)} tokens/s`);
    parts.push(`first token ${Math.round(first - began)} ms`);
    return parts.join(" · ");
  },

  busy(on) {
    $("#send").hidden = on;
    $("#stop").hidden = !on;
  },
};

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = make("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

$("#composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#prompt").value.trim();
  if (!text || chat.controller) return;
  $("#prompt").value = "";
  chat.send(text);
});
$("#prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("#composer").requestSubmit();
  }
});
$("#stop").addEventListener("click", () => chat.controller?.abort());
$("#new-chat").addEventListener("click", () => chat.create());
for (const id of ["#model", "#system-prompt", "#temperature", "#max-tokens"]) {
  $(id).addEventListener("change", () => chat.conv && chat.settings());
}
$("#model").addEventListener("change", () => chat.offerAttach());
$("#attach").addEventListener("click", () => $("#image-input").click());
$("#image-input").addEventListener("change", (e) => {
  const file = e.currentTarget.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.addEventListener("load", () => chat.attach(reader.result));
  reader.readAsDataURL(file);
});
$("#attachment button").addEventListener("click", () => chat.attach(null));
$("#settings-toggle").addEventListener("click", (e) => {
  const body = $("#settings-body");
  body.hidden = !body.hidden;
  e.currentTarget.setAttribute("aria-expanded", String(!body.hidden));
});
$("#toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));

// ---- models -----------------------------------------------------------------------------
const models = {
  async show() {
    await this.refresh();
    await this.peers();
    const running = await api("/api/pulls").catch(() => ({ pulls: [] }));
    for (const pull of running.pulls) if (!$(`#pull-${pull.id}`)) this.watch(pull, call(`/api/pulls/${pull.id}/events`));
  },

  async refresh() {
    const tbody = $("#models-table tbody");
    try {
      const data = await api("/api/models");
      tbody.replaceChildren(...data.models.map((m) => this.row(m)));
      $("#models-note").textContent = data.models.length ? "" : "No model installed yet.";
    } catch (err) {
      $("#models-note").textContent = humanError(err);
    }
  },

  row(m) {
    const tr = make("tr");
    const state = m.loaded ? "loaded" : "not loaded";
    for (const text of [m.id, size(m.size), m.quantization || "–", m.context_length ?? "–", size(m.memory?.cpu_ram_bytes), state]) {
      tr.append(make("td", String(text)));
    }
    tr.cells[5].className = m.loaded ? "ok" : "muted";
    const actions = make("td", undefined, "actions");
    const action = (label, fn, cls) => {
      const b = make("button", label, cls);
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await fn();
        } catch (err) {
          $("#models-note").textContent = humanError(err);
        }
        await this.refresh();
      });
      actions.append(b);
    };
    if (m.loaded) action("Unload", () => api(`/api/models/${encodeURIComponent(m.id)}/unload`, { method: "POST" }));
    else action("Load", () => api(`/api/models/${encodeURIComponent(m.id)}/load`, { json: {} }));
    action("Remove", async () => {
      if (confirm(`Remove ${m.id}? Its file is deleted.`)) {
        await api(`/api/models/${encodeURIComponent(m.id)}?force=true`, { method: "DELETE" });
      }
    }, "danger");
    tr.append(actions);
    return tr;
  },

  async peers() {
    const note = $("#peers-note");
    const table = $("#peer-models");
    try {
      const data = await api("/api/peers");
      const rows = [];
      for (const peer of data.peers) {
        for (const id of peer.load?.models || []) {
          const tr = make("tr");
          for (const text of [id, peer.name, peer.address]) tr.append(make("td", text));
          const td = make("td");
          const pull = make("button", "Pull", "primary");
          pull.addEventListener("click", () => this.pull({ peer: peer.name, model: id }));
          td.append(pull);
          tr.append(td);
          rows.push(tr);
        }
      }
      table.querySelector("tbody").replaceChildren(...rows);
      table.hidden = !rows.length;
      if (!data.enabled) note.textContent = "P2P is off on this server (OFFGRID_P2P=1 turns it on).";
      else if (!data.peers.length) note.textContent = "No paired peer yet: run `offgrid peers pair` on one node, then pair from the other.";
      else note.textContent = rows.length ? "" : "The paired peers have reported no model yet (they do every few seconds).";
    } catch (err) {
      note.textContent = humanError(err);
    }
  },

  async search(q, quant) {
    const note = $("#hub-note");
    note.textContent = "Searching…";
    const params = new URLSearchParams({ q, limit: "10" });
    if (quant) params.set("quant", quant);
    try {
      const data = await api(`/api/hub/search?${params}`);
      const rows = [];
      for (const hit of data.results) {
        for (const m of hit.models) {
          const tr = make("tr");
          const files = m.files.map((f) => f.name);
          for (const text of [hit.repo, files[0] + (files.length > 1 ? ` (+${files.length - 1} parts)` : ""), m.quantization || "?", size(m.size), m.fits ? "yes" : "no"]) {
            tr.append(make("td", text));
          }
          const td = make("td");
          const pull = make("button", "Pull", "primary");
          pull.addEventListener("click", () => this.pull({ repo: hit.repo, file: files[0] }));
          td.append(pull);
          tr.append(td);
          rows.push(tr);
        }
      }
      $("#hub-results tbody").replaceChildren(...rows);
      $("#hub-results").hidden = !rows.length;
      note.textContent = rows.length ? "" : "Nothing found.";
    } catch (err) {
      note.textContent = humanError(err);
    }
  },

  pull(body) {
    const resp = call("/api/pulls", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    this.watch({ id: null, model_id: body.file || body.repo || body.model }, resp);
  },

  async watch(pull, respPromise) {
    const li = make("li", undefined, "pull");
    const label = make("div", pull.model_id);
    const bar = make("progress");
    bar.max = 100;
    bar.value = pull.percent || 0;
    const line = make("div", "starting…", "muted small");
    const cancel = make("button", "Cancel", "link");
    li.append(label, bar, line, cancel);
    $("#pulls").prepend(li);
    let id = pull.id;
    if (id) li.id = `pull-${id}`;
    cancel.addEventListener("click", () => id && call(`/api/pulls/${id}`, { method: "DELETE" }));
    try {
      const resp = await respPromise;
      if (!resp.ok) throw await failure(resp);
      for await (const s of events(resp)) {
        id = s.id;
        li.id = `pull-${id}`;
        label.textContent = `${s.model_id} (${s.repo})`;
        bar.value = s.percent;
        const eta = s.eta_seconds != null ? ` · ${Math.round(s.eta_seconds)} s left` : "";
        const speed = s.bytes_per_second ? ` · ${size(s.bytes_per_second)}/s` : "";
        line.textContent = `${s.status} · ${size(s.completed)} of ${size(s.total)} (${s.percent}%)${speed}${eta}${s.message ? ` · ${s.message}` : ""}`;
        if (["done", "present", "failed", "cancelled"].includes(s.status)) {
          cancel.remove();
          if (s.status === "failed") li.classList.add("error");
          await this.refresh();
        }
      }
    } catch (err) {
      line.textContent = humanError(err);
      li.classList.add("error");
      cancel.remove();
    }
  },

  async import(source) {
    const out = $("#import-result");
    out.replaceChildren(make("li", `Importing ${source}…`));
    try {
      const data = await api("/api/models/import", { json: { source } });
      out.replaceChildren(...data.results.map((r) => make("li", `${r.status}: ${r.model_id}${r.detail ? ` — ${r.detail}` : ""}`, r.status === "refused" ? "error" : "")));
      await this.refresh();
    } catch (err) {
      out.replaceChildren(make("li", humanError(err), "error"));
    }
  },
};

$("#hub-search").addEventListener("submit", (e) => {
  e.preventDefault();
  models.search($("#hub-q").value.trim(), $("#hub-quant").value.trim());
});
$("#import").addEventListener("submit", (e) => {
  e.preventDefault();
  const path = $("#import-path").value.trim();
  if (path) models.import(path);
});

// ---- system -----------------------------------------------------------------------------
const system = {
  active: false,
  timer: null,
  previous: null,

  show() {
    clearTimeout(this.timer);
    this.poll();
  },

  async poll() {
    if (!this.active) return;
    try {
      this.render(await api("/api/stats"));
    } catch (err) {
      $("#cards").replaceChildren(make("p", humanError(err), "error"));
    }
    this.timer = setTimeout(() => this.poll(), 2000);
  },

  render(stats) {
    const m = stats.metrics;
    const sum = (family, key = "total") => Object.values(m[family] || {}).reduce((a, v) => a + (v[key] || 0), 0);
    const now = { time: m.time, requests: sum("requests"), tokens: sum("completion_tokens") };
    let rates = { requests: 0, tokens: 0 };
    if (this.previous && now.time > this.previous.time) {
      const dt = now.time - this.previous.time;
      rates = { requests: (now.requests - this.previous.requests) / dt, tokens: (now.tokens - this.previous.tokens) / dt };
    }
    this.previous = now;
    const s = stats.system;
    const ttftCount = sum("time_to_first_token_seconds", "count");
    const ttft = ttftCount ? (sum("time_to_first_token_seconds", "sum") / ttftCount) * 1000 : null;
    const cards = [
      ["CPU", `${s.cpu_percent.toFixed(0)} %`, `${s.cpu_cores} cores · load ${s.load_average.map((x) => x.toFixed(2)).join(" ")}`, s.cpu_percent / 100],
      ["RAM", `${size(s.ram_total - s.ram_available)} used`, `of ${size(s.ram_total)} · ${size(s.ram_available)} available`, 1 - s.ram_available / s.ram_total],
      ...s.gpus.map((g) => [`GPU ${g.index}`, `${size(g.total - g.free)} used`, `${g.name} · ${size(g.total)}`, 1 - g.free / g.total]),
      ...(s.gpus.length ? [] : [["GPU", "none", "CPU inference", null]]),
      ["Models disk", `${size(s.disk_free)} free`, `of ${size(s.disk_total)} · ${s.models_dir}`, 1 - s.disk_free / s.disk_total],
      ["Requests", `${rates.requests.toFixed(2)} /s`, `${now.requests} since start`, null],
      ["Tokens", `${rates.tokens.toFixed(1)} /s`, `${now.tokens} generated${ttft != null ? ` · first token ${ttft.toFixed(0)} ms avg` : ""}`, null],
    ];
    $("#cards").replaceChildren(
      ...cards.map(([title, big, small, fraction]) => {
        const card = make("div", undefined, "card");
        card.dataset.card = title;
        card.append(make("h3", title), make("div", big, "big"), make("div", small, "muted small"));
        if (fraction != null) {
          const meter = make("meter");
          meter.value = Math.max(0, Math.min(1, fraction));
          meter.high = 0.85;
          card.append(meter);
        }
        return card;
      }),
    );
    this.charts(stats.history?.points || [], s.ram_total);
    const engines = stats.engines.filter((e) => e.state !== "backoff");
    $("#engines tbody").replaceChildren(
      ...(engines.length
        ? engines.map((e) => {
            const tr = make("tr");
            for (const text of [e.id, e.state, size(e.ram_bytes), size(e.vram_bytes), e.parallel ? `${e.active_requests} / ${e.parallel}` : "–", (e.queued_requests ?? "–") + (e.waiting_for_cpu ? " (waiting for the CPU)" : e.draining ? " (draining)" : "")]) {
              tr.append(make("td", String(text)));
            }
            return tr;
          })
        : [(() => {
            const tr = make("tr");
            const td = make("td", "No model is loaded.", "muted");
            td.colSpan = 6;
            tr.append(td);
            return tr;
          })()]),
    );
  },

  // The last hour, as the server sampled it (so a reload keeps it).
  charts(points, ramTotal) {
    const times = points.map((p) => p.time);
    const series = (key) => points.map((p) => p[key]);
    $("#charts").replaceChildren(
      lineChart({ title: "Tokens/s", times, values: series("tokens_per_second"), format: (v) => `${v.toFixed(1)} /s` }),
      lineChart({ title: "Requests/min", times, values: series("requests_per_minute"), format: (v) => `${v.toFixed(1)} /min` }),
      lineChart({ title: "RAM used", times, values: series("ram_used_bytes"), format: size, ceiling: ramTotal }),
    );
  },
};

route();
