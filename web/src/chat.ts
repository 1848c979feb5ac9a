/**
 * The chat page: pick or start a thread, ask the agent, watch the run unfold.
 *
 * Everything on screen is drawn from the thread's events, in `seq` order, by
 * one `render` function; the client library guarantees each event once, so a
 * reload (which replays from the start) or a lost connection (which resumes
 * from the last `seq`) draws exactly the same page.
 */
import { AgentwireClient, type ConnectionState, type Envelope, type Subscription } from "./agentwire.js";
import { askForSecret } from "./dialog.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface ThreadEntry {
  id: string;
  title: string;
  used: number;
}

/** What the page has drawn, exposed for the browser tests. */
interface ChatDebug {
  seqs: number[];
  client: AgentwireClient | null;
}

const debug: ChatDebug = { seqs: [], client: null };
(window as unknown as { agentwireChat: ChatDebug }).agentwireChat = debug;

let token = "";
let client: AgentwireClient | null = null;
let subscription: Subscription | null = null;
let current: string | null = null;

const userInput = $<HTMLInputElement>("user");
const timeline = $<HTMLDivElement>("timeline");
const text = $<HTMLTextAreaElement>("text");
const send = $<HTMLButtonElement>("send");

function userName(): string {
  const fromUrl = new URLSearchParams(location.search).get("user");
  const name = fromUrl || localStorage.getItem("agentwire.user") || "guest";
  return name.replace(/[^\w.@-]/g, "").slice(0, 64) || "guest";
}

function threadsKey(): string {
  return `agentwire.threads.${userInput.value}`;
}

function loadThreads(): ThreadEntry[] {
  try {
    return JSON.parse(localStorage.getItem(threadsKey()) ?? "[]") as ThreadEntry[];
  } catch {
    return [];
  }
}

function saveThread(id: string, title?: string): void {
  const threads = loadThreads().filter((t) => t.id !== id);
  const old = loadThreads().find((t) => t.id === id);
  threads.unshift({ id, title: title ?? old?.title ?? "New conversation", used: Date.now() });
  localStorage.setItem(threadsKey(), JSON.stringify(threads.slice(0, 50)));
  drawThreadList();
}

function forgetThread(id: string): void {
  localStorage.setItem(threadsKey(), JSON.stringify(loadThreads().filter((t) => t.id !== id)));
  if (id === current) {
    subscription?.unsubscribe();
    subscription = null;
    current = null;
    clearTimeline();
    text.disabled = true;
    send.disabled = true;
    $<HTMLDivElement>("empty").hidden = false;
    history.replaceState(null, "", location.pathname + location.search);
  }
  drawThreadList();
}

/** Deletes a thread on the server (everything in it, for every tab); asks once more first. */
function deleteButton(t: ThreadEntry): HTMLButtonElement {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "delete-thread";
  button.textContent = "×";
  button.title = `Delete “${t.title}”`;
  button.setAttribute("aria-label", button.title);
  let armed = false;
  button.onclick = async () => {
    if (!armed) {
      armed = true;
      button.textContent = "delete?";
      button.classList.add("armed");
      setTimeout(() => {
        armed = false;
        button.textContent = "×";
        button.classList.remove("armed");
      }, 4000);
      return;
    }
    try {
      await api(`/v1/threads/${t.id}`, undefined, "DELETE");
      forgetThread(t.id);
    } catch (e) {
      // Already gone elsewhere: nothing left to delete.
      if ((e as ApiFailure).status === 404) forgetThread(t.id);
      else timeline.append(el("div", "notice", `could not delete: ${(e as Error).message}`));
    }
  };
  return button;
}

function drawThreadList(): void {
  const list = $<HTMLUListElement>("thread-list");
  list.replaceChildren(
    ...loadThreads().map((t) => {
      const li = document.createElement("li");
      li.dataset.thread = t.id;
      const a = document.createElement("a");
      a.href = `#${t.id}`;
      a.textContent = t.title;
      a.title = t.id;
      if (t.id === current) li.classList.add("active");
      li.append(a, deleteButton(t));
      return li;
    }),
  );
}

