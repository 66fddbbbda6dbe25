// The standalone verifier (audit/verify.py) recomputed in the browser with WebCrypto.
//
// An entry's hash is SHA-256(0x00 || canonical JSON of its hashed fields), the canonical
// JSON being Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
// of what json.loads made of the stored details: the details text is re-read here with
// Python's number rules (1.0 stays a float, 10**20 stays exact) and re-written with
// Python's float repr. The Merkle tree (RFC 9162) and the Ed25519 tree heads are checked
// as audit/verify.py checks them, and failures are worded and ordered as it words them.

const GENESIS_HASH = "0".repeat(64);
const TRUSTED = "trusted";
const WITNESS = "witness";
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
const ENCODER = new TextEncoder();
const BATCH = 16384;

export class LedgerError extends Error {}

// ---- Python's json.loads, then json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

class PyNumber {
  constructor(text, isFloat, value) {
    this.text = text; // Python's rendering
    this.isFloat = isFloat;
    this.value = value; // a Number (a BigInt for large integers)
  }
}

function pyFloatRepr(x) {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, exp = "0"] = String(Math.abs(x)).split("e");
  const [whole, frac = ""] = mantissa.split(".");
  let digits = (whole + frac).replace(/^0+/, "");
  const lead = (whole + frac).length - digits.length;
  digits = digits.replace(/0+$/, "");
  const decpt = whole.length - lead + Number(exp); // value = 0.DIGITS * 10**decpt
  if (decpt <= -4 || decpt > 16) {
    const e = decpt - 1;
    const rest = digits.length > 1 ? "." + digits.slice(1) : "";
    return `${sign}${digits[0]}${rest}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  if (decpt <= 0) return `${sign}0.${"0".repeat(-decpt)}${digits}`;
  if (decpt >= digits.length) return `${sign}${digits}${"0".repeat(decpt - digits.length)}.0`;
  return `${sign}${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
}

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?/y;
const WS = /[ \t\n\r]*/y;

class PyJson {
  constructor(text) {
    this.text = text;
    this.at = 0;
  }

  fail(what) {
    throw new LedgerError(`${what} at character ${this.at}`);
  }

  space() {
    WS.lastIndex = this.at;
    WS.exec(this.text);
    this.at = WS.lastIndex;
  }

  document() {
    this.space();
    const value = this.value();
    this.space();
    if (this.at !== this.text.length) this.fail("extra data");
    return value;
  }

  value() {
    const t = this.text;
    const c = t[this.at];
    if (c === "{") return this.object();
    if (c === "[") return this.array();
    if (c === '"') return this.string();
    for (const [word, value] of LITERALS) {
      if (t.startsWith(word, this.at)) {
        this.at += word.length;
        return value;
      }
    }
    NUMBER.lastIndex = this.at;
    const m = NUMBER.exec(t);
    if (!m) this.fail("expecting value");
    this.at = NUMBER.lastIndex;
    if (m[1] === undefined && m[2] === undefined) {
      const n = BigInt(m[0]);
      const safe = n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER);
      return new PyNumber(n.toString(), false, safe ? Number(n) : n);
    }
    const x = Number(m[0]);
    return new PyNumber(pyFloatRepr(x), true, x);
  }

  object() {
    const out = Object.create(null); // "__proto__" is a key like any other, as in Python
    this.at++;
    this.space();
    if (this.text[this.at] === "}") {
      this.at++;
      return out;
    }
    for (;;) {
      if (this.text[this.at] !== '"') this.fail("expecting property name");
      const key = this.string();
      this.space();
      if (this.text[this.at] !== ":") this.fail("expecting ':'");
      this.at++;
      this.space();
      out[key] = this.value(); // a repeated key keeps its last value, as in Python
      this.space();
      const c = this.text[this.at++];
      if (c === "}") return out;
      if (c !== ",") this.fail("expecting ',' delimiter");
      this.space();
    }
  }

  array() {
    const out = [];
    this.at++;
    this.space();
    if (this.text[this.at] === "]") {
      this.at++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.space();
      const c = this.text[this.at++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expecting ',' delimiter");
      this.space();
    }
  }

  string() {
    const t = this.text;
    let end = this.at + 1;
    for (;;) {
      end = t.indexOf('"', end);
      if (end < 0) this.fail("unterminated string");
      let slashes = 0;
      while (t[end - 1 - slashes] === "\\") slashes++;
      if (slashes % 2 === 0) break;
      end++;
    }
    const raw = t.slice(this.at, end + 1);
    try {
      // JSON's escapes and its refusal of raw control characters are Python's (strict=True);
      // a lone surrogate survives, as in Python
      const value = JSON.parse(raw);
      this.at = end + 1;
      return value;
    } catch {
      return this.fail("invalid string");
    }
  }
}

const LITERALS = [
  ["null", null],
  ["true", true],
  ["false", false],
  ["NaN", new PyNumber("NaN", true, NaN)],
  ["Infinity", new PyNumber("Infinity", true, Infinity)],
  ["-Infinity", new PyNumber("-Infinity", true, -Infinity)],
];

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function pyString(s) {
  if (SURROGATE.test(s) && LONE_SURROGATE.test(s)) throw new LedgerError("a string holds a lone surrogate (not UTF-8)");
  return JSON.stringify(s); // the same escapes as Python's with ensure_ascii=False
}

function byCodePoint(a, b) {
  // Python orders str by code point; JavaScript's < compares UTF-16 units
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i);
    const y = b.codePointAt(i);
    if (x !== y) return x - y;
    if (x > 0xffff) i++;
  }
  return a.length - b.length;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof PyNumber);
}

