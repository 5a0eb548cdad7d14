import { URLExt } from "@jupyterlab/coreutils";
import { ServerConnection } from "@jupyterlab/services";

/** One run as `GET /distill-nb/runs` returns it (a status.json plus `run_id` and `last_eval`). */
export interface IRunSummary {
  run_id: string;
  state: "queued" | "running" | "completed" | "failed" | "stopped";
  step?: number;
  total_steps?: number | null;
  last_eval?: { step?: number; accuracy?: number } | null;
  error?: string | null;
  stale?: boolean;
}

/**
 * Call the distill_nb server extension and return its JSON body.
 *
 * The only place the frontend talks to the server, so every request carries the
 * token and XSRF header that `ServerConnection` adds, and every error carries the
 * server's own message (routes.py puts it in `message`).
 */
export async function requestAPI<T>(
  endPoint = "",
  init: RequestInit = {},
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, "distill-nb", endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (a proxy error page, say): keep the text for the message
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(
      response,
      (data && data.message) || text || response.statusText,
    );
  }
  return data as T;
}
