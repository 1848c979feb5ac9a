// What the publisher tests share: a real agentwire (the web tests' helper) and a look at a thread's events.
export { Agentwire } from "../../../web/tests/server.mjs";

export const KEY = "dev-publish-key";

/** Every stored event of `thread`, read as its owner. */
export async function eventsOf(server, user, thread) {
  const token = await server.token(user);
  const out = [];
  for (;;) {
    const url = `${server.base}/v1/threads/${thread}/events?after_seq=${out.length}&limit=1000`;
    const page = await (await fetch(url, { headers: { authorization: `Bearer ${token}` } })).json();
    if (!page.events?.length) return out;
    out.push(...page.events);
  }
}

/** A fresh thread id. */
export function newThread() {
  return `thread_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
}