function pyDumps(value) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "string") return pyString(value);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : pyFloatRepr(value);
  if (value instanceof PyNumber) return value.text;
  if (Array.isArray(value)) return "[" + value.map(pyDumps).join(",") + "]";
  const keys = Object.keys(value).sort();
  if (keys.some((k) => SURROGATE.test(k))) keys.sort(byCodePoint); // Python orders by code point
  let out = "{";
  for (let i = 0; i < keys.length; i++) {
    out += (i ? "," : "") + pyString(keys[i]) + ":" + pyDumps(value[keys[i]]);
  }
  return out + "}";
}

/** JSON.parse keeping what Python keeps: the source of each number says int or float, and
 * integers beyond 2**53 stay exact (Chromium gives revivers the source text). */
function pyReviver(key, value, context) {
  if (typeof value !== "number") return value;
  const source = context.source;
  if (/[.eE]/.test(source)) return new PyNumber(pyFloatRepr(value), true, value);
  if (Number.isSafeInteger(value)) return value;
  const n = BigInt(source);
  return new PyNumber(n.toString(), false, n);
}

const SOURCE_TEXT = (() => {
  try {
    return JSON.parse("[1.0]", (k, v, c) => (k === "0" ? c && c.source : v))[0] === "1.0";
  } catch {
    return false;
  }
})();
const STRINGS = /"(?:[^"\\]|\\.)*"/g;
const NUMBERS = /-?(\d+)(?:\.(\d+))?([eE][-+]?\d+)?/g;
const SURROGATE = /[\ud800-\udfff]/;

/** Does JSON.parse read some number of ``text`` otherwise than Python (an integral float such
 * as 1.0 or 1e2 becomes an int; an integer past 2**53 loses digits)? A number of at most 15
 * digits with a non-zero fraction stays a non-integral double, so it reads the same. */
function needsSource(text) {
  const bare = text.replace(STRINGS, '""');
  for (const [, whole, fraction, exponent] of bare.matchAll(NUMBERS)) {
    if (exponent !== undefined || whole.length >= 16) return true;
    if (fraction !== undefined && (whole.length + fraction.length >= 16 || /^0+$/.test(fraction))) return true;
  }
  return false;
}

/** What Python's ``json.loads`` makes of ``text``: objects (a repeated key keeps its last
 * value), PyNumbers for integral floats and large integers. JSON.parse reads it (with the
 * numbers' source text when that matters); NaN, Infinity and surrogates go through a reader
 * written after Python's. */
