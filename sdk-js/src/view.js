// The view as a projection sees it: JSON documents under string keys.
//
// A batch's reads and writes go through an overlay. A document read or updated stays parsed
// for the rest of the batch, and every changed key is encoded and handed to the host once,
// when the batch ends: a projection that updates the same documents for thousands of events
// pays for JSON and for host calls per key, not per event.

const encoder = new TextEncoder();
const utf8 = new TextDecoder('utf-8', { fatal: true });

// What an overlay entry `{ state, value }` holds: one field for what would otherwise be two
// (parsed? changed?), since every property access is a lookup in the component's interpreter.
const STORED = 0; // `value` is the stored bytes (Uint8Array), or null for no document
const PARSED = 1; // `value` is the parsed document, unchanged
const EDITED = 2; // `value` is the parsed document, changed in this batch
const WRITTEN = 3; // `value` is bytes to store, or null to delete, set in this batch

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
    /** key -> { state, value } */
    this._overlay = new Map();
  }

  /**
   * The document under `key`, or `undefined`. The object is the view's own for this batch:
   * change it through `update`, or replace it with `put`, so the change is written.
   */
  get(key) {
    const entry = this._entry(key);
    return parsed(entry, key) ? entry.value : undefined;
  }

  /** Whether a document is stored under `key`. */
  has(key) {
    const entry = this._entry(key);
    return entry.state === PARSED || entry.state === EDITED || entry.value !== null;
  }

  /** Stores `doc` (any JSON value) under `key`. */
  put(key, doc) {
    if (doc === undefined) throw new TypeError(`put(${JSON.stringify(key)}): the document is undefined; use delete to remove one`);
    this._overlay.set(key, { state: EDITED, value: doc });
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
    // `_entry` and `parsed` written out: this is most projections' hot path, and a call costs
    // a good part of a microsecond in the component's interpreter. A document edited before
    // in this batch costs one lookup and one comparison.
    let entry = this._overlay.get(key);
    if (entry === undefined) {
      entry = { state: STORED, value: this._backend.get(key) ?? null };
      this._overlay.set(key, entry);
    }
    if (entry.state !== EDITED) {
      if (!parsed(entry, key)) entry.value = init === undefined ? {} : init();
      entry.state = EDITED;
    }
    return entry.value;
  }

  /** Like `update`, but only when a document exists; returns `undefined` otherwise. */
  updateExisting(key, change) {
    const entry = this._entry(key);
    if (!parsed(entry, key)) return undefined;
    entry.state = EDITED;
    return change(entry.value);
  }

  /** Removes the document under `key`, if any. */
  delete(key) {
    this._overlay.set(key, { state: WRITTEN, value: null });
  }

  /** The stored bytes under `key`, or `undefined`. */
  getBytes(key) {
    const entry = this._entry(key);
    if (entry.state === PARSED || entry.state === EDITED) return encoder.encode(JSON.stringify(entry.value));
    return entry.value ?? undefined;
  }

  /** Stores raw bytes under `key`. */
  putBytes(key, bytes) {
    this._overlay.set(key, { state: WRITTEN, value: bytes });
  }

  /**
   * Writes every document changed in this batch to the backend; the SDK calls it. A backend
   * with `writeMany` (the host's view since contract 0.1.1) gets them all in one call: a host
   * call costs about 10 µs in a component's interpreter, the framing of a document far less.
   */
  flush() {
    const backend = this._backend;
    if (typeof backend.writeMany !== 'function') {
      for (const [key, entry] of this._overlay) {
        if (entry.state < EDITED) continue;
        const value = stored(key, entry);
        if (value === null) backend.delete(key);
        else backend.put(key, value);
      }
      this._overlay.clear();
      return;
    }
    // Keys and documents encoded, then framed into one buffer: u32 n + key, u32 n + document
    // (n = DELETED, no bytes, to delete).
    const parts = [];
    let size = 0;
    for (const [key, entry] of this._overlay) {
      if (entry.state < EDITED) continue;
      const k = encoder.encode(key);
      const value = stored(key, entry);
      parts.push(k, value);
      size += 8 + k.byteLength + (value === null ? 0 : value.byteLength);
    }
    this._overlay.clear();
    if (parts.length === 0) return;
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

  _entry(key) {
    let entry = this._overlay.get(key);
    if (entry === undefined) {
      entry = { state: STORED, value: this._backend.get(key) ?? null };
      this._overlay.set(key, entry);
    }
    return entry;
  }
}

/** The bytes a changed entry stores, or `null` to delete. */
function stored(key, entry) {
  if (entry.state === WRITTEN) return entry.value;
  const text = JSON.stringify(entry.value);
  if (text === undefined) throw new TypeError(`the document under ${JSON.stringify(key)} is not JSON`);
  return encoder.encode(text);
}

/** Parses a stored or written entry in place (keeping whether it changed); whether it holds a document. */
function parsed(entry, key) {
  if (entry.state === PARSED || entry.state === EDITED) return true;
  if (entry.value === null) return false;
  try {
    entry.value = JSON.parse(utf8.decode(entry.value));
  } catch (e) {
    throw new Error(`document ${JSON.stringify(key)} is not JSON: ${e.message}`);
  }
  entry.state = entry.state === WRITTEN ? EDITED : PARSED;
  return true;
}