async function fetchToken(): Promise<string> {
  const given = new URLSearchParams(location.search).get("token") ?? sessionStorage.getItem("agentwire.token");
  if (given) return given;
  const resp = await fetch(`/dev/token?user=${encodeURIComponent(userInput.value)}`);
  if (resp.ok) return ((await resp.json()) as { token: string }).token;
  return askForSecret("agentwire.token");
}

/** A refused request: the server's message, and the status. */
class ApiFailure extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function api(path: string, body: unknown, method = "POST"): Promise<Record<string, unknown>> {
  const resp = await fetch(path, {
    method,
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await resp.json().catch(() => ({}))) as Record<string, unknown>;
  if (!resp.ok) {
    const error = json.error as { message?: string } | undefined;
    throw new ApiFailure(error?.message ?? `HTTP ${resp.status}`, resp.status);
  }
  return json;
}

function showState(state: ConnectionState, detail?: string): void {
  const conn = $<HTMLDivElement>("conn");
  conn.dataset.state = state;
  conn.textContent = state === "open" ? "live" : state === "connecting" ? "connecting…" : `offline${detail ? ` · ${detail}` : ""}`;
}

// ---- drawing a thread from its events ------------------------------------------------------

interface RunView {
  root: HTMLElement;
  status: HTMLElement;
  steps: HTMLElement;
  answer: HTMLElement;
  tools: Map<string, HTMLElement>;
  /** Input requests still open, by request id. */
  inputs: Map<string, HTMLElement>;
}

const runs = new Map<string, RunView>();

function el(tag: string, className: string, textContent?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (textContent !== undefined) node.textContent = textContent;
  return node;
}

function short(value: unknown): string {
  if (value === undefined || value === null) return "";
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s.length > 400 ? `${s.slice(0, 400)}…` : s;
}

function runView(e: Envelope): RunView {
  let view = runs.get(e.run_id);
  if (view) return view;
  const root = el("article", "run");
  root.dataset.run = e.run_id;
  const head = el("div", "run-head");
  const name = el("span", "agent-name", "agent");
  const status = el("span", "status running", "running");
  head.append(name, status);
  const steps = el("div", "steps");
  const answer = el("div", "answer");
  root.append(head, steps, answer);
  timeline.append(root);
  view = { root, status, steps, answer, tools: new Map(), inputs: new Map() };
  runs.set(e.run_id, view);
  return view;
}

function setStatus(view: RunView, status: "running" | "completed" | "error", label: string): void {
  view.status.className = `status ${status}`;
  view.status.textContent = label;
}

function mark(node: HTMLElement, e: Envelope): HTMLElement {
  node.dataset.seq = String(e.seq);
  node.dataset.event = e.event;
  return node;
}

// ---- input requests: the user answers back ---------------------------------------------------------

type Answer = { approved?: boolean; text?: string; choice?: string };

/** Sends the answer; the `input_received` it becomes redraws every tab, this one included. */
async function answerInput(box: HTMLElement, runId: string, requestId: string, answer: Answer): Promise<void> {
  if (!current) return;
  box.querySelectorAll("button, input").forEach((c) => ((c as HTMLButtonElement).disabled = true));
  try {
    await api(`/v1/threads/${current}/inputs/${encodeURIComponent(requestId)}`, { ...answer, run_id: runId });
  } catch (e) {
    // 409: answered in another tab, or lapsed; its event is on its way.
    if ((e as ApiFailure).status !== 409) {
      box.querySelectorAll("button, input").forEach((c) => ((c as HTMLButtonElement).disabled = false));
      box.append(el("span", "input-error", `could not answer: ${(e as Error).message}`));
    }
  }
}

function button(label: string, className: string, onClick: () => void): HTMLButtonElement {
  const b = el("button", className, label) as HTMLButtonElement;
  b.type = "button";
  b.onclick = onClick;
  return b;
}

/** An open request: the question, and what answers it (buttons, or a field). */
function inputBox(e: Extract<Envelope, { event: "input_requested" }>): HTMLElement {
  const d = e.data;
  const box = mark(el("div", "step input"), e);
  box.dataset.request = d.request_id;
  box.dataset.kind = d.kind;
  box.dataset.state = "open";
  box.append(el("span", "input-prompt", d.prompt));
  if (d.kind === "approval") {
    const tool = el("div", "input-tool");
    tool.append(el("span", "tool-name", d.tool_name ?? "tool"), el("code", "tool-args", short(d.arguments)));
    box.append(tool);
  }
  const controls = el("div", "input-controls");
  const send = (answer: Answer) => void answerInput(box, e.run_id, d.request_id, answer);
  if (d.kind === "approval") {
    controls.append(
      button("Approve", "primary approve", () => send({ approved: true })),
      button("Deny", "deny", () => send({ approved: false })),
    );
  } else if (d.kind === "choice") {
    for (const option of d.options ?? []) controls.append(button(option, "choice", () => send({ choice: option })));
  } else {
    const field = document.createElement("input");
    field.className = "input-text";
    field.setAttribute("aria-label", d.prompt);
    const reply = () => send({ text: field.value });
    field.onkeydown = (ev) => {
      if (ev.key === "Enter") reply();
    };
    controls.append(field, button("Reply", "primary reply", reply));
  }
  box.append(controls);
  if (d.expires_at) {
    const by = new Date(d.expires_at).toLocaleTimeString();
    box.append(el("span", "input-expires", `answer by ${by}`));
  }
  return box;
}

/** What was decided, in place of the controls. */
function decided(box: HTMLElement, state: "answered" | "timed_out" | "closed", text: string): void {
  box.dataset.state = state;
  box.querySelector(".input-controls")?.remove();
  box.querySelector(".input-expires")?.remove();
  box.querySelector(".input-error")?.remove();
  box.append(el("span", "input-decision", text));
}

function describe(d: Extract<Envelope, { event: "input_received" }>["data"]): string {
  const a = d.answer;
  let said = `replied “${a?.text ?? ""}”`;
  if (!a) said = "no answer";
  else if (a.approved !== undefined) said = a.approved ? "approved" : "denied";
  else if (a.choice !== undefined) said = `chose “${a.choice}”`;
  const note = a?.message ? ` · ${a.message}` : "";
  return d.source === "timeout" ? `no answer in time: ${said}` : `${said}${d.user_id ? ` by ${d.user_id}` : ""}${note}`;
}

/** A run's end closes what it still asked. */
function closeInputs(view: RunView): void {
  for (const box of view.inputs.values()) decided(box, "closed", "closed: the run ended");
  view.inputs.clear();
}

function render(e: Envelope): void {
  $<HTMLDivElement>("empty").hidden = true;
  debug.seqs.push(e.seq);
  if (e.event === "user_message") {
    const view = runView(e);
    const bubble = mark(el("div", "bubble user", e.data.text), e);
    // Sent while another run went on: it waits its turn (its run shows once it starts).
    if (e.data.queued) bubble.dataset.queued = "true";
    view.root.before(bubble);
    if (current && loadThreads().find((t) => t.id === current)?.title === "New conversation") {
      saveThread(current, e.data.text.slice(0, 60));
    }
    return;
  }
  const view = runView(e);
  switch (e.event) {
    case "agent_started":
      (view.root.querySelector(".agent-name") as HTMLElement).textContent = e.data.agent_name;
      view.root.dataset.started = String(e.seq);
      break;
    case "agent_thinking":
      view.steps.append(mark(el("div", "step thinking", e.data.thought), e));
      break;
    case "tool_executing": {
      const row = mark(el("div", "step tool pending"), e);
      row.append(el("span", "tool-name", e.data.tool_name), el("code", "tool-args", short(e.data.args)), el("span", "spinner"));
      view.tools.set(e.data.tool_call_id, row);
      view.steps.append(row);
      break;
    }
    case "tool_completed": {
      const row = view.tools.get(e.data.tool_call_id);
      if (!row) break;
      row.classList.remove("pending");
      row.querySelector(".spinner")?.remove();
      const failed = e.data.error !== undefined && e.data.error !== null;
      row.classList.add(failed ? "failed" : "done");
      const outcome = mark(el("span", "tool-result", failed ? `✗ ${short(e.data.error)}` : `→ ${short(e.data.result)}`), e);
      row.append(outcome);
      if (e.data.duration_ms !== undefined) row.append(el("span", "duration", `${e.data.duration_ms} ms`));
      break;
    }
    case "agent_message": {
      let part = view.answer.querySelector(`[data-message="${CSS.escape(e.data.message_id)}"]`) as HTMLElement | null;
      if (!part) {
        part = el("p", "message");
        part.dataset.message = e.data.message_id;
        view.answer.append(part);
      }
      const piece = mark(el("span", "delta", e.data.delta), e);
      part.append(piece);
      break;
    }
    case "input_requested": {
      const box = inputBox(e);
      view.inputs.set(e.data.request_id, box);
      view.steps.append(box);
      setStatus(view, "running", "waiting for you");
      break;
    }
    case "input_received": {
      const box = view.inputs.get(e.data.request_id);
      if (!box) break;
      view.inputs.delete(e.data.request_id);
      decided(box, e.data.source === "timeout" ? "timed_out" : "answered", describe(e.data));
      if (view.inputs.size === 0) setStatus(view, "running", "running");
      break;
    }
    case "agent_completed":
      mark(view.root, e);
      closeInputs(view);
      setStatus(view, "completed", e.data.duration_ms !== undefined ? `done in ${e.data.duration_ms} ms` : "done");
      break;
    case "agent_error":
      mark(view.root, e);
      closeInputs(view);
      setStatus(view, "error", e.data.code);
      view.answer.append(el("p", "error-text", e.data.message));
      break;
  }
  timeline.scrollTop = timeline.scrollHeight;
}

function clearTimeline(): void {
  runs.clear();
  debug.seqs = [];
  timeline.querySelectorAll(".run, .bubble").forEach((n) => n.remove());
}

// ---- choosing threads and sending ----------------------------------------------------------------

function open(threadId: string): void {
  if (!client || threadId === current) return;
  subscription?.unsubscribe();
  clearTimeline();
  current = threadId;
  saveThread(threadId);
  text.disabled = false;
  send.disabled = false;
  $<HTMLDivElement>("empty").hidden = false;
  subscription = client.subscribe(threadId, {
    onEvent: render,
    onReset: () => clearTimeline(),
    onError: (code, message) => {
      timeline.append(el("div", "notice", `${code}: ${message}`));
      // Deleted (here, in another tab, or by an operator): it no longer belongs on the page.
      if (code === "not_found") forgetThread(threadId);
    },
  });
  text.focus();
}

async function newThread(): Promise<void> {
  const created = await api("/v1/threads", {});
  location.hash = String(created.thread_id);
}

async function submit(ev: Event): Promise<void> {
  ev.preventDefault();
  const message = text.value.trim();
  if (!message || !current) return;
  text.value = "";
  try {
    await api(`/v1/threads/${current}/messages`, { text: message });
  } catch (e) {
    timeline.append(el("div", "notice", `could not send: ${(e as Error).message}`));
  }
}

async function start(): Promise<void> {
  userInput.value = userName();
  localStorage.setItem("agentwire.user", userInput.value);
  userInput.onchange = () => {
    // A new name is a new user: their own token and their own threads.
    localStorage.setItem("agentwire.user", userInput.value);
    sessionStorage.removeItem("agentwire.token");
    location.href = location.pathname;
  };
  drawThreadList();
  token = await fetchToken();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  client = new AgentwireClient({
    url: `${scheme}//${location.host}/v1/ws`,
    token: async () => (token = await fetchToken()),
    onState: showState,
  });
  debug.client = client;
  $<HTMLButtonElement>("new-thread").onclick = () => void newThread();
  $<HTMLFormElement>("composer").onsubmit = (ev) => void submit(ev);
  text.onkeydown = (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $<HTMLFormElement>("composer").requestSubmit();
    }
  };
  const fromHash = () => {
    const id = decodeURIComponent(location.hash.slice(1));
    if (/^thread_[A-Za-z0-9]{1,64}$/.test(id)) open(id);
  };
  window.onhashchange = fromHash;
  fromHash();
  if (!current && loadThreads()[0]) location.hash = loadThreads()[0].id;
}

void start();