export function pyLoads(text) {
  if (!SURROGATE.test(text)) {
    const reviver = needsSource(text) ? (SOURCE_TEXT ? pyReviver : null) : undefined;
    if (reviver !== null) {
      try {
        return JSON.parse(text, reviver);
      } catch {
        // NaN, Infinity or not JSON: Python's reading decides
      }
    }
  }
  return new PyJson(text).document();
}

/** ``canonical_json(json.loads(text))`` as audit/chain.py writes it. */
export function canonicalJson(text) {
  return pyDumps(pyLoads(text));
}

function pyEquals(a, b) {
  const num = (v) => (v instanceof PyNumber ? v.value : typeof v === "boolean" ? Number(v) : v);
  const [x, y] = [num(a), num(b)];
  if ((typeof x === "number" || typeof x === "bigint") && (typeof y === "number" || typeof y === "bigint")) {
    return x == y; // eslint-disable-line eqeqeq -- Python's 3 == 3.0 == True... on purpose
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) return false;
    return keys.every((k) => Object.hasOwn(b, k) && pyEquals(a[k], b[k]));
  }
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((v, i) => pyEquals(v, b[i]));
  return a === b;
}

// ---- hashing

const SUBTLE = () => globalThis.crypto.subtle;

function toHex(buffer) {
  const bytes = new Uint8Array(buffer);
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i]];
  return out;
}

