/**
 * Requests to one coordinator with the Python SDK's retry rules (client_sdk.api): network
 * errors, timeouts, 429 and 5xx are retried up to 6 attempts with delays of 0.5 s * 2^n capped
 * at 30 s and scaled by a random factor in [0.5, 1]; a `Retry-After` (seconds or an HTTP date)
 * replaces the delay, capped the same. A 4xx is never retried: it throws ApiError with the
 * coordinator's `detail`. Uploads are safe to retry: they carry `Flaas-Content-Sha256`.
 */

export const RETRY = { attempts: 6, baseS: 0.5, maxS: 30 };
/** Read timeout of a request, and what a long-polled task request adds to its wait. */
export const TIMEOUT_S = 60;
export const LONG_POLL_MARGIN_S = 15;

/** The coordinator refused a request (4xx): `status` and its `detail`. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly detail: unknown, method: string, url: string) {
    super(`${method} ${url} -> ${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.name = "ApiError";
  }
}

/** The coordinator could not be reached (or kept failing) after every retry. */
export class Unavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Unavailable";
  }
}

/** Seconds before attempt `attempt + 1` (counting from 0). */
export function retryDelay(attempt: number, retryAfter: number | null, random = Math.random): number {
  if (retryAfter !== null) return Math.min(Math.max(retryAfter, 0), RETRY.maxS);
  return Math.min(RETRY.baseS * 2 ** attempt, RETRY.maxS) * (0.5 + 0.5 * random());
}

/** `Retry-After` as seconds: a number or an HTTP date; null when absent or unreadable. */
export function retryAfterSeconds(value: string | null): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (value.trim() !== "" && Number.isFinite(seconds)) return Math.max(seconds, 0);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max((date - Date.now()) / 1000, 0);
}

/** Resolves after `seconds`, or rejects with the signal's reason when it is aborted. */
export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, seconds * 1000);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface RequestOptions {
  token?: string | null;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  timeoutS?: number;
}

export class Coordinator {
  token: string | null = null;

  constructor(readonly baseUrl: string, private readonly signal?: AbortSignal) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
  }

  /** Send with retries; the 2xx response (its body read) or ApiError / Unavailable. */
  async request(method: string, url: string, options: RequestOptions = {}): Promise<{ status: number; body: Uint8Array }> {
    const bearer = options.token ?? this.token;
    const headers = { ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...options.headers };
    let last = "";
    for (let attempt = 0; attempt < RETRY.attempts; attempt++) {
      let retryAfter: number | null = null;
      try {
        const response = await this.fetchOnce(method, url, headers, options);
        if (response.status < 400) return response;
        const detail = errorDetail(response.body);
        if (response.status !== 429 && response.status < 500) {
          throw new ApiError(response.status, detail, method, url);
        }
        last = `${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
        retryAfter = retryAfterSeconds(response.retryAfter);
      } catch (error) {
        if (error instanceof ApiError || this.signal?.aborted) throw error;
        last = String(error);
      }
      if (attempt + 1 < RETRY.attempts) await sleep(retryDelay(attempt, retryAfter), this.signal);
    }
    throw new Unavailable(`${method} ${this.baseUrl}${url} failed ${RETRY.attempts} times; last: ${last}`);
  }

  async json<T>(method: string, url: string, options: RequestOptions = {}): Promise<T> {
    const { body } = await this.request(method, url, options);
    return JSON.parse(new TextDecoder().decode(body)) as T;
  }

  /** One attempt: the status, the whole body (checked against Content-Length), Retry-After. */
  private async fetchOnce(method: string, url: string, headers: Record<string, string>, options: RequestOptions) {
    const timeout = new AbortController();
    const onAbort = () => timeout.abort(this.signal!.reason);
    this.signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => timeout.abort(new Error(`no answer in ${options.timeoutS ?? TIMEOUT_S} s`)),
      (options.timeoutS ?? TIMEOUT_S) * 1000);
    try {
      const response = await fetch(this.baseUrl + url, {
        method, headers, body: options.body as BodyInit | undefined, signal: timeout.signal, cache: "no-store",
      });
      const body = new Uint8Array(await response.arrayBuffer());
      const declared = response.headers.get("content-length");
      if (declared !== null && response.headers.get("content-encoding") === null && Number(declared) !== body.length) {
        throw new Error(`got ${body.length} of ${declared} bytes`);
      }
      return { status: response.status, body, retryAfter: response.headers.get("retry-after") };
    } finally {
      clearTimeout(timer);
      this.signal?.removeEventListener("abort", onAbort);
    }
  }
}

function errorDetail(body: Uint8Array): unknown {
  const text = new TextDecoder().decode(body);
  try {
    const parsed = JSON.parse(text);
    return parsed && typeof parsed === "object" && "detail" in parsed ? parsed.detail : parsed;
  } catch {
    return text.slice(0, 2000);
  }
}
