import { Dialog, showDialog, showErrorMessage } from "@jupyterlab/apputils";
import { deleteIcon } from "@jupyterlab/ui-components";
import { Message } from "@lumino/messaging";
import { Poll } from "@lumino/polling";
import { Widget } from "@lumino/widgets";

import { runProgress } from "./progress";
import { IRunSummary, requestAPI } from "./request";

/** What the panel needs from the app, so it stays testable without one. */
export interface IRunsPanelOptions {
  /** Show a notebook that monitors `runId` (the same one again if it is open or saved). */
  openMonitor: (runId: string) => Promise<unknown>;
  /** Start a notebook from the quickstart template. */
  newNotebook: () => Promise<unknown>;
}

const ACTIVE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["stopped", "failed"]);

/**
 * Left-sidebar list of distillation runs: name and teacher → student summary, state, the
 * progress of the current phase, last accuracy, and Stop / Resume / Open / Delete buttons,
 * refreshed by a Poll that backs off on errors and idles while the page is hidden.
 */
export class RunsPanel extends Widget {
  constructor(options: IRunsPanelOptions) {
    super();
    this._options = options;
    this.addClass("jp-DistillNb-panel");

    const header = document.createElement("header");
    header.className = "jp-DistillNb-header";
    const title = document.createElement("h2");
    title.textContent = "Distillation runs";
    const newButton = button(
      "New notebook",
      "jp-mod-accept jp-DistillNb-new",
      () => this._options.newNotebook(),
    );
    header.append(title, newButton);

    this._body = document.createElement("div");
    this._body.className = "jp-DistillNb-body";
    this._body.textContent = "Loading runs…";
    this.node.append(header, this._body);

    this._poll = new Poll({
      auto: true,
      factory: () => this._refresh(),
      // a rejected factory doubles the interval (up to max): a dead server is not hammered
      frequency: { interval: 3000, backoff: true, max: 60 * 1000 },
      name: "distill-nb:runs",
      // idle while the sidebar is collapsed or the browser tab is hidden
      standby: () => !this.isVisible || "when-hidden",
    });
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  /** Refresh now (after a Stop, or when the panel is shown). */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  private async _refresh(): Promise<void> {
    let runs: unknown;
    try {
      runs = await requestAPI<unknown>("runs");
      // a reply that is not a list (a proxy page, a bare string) must never be iterated
      if (!Array.isArray(runs)) {
        throw new Error(
          `the server sent ${describe(runs)} instead of a list of runs`,
        );
      }
    } catch (error) {
      this._renderError(error);
      throw error; // let the Poll back off
    }
    this._render(runs);
  }

  private _render(runs: unknown[]): void {
    this._body.replaceChildren();
    if (runs.length === 0) {
      const empty = document.createElement("p");
      empty.className = "jp-DistillNb-empty";
      empty.textContent =
        'No runs yet… Launch one from a notebook (start with "New notebook") and it appears here.';
      this._body.append(empty);
      return;
    }
    const list = document.createElement("ul");
    list.className = "jp-DistillNb-runs";
    for (const entry of runs) {
      // one odd entry is shown as unreadable; the other runs list normally
      const run = asRun(entry);
      list.append(
        run.state === "unreadable"
          ? this._renderUnreadable(run)
          : this._renderRun(run),
      );
    }
    this._body.append(list);
  }

  private _renderRun(run: IRunSummary): HTMLElement {
    const item = document.createElement("li");
    item.className = "jp-DistillNb-run";
    item.dataset.runId = run.run_id;
    item.append(this._nameLine(run));

    const summary = summaryText(run);
    if (summary) {
      const line = document.createElement("div");
      line.className = "jp-DistillNb-summary";
      line.textContent = summary;
      line.title = summary;
      item.append(line);
    }

    const state = document.createElement("span");
    // the state comes from the run's status.json: only a known state becomes part of a class name
    state.className = `jp-DistillNb-state jp-DistillNb-state-${stateClass(run.state)}`;
    state.textContent = run.state;
    if (run.error) {
      state.title = buttonsSay(run.error);
    }

    const p = runProgress(run);
    const progress = document.createElement("progress");
    progress.className = "jp-DistillNb-progress";
    progress.max = p.max;
    progress.value = p.value;
    const steps = document.createElement("span");
    steps.className = "jp-DistillNb-steps";
    steps.textContent = p.text;

    const accuracy = document.createElement("span");
    accuracy.className = "jp-DistillNb-accuracy";
    const acc = run.last_eval?.accuracy;
    const n = run.last_eval?.eval_examples;
    accuracy.textContent =
      typeof acc === "number" ? `acc ${(acc * 100).toFixed(1)}%` : "acc –";
    if (typeof acc === "number") {
      accuracy.title =
        `student accuracy at step ${run.last_eval?.step ?? "?"}` +
        (typeof n === "number" ? ` on ${n} eval examples` : "");
    }

    const details = document.createElement("div");
    details.className = "jp-DistillNb-details";
    details.append(state, steps, accuracy);
    const reasons = reasonsText(run);
    if (reasons) {
      const span = document.createElement("span");
      span.className = "jp-DistillNb-reasons";
      span.textContent = reasons;
      span.title =
        `reason agreement at step ${run.last_eval?.step ?? "?"}: mean Spearman correlation of the ` +
        "student's token attributions with the teacher's on the run's probe texts (1 = same reasons)";
      details.append(span);
    }

    const actions = document.createElement("div");
    actions.className = "jp-DistillNb-actions";
    const stop = button("Stop", "jp-mod-warn jp-DistillNb-stop", async () => {
      stop.disabled = true;
      await requestAPI(`runs/${encodeURIComponent(run.run_id)}/stop`, {
        method: "POST",
      });
      await this.refresh();
    });
    stop.disabled = !ACTIVE.has(run.state);
    stop.title = stop.disabled
      ? "only a queued or running run can be stopped"
      : "checkpoint and stop at the next step";
    const resume = button(
      "Resume",
      "jp-mod-accept jp-DistillNb-resume",
      async () => {
        resume.disabled = true; // a double-click sends one request
        try {
          await this._resume(run);
        } finally {
          await this.refresh();
        }
      },
    );
    resume.disabled = !RESUMABLE.has(run.state);
    resume.title = resume.disabled
      ? "only a stopped or failed run can be resumed"
      : "continue from the last checkpoint";
    const open = button("Open", "jp-mod-reject jp-DistillNb-open", () =>
      this._options.openMonitor(run.run_id),
    );
    open.title = "show this run's monitor in a notebook";
    actions.append(stop, resume, open, this._deleteButton(run));

    item.append(details, progress);
    if (run.error && (run.state === "failed" || run.stale)) {
      const error = document.createElement("div");
      error.className = "jp-DistillNb-runError";
      error.textContent = buttonsSay(run.error);
      item.append(error);
    }
    item.append(actions);
    return item;
  }

  /** A run whose files cannot be read: its id, the reason, and Delete. */
  private _renderUnreadable(run: IRunSummary): HTMLElement {
    const item = document.createElement("li");
    item.className = "jp-DistillNb-run jp-DistillNb-unreadable";
    item.dataset.runId = run.run_id;
    const state = document.createElement("span");
    state.className = "jp-DistillNb-state jp-DistillNb-state-unreadable";
    state.textContent = "unreadable";
    const reason = document.createElement("div");
    reason.className = "jp-DistillNb-runError";
    reason.textContent = run.error || "its status or config cannot be read";
    const details = document.createElement("div");
    details.className = "jp-DistillNb-details";
    details.append(state);
    const actions = document.createElement("div");
    actions.className = "jp-DistillNb-actions";
    actions.append(this._deleteButton(run));
    item.append(this._nameLine(run), details, reason, actions);
    return item;
  }

  private _nameLine(run: IRunSummary): HTMLElement {
    const name = document.createElement("div");
    name.className = "jp-DistillNb-runId";
    const id = document.createElement("span");
    id.textContent = run.run_id;
    id.title = run.run_id;
    name.append(id);
    if (run.trust_remote_code === true) {
      const flag = document.createElement("span");
      flag.className = "jp-DistillNb-flag jp-DistillNb-remoteCode";
      flag.textContent = "remote code";
      flag.title =
        "trust_remote_code: true: this run executes model code from the hub; resume it only if you trust that code";
      name.append(flag);
    }
    return name;
  }

  private _deleteButton(run: IRunSummary): HTMLButtonElement {
    const del = button(
      "Delete",
      "jp-mod-reject jp-DistillNb-delete",
      async () => {
        const answer = await showDialog({
          title: "Delete run?",
          body: `Delete run ${run.run_id} and everything in its folder (checkpoints, student, metrics)? This cannot be undone.`,
          buttons: [
            Dialog.cancelButton(),
            Dialog.warnButton({ label: "Delete" }),
          ],
        });
        if (!answer.button.accept) {
          return;
        }
        del.disabled = true;
        try {
          await requestAPI(`runs/${encodeURIComponent(run.run_id)}`, {
            method: "DELETE",
          });
        } finally {
          await this.refresh();
        }
      },
    );
    // an icon keeps Stop, Resume, Open and Delete on one row of a narrow sidebar
    del.replaceChildren(
      deleteIcon.element({ tag: "span", className: "jp-DistillNb-icon" }),
    );
    del.setAttribute("aria-label", "Delete");
    del.disabled = ACTIVE.has(run.state);
    del.title = del.disabled
      ? "stop the run before deleting it"
      : "delete this run's folder";
    return del;
  }

  private async _resume(run: IRunSummary): Promise<void> {
    const url = `runs/${encodeURIComponent(run.run_id)}/resume`;
    if (run.trust_remote_code !== true) {
      await requestAPI(url, { method: "POST" });
      return;
    }
    // the server refuses to run remote code unless the request says so: ask the person first
    const answer = await showDialog({
      title: "Resume a run that runs remote code?",
      body:
        `Run ${run.run_id} has trust_remote_code: true: resuming it executes Python code that ` +
        `came with the model${run.summary?.teacher ? ` ${run.summary.teacher}` : ""}. ` +
        "Resume only if you trust that code.",
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: "Resume and run it" }),
      ],
    });
    if (!answer.button.accept) {
      return;
    }
    await requestAPI(url, {
      method: "POST",
      body: JSON.stringify({ trust_remote_code: true }),
    });
  }

  private _renderError(error: unknown): void {
    this._body.replaceChildren();
    const message = document.createElement("p");
    message.className = "jp-DistillNb-error";
    message.textContent = `Could not load runs: ${
      (error as Error)?.message ?? error
    }. Retrying…`;
    const retry = button("Retry now", "jp-mod-reject jp-DistillNb-retry", () =>
      this.refresh(),
    );
    this._body.append(message, retry);
  }

  private _options: IRunsPanelOptions;
  private _body: HTMLDivElement;
  private _poll: Poll;
}

