import { showErrorMessage } from "@jupyterlab/apputils";
import { deleteIcon } from "@jupyterlab/ui-components";

import { runProgress } from "./progress";
import { IRunSummary } from "./request";
import { clip, displayName, noBidi, visibleToken } from "./text";

/** What a row's button is doing now; kept by the panel per run id, so a poll never forgets it. */
export type Pending = "confirming" | "stopping" | "resuming" | "deleting";

/** The panel's side of a row's buttons; each reads the row's current run when clicked. */
export interface IRowActions {
  stop(run: IRunSummary): Promise<unknown>;
  resume(run: IRunSummary): Promise<unknown>;
  open(run: IRunSummary): Promise<unknown>;
  delete(run: IRunSummary): Promise<unknown>;
  toggleError(key: string): void;
}

export const ACTIVE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["stopped", "failed"]);
const STEPS_MAX = 160; // characters of a phase line / queued message shown; the rest is in its title
const ERROR_LONG = 240; // an error longer than this (or of more than 4 lines) is clamped, with Show more

/**
 * One run of the sidebar list. Built once per run id and then updated in place on every poll: its buttons
 * stay the same elements, so a click in progress, keyboard focus and a screen reader's place survive polls.
 */
export class RunRow {
  readonly node: HTMLLIElement;
  readonly kind: "run" | "unreadable";
  run: IRunSummary;

  constructor(
    readonly key: string,
    run: IRunSummary,
    actions: IRowActions,
  ) {
    this.run = run;
    this.kind = run.state === "unreadable" ? "unreadable" : "run";
    const node = (this.node = document.createElement("li"));
    node.className =
      this.kind === "run"
        ? "jp-DistillNb-run"
        : "jp-DistillNb-run jp-DistillNb-unreadable";

    const name = div("jp-DistillNb-runId");
    this._id = document.createElement("span");
    this._flag = document.createElement("span");
    this._flag.className = "jp-DistillNb-flag jp-DistillNb-remoteCode";
    this._flag.textContent = "remote code";
    this._flag.title =
      "trust_remote_code: true: this run executes model code from the hub; resume it only if you trust that code";
    name.append(this._id, this._flag);

    this._summary = div("jp-DistillNb-summary");
    this._state = document.createElement("span");
    this._steps = span("jp-DistillNb-steps");
    this._accuracy = span("jp-DistillNb-accuracy");
    this._reasons = span("jp-DistillNb-reasons");
    this._reasons.title =
      "reason agreement at the last eval: mean Spearman correlation of the student's token attributions " +
      "with the teacher's on the run's probe texts (1 = same reasons)";
    const details = div("jp-DistillNb-details");
    this._progress = document.createElement("progress");
    this._progress.className = "jp-DistillNb-progress";

    this._error = div("jp-DistillNb-runError");
    this._more = button("Show more", "jp-DistillNb-more", async () =>
      actions.toggleError(this.key),
    );

    const bar = div("jp-DistillNb-actions");
    this._stop = button("Stop", "jp-mod-warn jp-DistillNb-stop", () =>
      actions.stop(this.run),
    );
    this._resume = button("Resume", "jp-mod-accept jp-DistillNb-resume", () =>
      actions.resume(this.run),
    );
    this._open = button("Open", "jp-mod-reject jp-DistillNb-open", () =>
      actions.open(this.run),
    );
    this._open.title = "show this run's monitor in a notebook";
    this._delete = button("Delete", "jp-mod-reject jp-DistillNb-delete", () =>
      actions.delete(this.run),
    );
    // an icon keeps Stop, Resume, Open and Delete on one row of a narrow sidebar
    this._delete.replaceChildren(
      deleteIcon.element({ tag: "span", className: "jp-DistillNb-icon" }),
    );
    this._delete.setAttribute("aria-label", "Delete");

    this._name = name;
    this._details = details;
    this._bar = bar;
    if (this.kind === "run") {
      bar.append(this._stop, this._resume, this._open, this._delete);
    } else {
      bar.append(this._delete);
    }
  }

