/**
 * The Vercel AI SDK (`ai`; tested with version 6) to agentwire: `streamText`'s stream
 * parts become a run's events, so every tab watching the thread sees the
 * model reason, call tools and answer, as it happens.
 *
 * ```ts
 * import { streamText } from "ai";
 * import { publishAiStream } from "@agentwire/publisher/ai-sdk";
 *
 * await publishAiStream(publisher, { threadId, userId, agentName: "helper" }, streamText({ model, tools, prompt }));
 * ```
 *
 * | stream part | event |
 * |---|---|
 * | `reasoning-start` … `reasoning-end` | one `agent_thinking` with the whole thought |
 * | `text-delta` | `agent_message` delta (one `message_id` per text part) |
 * | `tool-call` | `tool_executing` |
 * | `tool-result` / `tool-error` / `tool-output-denied` | `tool_completed` with `result` / `error` |
 * | `error`, `abort` | the run ends with `agent_error` (`failed`, `cancelled`) |
 * | the stream's end | `agent_completed` with the text and the finish reason |
 *
 * The parts are read structurally, so this module does not import `ai`.
 */

import { type Publisher, type Run, type RunOptions, newMessageId } from "./index.js";

/** A stream part as this adapter reads it: `type` and the fields the SDK gives it. */
export interface AiStreamPart {
  type: string;
  [field: string]: unknown;
}

/** What `streamText` answers (its `fullStream`), or the parts themselves. */
export type AiStream = { fullStream: AsyncIterable<AiStreamPart> } | AsyncIterable<AiStreamPart>;

/** How a run fed by the AI SDK ended: what `agent_completed.result` carries. */
export interface AiRunResult {
  text: string;
  finishReason: string | null;
}

/** Registers a run, publishes `stream` into it, and ends it; resolves with the text. */
export function publishAiStream(publisher: Publisher, options: RunOptions, stream: AiStream): Promise<AiRunResult> {
  return publisher.run(options, (run) => pipeAiStream(run, stream));
}

/** Publishes `stream` into a run that is going (it is not ended here). */
export async function pipeAiStream(run: Run, stream: AiStream): Promise<AiRunResult> {
  const parts = Symbol.asyncIterator in stream ? stream : stream.fullStream;
  const thoughts = new Map<string, string>();
  const messages = new Map<string, string>();
  let text = "";
  let finishReason: string | null = null;
  for await (const part of parts) {
    const id = String(part.id ?? "");
    switch (part.type) {
      case "reasoning-start":
        thoughts.set(id, "");
        break;
      case "reasoning-delta":
        thoughts.set(id, (thoughts.get(id) ?? "") + deltaOf(part));
        break;
      case "reasoning-end": {
        const thought = thoughts.get(id) ?? "";
        thoughts.delete(id);
        if (thought.trim() !== "") {
          await run.thinking(thought);
        }
        break;
      }
      case "text-start":
        messages.set(id, newMessageId());
        break;
      case "text-delta": {
        const delta = deltaOf(part);
        if (delta !== "") {
          text += delta;
          run.message(delta, messages.get(id));
        }
        break;
      }
      case "tool-call": {
        const callId = String(part.toolCallId);
        await run.toolStarted(String(part.toolName), part.input ?? part.args ?? null, callId);
        break;
      }
      case "tool-result":
      case "tool-error":
      case "tool-output-denied": {
        const callId = String(part.toolCallId);
        const outcome =
          part.type === "tool-result"
            ? { result: part.output ?? part.result ?? null }
            : { error: part.type === "tool-error" ? part.error : "the user denied this tool call" };
        // Only a call this run started can end (the server would refuse another).
        if (run.isToolOpen(callId)) {
          await run.toolDone(callId, outcome);
        }
        break;
      }
      case "finish":
        finishReason = typeof part.finishReason === "string" ? part.finishReason : null;
        break;
      case "error":
        throw part.error instanceof Error ? part.error : new Error(describePart(part.error));
      case "abort": {
        const aborted = new Error(typeof part.reason === "string" ? part.reason : "the stream was aborted");
        aborted.name = "AbortError";
        throw aborted;
      }
      default:
        break;
    }
  }
  await run.flush();
  return { text, finishReason };
}

/** A delta's text: `text` since AI SDK 5, `delta`/`textDelta` before. */
function deltaOf(part: AiStreamPart): string {
  const value = part.text ?? part.delta ?? part.textDelta;
  return typeof value === "string" ? value : "";
}

function describePart(value: unknown): string {
  return typeof value === "string" ? value : (JSON.stringify(value) ?? String(value));
}