const STATES = new Set([
  "queued",
  "running",
  "completed",
  "failed",
  "stopped",
  "unreadable",
]);

/** `state` as the suffix of a CSS class: a known state, else "other" (never text from a file). */
export function stateClass(state: unknown): string {
  return typeof state === "string" && STATES.has(state) ? state : "other";
}

/** Messages written for code (`resume()`, `stop()`) as the buttons here say them. */
function buttonsSay(message: unknown): string {
  return String(message)
    .replace(/\bresume\(\)/g, "Resume")
    .replace(/\bstop\(\) it/g, "Stop it");
}

/** "reasons ρ 0.43" from the last eval's reason agreement, or "" when the run does not track it. */
function reasonsText(run: IRunSummary): string {
  const r = run.last_eval?.reason_spearman;
  return typeof r === "number" && Number.isFinite(r)
    ? `reasons ρ ${r.toFixed(2)}`
    : "";
}

/** "minilm-l6 → 3 layers · sst2", or "" when the server sent no summary. */
function summaryText(run: IRunSummary): string {
  const s = run.summary;
  if (!s || typeof s !== "object") {
    return "";
  }
  const teacher = typeof s.teacher === "string" ? shortName(s.teacher) : "?";
  const layers =
    typeof s.student_layers === "number"
      ? `${s.student_layers}-layer student`
      : "student";
  const parts = [`${teacher} → ${layers}`];
  if (typeof s.dataset === "string") {
    parts.push(shortName(s.dataset));
  }
  if (s.objective === "mlm") {
    parts.push("masked LM");
  }
  return parts.join(" · ");
}

