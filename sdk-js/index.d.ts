// Types of `@projector/sdk`, for editors. The contract itself is sdk/wit/projection.wit.

/** Any JSON value a document may hold. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One event of the log, as a projection receives it. */
export declare class Event {
  /** Global position in the log, from 1, gap-free. */
  readonly position: number;
  /** Revision in its stream, from 0. */
  readonly revision: number;
  /** Server time of the append, microseconds since the Unix epoch. */
  readonly recordedAt: number;
  readonly stream: string;
  readonly type: string;
  /** The stream's category: its name before the first `-`, or `null`. */
  readonly category: string | null;
  /** The payload, parsed from JSON on first use. */
  readonly data: any;
  /** The payload as JSON text. */
  readonly dataText: string;
  /** The metadata, parsed; `null` when the event has none. */
  readonly metadata: any;
  /** The event's id, a UUID in text form. */
  readonly id: string;
  toJSON(): object;
}

/** Where documents live between batches. */
export interface Backend {
  get(key: string): Uint8Array | undefined;
  put(key: string, value: Uint8Array): void;
  delete(key: string): void;
  /**
   * Optional: several puts and deletes framed into one buffer (`write-many` in the WIT file);
   * `View.flush` uses it when present.
   */
  writeMany?(changes: Uint8Array): void;
}

export declare class MapBackend implements Backend {
  constructor(entries?: Iterable<[string, Uint8Array]>);
  readonly documents: Map<string, Uint8Array>;
  get(key: string): Uint8Array | undefined;
  put(key: string, value: Uint8Array): void;
  delete(key: string): void;
  writeMany(changes: Uint8Array): void;
}

/**
 * The projection's documents for one batch. Reads see the batch's earlier writes; each
 * changed key is written to the host once, when the batch ends.
 */
export declare class View {
  constructor(backend: Backend);
  /** The document under `key`; change it through `update` or replace it with `put`. */
  get<T = any>(key: string): T | undefined;
  has(key: string): boolean;
  /** Stores `doc` under `key`. */
  put<T = Json>(key: string, doc: T): void;
  /** The document (or `init()`, default `{}`) to change in place; written when the batch ends. */
  edit<T = any>(key: string, init?: () => T): T;
  /** Changes the document in place, starting from `init()` (default `{}`) when there is none. */
  update<T = any, R = void>(key: string, change: (doc: T) => R, init?: () => T): R;
  /** Changes the document in place if there is one; `undefined` otherwise. */
  updateExisting<T = any, R = void>(key: string, change: (doc: T) => R): R | undefined;
  delete(key: string): void;
  getBytes(key: string): Uint8Array | undefined;
  putBytes(key: string, bytes: Uint8Array): void;
  flush(): void;
}

/** Which events a projection receives. */
export declare class Subscription {
  readonly streams: readonly string[];
  readonly categories: readonly string[];
  readonly eventTypes: readonly string[];
  static all(): Subscription;
  static streams(streams: Iterable<string>): Subscription;
  static categories(categories: Iterable<string>): Subscription;
  ofTypes(types: Iterable<string>): Subscription;
  matches(stream: string, type: string): boolean;
}

export interface ProjectionDefinition {
  subscription?: Subscription | (() => Subscription);
  /** Applies one event. Throwing refuses it: the projection faults at this event. */
  apply(view: View, event: Event): void;
}

export interface Projection {
  readonly subscription: Subscription;
  readonly apply: (view: View, event: Event) => void;
}

export declare function defineProjection(projection: ProjectionDefinition): Projection;

/** Why a projection refused an event. */
export declare class ProjectionError extends Error {
  constructor(message: string);
}

export declare class FrameError extends Error {}

export interface FramedEvent {
  position: number;
  revision: number;
  recordedAt: number;
  id: Uint8Array;
  stream: string;
  type: string;
  data: string | Uint8Array;
  metadata?: string | Uint8Array;
}

export declare function forEachEvent(batch: Uint8Array, each: (event: Event) => void): void;
export declare function decodeBatch(batch: Uint8Array): Event[];
export declare function encodeEvent(event: FramedEvent): Uint8Array;
export declare function joinFrames(frames: Uint8Array[]): Uint8Array;
