// The auditor's verification page: read the pasted tree head, stream the ledger from the
// console's auditor route, and recompute it with verify.js (what `python -m audit` does).
import { LedgerError, Prepared, parseHead, parseHeadsText, verifyLedger } from "./verify.js";

const root = document.getElementById("ledger-verify");
const form = document.getElementById("verify-form");
const status = document.getElementById("verify-status");
const summary = document.getElementById("verify-summary");
const badLink = document.getElementById("verify-bad-entry");
const label = (name) => root.dataset[name] || name;

function show(text, state) {
  status.textContent = text;
  root.dataset.state = state;
}

function finish(text, ok, extra = "") {
  summary.textContent = text;
  summary.hidden = false;
  summary.className = ok ? "" : "error";
  root.dataset.ok = ok ? "true" : "false";
  show((ok ? label("labelOk") : label("labelFailed")) + extra, "done");
}

/** Every line of the stream, parsed, as it arrives (a line may span many network reads). */
async function* lines(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    let from = 0;
    let newline;
    while ((newline = value.indexOf("\n", from)) >= 0) {
      pending.push(value.slice(from, newline));
      const line = pending.join("");
      pending = [];
      if (line) yield JSON.parse(line);
      from = newline + 1;
    }
    if (from < value.length) pending.push(value.slice(from));
  }
  const rest = pending.join("");
  if (rest.trim()) yield JSON.parse(rest);
}

/** The ledger from the auditor route; its entries are hashed chunk by chunk as they arrive. */
async function load() {
  const response = await fetch(root.dataset.stream, { credentials: "same-origin", headers: { accept: "application/x-ndjson" } });
  if (!response.ok) throw new LedgerError(`${label("labelLoadFailed")} (HTTP ${response.status})`);
  const ledger = { meta: null, heads: [], witness: [], prepared: new Prepared() };
  for await (const item of lines(response)) {
    if (Array.isArray(item)) {
      ledger.prepared.add(item); // a page of entries
      show(`${label("labelLoading")} ${ledger.prepared.rows.length} / ${ledger.meta.size}`, "loading");
    } else if (item.kind === "meta") ledger.meta = item;
    else if (item.kind === "witness") ledger.witness.push(parseHead(item));
    else if (item.kind === "head") ledger.heads.push(parseHead(item));
    else if (item.kind === "subjects") ledger.prepared.addSubjects(item.items);
  }
  if (ledger.meta === null) throw new LedgerError(label("labelLoadFailed"));
  ledger.prepared.close();
  return ledger;
}

async function run(event) {
  event.preventDefault();
  summary.hidden = true;
  badLink.hidden = true;
  delete root.dataset.ok;
  let trusted;
  const pasted = form.elements["trusted_head"].value.trim();
  if (!pasted) {
    finish(`FAILED: ${label("labelNoHead")}`, false);
    return;
  }
  try {
    trusted = parseHeadsText(pasted);
  } catch (exc) {
    finish(`FAILED: ${label("labelBadHead")} (${exc.message})`, false);
    return;
  }
  const started = performance.now();
  try {
    show(label("labelLoading"), "loading");
    const ledger = await load();
    const loaded = performance.now();
    if (ledger.meta.witness === "unreadable") {
      finish("FAILED: the witness file is unreadable", false);
      return;
    }
    show(`${label("labelChecking")} ${ledger.prepared.rows.length}`, "checking");
    const report = await verifyLedger(ledger.prepared.rows, {
      prepared: ledger.prepared,
      heads: ledger.heads,
      witness: ledger.meta.witness === "read" ? ledger.witness : null,
      trusted,
      publicKey: form.elements["public_key"].value.trim(),
      subjects: ledger.prepared.subjects,
      source: "database",
      progress: (done, total) => show(`${label("labelChecking")} ${done} / ${total}`, "checking"),
    });
    const done = performance.now();
    root.dataset.entries = String(report.entries);
    root.dataset.loadMs = String(Math.round(loaded - started));
    root.dataset.checkMs = String(Math.round(done - loaded));
    root.dataset.totalMs = String(Math.round(done - started));
    const seconds = ` · ${((done - started) / 1000).toFixed(2)} s`;
    finish(report.summary(), report.ok, seconds);
    if (report.badSeq !== null) {
      badLink.href = `${root.dataset.ledger}?before=${report.badSeq + 1}`;
      badLink.textContent = `${label("labelBadEntry")} ${report.badSeq}`;
      badLink.hidden = false;
    }
  } catch (exc) {
    finish(`FAILED: ${exc instanceof LedgerError ? exc.message : String(exc)}`, false);
  }
}

form.addEventListener("submit", run);
root.dataset.ready = "true";
