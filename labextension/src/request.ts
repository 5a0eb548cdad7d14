import { URLExt } from "@jupyterlab/coreutils";
import { ServerConnection } from "@jupyterlab/services";

/** The phases of a run, in order; status.json's `phase` (older runs have none). */
export type Phase =
  | "queued"
  | "loading"
  | "preparing_teacher"
  | "caching_logits"
  | "caching_attributions"
  | "training"
  | "evaluating"
  | "saving"
  | "done";

/** What a run list entry says about its config (teacher → student on a dataset). */
export interface IRunConfigSummary {
  teacher?: string;
  dataset?: string;
  student_layers?: number;
  objective?: string;
}

/**
 * One run as `GET /distill-nb/runs` returns it: a status.json plus `run_id`, `last_eval`,
 * `summary` and `trust_remote_code`. A run whose files cannot be read comes back as
 * `{run_id, state: "unreadable", error}` and nothing else.
 */
export interface IRunSummary {
  run_id: string;
  state:
    "queued" | "running" | "completed" | "failed" | "stopped" | "unreadable";
  step?: number | null;
  total_steps?: number | null;
  phase?: Phase | null;
  phase_step?: number | null;
  phase_total?: number | null;
  eta_s?: number | null;
  message?: string | null;
  last_eval?: {
    step?: number;
    accuracy?: number;
    retention?: number;
    eval_examples?: number;
    /** mean Spearman of the student's token attributions with the teacher's on the run's probe texts */
    reason_spearman?: number | null;
  } | null;
  error?: string | null;
  stale?: boolean;
  trust_remote_code?: boolean;
  summary?: IRunConfigSummary | null;
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
