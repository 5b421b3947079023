// One event of the log as a projection receives it. `data` and `metadata` are parsed on
// first use: a projection that filters on `type` or `stream` never pays for JSON it skips.

const utf8 = new TextDecoder('utf-8', { fatal: true });
const HEX = Array.from({ length: 256 }, (_, n) => n.toString(16).padStart(2, '0'));

const TWO_32 = 4294967296;

export class Event {
  /**
   * @internal Built by the frame decoder, borrowing the batch's bytes: `at` is where the
   * frame starts, `streamEnd` and `typeEnd` where the type's and the data's length prefixes
   * are, `stop` where it ends.
   */
  constructor(bytes, view, at, position, streamEnd, typeEnd, stop) {
    /** Global position in the log, from 1, gap-free. */
    this.position = position;
    this._bytes = bytes;
    this._view = view;
    this._at = at;
    this._streamEnd = streamEnd;
    this._typeEnd = typeEnd;
    this._stop = stop;
    this._stream = undefined;
    this._type = undefined;
    this._data = undefined;
  }

  /** The stream's name. */
  get stream() {
    return (this._stream ??= utf8.decode(this._bytes.subarray(this._at + 48, this._streamEnd)));
  }

  /** The event's type. */
  get type() {
    return (this._type ??= utf8.decode(this._bytes.subarray(this._streamEnd + 4, this._typeEnd)));
  }

  /** Revision in its stream, from 0. */
  get revision() {
    return this._view.getUint32(this._at + 12, true) + this._view.getUint32(this._at + 16, true) * TWO_32;
  }

  /** Server time of the append, microseconds since the Unix epoch. */
  get recordedAt() {
    return this._view.getUint32(this._at + 20, true) + this._view.getUint32(this._at + 24, true) * TWO_32;
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
    const at = this._typeEnd + 4;
    return utf8.decode(this._bytes.subarray(at, at + this._view.getUint32(this._typeEnd, true)));
  }

  /** The metadata, parsed; `null` when the event has none. */
  get metadata() {
    const lengthAt = this._typeEnd + 4 + this._view.getUint32(this._typeEnd, true);
    const length = this._view.getUint32(lengthAt, true);
    if (length === 0) return null;
    if (lengthAt + 4 + length !== this._stop) throw new Error('malformed event batch: metadata does not end its frame');
    return JSON.parse(utf8.decode(this._bytes.subarray(lengthAt + 4, this._stop)));
  }

  /** The event's id, in its usual text form (a UUID). */
  get id() {
    const b = this._bytes;
    const at = this._at + 28;
    let hex = '';
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) hex += '-';
      hex += HEX[b[at + i]];
    }
    return hex;
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
