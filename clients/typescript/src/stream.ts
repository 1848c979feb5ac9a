/**
 * One WebSocket per publisher for its events (PROTOCOL §3.1, `GET /v1/publish`).
 *
 * Each frame is a publish body with its `run_id` and a `ref`; the server
 * decides frames in the order they arrive and answers each, in that order, once
 * it is stored. So token deltas go without waiting for their answers and a
 * refusal still surfaces: the frame's promise rejects.
 *
 * Frames not yet answered when the connection drops are sent again, in order,
 * on a new connection: every event carries an `event_id`, so the server stores
 * each once however often it is repeated. At most `MOST_WAITING` frames wait
 * for their answers: the next one waits for the oldest (in the order frames
 * were given), so a publisher faster than the server is slowed down instead of
 * holding every frame it ever sent.
 */

import WebSocket from "ws";

import { AgentwireError, STATUS_OF_CODE, type PublishBody } from "./types.js";

/** Frames sent and not yet answered, at most: what the server keeps waiting for
 * the disk per connection (PROTOCOL §3.1), so the cap costs no throughput. */
export const MOST_WAITING = 1024;

interface Waiting {
  frame: string;
  resolve: (ack: Ack) => void;
  reject: (error: Error) => void;
  /** Resolves once answered, either way. */
  settled: Promise<void>;
}

/** An answer as the server writes it. */
export interface Ack {
  ref?: number;
  seqs?: number[];
  /** A registration's answer. */
  run_id?: string;
  thread_id?: string;
  error?: { code: string; message: string; retry_after?: number };
}

export interface StreamOptions {
  url: string;
  headers: Record<string, string>;
  retries: number;
  backoffMs: number;
  maxBackoffMs: number;
  /** Frames that may wait for their answers at once; `MOST_WAITING` unless set. */
  mostWaiting?: number;
}

