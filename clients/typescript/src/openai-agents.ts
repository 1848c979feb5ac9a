/**
 * The OpenAI Agents SDK for JavaScript (`@openai/agents`) to agentwire: a
 * streamed run, published as it goes, in one line around `run(…, { stream: true })`.
 *
 * ```ts
 * import { run } from "@openai/agents";
 * import { publishAgentsRun } from "@agentwire/publisher/openai-agents";
 *
 * const output = await publishAgentsRun(publisher, { threadId, userId, agentName: "helper" }, await run(agent, input, { stream: true }));
 * ```
 *
 * | Agents SDK stream event | agentwire event |
 * |---|---|
 * | raw `output_text_delta` | `agent_message` delta (one `message_id` per output item) |
 * | `reasoning_item_created` | `agent_thinking` with the reasoning text |
 * | `tool_called` | `tool_executing` with the parsed arguments |
 * | `tool_output` | `tool_completed` with the tool's output |
 * | the run's end / failure | `agent_completed` with the final output / `agent_error` |
 *
 * The SDK turns a failing tool into an output that says so; that output is
 * the `result`. The events are read structurally, so this module does not
 * import the SDK; it is tested with `@openai/agents` 0.20 and its `ScriptedModel`.
 */

import { randomUUID } from "node:crypto";

import { type Publisher, type Run, type RunOptions, newMessageId } from "./index.js";

/** A stream event as this adapter reads it. */
export interface AgentsStreamEvent {
  type: string;
  name?: string;
  data?: { type?: string; delta?: string; itemId?: string };
  item?: { rawItem?: Record<string, unknown>; output?: unknown };
}

/** What `run(agent, input, { stream: true })` answers, as this adapter reads it. */
export interface AgentsStreamedRun extends AsyncIterable<AgentsStreamEvent> {
  completed: Promise<void>;
  finalOutput?: unknown;
}

/** Registers a run, publishes the SDK's streamed run into it, and ends it; resolves with the final output. */
export function publishAgentsRun(publisher: Publisher, options: RunOptions, result: AgentsStreamedRun): Promise<unknown> {
  return publisher.run(options, (run) => pipeAgentsRun(run, result));
}

/** Publishes the SDK's streamed run into a run that is going (it is not ended here). */
export async function pipeAgentsRun(run: Run, result: AgentsStreamedRun): Promise<unknown> {
  const messages = new Map<string, string>();
  for await (const event of result) {
    if (event.type === "raw_model_stream_event" && event.data?.type === "output_text_delta" && event.data.delta) {
      const item = event.data.itemId ?? "";
      if (!messages.has(item)) messages.set(item, newMessageId());
      run.message(event.data.delta, messages.get(item));
    } else if (event.type === "run_item_stream_event") {
      const raw = event.item?.rawItem ?? {};
      if (event.name === "reasoning_item_created") {
        const thought = reasoningText(raw);
        if (thought.trim() !== "") await run.thinking(thought);
      } else if (event.name === "tool_called") {
        const callId = String(raw.callId ?? raw.id ?? `call_${randomUUID().slice(0, 8)}`);
        await run.toolStarted(String(raw.name ?? raw.type ?? "tool"), parsed(raw.arguments), callId);
      } else if (event.name === "tool_output") {
        const callId = String(raw.callId ?? "");
        if (run.isToolOpen(callId)) {
          await run.toolDone(callId, { result: event.item?.output ?? null });
        }
      }
    }
  }
  // A failed run rejects here.
  await result.completed;
  await run.flush();
  return result.finalOutput ?? null;
}

function reasoningText(raw: Record<string, unknown>): string {
  const parts = [...asArray(raw.rawContent), ...asArray(raw.content)];
  const texts = parts.map((p) => (typeof p === "object" && p !== null && "text" in p ? String((p as { text: unknown }).text) : ""));
  return texts.filter((t) => t !== "").join("\n");
}

function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function parsed(args: unknown): unknown {
  if (typeof args !== "string") return args ?? null;
  try {
    return JSON.parse(args);
  } catch {
    return args;
  }
}
