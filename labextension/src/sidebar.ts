import { Dialog, showDialog } from "@jupyterlab/apputils";
import { Message } from "@lumino/messaging";
import { Poll } from "@lumino/polling";
import { Widget } from "@lumino/widgets";

import { IRunSummary, requestAPI } from "./request";
import { button, IRowActions, Pending, RunRow } from "./rows";
import { isolate } from "./text";

export { stateClass } from "./rows";

/** What the panel needs from the app, so it stays testable without one. */
export interface IRunsPanelOptions {
  /** Show a notebook that monitors `runId` (the same one again if it is open or saved). */
  openMonitor: (runId: string) => Promise<unknown>;
  /** Start a notebook from the quickstart template. */
  newNotebook: () => Promise<unknown>;
}

/**
 * Left-sidebar list of distillation runs: name and teacher → student summary, state, the
 * progress of the current phase, last accuracy, and Stop / Resume / Open / Delete buttons,
 * refreshed by a Poll that backs off on errors and idles while the page is hidden.
 *
 * Rows are keyed by run id and updated in place (`RunRow`), and what a button is doing is kept here per
 * run id, so a poll never drops a click, moves keyboard focus, or re-enables a button whose request is in flight.
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
    this._message = document.createElement("div");
    this._message.textContent = "Loading runs…";
    this._list = document.createElement("ul");
    this._list.className = "jp-DistillNb-runs";
    this._body.append(this._message, this._list);
    this.node.append(header, this._body);

    this._actions = {
      stop: (run) =>
        this._act(run.run_id, "stopping", () =>
          requestAPI(`runs/${encodeURIComponent(run.run_id)}/stop`, {
            method: "POST",
          }),
        ),
      resume: (run) =>
        this._act(run.run_id, "confirming", () => this._resume(run)),
      open: (run) => this._options.openMonitor(run.run_id),
      delete: (run) =>
        this._act(run.run_id, "confirming", () => this._delete(run)),
      toggleError: (key) => {
        if (!this._expanded.delete(key)) {
          this._expanded.add(key);
        }
        this._updateRows();
      },
    };

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

  /** Refresh now (after a Stop, or when the panel is shown); nothing once the session is gone. */
  refresh(): Promise<void> {
    return this._sessionLost ? Promise.resolve() : this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    this._settle(Infinity);
    super.dispose();
  }

  private async _refresh(): Promise<void> {
    const seq = ++this._sent;
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
      this._settle(seq);
      const status = (error as any)?.response?.status;
      if (status === 401 || status === 403) {
        // the login or its cookie is gone: every retry would be refused the same way
        this._sessionLost = true;
        this._renderSessionLost(status);
        void this._poll.stop();
        return;
      }
      this._renderError(error);
      throw error; // let the Poll back off
    }
    this._render(runs);
    this._settle(seq);
  }

  private _render(runs: unknown[]): void {
    if (runs.length === 0) {
      this._clearRows();
      this._showMessage(
        "jp-DistillNb-empty",
        'No runs yet… Launch one from a notebook (start with "New notebook") and it appears here.',
      );
      return;
    }
    this._message.hidden = true;
    this._list.hidden = false;
    const rows = new Map<string, RunRow>();
    for (const entry of runs) {
      // one odd entry is shown as unreadable; the other runs list normally
      const run = asRun(entry);
      let key = run.run_id;
      for (let n = 2; rows.has(key); n++) {
        key = `${run.run_id}\u0000${n}`; // the same id twice (a reply that is not the server's): two rows
      }
      let row = this._rows.get(key);
      const kind = run.state === "unreadable" ? "unreadable" : "run";
      if (!row || row.kind !== kind) {
        row = new RunRow(key, run, this._actions);
      }
      row.update(run, this._pending.get(run.run_id), this._expanded.has(key));
      rows.set(key, row);
    }
    for (const [key, row] of this._rows) {
      if (rows.get(key) !== row) {
        row.node.remove();
        this._expanded.delete(key);
      }
    }
    this._rows = rows;
    // move only the rows that are out of place: moving a node would take the focus from its button
    let i = 0;
    for (const row of rows.values()) {
      const at = this._list.children[i++];
      if (at !== row.node) {
        this._list.insertBefore(row.node, at ?? null);
      }
    }
  }

  private _updateRows(): void {
    for (const row of this._rows.values()) {
      row.update(
        row.run,
        this._pending.get(row.run.run_id),
        this._expanded.has(row.key),
      );
    }
  }

  private _clearRows(): void {
    this._rows.clear();
    this._list.replaceChildren();
    this._list.hidden = true;
  }

  private _setPending(runId: string, state: Pending | undefined): void {
    if (state === undefined) {
      this._pending.delete(runId);
    } else {
      this._pending.set(runId, state);
    }
    this._updateRows();
  }

  /**
   * Run a button's `action` for `runId` once at a time: the run's buttons stay disabled (and say what they
   * do) until a list fetched after the action shows its outcome, whatever polls come in between.
   */
  private async _act(
    runId: string,
    state: Pending,
    action: () => Promise<unknown>,
  ): Promise<void> {
    if (this._pending.has(runId)) {
      return; // a double-click sends one request
    }
    this._setPending(runId, state);
    try {
      await action();
    } finally {
      if (this._pending.get(runId) !== "confirming") {
        await this._listedAfterNow(); // the request went out: wait for a list that shows its outcome
      }
      this._setPending(runId, undefined);
    }
  }

  /** Resolves when a list requested from now on has been shown (or after 15 s, or when polling stops). */
  private _listedAfterNow(): Promise<void> {
    if (this._sessionLost || this.isDisposed) {
      return Promise.resolve();
    }
    const after = this._sent;
    const listed = new Promise<void>((resolve) =>
      this._waiters.push({ after, resolve }),
    );
    void this.refresh();
    return Promise.race([
      listed,
      new Promise<void>((resolve) => setTimeout(resolve, 15000)),
    ]);
  }

  /** Wake the actions waiting for a list requested before request number `seq` ended. */
  private _settle(seq: number): void {
    const waiting = this._waiters;
    this._waiters = waiting.filter((w) => w.after >= seq);
    waiting.filter((w) => w.after < seq).forEach((w) => w.resolve());
  }

  private async _delete(run: IRunSummary): Promise<void> {
    const body = document.createElement("div");
    body.append(
      "Delete run ",
      isolate(run.run_id, "jp-DistillNb-runToken"),
      " and everything in its folder (checkpoints, student, metrics)? This cannot be undone.",
    );
    const answer = await showDialog({
      title: "Delete run?",
      body: new Widget({ node: body }),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: "Delete" })],
    });
    if (!answer.button.accept) {
      return;
    }
    this._setPending(run.run_id, "deleting");
    await requestAPI(`runs/${encodeURIComponent(run.run_id)}`, {
      method: "DELETE",
    });
  }

  private async _resume(run: IRunSummary): Promise<void> {
    const url = `runs/${encodeURIComponent(run.run_id)}/resume`;
    if (run.trust_remote_code !== true) {
      this._setPending(run.run_id, "resuming");
      await requestAPI(url, { method: "POST" });
      return;
    }
    // the server refuses to run remote code unless the request says so: ask the person first
    const answer = await showDialog({
      title: "Resume a run that runs remote code?",
      body: new Widget({ node: consentBody(run) }),
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: "Resume and run it" }),
      ],
    });
    if (!answer.button.accept) {
      return;
    }
    this._setPending(run.run_id, "resuming");
    await requestAPI(url, {
      method: "POST",
      body: JSON.stringify({ trust_remote_code: true }),
    });
  }

  private _showMessage(className: string, text: string): HTMLElement {
    this._message.hidden = false;
    this._message.className = "jp-DistillNb-message";
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    this._message.replaceChildren(p);
    return this._message;
  }

  private _renderError(error: unknown): void {
    this._clearRows();
    const message = this._showMessage(
      "jp-DistillNb-error",
      `Could not load runs: ${(error as Error)?.message ?? error}. Retrying…`,
    );
    const retry = button("Retry now", "jp-mod-reject jp-DistillNb-retry", () =>
      this.refresh(),
    );
    message.append(retry);
  }

  private _renderSessionLost(status: number): void {
    this._clearRows();
    const message = this._showMessage(
      "jp-DistillNb-error jp-DistillNb-sessionLost",
      `Your Jupyter session is no longer valid (the server answered ${status} ` +
        `${status === 401 ? "Unauthorized" : "Forbidden"}): reload the page or log in again to see your runs. ` +
        "The list stopped refreshing.",
    );
    const reload = button(
      "Reload page",
      "jp-mod-accept jp-DistillNb-reload",
      async () => window.location.reload(),
    );
    const again = button(
      "Try again",
      "jp-mod-reject jp-DistillNb-retry",
      async () => {
        this._sessionLost = false;
        await this._poll.start(); // ticks at once; a refusal stops it again
      },
    );
    const buttons = document.createElement("div");
    buttons.className = "jp-DistillNb-actions";
    buttons.append(reload, again);
    message.append(buttons);
  }

  private _options: IRunsPanelOptions;
  private _actions: IRowActions;
  private _body: HTMLDivElement;
  private _message: HTMLDivElement;
  private _list: HTMLUListElement;
  private _poll: Poll;
  private _rows = new Map<string, RunRow>();
  private _pending = new Map<string, Pending>();
  private _expanded = new Set<string>();
  private _sessionLost = false;
  private _sent = 0;
  private _waiters: { after: number; resolve: () => void }[] = [];
}

/**
 * The remote-code consent text. The run's files are not ours: its id and teacher appear only as isolated,
 * quoted tokens with every control and bidi character written out, each in an element of its own, so no
 * teacher string can add sentences to the warning or reverse it.
 */
function consentBody(run: IRunSummary): HTMLElement {
  const body = document.createElement("div");
  body.className = "jp-DistillNb-consent";
  const first = document.createElement("p");
  first.append(
    "Run ",
    isolate(run.run_id, "jp-DistillNb-runToken"),
    " has trust_remote_code: true. Resuming it executes Python code that came with its teacher model:",
  );
  const teacher = document.createElement("p");
  const id = run.summary?.teacher;
  if (typeof id === "string" && id) {
    teacher.append(isolate(id, "jp-DistillNb-teacherId"));
  } else {
    teacher.textContent = "(the run's config names no teacher)";
  }
  const warning = document.createElement("p");
  warning.className = "jp-DistillNb-warning";
  warning.textContent = "Resume only if you trust that code.";
  body.append(first, teacher, warning);
  return body;
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
