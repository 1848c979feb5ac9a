/**
 * A publisher for agentwire on Node.js: what an agent does, as the events of
 * PROTOCOL §2, to every tab watching its thread.
 *
 * Runs are registered and events published over one WebSocket per publisher
 * (PROTOCOL §3.1), or a request each with `stream: false`. Every event gets an
 * `event_id` before its first attempt, so a retry after a `503` or a dropped
 * connection can never store it twice. Token deltas (`run.message`) do not
 * wait for their answers: those sent in the same turn of the event loop go in
 * one frame, and a refusal is thrown by the run's next awaited call.
 *
 * ```ts
 * const publisher = new Publisher({ baseUrl: "http://127.0.0.1:8080", publishKey });
 * await publisher.run({ threadId: "thread_a1", userId: "alice", agentName: "helper" }, async (run) => {
 *   await run.thinking("Looking it up");
 *   const hits = await run.tool("search", { q: "rust" }, () => search("rust"));
 *   run.message("Here is what I found");
 *   return { hits };                       // agent_completed; a throw ends it with agent_error
 * });
 * ```
 *
 * A run can ask its user and wait (PROTOCOL §2.1): `await run.approve("send_email", { to })`
 * is whether they approved (a request nobody answers in time is a denial), and
 * `await run.ask("Which city?")` or `run.ask("Tea or coffee?", { options: ["tea", "coffee"] })`
 * answers an {@link Answer}.
 */

import { randomUUID } from "node:crypto";

import { PublishStream, backoff, publishUrl, sleep } from "./stream.js";
import { AgentwireError, type PublishBody } from "./types.js";

export { AgentwireError, type Json, type PublishBody } from "./types.js";

/** The answer to `run.ask`: the user's, or the request's default once it lapsed. */
export interface Answer {
  /**
   * `{approved}`, `{text}` or `{choice}` (with `message` when the user added
   * one); `null` when the request lapsed without a default.
   */
  value: { approved?: boolean; text?: string; choice?: string; message?: string } | null;
  /** The timeout answered, not the user. */
  timedOut: boolean;
  /** Who answered. */
  userId?: string;
}

/** What `run.ask` may say besides its prompt. */
export interface AskOptions {
  /** Ask for one of these instead of a line of text. */
  options?: string[];
  /** The answer taken when nobody answers in time (a text, or one of the options). */
  default?: string;
  /** How long to wait for the user, in ms (the server bounds it; its default when unset). */
  timeoutMs?: number;
}

/** The run ended (cancelled, timed out) while it waited for an answer. */
export class RunEnded extends AgentwireError {
  constructor(requestId: string) {
    super(409, "closed", `input request ${requestId} closed: its run ended`);
    this.name = "RunEnded";
  }
}

/** Seconds one long poll waits for an answer before it asks again. */
const POLL_SECONDS = 30;

/** Most events the publisher puts in one publish (the server's default cap is 1,000). */
export const MAX_EVENTS_PER_PUBLISH = 500;

/** One event to publish, with the `event_id` that makes retrying it safe. */
export function event(kind: string, data: Record<string, unknown> = {}, eventId: string = newId()): PublishBody {
  return { event: kind, data, event_id: eventId };
}

/** `agent_thinking`. */
export function thinking(thought: string, step?: number): PublishBody {
  return event("agent_thinking", step === undefined ? { thought } : { thought, step });
}

function newId(): string {
  return randomUUID().replaceAll("-", "");
}

/** A fresh `message_id` for `agent_message` deltas. */
export function newMessageId(): string {
  return `msg_${newId().slice(0, 12)}`;
}

export interface PublisherOptions {
  /** Where agentwire listens, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** A key of `AGENTWIRE_PUBLISH_KEYS`. */
  publishKey: string;
  /** Attempts after the first on `503` and network errors (default 5). */
  retries?: number;
  /** First backoff in ms, doubled per attempt, with jitter (default 200). */
  backoffMs?: number;
  /** Longest backoff in ms (default 5,000). */
  maxBackoffMs?: number;
  /** Events over the publisher WebSocket (default); `false`: a request per publish. */
  stream?: boolean;
}

