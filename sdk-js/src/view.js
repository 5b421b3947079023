// The view as a projection sees it: JSON documents under string keys.
//
// A batch's reads and writes go through an overlay. A document read or updated stays parsed
// for the rest of the batch, and every changed key is encoded and handed to the host once,
// when the batch ends: a projection that updates the same documents for thousands of events
// pays for JSON and for host calls per key, not per event.

const encoder = new TextEncoder();
const utf8 = new TextDecoder('utf-8', { fatal: true });

// A batch's documents live in two maps, a key in at most one of them. `edited` holds the
// documents changed in this batch, parsed (the hot path: `edit` of a key edited before is one
// lookup); `overlay` holds the other keys the batch touched as entries `{ state, value }`:
const STORED = 0; // `value` is the stored bytes (Uint8Array), or null for no document
const PARSED = 1; // `value` is the parsed document, unchanged
const WRITTEN = 2; // `value` is bytes to store, or null to delete, set in this batch

// `write-many`'s length of a deleted document (sdk/wit/projection.wit).
const DELETED = 0xffffffff;

/** Where documents live between batches: the host's view in a component, a Map in tests. */
export class MapBackend {
  constructor(entries) {
    /** key -> Uint8Array */
    this.documents = new Map(entries);
  }
  get(key) {
    return this.documents.get(key);
  }
  put(key, value) {
    this.documents.set(key, value);
  }
  delete(key) {
    this.documents.delete(key);
  }
  /** Applies changes framed as the host's `write-many` takes them. */
  writeMany(changes) {
    const data = new DataView(changes.buffer, changes.byteOffset, changes.byteLength);
    let at = 0;
    const length = () => {
      if (at + 4 > changes.byteLength) throw new Error('write-many: the changes are truncated');
      at += 4;
      return data.getUint32(at - 4, true);
    };
    const bytes = (n) => {
      if (at + n > changes.byteLength) throw new Error('write-many: the changes are truncated');
      at += n;
      return changes.slice(at - n, at);
    };
    while (at < changes.byteLength) {
      const key = utf8.decode(bytes(length()));
      const n = length();
      if (n === DELETED) this.delete(key);
      else this.put(key, bytes(n));
    }
  }
}

export class View {
  /** `backend` has `get(key) -> Uint8Array | undefined`, `put(key, bytes)`, `delete(key)`. */
  constructor(backend) {
    this._backend = backend;
    /** key -> the document, changed in this batch */
    this._edited = new Map();
    /** key -> { state, value }, for the other keys the batch touched */
    this._overlay = new Map();
  }

  /**
   * The document under `key`, or `undefined`. The object is the view's own for this batch:
   * change it through `update`, or replace it with `put`, so the change is written.
   */
  get(key) {
    const doc = this._edited.get(key);
    if (doc !== undefined) return doc;
    const entry = this._entry(key);
    if (entry.state === PARSED) return entry.value;
    if (entry.value === null) return undefined;
    return this._parse(key, entry);
  }

  /** Whether a document is stored under `key`. */
  has(key) {
    if (this._edited.has(key)) return true;
    const entry = this._entry(key);
    return entry.state === PARSED || entry.value !== null;
  }

  /** Stores `doc` (any JSON value) under `key`. */
  put(key, doc) {
    if (doc === undefined) throw new TypeError(`put(${JSON.stringify(key)}): the document is undefined; use delete to remove one`);
    this._edited.set(key, doc);
    this._overlay.delete(key);
  }

  /**
   * Changes the document under `key` in place, starting from `init()` (by default `{}`) when
   * there is none, and stores it. Returns what `change` returns.
   */
  update(key, change, init) {
    return change(this.edit(key, init));
  }

  /**
   * The document under `key` (or `init()`, by default `{}`, when there is none) to change in
   * place: it is written when the batch ends. The cheapest way to change a document (no
   * callback), and what `update` does around its callback.
   */
  edit(key, init) {
    // Most projections' hot path, in an interpreter where every call and property lookup
    // costs: a document edited before in this batch is one lookup.
    const doc = this._edited.get(key);
    if (doc !== undefined) return doc;
    return this._editFirst(key, init);
  }