  /** Show `run` (the newest listing), with the action in flight for it, if any. */
  update(run: IRunSummary, pending?: Pending, expanded = false): void {
    this.run = run;
    this.node.dataset.runId = run.run_id;
    setText(this._id, run.run_id);
    this._id.title = run.run_id;
    place(this._name, [this._id, run.trust_remote_code === true && this._flag]);
    // the state comes from the run's status.json: only a known state becomes part of a class name
    this._state.className = `jp-DistillNb-state jp-DistillNb-state-${stateClass(run.state)}`;
    setText(this._state, this.kind === "run" ? run.state : "unreadable");
    this._state.title =
      this.kind === "run" && run.error ? noBidi(buttonsSay(run.error)) : "";

    let error = "";
    if (this.kind === "unreadable") {
      error = run.error || "its status or config cannot be read";
    } else if (run.error && (run.state === "failed" || run.stale)) {
      error = buttonsSay(run.error);
    }
    this._showError(noBidi(String(error)), expanded);

    const busy = pending !== undefined;
    this._delete.disabled = busy || ACTIVE.has(run.state);
    this._delete.title =
      pending === "deleting"
        ? "deleting…"
        : ACTIVE.has(run.state)
          ? "stop the run before deleting it"
          : "delete this run's folder";
    const hasError = !!this._error.textContent;
    const more = hasError && this._long;
    if (this.kind === "unreadable") {
      place(this._details, [this._state]);
      place(this.node, [
        this._name,
        this._details,
        hasError && this._error,
        more && this._more,
        this._bar,
      ]);
      return;
    }

    const summary = summaryText(run);
    setText(this._summary, summary);
    this._summary.title = summary;

    const p = runProgress(run);
    this._progress.max = p.max;
    this._progress.value = p.value;
    // a queued message is any text a launcher wrote: clipped here, whole in the title
    const steps = noBidi(p.text);
    setText(this._steps, clip(steps, STEPS_MAX));
    this._steps.title = steps.length > STEPS_MAX ? clip(steps, 4000) : "";

    const acc = run.last_eval?.accuracy;
    const n = run.last_eval?.eval_examples;
    setText(
      this._accuracy,
      typeof acc === "number" ? `acc ${(acc * 100).toFixed(1)}%` : "acc –",
    );
    this._accuracy.title =
      typeof acc === "number"
        ? `student accuracy at step ${run.last_eval?.step ?? "?"}` +
          (typeof n === "number" ? ` on ${n} eval examples` : "")
        : "";
    const reasons = reasonsText(run);
    setText(this._reasons, reasons);
    // optional parts are left out, not hidden: what is not there is not in the DOM
    place(this._details, [
      this._state,
      this._steps,
      this._accuracy,
      !!reasons && this._reasons,
    ]);
    place(this.node, [
      this._name,
      !!summary && this._summary,
      this._details,
      this._progress,
      hasError && this._error,
      more && this._more,
      this._bar,
    ]);

    this._stop.disabled = busy || !ACTIVE.has(run.state);
    setText(this._stop, pending === "stopping" ? "stopping…" : "Stop");
    this._stop.title = !ACTIVE.has(run.state)
      ? "only a queued or running run can be stopped"
      : "checkpoint and stop at the next step";
    this._resume.disabled = busy || !RESUMABLE.has(run.state);
    setText(this._resume, pending === "resuming" ? "resuming…" : "Resume");
    this._resume.title =
      pending === "resuming"
        ? "waiting for the server to start the run"
        : !RESUMABLE.has(run.state)
          ? "only a stopped or failed run can be resumed"
          : "continue from the last checkpoint";
  }

  /** The error, clamped to a few lines when long (CSS), whole in its title and after Show more. */
  private _showError(text: string, expanded: boolean): void {
    setText(this._error, text);
    const long = text.length > ERROR_LONG || text.split("\n").length > 4;
    this._long = long;
    this._error.title = long ? clip(text, 8000) : "";
    this._error.classList.toggle("jp-mod-clamped", long && !expanded);
    setText(this._more, expanded ? "Show less" : "Show more");
    this._more.setAttribute("aria-expanded", String(expanded));
  }

  private _name: HTMLDivElement;
  private _details: HTMLDivElement;
  private _bar: HTMLDivElement;
  private _long = false;
  private _id: HTMLSpanElement;
  private _flag: HTMLSpanElement;
  private _summary: HTMLDivElement;
  private _state: HTMLSpanElement;
  private _steps: HTMLSpanElement;
  private _accuracy: HTMLSpanElement;
  private _reasons: HTMLSpanElement;
  private _progress: HTMLProgressElement;
  private _error: HTMLDivElement;
  private _more: HTMLButtonElement;
  private _stop: HTMLButtonElement;
  private _resume: HTMLButtonElement;
  private _open: HTMLButtonElement;
  private _delete: HTMLButtonElement;
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

/** "minilm-l6 → 3-layer student · sst2" (hub ids as org/name), or "" when the server sent no summary. */
export function summaryText(run: IRunSummary): string {
  const s = run.summary;
  if (!s || typeof s !== "object") {
    return "";
  }
  const name = (value: string) => visibleToken(displayName(value), 80);
  const teacher = typeof s.teacher === "string" ? name(s.teacher) : "?";
  const layers =
    typeof s.student_layers === "number"
      ? `${s.student_layers}-layer student`
      : "student";
  const parts = [`${teacher} → ${layers}`];
  if (typeof s.dataset === "string") {
    parts.push(name(s.dataset));
  }
  if (s.objective === "mlm") {
    parts.push("masked LM");
  }
  return parts.join(" · ");
}

/**
 * Make `parent`'s children exactly `children` (falsy entries left out), in order, moving only what is out of
 * place: a node that moves loses keyboard focus, so the buttons stay where they are.
 */
function place(parent: HTMLElement, children: (HTMLElement | false)[]): void {
  const wanted = children.filter((c): c is HTMLElement => !!c);
  wanted.forEach((child, i) => {
    const at = parent.children[i];
    if (at !== child) {
      parent.insertBefore(child, at ?? null);
    }
  });
  while (parent.children.length > wanted.length) {
    parent.lastElementChild!.remove();
  }
}

function setText(node: HTMLElement, text: string): void {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}

function div(className: string): HTMLDivElement {
  const node = document.createElement("div");
  node.className = className;
  return node;
}

function span(className: string): HTMLSpanElement {
  const node = document.createElement("span");
  node.className = className;
  return node;
}

/** A button whose async errors show in a dialog instead of vanishing. */
export function button(
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