export interface RunOptions {
  threadId: string;
  userId: string;
  agentName: string;
  /** What the run was asked (`agent_started.input`). */
  input?: unknown;
  /** A run id of your own; one is minted otherwise. */
  runId?: string;
}

/** Publishes runs and their events. One per process is enough; close it at exit. */
export class Publisher {
  private readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly stream: PublishStream | null;
  /** Without the stream, publishes go one after another so a run's events keep their order. */
  private requests: Promise<unknown> = Promise.resolve();

  constructor(options: PublisherOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.headers = { authorization: `Bearer ${options.publishKey}` };
    this.retries = options.retries ?? 5;
    this.backoffMs = options.backoffMs ?? 200;
    this.maxBackoffMs = options.maxBackoffMs ?? 5_000;
    this.stream =
      options.stream === false
        ? null
        : new PublishStream({
            url: publishUrl(this.baseUrl),
            headers: this.headers,
            retries: this.retries,
            backoffMs: this.backoffMs,
            maxBackoffMs: this.maxBackoffMs,
          });
  }

  /** Registers a run (creating the thread for `userId` if new); resolves with its id. */
  async createRun(options: RunOptions): Promise<string> {
    // A run id of our own when none is given: a registration sent again (a
    // retried request, a frame resent after a dropped connection) is then
    // answered as the first was instead of registering a second run.
    const body: Record<string, unknown> = {
      thread_id: options.threadId,
      user_id: options.userId,
      agent_name: options.agentName,
      run_id: options.runId ?? `run_${options.threadId}_${randomUUID().replaceAll("-", "").slice(0, 16)}`,
    };
    // Over the publisher WebSocket when streaming: no HTTP request per run.
    const created =
      this.stream !== null ? await this.stream.register(body) : ((await this.request("POST", "/v1/runs", body)) as { run_id: string });
    return created.run_id;
  }

  /** Publishes events of one run, all or nothing; resolves with their seqs. */
  async publish(runId: string, events: PublishBody[]): Promise<number[]> {
    if (this.stream !== null) {
      return this.stream.send(runId, events);
    }
    const sent = this.requests.then(() => this.request("POST", `/v1/runs/${encodeURIComponent(runId)}/events`, { events }));
    this.requests = sent.catch(() => undefined);
    return ((await sent) as { seqs: number[] }).seqs;
  }

  /** Resolves once everything published so far is answered. */
  async flush(): Promise<void> {
    await this.stream?.flush();
    await this.requests;
  }

  /** `GET /v1/runs/{id}`: status and whether a cancel was asked for. */
  async getRun(runId: string): Promise<{ run_id: string; thread_id: string; status: string; cancel_requested: boolean }> {
    return (await this.request("GET", `/v1/runs/${encodeURIComponent(runId)}`)) as never;
  }

  /** `GET /v1/runs/{id}/inputs/{request_id}`: where a request stands, waiting up to `waitSeconds` while it is open. */
  async waitInput(
    runId: string,
    requestId: string,
    waitSeconds: number = POLL_SECONDS,
  ): Promise<{ request_id: string; status: "open" | "answered" | "timed_out" | "closed"; answer?: Answer["value"]; user_id?: string }> {
    const path = `/v1/runs/${encodeURIComponent(runId)}/inputs/${encodeURIComponent(requestId)}?wait=${waitSeconds}`;
    return (await this.request("GET", path)) as never;
  }

