// Lemur playground: one page over the public OpenAI API of this server
// (/v1/models, /v1/chat/completions with streaming), so it shows exactly what
// a client gets. No library, no build step. Model output is never parsed as
// HTML: every piece of text goes into the page through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "lemur-api-key";
const state = { messages: [], busy: null, models: [], turn: 0 }; // turn: bumped by Clear

// ---- HTTP ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function failure(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) askForKey();
  return new ApiError(response.status, message);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (!response.ok) throw await failure(response);
  return response;
}

// ---- Safe markdown: paragraphs, lists, fenced code, `code`, **bold** -------

function inline(parent, text) {
  const parts = text.split(/(`[^`\n]+`|\*\*[^*\n]+\*\*)/);
  for (const part of parts) {
    if (!part) continue;
    let node;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 2) {
      node = document.createElement("code");
      node.textContent = part.slice(1, -1);
    } else if (part.startsWith("**") && part.endsWith("**") && part.length > 4) {
      node = document.createElement("strong");
      node.textContent = part.slice(2, -2);
    } else {
      node = document.createTextNode(part);
    }
    parent.appendChild(node);
  }
}

function prose(parent, text) {
  for (const block of text.split(/\n{2,}/)) {
    if (!block.trim()) continue;
    const lines = block.split("\n");
    if (lines.every((l) => /^\s*[-*] /.test(l))) {
      const list = document.createElement("ul");
      for (const line of lines) {
        const item = document.createElement("li");
        inline(item, line.replace(/^\s*[-*] /, ""));
        list.appendChild(item);
      }
      parent.appendChild(list);
    } else {
      const p = document.createElement("p");
      lines.forEach((line, i) => {
        if (i) p.appendChild(document.createElement("br"));
        inline(p, line);
      });
      parent.appendChild(p);
    }
  }
}

function renderMarkdown(container, text) {
  container.replaceChildren();
  const fence = /```([\w+-]*)\n?([\s\S]*?)(```|$)/g;
  let last = 0;
  for (const m of text.matchAll(fence)) {
    prose(container, text.slice(last, m.index));
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    if (m[1]) code.dataset.lang = m[1];
    code.textContent = m[2];
    pre.appendChild(code);
    container.appendChild(pre);
    last = m.index + m[0].length;
  }
  prose(container, text.slice(last));
}

// ---- Messages on the page ----------------------------------------------------

function bubble(role) {
  const box = document.createElement("article");
  box.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  box.append(who, body, meta);
  $("messages").appendChild(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

function copyButton(box, text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "quiet copy";
  button.textContent = "Copy";
  button.addEventListener("click", () => navigator.clipboard.writeText(text()).catch(() => {}));
  box.querySelector(".who").appendChild(button);
}

function showError(message) {
  const box = bubble("error");
  box.setAttribute("role", "alert");
  box.querySelector(".body").textContent = message;
}

function redraw() {
  $("messages").replaceChildren();
  for (const m of state.messages) {
    const box = bubble(m.role);
    if (m.role === "assistant") {
      renderMarkdown(box.querySelector(".body"), m.content || "");
      for (const call of m.tool_calls || []) toolCard(box, call, true);
      copyButton(box, () => m.content || "");
    } else {
      box.querySelector(".body").textContent = m.content || "";
    }
  }
}

// ---- Tool calls --------------------------------------------------------------

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return text;
  }
}

function toolCard(box, call, answered) {
  const card = document.createElement("div");
  card.className = "tool-card";
  const title = document.createElement("div");
  title.className = "tool-name";
  title.textContent = "call " + call.function.name;
  const args = document.createElement("pre");
  args.textContent = prettyArguments(call.function.arguments);
  card.append(title, args);
  if (!answered) {
    const result = document.createElement("textarea");
    result.className = "tool-result";
    result.rows = 2;
    result.placeholder = "Tool result for " + call.function.name;
    card.appendChild(result);
  }
  box.appendChild(card);
  return card;
}

function offerToolResults(box, calls) {
  const cards = calls.map((call) => toolCard(box, call, false));
  const button = document.createElement("button");
  button.type = "button";
  button.className = "continue";
  button.textContent = "Send tool results";
  button.addEventListener("click", () => {
    if (state.busy) return;
    button.remove();
    calls.forEach((call, i) => {
      const content = cards[i].querySelector("textarea").value;
      state.messages.push({ role: "tool", tool_call_id: call.id, content });
    });
    redraw();
    runTurn();
  });
  box.appendChild(button);
}

// ---- The request -------------------------------------------------------------

function parsed(id, what) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(0, what + " is not valid JSON: " + e.message);
  }
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.messages);
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top_p"),
    max_tokens: number("max_tokens"),
    seed: number("seed"),
  };
  const stop = $("stop").value.split("\n").filter((s) => s.length);
  if (stop.length) body.stop = stop;
  const tools = parsed("tools", "tools");
  if (tools) {
    body.tools = tools;
    const name = $("tool_name").value.trim();
    body.tool_choice = name ? { type: "function", function: { name } } : $("tool_choice").value;
    if (!$("parallel_tool_calls").checked) body.parallel_tool_calls = false;
  }
  if ($("json_mode").checked) {
    const schema = parsed("schema", "JSON schema");
    body.response_format = schema
      ? { type: "json_schema", json_schema: { name: "reply", schema } }
      : { type: "json_object" };
  }
  return body;
}

function* eventData(event) {
  for (const line of event.split("\n")) {
    if (line.startsWith("data:")) yield line.slice(5).trim();
  }
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    // Events end with a blank line; a proxy may frame them with CRLF.
    buffer = (buffer + decoder.decode(value || new Uint8Array(), { stream: !done })).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0 || (done && buffer.trim())) {
      const event = end >= 0 ? buffer.slice(0, end) : buffer;
      buffer = end >= 0 ? buffer.slice(end + 2) : "";
      for (const data of eventData(event)) {
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
    if (done) return;
  }
}

function setBusy(controller) {
  state.busy = controller;
  $("send").disabled = !!controller;
  $("regenerate").disabled = !!controller;
  $("stop-button").disabled = !controller;
}

function applyDelta(reply, delta) {
  if (delta.content) reply.content += delta.content;
  for (const d of delta.tool_calls || []) {
    const call = (reply.calls[d.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
    if (d.id) call.id = d.id;
    if (d.function && d.function.name) call.function.name += d.function.name;
    if (d.function && d.function.arguments) call.function.arguments += d.function.arguments;
  }
}

function numbers(reply, t0, usage) {
  const parts = [];
  if (reply.firstAt) parts.push("TTFT " + Math.round(reply.firstAt - t0) + " ms");
  if (usage) {
    const seconds = (performance.now() - (reply.firstAt || t0)) / 1000;
    if (usage.completion_tokens > 1 && seconds > 0) {
      parts.push(((usage.completion_tokens - 1) / seconds).toFixed(1) + " tok/s");
    }
    parts.push(usage.prompt_tokens + " in / " + usage.completion_tokens + " out");
  }
  parts.push("finish: " + (reply.finish || "stopped"));
  return parts.join(" · ");
}

async function runTurn() {
  let body;
  try {
    body = requestBody();
  } catch (e) {
    showError(e.message);
    return;
  }
  const controller = new AbortController();
  const turn = state.turn;
  setBusy(controller);
  const box = bubble("assistant");
  box.classList.add("streaming");
  const reply = { content: "", calls: [], finish: null, firstAt: 0 };
  const t0 = performance.now();
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw await failure(response);
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new ApiError(0, chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (!reply.firstAt && (choice.delta.content || choice.delta.tool_calls)) reply.firstAt = performance.now();
        applyDelta(reply, choice.delta);
        if (choice.finish_reason) reply.finish = choice.finish_reason;
      }
      renderMarkdown(box.querySelector(".body"), reply.content);
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      box.remove();
      showError(e.message);
      setBusy(null);
      return;
    }
  }
  setBusy(null);
  if (turn !== state.turn) return; // cleared meanwhile: this reply belongs to no conversation
  box.classList.remove("streaming");
  const calls = reply.calls.filter(Boolean);
  if (reply.content || calls.length) {
    // Stopped before any token: nothing to keep (an empty assistant turn is no valid message).
    const message = { role: "assistant", content: reply.content || null };
    if (calls.length) message.tool_calls = calls;
    state.messages.push(message);
  }
  box.querySelector(".meta").textContent = numbers(reply, t0, usage);
  copyButton(box, () => reply.content);
  if (calls.length && reply.finish === "tool_calls") offerToolResults(box, calls);
}

// ---- Controls ----------------------------------------------------------------

function send(event) {
  event.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.busy) return;
  $("prompt").value = "";
  document.querySelectorAll("button.continue").forEach((b) => b.remove()); // those calls go unanswered now
  state.messages.push({ role: "user", content: text });
  bubble("user").querySelector(".body").textContent = text;
  runTurn();
}

function regenerate() {
  if (state.busy) return;
  while (state.messages.length && state.messages[state.messages.length - 1].role !== "user") state.messages.pop();
  if (!state.messages.length) return;
  redraw();
  runTurn();
}

function askForKey() {
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
}

async function loadModels() {
  $("status").textContent = "";
  try {
    const list = await (await api("/v1/models")).json();
    state.models = list.data;
    const select = $("model");
    select.replaceChildren();
    for (const m of list.data) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.parent ? m.id + " (adapter of " + m.parent + ")" : m.id;
      select.appendChild(option);
    }
  } catch (e) {
    $("status").textContent = e.message;
  }
}

function start() {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  $("stop-button").addEventListener("click", () => state.busy && state.busy.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", () => {
    if (state.busy) state.busy.abort();
    state.turn += 1;
    state.messages = [];
    redraw();
  });
  $("key-button").addEventListener("click", askForKey);
  $("key-form").addEventListener("submit", () => {
    const key = $("key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    loadModels();
  });
  if (window.matchMedia("(max-width: 700px)").matches) $("settings").open = false;
  fetch("/playground/config")
    .then((r) => r.json())
    .then((config) => {
      if (config.auth_required && !sessionStorage.getItem(KEY_STORE)) askForKey();
      else loadModels();
    })
    .catch(() => loadModels());
}

document.addEventListener("DOMContentLoaded", start);