  /** `edit` of a key not edited yet in this batch. */
  _editFirst(key, init) {
    const entry = this._overlay.get(key);
    let doc;
    if (entry === undefined) {
      const bytes = this._backend.get(key);
      doc = bytes === undefined || bytes === null ? undefined : parse(key, bytes);
    } else {
      this._overlay.delete(key);
      if (entry.state === PARSED) doc = entry.value;
      else if (entry.value !== null) doc = parse(key, entry.value);
    }
    if (doc === undefined) doc = init === undefined ? {} : init();
    this._edited.set(key, doc);
    return doc;
  }

  /** Like `update`, but only when a document exists; returns `undefined` otherwise. */
  updateExisting(key, change) {
    let doc = this._edited.get(key);
    if (doc === undefined) {
      if (!this.has(key)) return undefined;
      doc = this.edit(key);
    }
    return change(doc);
  }

  /** Removes the document under `key`, if any. */
  delete(key) {
    this._edited.delete(key);
    this._overlay.set(key, { state: WRITTEN, value: null });
  }

  /** The stored bytes under `key`, or `undefined`. */
  getBytes(key) {
    const doc = this._edited.get(key);
    if (doc !== undefined) return encoder.encode(JSON.stringify(doc));
    const entry = this._entry(key);
    if (entry.state === PARSED) return encoder.encode(JSON.stringify(entry.value));
    return entry.value ?? undefined;
  }

  /** Stores raw bytes under `key`. */
  putBytes(key, bytes) {
    this._edited.delete(key);
    this._overlay.set(key, { state: WRITTEN, value: bytes });
  }

  /**
   * Writes every document changed in this batch to the backend; the SDK calls it. A backend
   * with `writeMany` (the host's view since contract 0.1.1) gets them all in one call: a host
   * call costs about 10 µs in a component's interpreter, the framing of a document far less.
   */
  flush() {
    const backend = this._backend;
    // The changes: key, then bytes to store or null to delete.
    const parts = [];
    for (const [key, doc] of this._edited) parts.push(key, encode(key, doc));
    for (const [key, entry] of this._overlay) {
      if (entry.state === WRITTEN) parts.push(key, entry.value);
    }
    this._edited.clear();
    this._overlay.clear();
    if (typeof backend.writeMany !== 'function') {
      for (let i = 0; i < parts.length; i += 2) {
        if (parts[i + 1] === null) backend.delete(parts[i]);
        else backend.put(parts[i], parts[i + 1]);
      }
      return;
    }
    if (parts.length === 0) return;
    // Framed into one buffer: u32 n + key, u32 n + document (n = DELETED, no bytes, to delete).
    let size = 0;
    for (let i = 0; i < parts.length; i += 2) {
      parts[i] = encoder.encode(parts[i]);
      size += 8 + parts[i].byteLength + (parts[i + 1] === null ? 0 : parts[i + 1].byteLength);
    }
    const out = new Uint8Array(size);
    const data = new DataView(out.buffer);
    let at = 0;
    for (let i = 0; i < parts.length; i += 2) {
      const k = parts[i];
      const value = parts[i + 1];
      data.setUint32(at, k.byteLength, true);
      out.set(k, at + 4);
      at += 4 + k.byteLength;
      if (value === null) {
        data.setUint32(at, DELETED, true);
        at += 4;
      } else {
        data.setUint32(at, value.byteLength, true);
        out.set(value, at + 4);
        at += 4 + value.byteLength;
      }
    }
    backend.writeMany(out);
  }

  /** The overlay's entry for `key`, read from the backend when the batch has not touched it. */
  _entry(key) {
    let entry = this._overlay.get(key);
    if (entry === undefined) {
      entry = { state: STORED, value: this._backend.get(key) ?? null };
      this._overlay.set(key, entry);
    }
    return entry;
  }

  /** Parses a stored or written entry's bytes; a written one moves to `edited`. */
  _parse(key, entry) {
    const doc = parse(key, entry.value);
    if (entry.state === WRITTEN) {
      this._overlay.delete(key);
      this._edited.set(key, doc);
    } else {
      entry.state = PARSED;
      entry.value = doc;
    }
    return doc;
  }
}

/** A changed document's bytes. */
function encode(key, doc) {
  const text = JSON.stringify(doc);
  if (text === undefined) throw new TypeError(`the document under ${JSON.stringify(key)} is not JSON`);
  return encoder.encode(text);
}

/** Stored bytes as a document. */
function parse(key, bytes) {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (e) {
    throw new Error(`document ${JSON.stringify(key)} is not JSON: ${e.message}`);
  }
}