  /** Asks the server to cancel a run (it appends `agent_error {code:"cancelled"}`). */
  async cancel(runId: string): Promise<void> {
    await this.request("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`, {});
  }

  /** Registers a run and publishes its `agent_started`; end it with `complete` or `fail`. */
  async startRun(options: RunOptions): Promise<Run> {
    const runId = await this.createRun(options);
    const run = new Run(this, runId, options);
    await run.emit(event("agent_started", { agent_name: options.agentName, input: options.input ?? null }));
    return run;
  }

  /**
   * Runs `body` as one run: `agent_started` first, then `agent_completed` with
   * what `body` returns, or `agent_error` if it throws (the error is thrown on).
   */
  async run<T>(options: RunOptions, body: (run: Run) => Promise<T> | T): Promise<T> {
    const run = await this.startRun(options);
    let result: T;
    try {
      result = await body(run);
    } catch (error) {
      // The agent's own error is what the caller needs; the run's end is best effort.
      await run.fail(error).catch(() => undefined);
      throw error;
    }
    await run.complete(result);
    return result;
  }

  /** Waits for every answer, then closes the connection. */
  async close(): Promise<void> {
    await this.flush();
    await this.stream?.close();
  }

  private async request(method: string, path: string, body?: unknown): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await fetch(this.baseUrl + path, {
          method,
          headers: body === undefined ? this.headers : { ...this.headers, "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (error) {
        if (attempt >= this.retries) {
          throw error;
        }
        await sleep(this.backoff(attempt));
        continue;
      }
      if (response.ok) {
        return response.json();
      }
      const refusal = await errorOf(response);
      if (response.status !== 503 || attempt >= this.retries) {
        throw refusal;
      }
      await sleep(Math.max(this.backoff(attempt), (refusal.retryAfter ?? 0) * 1000));
    }
  }

  private backoff(attempt: number): number {
    return backoff(attempt, this.backoffMs, this.maxBackoffMs);
  }
}

async function errorOf(response: Response): Promise<AgentwireError> {
  const text = await response.text();
  let error: { code?: string; message?: string; retry_after?: number } = {};
  try {
    error = (JSON.parse(text) as { error?: typeof error }).error ?? {};
  } catch {
    // Not ours (a proxy's page, say): the text is the message.
  }
  const retryAfter = error.retry_after ?? (Number(response.headers.get("retry-after")) || undefined);
  return new AgentwireError(response.status, error.code ?? "unknown", error.message ?? text, retryAfter);
}

/** One tool call as the run publishes it. */
export interface ToolCall {
  id: string;
  name: string;
  args: unknown;
}

/** A run that is going: its events in order, ended once with `complete` or `fail`. */
export class Run {
  readonly runId: string;
  readonly threadId: string;
  /** The seqs of the events this run was answered for, in order. */
  readonly seqs: number[] = [];
  private readonly started = Date.now();
  private readonly messageId = newMessageId();
  /** Tool calls started and not ended: when each started, for `duration_ms`. */
  private readonly openTools = new Map<string, number>();
  private deltas: PublishBody[] = [];
  private deltasDue = false;
  /** The first refusal of a publish nobody awaited (a delta's), thrown by the next awaited call. */
  private refused: unknown = undefined;
  private ended = false;

  constructor(
    private readonly publisher: Publisher,
    runId: string,
    options: RunOptions,
  ) {
    this.runId = runId;
    this.threadId = options.threadId;
  }

  /** Publishes events in order after anything sent before; resolves with their seqs. */
  async emit(...events: PublishBody[]): Promise<number[]> {
    this.sendDeltas();
    const seqs = await this.publisher.publish(this.runId, events);
    this.throwRefused();
    this.seqs.push(...seqs);
    return seqs;
  }

  /** `agent_thinking`. */
  async thinking(thought: string, step?: number): Promise<void> {
    await this.emit(thinking(thought, step));
  }

  /**
   * A piece of the answer's text (`agent_message`), sent without waiting:
   * deltas of one turn of the event loop go in one publish.
   */
  message(delta: string, messageId: string = this.messageId): void {
    this.deltas.push(event("agent_message", { message_id: messageId, delta }));
    if (!this.deltasDue) {
      this.deltasDue = true;
      setImmediate(() => this.sendDeltas());
    }
  }

  /** `tool_executing`; answers the call to finish with `toolDone`. */
  async toolStarted(name: string, args: unknown = null, id: string = `call_${newId().slice(0, 12)}`): Promise<ToolCall> {
    await this.emit(event("tool_executing", { tool_call_id: id, tool_name: name, args }));
    this.openTools.set(id, Date.now());
    return { id, name, args };
  }

  /** Whether `call` was started by this run and has not ended. */
  isToolOpen(call: ToolCall | string): boolean {
    return this.openTools.has(typeof call === "string" ? call : call.id);
  }

