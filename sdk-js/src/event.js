// One event of the log as a projection receives it. `data` and `metadata` are parsed on
// first use: a projection that filters on `type` or `stream` never pays for JSON it skips.

const utf8 = new TextDecoder('utf-8', { fatal: true });
const HEX = Array.from({ length: 256 }, (_, n) => n.toString(16).padStart(2, '0'));

const TWO_32 = 4294967296;

/**
 * One event. The frame decoder builds each batch's events with the constructors of
 * `batchEvents`, whose prototypes lead here: `event instanceof Event` holds for every event.
 *
 * Own fields: `position` (global position in the log, from 1, gap-free), `revision` (in its
 * stream, from 0), `stream` (the stream's name), `type` (the event's type; see
 * `batchEvents`). The fields nearly every projection reads are plain properties: in the
 * component's interpreter a getter is a call and every property set a lookup, so an event
 * with few fields and no getter on the hot path is the cheapest to build and to read.
 */
export class Event {
  /** Server time of the append, microseconds since the Unix epoch. */
  get recordedAt() {
    const view = this._frame.view;
    return view.getUint32(this._at + 20, true) + view.getUint32(this._at + 24, true) * TWO_32;
  }

  /** The stream's category: its name before the first `-`, or `null` when there is none. */
  get category() {
    const dash = this.stream.indexOf('-');
    return dash > 0 ? this.stream.slice(0, dash) : null;
  }

  /** The payload, parsed from JSON on first use. */
  get data() {
    if (this._data === undefined) {
      try {
        this._data = JSON.parse(this.dataText);
      } catch (e) {
        throw new Error(`${this.type} event at position ${this.position} has data that is not JSON: ${e.message}`);
      }
    }
    return this._data;
  }

  /** The payload as JSON text. */
  get dataText() {
    const typeEnd = this._typeEnd();
    const at = typeEnd + 4;
    return utf8.decode(this._frame.bytes.subarray(at, at + this._frame.view.getUint32(typeEnd, true)));
  }

  /** The metadata, parsed; `null` when the event has none. */
  get metadata() {
    const { bytes, view } = this._frame;
    const typeEnd = this._typeEnd();
    const lengthAt = typeEnd + 4 + view.getUint32(typeEnd, true);
    const stop = this._at + 4 + view.getUint32(this._at, true);
    if (lengthAt + 4 > stop) throw new Error('malformed event batch: data overruns its frame');
    const length = view.getUint32(lengthAt, true);
    if (length === 0) return null;
    if (lengthAt + 4 + length !== stop) throw new Error('malformed event batch: metadata does not end its frame');
    return JSON.parse(utf8.decode(bytes.subarray(lengthAt + 4, stop)));
  }

  /** The event's id, in its usual text form (a UUID). */
  get id() {
    const b = this._frame.bytes;
    const at = this._at + 28;
    let hex = '';
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) hex += '-';
      hex += HEX[b[at + i]];
    }
    return hex;
  }

  /** Where the type ends: the data's length prefix (the frame was checked when decoded). */
  _typeEnd() {
    const view = this._frame.view;
    const streamEnd = this._at + 48 + view.getUint32(this._at + 44, true);
    return streamEnd + 4 + view.getUint32(streamEnd, true);
  }

  toJSON() {
    return {
      position: this.position,
      revision: this.revision,
      recordedAt: this.recordedAt,
      id: this.id,
      stream: this.stream,
      type: this.type,
      data: this.data,
      metadata: this.metadata,
    };
  }
}

/**
 * Set when a projection reads the type of a `Lazy` event (see `batchEvents`); the frame
 * decoder resets it per batch and then builds `Decoded` events, whose type is a plain field.
 * (A module binding, not an object's property: the cheapest read in the interpreter, made
 * once an event.)
 */
export let typeRead = false;

/** Clears `typeRead`, for a new batch. */
export function resetTypeRead() {
  typeRead = false;
}

const lazyType = Object.create(Event.prototype, {
  type: {
    get() {
      typeRead = true;
      const view = this._frame.view;
      const streamEnd = this._at + 48 + view.getUint32(this._at + 44, true);
      const typeEnd = streamEnd + 4 + view.getUint32(streamEnd, true);
      const type = utf8.decode(this._frame.bytes.subarray(streamEnd + 4, typeEnd));
      Object.defineProperty(this, 'type', { value: type, writable: true, enumerable: true, configurable: true });
      return type;
    },
    configurable: true,
  },
});

/**
 * @internal The two constructors of one batch's events: `frame` is the batch (`{ bytes,
 * view }`, a DataView over the bytes) and sits on their prototype, shared, rather than on
 * each event; `at` is where an event's frame starts.
 *
 * `Lazy` builds an event whose `type` is decoded when first read. Decoding a type is two
 * native calls (a `subarray` and a `TextDecoder` call, about a microsecond in the component's
 * interpreter), which a projection that never reads it should not pay; but a getter on every
 * read costs a projection that reads it more than decoding it once. So the frame decoder
 * builds `Lazy` events only until a type is first read in a batch, and `Decoded` ones after:
 * a projection pays at most one getter per batch either way. The first read makes `type` an
 * own field, as on a `Decoded` event.
 */
export function batchEvents(frame) {
  function Decoded(at, position, revision, stream, type) {
    this.position = position;
    this.revision = revision;
    this.stream = stream;
    this.type = type;
    this._at = at;
  }
  Decoded.prototype = Object.create(Event.prototype, { _frame: { value: frame } });
  function Lazy(at, position, revision, stream) {
    this.position = position;
    this.revision = revision;
    this.stream = stream;
    this._at = at;
  }
  Lazy.prototype = Object.create(lazyType, { _frame: { value: frame } });
  return { Decoded, Lazy };
}
