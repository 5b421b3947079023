// Which events a projection receives; see `types.subscription` in the WIT contract.

export class Subscription {
  constructor(streams = [], categories = [], eventTypes = []) {
    this.streams = [...streams];
    this.categories = [...categories];
    this.eventTypes = [...eventTypes];
    Object.freeze(this);
  }

  /** Every event of the log. */
  static all() {
    return new Subscription();
  }

  /** The events of these streams. */
  static streams(streams) {
    return new Subscription(streams);
  }

  /** The events of these categories (the part of a stream's name before its first `-`). */
  static categories(categories) {
    return new Subscription([], categories);
  }

  /** Only events of these types, of whatever streams are selected. */
  ofTypes(types) {
    return new Subscription(this.streams, this.categories, types);
  }

  /** Whether an event of `stream` with type `type` is selected. */
  matches(stream, type) {
    const dash = stream.indexOf('-');
    const category = dash > 0 ? stream.slice(0, dash) : null;
    const bySource =
      (this.streams.length === 0 && this.categories.length === 0) ||
      this.streams.includes(stream) ||
      (category !== null && this.categories.includes(category));
    return bySource && (this.eventTypes.length === 0 || this.eventTypes.includes(type));
  }
}