/** The publisher WebSocket of one `Publisher`. */
export class PublishStream {
  private socket: WebSocket | null = null;
  private connecting: Promise<void> | null = null;
  private nextRef = 0;
  /** Frames sent and not yet answered, oldest first (a Map keeps insertion order). */
  private readonly waiting = new Map<number, Waiting>();
  /** Settles once the last frame given so far has room to be sent: frames queue behind it. */
  private admission: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly options: StreamOptions) {}

  /** Sends one frame; resolves with its seqs once stored, rejects with the server's refusal. */
  async send(runId: string, events: PublishBody[]): Promise<number[]> {
    return (await this.post((ref) => ({ ref, run_id: runId, events }))).seqs ?? [];
  }

  /** Registers a run (the body of `POST /v1/runs`); resolves with its `run_id` and `thread_id`. */
  async register(body: Record<string, unknown>): Promise<{ run_id: string; thread_id: string }> {
    const ack = await this.post((ref) => ({ ref, register: body }));
    return { run_id: ack.run_id ?? "", thread_id: ack.thread_id ?? "" };
  }

  private post(frameFor: (ref: number) => unknown): Promise<Ack> {
    if (this.closed) {
      return Promise.reject(new Error("the publisher is closed"));
    }
    // In the order given: each frame waits for room behind those before it.
    const admitted = this.admission.then(() => this.room());
    this.admission = admitted;
    return admitted.then(() => this.sendNow(frameFor));
  }

  /** Resolves once fewer frames than the cap wait for their answers. */
  private async room(): Promise<void> {
    const most = this.options.mostWaiting ?? MOST_WAITING;
    for (let oldest = this.waiting.values().next(); this.waiting.size >= most && oldest.done !== true; ) {
      await oldest.value.settled;
      oldest = this.waiting.values().next();
    }
  }

  private sendNow(frameFor: (ref: number) => unknown): Promise<Ack> {
    const ref = ++this.nextRef;
    const frame = JSON.stringify(frameFor(ref));
    let waiting!: Waiting;
    const answer = new Promise<Ack>((resolve, reject) => {
      waiting = { frame, resolve, reject, settled: Promise.resolve() };
    });
    waiting.settled = answer.then(
      () => undefined,
      () => undefined,
    );
    this.waiting.set(ref, waiting);
    const socket = this.socket;
    if (socket !== null && socket.readyState === WebSocket.OPEN) {
      socket.send(frame);
    } else {
      // The connection sends every waiting frame, this one too, in order.
      void this.connect();
    }
    return answer;
  }

  /** Resolves once every frame sent so far is answered (whatever the answers). */
  async flush(): Promise<void> {
    await this.admission;
    await Promise.all([...this.waiting.values()].map((w) => w.settled));
  }

  /** Closes the connection once every frame is answered. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    const socket = this.socket;
    this.socket = null;
    if (socket !== null && socket.readyState === WebSocket.OPEN) {
      await new Promise<void>((resolve) => {
        socket.once("close", () => resolve());
        socket.close(1000);
      });
    }
  }

  private connect(): Promise<void> {
    this.connecting ??= this.open().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  /** Connects (retrying with backoff), then sends every waiting frame in order. */
  private async open(): Promise<void> {
    const { retries, backoffMs, maxBackoffMs } = this.options;
    for (let attempt = 0; ; attempt++) {
      try {
        const socket = await this.dial();
        this.socket = socket;
        for (const { frame } of this.waiting.values()) {
          socket.send(frame);
        }
        return;
      } catch (error) {
        if (error instanceof AgentwireError || attempt >= retries) {
          this.failAll(error instanceof Error ? error : new Error(String(error)));
          return;
        }
        await sleep(backoff(attempt, backoffMs, maxBackoffMs));
      }
    }
  }

  private dial(): Promise<WebSocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.options.url, { headers: this.options.headers });
      socket.once("unexpected-response", (_request, response) => {
        const status = response.statusCode ?? 0;
        const code = status === 401 ? "unauthorized" : status === 403 ? "forbidden" : "unavailable";
        const error = new AgentwireError(status, code, `the server answered ${status} to the publisher WebSocket`);
        socket.terminate();
        // A refused key is not retried; anything else (a proxy's 502, say) is.
        reject(status === 401 || status === 403 ? error : new Error(error.message));
      });
      socket.once("error", reject);
      socket.once("open", () => {
        socket.off("error", reject);
        socket.on("error", () => {});
        socket.on("message", (data) => this.take(String(data)));
        socket.on("close", () => this.dropped(socket));
        resolve(socket);
      });
    });
  }

  /** One answer: it belongs to the oldest frame still waiting. */
  private take(text: string): void {
    let ack: Ack;
    try {
      ack = JSON.parse(text) as Ack;
    } catch {
      return;
    }
    const oldest = this.waiting.keys().next();
    if (oldest.done === true || (ack.ref !== undefined && ack.ref !== oldest.value)) {
      return;
    }
    const waiting = this.waiting.get(oldest.value);
    this.waiting.delete(oldest.value);
    if (waiting === undefined) {
      return;
    }
    if (ack.error !== undefined) {
      const { code, message, retry_after } = ack.error;
      waiting.reject(new AgentwireError(STATUS_OF_CODE[code] ?? 0, code, message, retry_after));
    } else {
      waiting.resolve(ack);
    }
  }

  private dropped(socket: WebSocket): void {
    if (this.socket !== socket) {
      return;
    }
    this.socket = null;
    if (this.waiting.size > 0 && !this.closed) {
      void this.connect();
    }
  }

  private failAll(error: Error): void {
    const all = [...this.waiting.values()];
    this.waiting.clear();
    for (const waiting of all) {
      waiting.reject(error);
    }
  }
}

/**
 * The wait before attempt `attempt + 1`: doubling from `base`, at most `cap`,
 * with the upper half random so that publishers cut off together do not
 * come back together, and the lower half kept so that the retries span a
 * restart (about 3 s in all with the defaults).
 */
export function backoff(attempt: number, base: number, cap: number): number {
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `ws://…/v1/publish` for an `http://…` base (`wss` for `https`). */
export function publishUrl(baseUrl: string): string {
  return baseUrl.replace(/^http/, "ws") + "/v1/publish";
}