function fromHex(hex) {
  if (!/^[0-9a-fA-F]*$/.test(hex) || hex.length % 2) throw new LedgerError("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

async function sha256All(inputs) {
  const out = new Array(inputs.length);
  for (let i = 0; i < inputs.length; i += BATCH) {
    const part = await Promise.all(inputs.slice(i, i + BATCH).map((b) => SUBTLE().digest("SHA-256", b)));
    for (let j = 0; j < part.length; j++) out[i + j] = new Uint8Array(part[j]);
  }
  return out;
}

function nodeInput(left, right) {
  const buf = new Uint8Array(65);
  buf[0] = 1;
  buf.set(left, 1);
  buf.set(right, 33);
  return buf;
}

async function nodeHash(left, right) {
  return new Uint8Array(await SUBTLE().digest("SHA-256", nodeInput(left, right)));
}

export const EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** Every level of the Merkle tree over ``leaves``: level k holds the roots of the perfect
 * subtrees of 2**k leaves, left to right (one batch of digests per level). */
async function merkleLevels(leaves) {
  const levels = [leaves];
  for (let level = leaves; level.length > 1; ) {
    const inputs = [];
    for (let i = 0; i + 1 < level.length; i += 2) inputs.push(nodeInput(level[i], level[i + 1]));
    level = await sha256All(inputs);
    levels.push(level);
  }
  return levels;
}

/** MTH of the first ``size`` leaves: the fold of the perfect subtrees it splits into. */
async function rootAt(levels, size) {
  if (size === 0) return EMPTY_ROOT;
  const frontier = [];
  let offset = 0;
  for (let bit = Math.floor(Math.log2(size)) + 1; bit >= 0; bit--) {
    if (size & (2 ** bit) && bit < levels.length) {
      frontier.push(levels[bit][offset / 2 ** bit]);
      offset += 2 ** bit;
    }
  }
  let acc = frontier[frontier.length - 1];
  for (let i = frontier.length - 2; i >= 0; i--) acc = await nodeHash(frontier[i], acc);
  return toHex(acc);
}

// ---- entries

/** An entry as the console's ledger route streams it: the columns in this order, the
 * details as the stored text. */
export const COLUMNS = [
  "seq",
  "recorded_at",
  "actor_id",
  "actor_role",
  "action",
  "subject_id",
  "purpose",
  "legal_basis",
  "request_id",
  "details",
  "prev_hash",
  "entry_hash",
];

function field(value) {
  return value === null ? "null" : pyString(value);
}

function leafText(row) {
  const [seq, recordedAt, actorId, actorRole, action, subjectId, purpose, legalBasis, requestId, details, prev] = row;
  return (
    '\u0000{"action":' + field(action) +
    ',"actor_id":' + field(actorId) +
    ',"actor_role":' + field(actorRole) +
    ',"details":' + canonicalJson(details) +
    ',"legal_basis":' + field(legalBasis) +
    ',"prev_hash":' + field(prev) +
    ',"purpose":' + field(purpose) +
    ',"recorded_at":' + field(recordedAt) +
    ',"request_id":' + field(requestId) +
    ',"seq":' + String(seq) +
    ',"subject_id":' + field(subjectId) +
    "}"
  );
}

/** The bytes an entry's hash covers: 0x00 || canonical JSON of its hashed fields. */
export function leafInput(row) {
  return ENCODER.encode(leafText(row));
}

/** The leaf inputs of rows[start:end] as views into one buffer (one allocation, not one per
 * entry), up to the first entry whose details cannot be read (``bad``). */
function leafInputs(rows, start, end) {
  const texts = [];
  let bad = null;
  let room = 0;
  for (let i = start; i < end; i++) {
    try {
      texts.push(leafText(rows[i]));
    } catch (exc) {
      bad = { index: i, message: exc.message };
      break;
    }
    room += texts[texts.length - 1].length * 3;
  }
  const buffer = new Uint8Array(room);
  const views = new Array(texts.length);
  let at = 0;
  for (let i = 0; i < texts.length; i++) {
    const { written } = ENCODER.encodeInto(texts[i], buffer.subarray(at));
    views[i] = buffer.subarray(at, at + written);
    at += written;
  }
  return { views, bad };
}

/** ``subjects_digest``: count and SHA-256 of the sorted distinct ids joined by newlines. */
export async function subjectsDigest(ids) {
  const distinct = [...new Set(ids)].sort(byCodePoint);
  const hash = await SUBTLE().digest("SHA-256", ENCODER.encode(distinct.join("\n")));
  return { count: distinct.length, sha256: toHex(hash) };
}

// ---- tree heads

const HEAD_STRINGS = ["origin", "head_hash", "signed_at", "key_id", "signature"];

/** ``TreeHead.from_json``: a LedgerError names the field that is wrong. */
export function parseHead(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new LedgerError("a tree head is a JSON object");
  }
  const size = data.size;
  if (typeof size !== "number" || !Number.isInteger(size) || size < 0) {
    throw new LedgerError("size must be a non-negative integer");
  }
  const head = { size };
  for (const name of HEAD_STRINGS) {
    if (typeof data[name] !== "string") throw new LedgerError(`${name} must be a string`);
    head[name] = data[name];
  }
  const root = data.root_hash ?? null;
  if (root !== null && typeof root !== "string") throw new LedgerError("root_hash must be a string");
  head.root_hash = root;
  return head;
}

/** Heads an auditor pastes: one JSON object (``GET /v1/audit/tree-head``) or JSON lines. */
export function parseHeadsText(text) {
  let parsed;
  try {
    parsed = [JSON.parse(text)];
  } catch {
    try {
      parsed = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    } catch (exc) {
      throw new LedgerError(`not JSON (${exc.message})`);
    }
  }
  return parsed.map(parseHead);
}

function signedBytes(head) {
  if (head.root_hash === null) return ENCODER.encode(`${head.origin}\n${head.size}\n${head.head_hash}\n`);
  return ENCODER.encode(
    `consentry-tree-head/v1\n${head.origin}\n${head.size}\n${head.root_hash}\n` +
      `${head.head_hash}\n${head.signed_at}\n${head.key_id}\n`,
  );
}

function strictBase64(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) throw new LedgerError("not base64");
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** The Ed25519 public key (base64 of its 32 raw bytes) and its key id. */
export async function loadPublicKey(text) {
  let raw;
  try {
    raw = strictBase64(text.trim());
  } catch {
    throw new LedgerError("the public key is not a base64 Ed25519 public key");
  }
  if (raw.length !== 32) throw new LedgerError("the public key is not a base64 Ed25519 public key");
  const key = await SUBTLE().importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
  const kid = toHex(await SUBTLE().digest("SHA-256", raw)).slice(0, 16);
  return { key, kid };
}

async function signatureValid(head, publicKey) {
  let sig;
  try {
    sig = strictBase64(head.signature);
  } catch {
    return false;
  }
  try {
    return await SUBTLE().verify("Ed25519", publicKey.key, sig, signedBytes(head));
  } catch {
    return false;
  }
}

// ---- the report

function where(f) {
  if (f.seq !== null) return `entry ${f.seq}`;
  if (f.headSize !== null) {
    const label = f.source === TRUSTED ? "trusted tree head" : "tree head";
    const origin = f.source && f.source !== TRUSTED ? ` (${f.source})` : "";
    return `${label} ${f.headSize}${origin}`;
  }
  return "ledger";
}

function failure(reason, seq = null, headSize = null, source = "") {
  return { reason, seq, headSize, source };
}

export class Report {
  constructor() {
    this.ok = true;
    this.entries = 0;
    this.checkpoints = 0;
    this.failures = [];
    this.warnings = [];
    this.newestSigned = null;
    this.unsigned = 0;
    this.badSeq = null;
    this.badHead = null;
  }

  fail(f) {
    this.failures.push(f);
    if (this.ok) {
      this.ok = false;
      this.badSeq = f.seq;
      this.badHead = f.headSize;
    }
    return this;
  }

  /** ``VerificationReport.summary()``, word for word. */
  summary() {
    if (this.ok) {
      const covered =
        this.newestSigned !== null ? `newest signed head covers ${this.newestSigned}` : "no signed head";
      return (
        `OK: ${this.entries} entries, ${this.checkpoints} signed tree heads verified; ` +
        `${covered}, ${this.unsigned} unsigned entries after it`
      );
    }
    const [first, ...rest] = this.failures;
    const lines = [`FAILED at ${where(first)}: ${first.reason}`];
    for (const f of rest.slice(0, 20)) lines.push(`  also at ${where(f)}: ${f.reason}`);
    if (rest.length > 20) lines.push(`  and ${rest.length - 20} more failures`);
    return lines.join("\n");
  }
}

// ---- hashing while the entries stream in

const CHUNK_LEVELS = 13; // a chunk of 8,192 entries: its subtree is a perfect subtree of the ledger's tree

async function hashChunk(rows, start, end) {
  const { views, bad } = leafInputs(rows, start, end);
  const hashes = await sha256All(views);
  let levels = null;
  try {
    const stored = [];
    for (let i = start; i < end; i++) stored.push(fromHex(rows[i][11]));
    levels = await merkleLevels(stored);
  } catch {
    // a stored hash that is not hex fails its entry's hash check first
  }
  return { start, end, hashes, bad, levels };
}

/** Entries as they arrive, hashed chunk by chunk while the rest streams in: each chunk's
 * leaf hashes (of its content) and the Merkle subtree over its stored hashes. */
export class Prepared {
  /** ``chunkLevels``: chunks of 2**chunkLevels entries (13; tests use small chunks). */
  constructor(chunkLevels = null) {
    this.chunkLevels = chunkLevels ?? CHUNK_LEVELS;
    this.chunk = 2 ** this.chunkLevels;
    this.rows = [];
    this.jobs = [];
    this.started = 0;
    this.subjects = [];
    this.subjectDigests = [];
  }

  add(rows) {
    for (const row of rows) this.rows.push(row);
    while (this.rows.length - this.started >= this.chunk) this.launch(this.chunk);
    return this;
  }

  close() {
    if (this.rows.length > this.started) this.launch(this.rows.length - this.started);
    return this;
  }

  /** Group entries' subject lists from the index ([seq, ids] pairs), digested as they come. */
  addSubjects(items) {
    for (const item of items) {
      this.subjects.push(item);
      this.subjectDigests.push(subjectsDigest(item[1]));
    }
    return this;
  }

  launch(n) {
    const start = this.started;
    this.started += n;
    this.jobs.push(hashChunk(this.rows, start, start + n));
  }

  /** Every level of the Merkle tree over the stored hashes (chunks' subtrees, then above). */
  async levels() {
    const chunks = await Promise.all(this.jobs);
    if (chunks.some((c) => c.levels === null)) throw new LedgerError("a stored hash is not hex");
    const levels = [];
    for (let k = 0; k <= this.chunkLevels; k++) {
      const level = [];
      for (const c of chunks) if (k < c.levels.length) for (const node of c.levels[k]) level.push(node);
      if (!level.length) break;
      levels.push(level);
    }
    const top = levels[levels.length - 1];
    if (levels.length === this.chunkLevels + 1 && top.length > 1) levels.push(...(await merkleLevels(top)).slice(1));
    return levels;
  }
}

/** The first entry that fails in order, as audit/verify.py finds it (sequence, link, hash). */
async function checkEntries(prepared, report, progress) {
  const rows = prepared.rows;
  let expected = 1;
  let prev = GENESIS_HASH;
  let structural = null;
  let limit = rows.length;
  for (let i = 0; i < rows.length; i++) {
    const seq = rows[i][0];
    if (seq !== expected) {
      limit = i;
      structural =
        seq > expected
          ? failure(`sequence jumps from ${expected - 1} to ${seq}: entries removed`, expected)
          : failure(`out of order: found ${seq} where ${expected} was expected`, seq);
      break;
    }
    if (rows[i][10] !== prev) {
      limit = i;
      structural = failure("previous-hash link does not match the entry before it (reordered or removed)", seq);
      break;
    }
    prev = rows[i][11];
    expected++;
  }
  for (const job of prepared.jobs) {
    const { start, end, hashes, bad } = await job;
    if (start >= limit) break;
    for (let i = start; i < Math.min(end, limit); i++) {
      if (bad && bad.index === i) {
        report.entries = i + 1;
        return failure(`its details are not what json.loads reads (${bad.message}): edited`, rows[i][0]);
      }
      if (toHex(hashes[i - start]) !== rows[i][11]) {
        report.entries = i + 1;
        return failure("content does not match its hash (edited)", rows[i][0]);
      }
    }
    if (progress) progress(Math.min(end, limit), rows.length);
  }
  report.entries = structural ? limit + 1 : rows.length;
  return structural;
}

async function subjectFailures(rows, subjects, computed) {
  const digests = new Map();
  for (const row of rows) {
    if (row[9].includes("subjects") || row[9].includes("\\u")) {
      const details = pyLoads(row[9]);
      if (isObject(details) && Object.hasOwn(details, "subjects")) digests.set(row[0], details.subjects);
    }
  }
  const failures = [];
  const seen = new Set();
  const indexed = await Promise.all(computed || subjects.map(([, ids]) => subjectsDigest(ids)));
  for (const [i, [seq]] of subjects.entries()) {
    seen.add(seq);
    if (!digests.has(seq)) {
      failures.push(failure("the subject index names people for an entry that lists none (added)", seq));
    } else if (!pyEquals(indexed[i], digests.get(seq))) {
      failures.push(failure("its subjects in the index differ from the digest it carries (altered)", seq));
    }
  }
  const unseen = [...digests.keys()].filter((s) => !seen.has(s)).sort((a, b) => a - b);
  for (const seq of unseen) {
    const digest = digests.get(seq);
    const count = isObject(digest) && Object.hasOwn(digest, "count") ? digest.count : null;
    const truthy =
      count instanceof PyNumber ? count.value != 0 : isObject(count) ? Object.keys(count).length > 0 : Boolean(count && count.length !== 0); // eslint-disable-line eqeqeq
    if (truthy) failures.push(failure("its subjects are missing from the index (removed)", seq));
  }
  return failures.sort((a, b) => a.seq - b.seq);
}

/**
 * ``verify_ledger`` of audit/verify.py over entries in the route's column order.
 *
 * options: heads (the ledger's), witness (null: not read), trusted, publicKey (base64),
 * subjects ([seq, ids] pairs or null), source ("database" or "export"), snapshot,
 * requireSignedTail, progress(done, total), prepared (a Prepared fed with ``rows`` as they
 * arrived, closed) or chunkLevels (for the Prepared made here).
 */
export async function verifyLedger(rows, options = {}) {
  const {
    heads = [],
    witness = null,
    trusted = [],
    publicKey = null,
    subjects = null,
    source = "ledger",
    snapshot = false,
    requireSignedTail = false,
    progress = null,
  } = options;
  const prepared = options.prepared || new Prepared(options.chunkLevels).add(rows).close();
  const report = new Report();
  if (!publicKey) {
    return report.fail(failure("no public key given: signed tree heads cannot be checked (pass --public-key)"));
  }
  const key = await loadPublicKey(publicKey);
  const entryFailure = await checkEntries(prepared, report, progress);
  if (entryFailure) return report.fail(entryFailure);
  const count = rows.length;

  if (subjects !== null) {
    const computed = subjects === prepared.subjects ? prepared.subjectDigests : null;
    for (const f of await subjectFailures(rows, subjects, computed)) report.fail(f);
  }

  const labelled = [
    ...heads.map((h) => [source, h]),
    ...(witness || []).map((h) => [WITNESS, h]),
    ...trusted.map((h) => [TRUSTED, h]),
  ];
  labelled.sort((a, b) => a[1].size - b[1].size || (a[0] !== TRUSTED) - (b[0] !== TRUSTED));
  const levels = labelled.some(([, h]) => h.size > 0 && h.size <= count) ? await prepared.levels() : [];
  const roots = new Map();
  const verified = new Set();
  let newerThanSnapshot = 0;
  for (const [src, head] of labelled) {
    const fail = (reason) => report.fail(failure(reason, null, head.size, src));
    if (head.key_id !== key.kid) {
      fail(`signed by another key (key id ${head.key_id}), not the public key given (${key.kid})`);
      continue;
    }
    if (!(await signatureValid(head, key))) {
      fail("signature does not verify with the public key (forged or altered head)");
      continue;
    }
    if (head.size > count) {
      if (src === WITNESS && snapshot) {
        newerThanSnapshot++;
        continue;
      }
      fail(
        src === TRUSTED
          ? `the ledger (${count} entries) is shorter than this trusted head: entries removed`
          : `signed head covers ${head.size} entries but the ledger ends at ${count} (truncated)`,
      );
      continue;
    }
    const chain = head.size === 0 ? GENESIS_HASH : rows[head.size - 1][11];
    if (head.root_hash !== null) {
      if (!roots.has(head.size)) roots.set(head.size, await rootAt(levels, head.size));
      if (roots.get(head.size) !== head.root_hash || chain !== head.head_hash) {
        fail(
          src === TRUSTED
            ? `the ledger's tree at size ${head.size} differs from this trusted head (forked or history rewritten)`
            : "recomputed Merkle root differs from the signed one (history rewritten)",
        );
        continue;
      }
    } else if (chain !== head.head_hash) {
      fail("chain differs from the signed checkpoint at this entry (history rewritten)");
      continue;
    }
    verified.add(head.size);
  }

  if (witness !== null) {
    const inLedger = new Set(heads.map((h) => h.size));
    const witnessed = new Set(witness.map((h) => h.size));
    const missing = [...witnessed].filter((s) => !inLedger.has(s)).sort((a, b) => a - b);
    if (!snapshot) {
      for (const size of missing) {
        report.fail(failure(`is in the witness file but no longer in the ${source} (deleted)`, null, size, WITNESS));
      }
    }
    const unwitnessed = [...inLedger].filter((s) => !witnessed.has(s)).length;
    if (unwitnessed) report.warnings.push(`${unwitnessed} signed heads of the ${source} are not in the witness file`);
  }
  if (newerThanSnapshot) report.warnings.push(`${newerThanSnapshot} witnessed heads are newer than this export (not checked)`);

  report.checkpoints = verified.size;
  const newest = verified.size ? Math.max(...verified) : null;
  report.newestSigned = newest;
  report.unsigned = count - (newest || 0);
  if (count && !newest) {
    report.fail(failure(`${count} entries and no valid signed tree head covers them`));
  } else if (requireSignedTail && report.unsigned) {
    report.fail(failure(`${report.unsigned} entries after the newest signed tree head (${newest}) are unsigned`, (newest || 0) + 1));
  }
  return report;
}
