import { showErrorMessage } from "@jupyterlab/apputils";
import { Message } from "@lumino/messaging";
import { Poll } from "@lumino/polling";
import { Widget } from "@lumino/widgets";

import { IRunSummary, requestAPI } from "./request";

/** What the panel needs from the app, so it stays testable without one. */
export interface IRunsPanelOptions {
  /** Open a notebook that monitors `runId`. */
  openMonitor: (runId: string) => Promise<unknown>;
  /** Start a notebook from the quickstart template. */
  newNotebook: () => Promise<unknown>;
}

const ACTIVE = new Set(["queued", "running"]);

/**
 * Left-sidebar list of distillation runs with their state, progress, last
 * accuracy and Stop / Open buttons, refreshed by a Poll that backs off on
 * errors and idles while the page is hidden.
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
    let runs: IRunSummary[];
    try {
      runs = await requestAPI<IRunSummary[]>("runs");
    } catch (error) {
      this._renderError(error);
      throw error; // let the Poll back off
    }
    this._render(runs);
  }

  private _render(runs: IRunSummary[]): void {
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
    for (const run of runs) {
      list.append(this._renderRun(run));
    }
    this._body.append(list);
  }

  private _renderRun(run: IRunSummary): HTMLElement {
    const item = document.createElement("li");
    item.className = "jp-DistillNb-run";
    item.dataset.runId = run.run_id;

    const name = document.createElement("div");
    name.className = "jp-DistillNb-runId";
    name.textContent = run.run_id;

    const state = document.createElement("span");
    state.className = `jp-DistillNb-state jp-DistillNb-state-${run.state}`;
    state.textContent = run.state;
    if (run.error) {
      state.title = run.error;
    }

    const step = run.step ?? 0;
    const total = run.total_steps ?? null;
    const progress = document.createElement("progress");
    progress.className = "jp-DistillNb-progress";
    progress.max = total || 1;
    progress.value = total ? Math.min(step, total) : 0;
    const steps = document.createElement("span");
    steps.className = "jp-DistillNb-steps";
    steps.textContent = `step ${step}/${total ?? "?"}`;

    const accuracy = document.createElement("span");
    accuracy.className = "jp-DistillNb-accuracy";
    const acc = run.last_eval?.accuracy;
    accuracy.textContent =
      typeof acc === "number" ? `acc ${(acc * 100).toFixed(1)}%` : "acc –";

    const details = document.createElement("div");
    details.className = "jp-DistillNb-details";
    details.append(state, steps, accuracy);

    const stop = button("Stop", "jp-mod-warn jp-DistillNb-stop", async () => {
      stop.disabled = true;
      await requestAPI(`runs/${encodeURIComponent(run.run_id)}/stop`, {
        method: "POST",
      });
      await this.refresh();
    });
    stop.disabled = !ACTIVE.has(run.state);
    const open = button(
      "Open in notebook",
      "jp-mod-reject jp-DistillNb-open",
      () => this._options.openMonitor(run.run_id),
    );
    const actions = document.createElement("div");
    actions.className = "jp-DistillNb-actions";
    actions.append(stop, open);

    item.append(name, details, progress, actions);
    return item;
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
