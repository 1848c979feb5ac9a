/** What the publisher and its stream share: JSON, event bodies, the error type. */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One event as `POST /v1/runs/{run_id}/events` takes it. */
export interface PublishBody {
  event: string;
  data: Record<string, unknown>;
  event_id: string;
}

/** The HTTP status each error code of PROTOCOL §3 goes with. */
export const STATUS_OF_CODE: Record<string, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  timeout: 408,
  lifecycle_violation: 409,
  conflict: 409,
  too_large: 413,
  rate_limited: 429,
  internal: 500,
  unsupported: 501,
  unavailable: 503,
};

/** The server refused a request: `status` and the protocol's error `code`. */
export class AgentwireError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds to wait before trying again, when the server said. */
    readonly retryAfter?: number,
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = "AgentwireError";
  }
}