  /**
   * `tool_completed` for `call`, with its result or its error; `duration_ms`
   * from its start when this run started it and none is given.
   */
  async toolDone(call: ToolCall | string, outcome: { result?: unknown; error?: unknown; durationMs?: number }): Promise<void> {
    const id = typeof call === "string" ? call : call.id;
    const began = this.openTools.get(id);
    this.openTools.delete(id);
    const data: Record<string, unknown> = { tool_call_id: id };
    const durationMs = outcome.durationMs ?? (began === undefined ? undefined : Date.now() - began);
    if (durationMs !== undefined) {
      data.duration_ms = durationMs;
    }
    if (outcome.error !== undefined) {
      data.error = describe(outcome.error);
    } else {
      data.result = outcome.result ?? null;
    }
    await this.emit(event("tool_completed", data));
  }

  /**
   * Runs `body` as one tool call: `tool_executing`, then `tool_completed` with
   * what it returns, or with its error (thrown on). The call always ends.
   */
  async tool<T>(name: string, args: unknown, body: (call: ToolCall) => Promise<T> | T): Promise<T> {
    const call = await this.toolStarted(name, args);
    let result: T;
    try {
      result = await body(call);
    } catch (error) {
      await this.toolDone(call, { error });
      throw error;
    }
    await this.toolDone(call, { result });
    return result;
  }

  /**
   * Asks the user for a line of text, or one of `options.options`, and waits
   * for the answer (the default once the request lapses). Throws
   * {@link RunEnded} if the run ends first.
   */
  async ask(prompt: string, options: AskOptions = {}): Promise<Answer> {
    const kind = options.options === undefined ? "text" : "choice";
    return this.waitFor(prompt, kind, {
      ...(options.options === undefined ? {} : { options: options.options }),
      ...(options.default === undefined ? {} : { default: options.default }),
      ...(options.timeoutMs === undefined ? {} : { timeout_ms: Math.max(1, Math.round(options.timeoutMs)) }),
    });
  }

  /** Asks the user whether to run `toolName` with `args`; a request nobody answers in time is a denial. */
  async approve(toolName: string, args: unknown = null, options: { prompt?: string; timeoutMs?: number } = {}): Promise<boolean> {
    const answer = await this.waitFor(options.prompt ?? `May I run ${toolName}?`, "approval", {
      tool_name: toolName,
      arguments: args,
      ...(options.timeoutMs === undefined ? {} : { timeout_ms: Math.max(1, Math.round(options.timeoutMs)) }),
    });
    return answer.value?.approved === true;
  }

  private async waitFor(prompt: string, kind: string, fields: Record<string, unknown>): Promise<Answer> {
    const requestId = `input_${newId().slice(0, 12)}`;
    await this.emit(event("input_requested", { request_id: requestId, kind, prompt, ...fields }));
    for (;;) {
      const view = await this.publisher.waitInput(this.runId, requestId);
      if (view.status === "closed") {
        // Ended from outside: it has its terminal event already.
        this.ended = true;
        throw new RunEnded(requestId);
      }
      if (view.status !== "open") {
        return { value: view.answer ?? null, timedOut: view.status === "timed_out", userId: view.user_id };
      }
    }
  }

  /** `agent_completed`; the run is over. */
  async complete(result: unknown = null): Promise<void> {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.openTools.clear();
    await this.emit(event("agent_completed", { result: result ?? null, duration_ms: Date.now() - this.started }));
  }

  /** `agent_error` with `error`'s message (`cancelled` for an abort); the run is over. */
  async fail(error: unknown): Promise<void> {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.openTools.clear();
    const aborted = error instanceof Error && error.name === "AbortError";
    this.refused = undefined;
    await this.emit(event("agent_error", { code: aborted ? "cancelled" : "failed", message: describe(error) }));
  }

  /** Resolves once every event of this run is answered; throws a delta's refusal. */
  async flush(): Promise<void> {
    this.sendDeltas();
    await this.publisher.flush();
    this.throwRefused();
  }

  private sendDeltas(): void {
    this.deltasDue = false;
    while (this.deltas.length > 0) {
      const batch = this.deltas.splice(0, MAX_EVENTS_PER_PUBLISH);
      this.publisher.publish(this.runId, batch).then(
        (seqs) => this.seqs.push(...seqs),
        (error: unknown) => {
          this.refused ??= error;
        },
      );
    }
  }

  private throwRefused(): void {
    const refused = this.refused;
    if (refused !== undefined) {
      this.refused = undefined;
      throw refused;
    }
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    return `${error.name}: ${error.message}`;
  }
  return typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
}