/** The last part of a path (teachers and datasets are often absolute paths). */
function shortName(value: string): string {
  const parts = value.split("/").filter((p) => p);
  return parts.length ? parts[parts.length - 1] : value;
}

/** An entry of the list as a run; anything that is not an object with a run_id reads as unreadable. */
function asRun(entry: unknown): IRunSummary {
  if (
    entry &&
    typeof entry === "object" &&
    typeof (entry as any).run_id === "string"
  ) {
    const run = entry as IRunSummary;
    if (typeof run.state !== "string") {
      return { ...run, state: "unreadable", error: run.error ?? "no state" };
    }
    return run;
  }
  return {
    run_id: "?",
    state: "unreadable",
    error: `the server listed ${describe(entry)}`,
  };
}

function describe(value: unknown): string {
  if (value === null) {
    return "null";
  }
  if (typeof value === "string") {
    return `text (${JSON.stringify(value.slice(0, 60))}${value.length > 60 ? "…" : ""})`;
  }
  return Array.isArray(value) ? "a list" : `a ${typeof value}`;
}

/** A button whose async errors show in a dialog instead of vanishing. */
function button(
  label: string,
  className: string,
  onClick: () => Promise<unknown>,
): HTMLButtonElement {
  const node = document.createElement("button");
  node.className = `jp-Button jp-mod-styled ${className}`;
  node.textContent = label;
  node.addEventListener("click", () => {
    onClick().catch((error) => showErrorMessage(`${label} failed`, error));
  });
  return node;
}
